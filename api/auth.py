"""API keys (stored only as SHA-256 hashes), the caller's tenant, and per-tenant rate limits.

Keys come from Redis (created at runtime: shared/keystore.py) and, for bootstrap, from
GENQ_API_KEYS and the keys file, read at start.
"""

from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis
from flask import Flask, g, request
from flask_limiter import Limiter

from api.context import Context
from api.errors import ApiError
from api.tokenizer import PATHS as TOKENIZER_PATHS
from shared.jobstore import DEFAULT_TENANT
from shared.keys import RATELIMIT
from shared.keystore import KEY_PREFIX, KeyStore, hash_key, new_key
from shared.redisconn import bounded_pool, is_sentinel, limiter_uri
from shared.schemas import ErrorCode
from shared.settings import Settings

log = logging.getLogger(__name__)

LIMITER_CONNECTIONS = 4  # Redis connections of the rate limiter per API process
__all__ = [
    "KEY_PREFIX",
    "ApiKey",
    "add_key",
    "authenticate",
    "hash_key",
    "install_auth",
    "load_keys",
    "new_key",
]


@dataclass(frozen=True)
class ApiKey:
    """One accepted key: its tenant and the SHA-256 digest of the key."""

    tenant: str
    digest: bytes


def _parse(entry: str, origin: str) -> ApiKey:
    tenant, _, digest = entry.strip().replace(" ", ":", 1).partition(":")
    digest = digest.removeprefix("sha256:")
    if not tenant or len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
        raise ValueError(
            f"{origin}: expected 'tenant:<64 hex chars of SHA-256>', got {entry.strip()[:20]!r}..."
        )
    return ApiKey(tenant, bytes.fromhex(digest))


def load_keys(settings: Settings) -> list[ApiKey]:
    """Read the key hashes from GENQ_API_KEYS and GENQ_API_KEYS_FILE (lines 'tenant hexdigest')."""
    entries = [(e, "GENQ_API_KEYS") for e in settings.api_keys.split(",") if e.strip()]
    path = settings.api_keys_file
    if path is not None and Path(path).exists():
        lines = Path(path).read_text().splitlines()
        entries += [(line, str(path)) for line in lines if line.strip() and not line.startswith("#")]
    return [_parse(entry, origin) for entry, origin in entries]


def add_key(path: Path, tenant: str) -> str:
    """Create a key for tenant, append only its hash to the keys file, and return the key."""
    key = new_key()
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as f:
        f.write(f"{tenant} {hash_key(key)}\n")
    path.chmod(0o600)
    return key


def _digest(header: str | None) -> str | None:
    if not header or not header.startswith("Bearer "):
        return None
    return hash_key(header[7:].strip())


def authenticate(keys: list[ApiKey], header: str | None) -> str | None:
    """Return the static key's tenant for a `Bearer` header, or None."""
    digest = _digest(header)
    # Looked up by the hash of the presented key: timing tells nothing about any stored key.
    return {k.digest.hex(): k.tenant for k in keys}.get(digest or "")


@dataclass(frozen=True)
class Caller:
    """Who a request comes from: its tenant, its key's id (None in open mode), and admin rights."""

    tenant: str
    key_id: str | None
    admin: bool = False
    unverified: bool = False  # Redis was down while telling whether the API is open (see caller)


def _unauthorized(code: ErrorCode, message: str) -> ApiError:
    return ApiError(401, code, message, headers={"WWW-Authenticate": 'Bearer realm="genq"'})


