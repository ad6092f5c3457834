"""What the admin and usage routes accept and answer: the models that validate them and make their docs."""

from __future__ import annotations

import re
from datetime import date
from typing import Annotated, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, field_validator

from shared.keystore import TENANT_NAME, parse_duration

Tenant = Annotated[str, Field(pattern=TENANT_NAME.pattern)]
Limit = Annotated[int, Field(ge=0)] | None
LimitName = Literal["requests_per_minute", "max_queued", "tokens_per_day"]  # shared/keystore.py TenantLimits
ISO_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")  # only YYYY-MM-DD: pydantic's lax dates take Unix times too


def _seconds(value: object) -> object:
    return parse_duration(value) if isinstance(value, str) else value


Positive = Annotated[int, Field(ge=1)]
Seconds = Annotated[Positive, BeforeValidator(_seconds, json_schema_input_type=str | Positive)]


class KeyCreate(BaseModel):
    """What an operator sends to create a key."""

    model_config = ConfigDict(extra="forbid")

    tenant: Tenant
    label: Annotated[str, Field(max_length=200)] = ""
    expires_in: Seconds | None = None  # '90d', '12h', ... or seconds; None = never
    admin: bool = False  # may use /v1/admin


class LimitsUpdate(BaseModel):
    """A tenant's limits to change: a number sets one (0 = unlimited), null restores the default."""

    model_config = ConfigDict(extra="forbid")

    requests_per_minute: Limit = None
    max_queued: Limit = None
    tokens_per_day: Limit = None


class KeyListQuery(BaseModel):
    """Query parameters of GET /v1/admin/keys."""

    model_config = ConfigDict(extra="forbid")

    tenant: Tenant | None = None  # only this tenant's keys; all keys when absent


class UsageQuery(BaseModel):
    """Query parameters of the usage routes: UTC dates, inclusive; each defaults to today."""

    model_config = ConfigDict(extra="forbid")

    start: date | None = None
    end: date | None = None

    @field_validator("start", "end", mode="before")
    @classmethod
    def _iso(cls, value: object) -> object:
        if value == "":
            return None  # ?start= with no value: today, as when absent
        if isinstance(value, str) and not ISO_DATE.match(value):
            raise ValueError(f"must be a date YYYY-MM-DD, got {value[:40]!r}")
        return value


class KeyPublic(BaseModel):
    """A key as listings show it: never the key or its hash."""

    id: str
    tenant: str
    label: str
    created: float  # Unix seconds
    expires: float | None  # Unix seconds; null = never
    admin: bool  # may use /v1/admin
    prefix: str  # the key's first characters, to tell keys apart
    revoked: float | None = None  # Unix seconds
    last_used: float | None = None  # Unix seconds, to within a minute
    state: Literal["active", "expired", "revoked"]


class KeyCreated(KeyPublic):
    """A new key and its record: the key appears in this answer only."""

    key: str


class KeyList(BaseModel):
    """GET /v1/admin/keys, oldest first."""

    object: Literal["list"] = "list"
    data: list[KeyPublic]


class LimitsEffective(BaseModel):
    """The limits in force for a tenant (0 or '' = unlimited)."""

    rate_limit: str  # as GENQ_RATE_LIMIT: '100/minute'
    max_queued: int  # queued jobs
    tokens_per_day: int  # prompt + completion tokens per UTC day


class TenantLimitsPublic(BaseModel):
    """A tenant's overrides and the limits they put in force."""

    tenant: str
    overrides: dict[LimitName, Annotated[int, Field(ge=0)]]  # its own limits; the others take the default
    effective: LimitsEffective


class UsageTotals(BaseModel):
    """Jobs that ended, by status, and their tokens."""

    jobs: dict[str, int]  # ended jobs by status: succeeded, failed, cancelled
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class UsageDay(UsageTotals):
    """One UTC day's usage."""

    date: date


class UsageKey(UsageTotals):
    """One key's usage over the range."""

    key_id: str


class UsageReport(UsageTotals):
    """A tenant's usage from start to end (UTC dates, inclusive): in total, per day with jobs, per key."""

    object: Literal["usage"] = "usage"
    tenant: str
    start: date
    end: date
    days: list[UsageDay]
    keys: list[UsageKey]
