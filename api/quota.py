"""The caller's tenant limits for new jobs: its queued-jobs cap and its daily token budget.

api/auth.py puts the caller's key id and its tenant's overrides (shared/keystore.py) on `g`;
these helpers resolve them against the global settings for the submit paths.
"""

from __future__ import annotations

import time

from flask import g

from api.context import current
from api.errors import RETRY_AFTER_S, ApiError
from shared import usage
from shared.schemas import ErrorCode
from shared.settings import Settings


def key_id() -> str | None:
    """Return the id of the key this request came with (None in open mode)."""
    return g.get("key_id")


def queued_cap(settings: Settings) -> int:
    """Return the caller's tenant's queued-jobs cap: its own if set, else the global (0 = none)."""
    limits = g.get("limits")
    own = limits.max_queued if limits is not None else None
    return settings.max_queued_per_tenant if own is None else own


def tokens_per_day(settings: Settings) -> int:
    """Return the caller's tenant's daily token budget: its own if set, else the global (0 = none)."""
    limits = g.get("limits")
    own = limits.tokens_per_day if limits is not None else None
    return settings.tokens_per_day if own is None else own


def check_budget(settings: Settings, tenant: str) -> None:
    """Refuse new jobs (429 budget_exceeded) once today's tokens reach the tenant's budget."""
    if g.get("unverified"):  # Redis was down when the caller was checked (api/auth.py)
        raise ApiError(
            503,
            ErrorCode.SERVICE_UNAVAILABLE,
            "the job store (Redis) is unavailable; retry later",
            headers={"Retry-After": str(RETRY_AFTER_S)},
        )
    budget = tokens_per_day(settings)
    if not budget:
        return
    now = time.time()
    spent = current().keys.tokens_today(tenant, now)
    if spent >= budget:
        raise ApiError(
            429,
            ErrorCode.BUDGET_EXCEEDED,
            f"your tenant has used {spent} of its {budget} tokens for today (UTC); new jobs are "
            "accepted again after midnight UTC",
            headers={"Retry-After": str(usage.seconds_to_next_day(now))},
        )