class Authenticator:
    """Finds a request's caller: static keys (a dict) first, then Redis by hash (one lookup)."""

    def __init__(self, static: list[ApiKey], store: KeyStore) -> None:
        # A static key's id names it without revealing its hash (a hash of the hash).
        self.static = {
            k.digest.hex(): Caller(
                k.tenant, "static-" + hashlib.sha256(b"genq-id" + k.digest).hexdigest()[:12]
            )
            for k in static
        }
        self.store = store

    def caller(self, header: str | None) -> Caller:
        """Return the caller, or raise a 401 (key_expired / key_revoked only to the key's holder)."""
        digest = _digest(header)
        if digest is not None:
            if digest in self.static:
                return self.static[digest]
            record = self.store.lookup(digest)
            if record is not None:
                # Only someone holding this exact key reaches here: telling them why is safe.
                refusal = record.refusal(time.time())
                if refusal == "key_revoked":
                    raise _unauthorized(ErrorCode.KEY_REVOKED, "this API key has been revoked")
                if refusal == "key_expired":
                    raise _unauthorized(ErrorCode.KEY_EXPIRED, "this API key has expired")
                self.store.touch(digest, record)
                return Caller(record.tenant, record.id, record.admin)
        if not self.static:
            try:
                if not self.store.any_keys():
                    return Caller(DEFAULT_TENANT, None)  # open mode: no key exists anywhere
            except redis.RedisError:
                # HACK: Redis is down and this process never saw a key: bad input must still get
                # its 422, so the caller goes on as a tenant no job has (''); the submit paths
                # answer it 503 (api/quota.py), and everything else needs Redis anyway.
                return Caller("", None, unverified=True)
        raise _unauthorized(
            ErrorCode.UNAUTHORIZED, "missing or invalid API key; send 'Authorization: Bearer <key>'"
        )


def guarded(path: str) -> bool:
    """Return True for the paths behind keys and rate limits: /v1 and the tokenizer routes at the root."""
    return path.startswith("/v1/") or path in TOKENIZER_PATHS


def install_auth(app: Flask, settings: Settings) -> None:
    """Require a key on /v1 when keys exist, and limit each tenant's request rate."""
    static = load_keys(settings)
    store = Context.of(app).keys
    auth = Authenticator(static, store)
    try:
        runtime = store.any_keys()
    except Exception:  # Redis down at start: requests will tell (503) once they come
        runtime = True
    if static or runtime:
        log.info("API keys required on /v1 (%d static keys; runtime keys in Redis: %s)", len(static), runtime)
    else:
        log.warning(
            "no API keys configured: the API is OPEN to anyone who can reach %s:%s; "
            "create keys with `genq keys create --tenant NAME`",
            settings.host,
            settings.port,
        )

    @app.before_request
    def _authenticate() -> None:
        if not guarded(request.path):
            return
        caller = auth.caller(request.headers.get("Authorization"))
        g.tenant, g.key_id, g.admin, g.unverified = (
            caller.tenant,
            caller.key_id,
            caller.admin,
            caller.unverified,
        )
        g.limits = store.limits(caller.tenant) if not caller.unverified else None

    def _rate_limit() -> str:
        """Return the caller's tenant's own requests/minute if set (0 = none), else GENQ_RATE_LIMIT."""
        limits = g.get("limits")
        rpm = limits.requests_per_minute if limits is not None else None
        if rpm is None:
            return settings.rate_limit
        return f"{rpm}/minute" if rpm else ""

    # With Sentinels, the URL's password is the master's: none is sent to the Sentinels.
    storage: dict[str, Any] = {"sentinel_kwargs": {"password": None}}
    if not is_sentinel(settings.redis_url):  # a few connections per process, however many wait
        storage = {"connection_pool": bounded_pool(settings.redis_url, LIMITER_CONNECTIONS)}
    # Counters live in Redis, so the limit holds across every API process and host.
    Limiter(
        key_func=lambda: f"tenant:{g.get('tenant', DEFAULT_TENANT)}",
        app=app,
        default_limits=[_rate_limit],
        default_limits_exempt_when=lambda: not guarded(request.path),
        storage_uri=limiter_uri(settings.redis_url, settings.redis_sentinel_master),
        storage_options=storage,
        strategy="fixed-window",  # 2 Redis calls per request; moving windows cost 5-10,
        headers_enabled=False,  # window stats cost several Redis calls per request
        swallow_errors=True,  # Redis down: the routes answer 503 themselves
        key_prefix=RATELIMIT,
    )
