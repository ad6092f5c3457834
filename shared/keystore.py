"""Runtime API keys and per-tenant limits, kept in Redis (the one source of truth for every host).

A key is stored only as its SHA-256: one hash named by it (keys.api_key) holds its id, tenant, label,
times and flags, so authenticating a request is one lookup by hash, however many keys exist.
Every create, revoke and limits change writes one audit log line (and an entry in the keys.AUDIT stream).
"""

from __future__ import annotations

import hashlib
import logging
import re
import secrets
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, fields
from datetime import date
from typing import Any

import redis

from shared import keys, usage

audit_log = logging.getLogger("genq.audit")

KEY_PREFIX = "gq_"  # makes genq keys recognisable to secret scanners
SHOWN_CHARS = 7  # characters of a key kept for listings: "gq_" + 4 (24 of its 256 bits)
TENANT_NAME = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
AUDIT_MAXLEN = 100_000  # entries kept in the genq:audit stream (approximately)
LAST_USED_EVERY_S = 60.0  # a key's last_used is written at most this often per API process
MAX_CACHED = 10_000  # entries an API process caches before it starts afresh (bounds memory)
LIST_PAGE = 1000  # key records fetched per round trip when listing
_UNITS_S = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86_400, "w": 604_800}


def hash_key(key: str) -> str:
    """Return the hex SHA-256 digest under which a key is stored."""
    return hashlib.sha256(key.encode()).hexdigest()


def new_key() -> str:
    """Return a fresh random key (256 bits)."""
    return KEY_PREFIX + secrets.token_urlsafe(32)


def parse_duration(text: str) -> int:
    """Return the seconds in '90d', '12h', '30m', '45s', '2w' or a bare number of seconds."""
    match = re.fullmatch(r"\s*(\d{1,9})\s*([smhdw]?)\s*", text)
    if not match or int(match[1]) == 0:
        raise ValueError(f"expected a duration such as 90d, 12h, 30m or 3600 (seconds), got {text!r}")
    return int(match[1]) * _UNITS_S[match[2]]


@dataclass(frozen=True)
class KeyRecord:
    """What is stored about one runtime key: everything but the key itself."""

    id: str
    tenant: str
    label: str
    created: float  # Unix seconds
    expires: float | None  # Unix seconds; None = never
    admin: bool  # may use /v1/admin (still sees only its own tenant's jobs)
    prefix: str  # the key's first SHOWN_CHARS characters
    revoked: float | None = None  # Unix seconds
    last_used: float | None = None  # Unix seconds, to within LAST_USED_EVERY_S

    def refusal(self, now: float) -> str | None:
        """Return why the key is refused now ('key_revoked', 'key_expired'), or None."""
        if self.revoked is not None:
            return "key_revoked"
        if self.expires is not None and now >= self.expires:
            return "key_expired"
        return None

    def public(self) -> dict[str, Any]:
        """Return the record as listings show it (no key, no hash), with its state."""
        state = {"key_revoked": "revoked", "key_expired": "expired"}.get(
            self.refusal(time.time()) or "", "active"
        )
        return {**asdict(self), "state": state}


def _opt(value: str | None) -> float | None:
    return float(value) if value else None


def _record(stored: dict[str, str]) -> KeyRecord:
    return KeyRecord(
        id=stored["id"],
        tenant=stored["tenant"],
        label=stored.get("label", ""),
        created=float(stored["created"]),
        expires=_opt(stored.get("expires")),
        admin=stored.get("admin") == "1",
        prefix=stored.get("prefix", ""),
        revoked=_opt(stored.get("revoked")),
        last_used=_opt(stored.get("last_used")),
    )


@dataclass(frozen=True)
class TenantLimits:
    """A tenant's overrides of the global limits; None = the global default applies."""

    requests_per_minute: int | None = None  # 0 = unlimited
    max_queued: int | None = None  # queued jobs; 0 = unlimited
    tokens_per_day: int | None = None  # prompt + completion tokens per UTC day; 0 = unlimited

    @classmethod
    def names(cls) -> list[str]:
        """Return the names of the limits."""
        return [f.name for f in fields(cls)]


