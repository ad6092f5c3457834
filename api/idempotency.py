"""Idempotency-Key: a retried POST answers what the first one created instead of creating it again.

A key is scoped to its tenant and endpoint and bound, for GENQ_IDEMPOTENCY_TTL, to the id it
created and a fingerprint of the request; the same key with another request is a 409.
"""

from __future__ import annotations

import hashlib

from flask import request

from api.errors import ApiError, invalid
from shared.jobstore import JobStore
from shared.schemas import ErrorCode

HEADER = "Idempotency-Key"
MAX_KEY_CHARS = 255


def key_of(tenant: str, endpoint: str) -> str | None:
    """Return the request's Idempotency-Key scoped to its tenant and endpoint (None without one)."""
    key = request.headers.get(HEADER)
    if key is None:
        return None
    if not 1 <= len(key) <= MAX_KEY_CHARS:
        message = f"{HEADER} must be 1 to {MAX_KEY_CHARS} characters"
        raise invalid(ErrorCode.VALIDATION_ERROR, message, HEADER)
    return f"{tenant}\n{endpoint}\n{key}"


def fingerprint(canonical: str) -> str:
    """Return the fingerprint of a request, given its canonical serialization."""
    return hashlib.sha256(canonical.encode()).hexdigest()


def claim(store: JobStore, key: str, digest: str, new_id: str, ttl_s: int) -> str | None:
    """Bind the key to new_id and return None; or return the id it was bound to (409 for another body)."""
    earlier = store.remember_idempotency(key, digest, new_id, ttl_s)
    if earlier is None:
        return None
    if earlier["fingerprint"] != digest:
        message = f"this {HEADER} was used with a different request body"
        raise ApiError(409, ErrorCode.IDEMPOTENCY_CONFLICT, message)
    return earlier["id"]


def still_processing() -> ApiError:
    """Return the error for a key whose first request has not finished creating what it asked for."""
    message = f"a request with this {HEADER} is still being processed; retry shortly"
    return ApiError(409, ErrorCode.IDEMPOTENCY_CONFLICT, message)


def release(store: JobStore, key: str | None) -> None:
    """Free a key whose request was refused, so that a retry may succeed."""
    if key is not None:
        store.forget_idempotency(key)
