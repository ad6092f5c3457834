"""Operator routes under /v1/admin (admin keys only): keys, tenants' limits and usage; and /v1/usage.

An admin key belongs to a tenant like any key: the job routes still show it only its own jobs.
"""

from __future__ import annotations

from datetime import date, timedelta
from typing import Any, TypeVar

from flask import Blueprint, Response, g, request
from pydantic import BaseModel, ValidationError

from api.admin_schemas import (
    KeyCreate,
    KeyCreated,
    KeyList,
    KeyListQuery,
    KeyPublic,
    LimitsEffective,
    LimitsUpdate,
    TenantLimitsPublic,
    UsageQuery,
    UsageReport,
)
from api.context import current
from api.errors import ApiError, invalid, validation_details
from api.wire import json_response, read_json_object
from shared import usage
from shared.keystore import TENANT_NAME, KeyStore, TenantLimits
from shared.schemas import ErrorCode, ErrorDetail
from shared.settings import Settings

admin_bp = Blueprint("admin", __name__, url_prefix="/v1/admin")
usage_bp = Blueprint("usage", __name__)
M = TypeVar("M", bound=BaseModel)


def _ctx() -> tuple[Settings, KeyStore]:
    ctx = current()
    return ctx.settings, ctx.keys


def _actor() -> str:
    return f"api-key:{g.key_id} (tenant {g.tenant})"


def _parse(model: type[M], data: dict[str, Any], what: str = "invalid request") -> M:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise ApiError(422, ErrorCode.VALIDATION_ERROR, what, validation_details(exc)) from None


def _query(model: type[M]) -> M:
    return _parse(model, request.args.to_dict(), "invalid query parameters")


def _tenant(tenant: str) -> str:
    if not TENANT_NAME.match(tenant):
        raise invalid(
            ErrorCode.VALIDATION_ERROR, "a tenant name is 1-64 letters, digits, '.', '_' or '-'", "tenant"
        )
    return tenant


@admin_bp.before_request
def _admins_only() -> None:
    if not g.get("admin"):
        raise ApiError(403, ErrorCode.FORBIDDEN, "this route needs an admin key (genq keys create --admin)")


@admin_bp.post("/keys")
def create_key() -> Response:
    """Create a key: 201 with the key itself, shown this once, and its record."""
    _, store = _ctx()
    body = _parse(KeyCreate, read_json_object())
    key, record = store.create(body.tenant, body.label, body.expires_in, body.admin, _actor())
    return json_response(KeyCreated(key=key, **record.public()), 201)


@admin_bp.get("/keys")
def list_keys() -> Response:
    """List keys (?tenant= for one tenant's): ids, tenants, labels, times, prefixes; never a key or hash."""
    _, store = _ctx()
    query = _query(KeyListQuery)
    return json_response(KeyList(data=[KeyPublic(**r.public()) for r in store.records(query.tenant)]))


@admin_bp.delete("/keys/<key_id>")
def revoke_key(key_id: str) -> Response:
    """Revoke a key: every API process refuses it within GENQ_KEY_CACHE_S (at most 2 s)."""
    _, store = _ctx()
    record = store.revoke(key_id, _actor())
    if record is None:
        raise ApiError(404, ErrorCode.NOT_FOUND, f"no key {key_id!r}")
    return json_response(KeyPublic(**record.public()))


def limits_body(settings: Settings, tenant: str, own: TenantLimits) -> TenantLimitsPublic:
    """Return a tenant's overrides and the limits in force for it."""
    rpm = own.requests_per_minute
    return TenantLimitsPublic(
        tenant=tenant,
        overrides={k: v for k, v in vars(own).items() if v is not None},
        effective=LimitsEffective(
            rate_limit=settings.rate_limit if rpm is None else (f"{rpm}/minute" if rpm else ""),
            max_queued=settings.max_queued_per_tenant if own.max_queued is None else own.max_queued,
            tokens_per_day=settings.tokens_per_day if own.tokens_per_day is None else own.tokens_per_day,
        ),
    )


@admin_bp.get("/tenants/<tenant>/limits")
def get_limits(tenant: str) -> Response:
    """Show a tenant's own limits and those in force."""
    settings, store = _ctx()
    return json_response(limits_body(settings, tenant, store.limits(_tenant(tenant), fresh=True)))


@admin_bp.patch("/tenants/<tenant>/limits")
def set_limits(tenant: str) -> Response:
    """Change the limits named in the body (null = back to the default); the rest stay."""
    settings, store = _ctx()
    raw = read_json_object()
    body = _parse(LimitsUpdate, raw)
    changes = {name: getattr(body, name) for name in raw}
    own = store.set_limits(_tenant(tenant), changes, _actor())
    return json_response(limits_body(settings, tenant, own))


def date_range() -> tuple[date, date]:
    """Return ?start= and ?end= (UTC dates, YYYY-MM-DD, inclusive; default today), or raise a 422."""
    query = _query(UsageQuery)
    start, end = query.start or usage.today(), query.end or usage.today()
    if start > end or end - start >= timedelta(days=usage.MAX_RANGE_DAYS):
        raise ApiError(
            422,
            ErrorCode.VALIDATION_ERROR,
            f"start must not follow end, and the range spans at most {usage.MAX_RANGE_DAYS} days",
            [ErrorDetail(field="start", message="out of range")],
        )
    return start, end


@admin_bp.get("/tenants/<tenant>/usage")
def tenant_usage(tenant: str) -> Response:
    """Any tenant's usage, per UTC day and per key."""
    _, store = _ctx()
    return json_response(UsageReport(**store.usage(_tenant(tenant), *date_range())))


@usage_bp.get("/v1/usage")
def own_usage() -> Response:
    """The caller's tenant's usage from ?start= to ?end= (UTC dates): jobs by status and tokens."""
    _, store = _ctx()
    return json_response(UsageReport(**store.usage(g.tenant, *date_range())))