class KeyStore:
    """Creates, finds, lists and revokes runtime keys; reads and sets tenants' limits."""

    def __init__(self, client: redis.Redis, cache_s: float = 0.0) -> None:
        self.r = client  # decode_responses=True
        self.cache_s = cache_s  # 0 = every lookup asks Redis (the CLI, the admin routes)
        self._cache: dict[str, tuple[float, Any]] = {}
        self._touched: dict[str, float] = {}  # key id → when this process last wrote last_used
        self._lock = threading.Lock()
        self._closed = False  # a runtime key exists: the API is not open (never reverts)

    # --- the request path -----------------------------------------------------
    def _cached(self, name: str, load: Any) -> Any:
        if self.cache_s <= 0:
            return load()
        now = time.monotonic()
        hit = self._cache.get(name)
        if hit is not None and hit[0] > now:
            return hit[1]
        value = load()
        with self._lock:
            if len(self._cache) >= MAX_CACHED:
                self._cache.clear()
            self._cache[name] = (now + self.cache_s, value)
        return value

    def lookup(self, digest: str) -> KeyRecord | None:
        """Return the record of the key with this SHA-256 (hex), or None: one Redis read (or a cached one)."""

        def load() -> KeyRecord | None:
            stored = self.r.hgetall(keys.api_key(digest))
            return _record(stored) if stored.get("id") else None

        return self._cached(f"k:{digest}", load)

    def any_keys(self) -> bool:
        """Return True once any runtime key was ever created (the API then needs keys)."""
        if self._closed:
            return True
        # Keys are never deleted from the index, so once seen the answer stays (no Redis call).
        self._closed = bool(self._cached("any", lambda: self.r.exists(keys.API_KEYS)))
        return self._closed

    def limits(self, tenant: str, fresh: bool = False) -> TenantLimits:
        """Return a tenant's overrides (cached like keys, unless fresh)."""

        def load() -> TenantLimits:
            stored = self.r.hgetall(keys.tenant_limits(tenant))
            return TenantLimits(**{k: int(v) for k, v in stored.items() if k in TenantLimits.names()})

        return load() if fresh else self._cached(f"l:{tenant}", load)

    def tokens_today(self, tenant: str, now: float) -> int:
        """Return the tokens of the tenant's jobs that ended today (UTC), for its budget."""
        return usage.tokens_on(self.r, tenant, usage.day_of(now))

    def usage(self, tenant: str, start: date, end: date) -> dict[str, Any]:
        """Return a tenant's usage from start to end (UTC dates, inclusive): total, per day, per key."""
        return usage.read_usage(self.r, tenant, start, end)

    def touch(self, digest: str, record: KeyRecord) -> None:
        """Note that a key was used now, writing to Redis at most every LAST_USED_EVERY_S."""
        now = time.time()
        if now - self._touched.get(record.id, 0.0) < LAST_USED_EVERY_S:
            return
        with self._lock:
            if len(self._touched) >= MAX_CACHED:
                self._touched.clear()
            self._touched[record.id] = now
        self.r.hset(keys.api_key(digest), "last_used", repr(now))

    # --- administration -------------------------------------------------------
    def create(
        self,
        tenant: str,
        label: str = "",
        expires_in_s: float | None = None,
        admin: bool = False,
        actor: str = "",
    ) -> tuple[str, KeyRecord]:
        """Create a key; return it (its only appearance) and its record."""
        if not TENANT_NAME.match(tenant):
            raise ValueError("a tenant name is 1-64 letters, digits, '.', '_' or '-'")
        key, key_id, now = new_key(), "key_" + secrets.token_hex(8), time.time()
        record = KeyRecord(
            key_id, tenant, label, now, now + expires_in_s if expires_in_s else None, admin, key[:SHOWN_CHARS]
        )
        stored = {
            k: ("1" if v else "0") if isinstance(v, bool) else repr(v) if isinstance(v, float) else v
            for k, v in asdict(record).items()
            if v is not None
        }
        digest = hash_key(key)
        pipe = self.r.pipeline(transaction=True)
        pipe.hset(keys.api_key(digest), mapping=stored)
        pipe.set(keys.api_key_id(key_id), digest)
        pipe.zadd(keys.API_KEYS, {key_id: now})
        pipe.execute()
        self.audit("key_created", actor, tenant, key_id)
        return key, record

    def revoke(self, key_id: str, actor: str = "") -> KeyRecord | None:
        """Revoke a key by id (idempotent); return its record, None when there is no such key."""
        digest = self.r.get(keys.api_key_id(key_id))
        if digest is None:
            return None
        if self.r.hsetnx(keys.api_key(digest), "revoked", repr(time.time())):
            record = _record(self.r.hgetall(keys.api_key(digest)))
            self.audit("key_revoked", actor, record.tenant, key_id)
            return record
        return _record(self.r.hgetall(keys.api_key(digest)))

    def records(self, tenant: str | None = None) -> Iterator[KeyRecord]:
        """Yield every runtime key's record (of one tenant), oldest first."""
        for first in range(0, self.r.zcard(keys.API_KEYS), LIST_PAGE):
            ids = self.r.zrange(keys.API_KEYS, first, first + LIST_PAGE - 1)
            digests = self.r.mget([keys.api_key_id(i) for i in ids]) if ids else []
            pipe = self.r.pipeline(transaction=False)
            for digest in digests:
                pipe.hgetall(keys.api_key(digest or "-"))
            for stored in pipe.execute():
                if stored.get("id") and tenant in (None, stored["tenant"]):
                    yield _record(stored)

    def set_limits(self, tenant: str, changes: dict[str, int | None], actor: str = "") -> TenantLimits:
        """Set (int) or clear (None) some of a tenant's overrides; return them all."""
        if not TENANT_NAME.match(tenant):
            raise ValueError("a tenant name is 1-64 letters, digits, '.', '_' or '-'")
        unknown = set(changes) - set(TenantLimits.names())
        if unknown:
            raise ValueError(f"unknown limits {sorted(unknown)}; known: {TenantLimits.names()}")
        pipe = self.r.pipeline(transaction=True)
        for name, value in changes.items():
            if value is None:
                pipe.hdel(keys.tenant_limits(tenant), name)
            else:
                pipe.hset(keys.tenant_limits(tenant), name, int(value))
        pipe.execute()
        self.audit(
            "limits_set", actor, tenant, "", **{k: "default" if v is None else v for k, v in changes.items()}
        )
        with self._lock:
            self._cache.pop(f"l:{tenant}", None)
        return self.limits(tenant, fresh=True)

    def audit(self, action: str, actor: str, tenant: str, key_id: str, **extra: Any) -> None:
        """Write one audit line (and a keys.AUDIT stream entry): who did what to which key, when."""
        now = time.time()
        entry = {"action": action, "actor": actor or "unknown", "tenant": tenant, "key_id": key_id, **extra}
        self.r.xadd(keys.AUDIT, {**entry, "at": repr(now)}, maxlen=AUDIT_MAXLEN, approximate=True)
        text = " ".join(f"{k}={v}" for k, v in entry.items() if v != "")
        audit_log.info("audit: %s", text, extra={"audit": entry, "at": now})
