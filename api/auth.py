"""API keys (stored only as SHA-256 hashes), the caller's tenant, and per-tenant rate limits."""

from __future__ import annotations

import hashlib
import hmac
import logging
import secrets
from dataclasses import dataclass
from pathlib import Path

from flask import Flask, g, request
from flask_limiter import Limiter

from api.errors import ApiError
from shared.jobstore import DEFAULT_TENANT
from shared.keys import RATELIMIT
from shared.redisconn import bounded_pool, is_sentinel, limiter_uri
from shared.schemas import ErrorCode
from shared.settings import Settings

log = logging.getLogger(__name__)

KEY_PREFIX = "gq_"  # makes genq keys recognisable to secret scanners
LIMITER_CONNECTIONS = 4  # Redis connections of the rate limiter per API process


@dataclass(frozen=True)
class ApiKey:
    """One accepted key: its tenant and the SHA-256 digest of the key."""

    tenant: str
    digest: bytes


def hash_key(key: str) -> str:
    """Return the hex SHA-256 digest under which a key is stored."""
    return hashlib.sha256(key.encode()).hexdigest()


def new_key() -> str:
    """Return a fresh random key (256 bits)."""
    return KEY_PREFIX + secrets.token_urlsafe(32)


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


def authenticate(keys: list[ApiKey], header: str | None) -> str | None:
    """Return the tenant of a valid `Bearer` header, comparing every key in constant time."""
    if not header or not header.startswith("Bearer "):
        return None
    digest = hashlib.sha256(header[7:].strip().encode()).digest()
    tenant = None
    for key in keys:  # no early exit: timing does not tell which key matched
        if hmac.compare_digest(key.digest, digest):
            tenant = key.tenant
    return tenant


def install_auth(app: Flask, settings: Settings) -> None:
    """Require a key on /v1 when keys exist, and limit each tenant's request rate."""
    keys = load_keys(settings)
    if keys:
        log.info("API keys required on /v1 (%d keys, %d tenants)", len(keys), len({k.tenant for k in keys}))
    else:
        log.warning(
            "no API keys configured: the API is OPEN to anyone who can reach %s:%s; "
            "create keys with `genq keys create --tenant NAME`",
            settings.host,
            settings.port,
        )

    @app.before_request
    def _authenticate() -> None:
        if not request.path.startswith("/v1/"):
            return
        if not keys:
            g.tenant = DEFAULT_TENANT
            return
        tenant = authenticate(keys, request.headers.get("Authorization"))
        if tenant is None:
            raise ApiError(
                401,
                ErrorCode.UNAUTHORIZED,
                "missing or invalid API key; send 'Authorization: Bearer <key>'",
                headers={"WWW-Authenticate": 'Bearer realm="genq"'},
            )
        g.tenant = tenant

    if settings.rate_limit:
        # With Sentinels, the URL's password is the master's: none is sent to the Sentinels.
        if is_sentinel(settings.redis_url):
            storage: dict = {"sentinel_kwargs": {"password": None}}
        else:  # a few connections per process, however many requests wait (api/waiters.py)
            storage = {"connection_pool": bounded_pool(settings.redis_url, LIMITER_CONNECTIONS)}
        # Counters live in Redis, so the limit holds across every API process and host.
        Limiter(
            key_func=lambda: f"tenant:{g.get('tenant', DEFAULT_TENANT)}",
            app=app,
            default_limits=[settings.rate_limit],
            default_limits_exempt_when=lambda: not request.path.startswith("/v1/"),
            storage_uri=limiter_uri(settings.redis_url, settings.redis_sentinel_master),
            storage_options=storage,
            strategy="fixed-window",  # 2 Redis calls per request; moving windows cost 5-10,
            headers_enabled=False,  # window stats cost several Redis calls per request
            swallow_errors=True,  # Redis down: the routes answer 503 themselves
            key_prefix=RATELIMIT,
        )
