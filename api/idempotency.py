"""Idempotency-Key: a retried POST answers what the first one created instead of creating it again.

A key is scoped to its tenant and endpoint and bound, for GENQ_IDEMPOTENCY_TTL, to the id it
created and a fingerprint of the request; the same key with another request is a 409. Every
creating route (jobs, batches) goes through `once`.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Callable

from flask import Response, request

from api.context import Context
from api.errors import ApiError, invalid
from shared.jobstore import JobStore
from shared.schemas import ErrorCode

HEADER = "Idempotency-Key"
REPLAYED = "Idempotent-Replayed"  # set to "true" on an answer repeated for a key
MAX_KEY_CHARS = 255


def once(
    ctx: Context,
    endpoint: str,
    new_id: str,
    canonical: Callable[[], str],
    create: Callable[[], Response],
    replay: Callable[[str], Response],
) -> Response:
    """Answer create() once per key; a repeat gets replay(first id), a refused create frees the key.

    canonical() serializes the checked request (computed only when a key is sent); new_id is
    the id create() will use.
    """
    key = key_of(ctx.tenant, endpoint)
    if key is None:
        return create()
    earlier = claim(ctx.store, key, fingerprint(canonical()), new_id, ctx.settings.idempotency_ttl)
    if earlier is not None:
        resp = replay(earlier)
        resp.headers[REPLAYED] = "true"
        return resp
    try:
        return create()
    except Exception:
        with contextlib.suppress(Exception):
            release(ctx.store, key)  # nothing was kept: a retry may succeed
        raise


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
