"""Usage per tenant and per API key, per UTC day: counted by the Lua step that ends each job.

Counting happens inside `ended` (shared/scripts.py), the one step every terminal transition goes
through exactly once, so a job is counted once whatever retries or lost workers it went through.
A job's tokens are the `usage` of its final record (the attempt that ended it).
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from typing import Any

import redis
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from shared import keys
from shared.schemas import TERMINAL

DAY_S = 86_400  # seconds in a UTC day (Unix time has no leap seconds)
USAGE_TTL_S = 400 * DAY_S  # how long a day's usage is kept: a year for billing, plus a month
MAX_RANGE_DAYS = 366  # longest ?start=..&end= span one usage query reads
FIELDS = ("prompt_tokens", "completion_tokens")  # token counters of a usage hash

# Lua, prepended to the transition scripts: `count_usage` is called by `ended` only. A record's
# `usage` is JSON written by the worker; a job that never ran has none and counts 0 tokens.
# Key names are the Lua locals K_<name> of shared/keys.py's LUA_PREFIXES (transitions.py's _KEYS).
LUA = f"""
local function count_usage(job, status, now)
  local t, k, u = unpack(redis.call('HMGET', job, 'tenant', 'key_id', 'usage'))
  t = t or 'default'
  local day = tostring(math.floor(tonumber(now) / {DAY_S}))
  local p, c = 0, 0
  if u then
    local ok, d = pcall(cjson.decode, u)
    if ok and type(d) == 'table' then
      p = tonumber(d['prompt_tokens']) or 0
      c = tonumber(d['completion_tokens']) or 0
    end
  end
  local hashes = {{K_USAGE_TENANT .. t .. ':' .. day}}
  if k then
    table.insert(hashes, K_USAGE_KEY .. k .. ':' .. day)
    local ids = K_USAGE_KEY_IDS .. t .. ':' .. day
    redis.call('SADD', ids, k)
    redis.call('EXPIRE', ids, {USAGE_TTL_S})
  end
  for _, h in ipairs(hashes) do
    redis.call('HINCRBY', h, 'jobs:' .. status, 1)
    redis.call('HINCRBY', h, 'prompt_tokens', p)
    redis.call('HINCRBY', h, 'completion_tokens', c)
    redis.call('EXPIRE', h, {USAGE_TTL_S})
  end
  redis.call('SADD', K_METRICS_TENANTS, t)
  local m = K_METRICS_TENANT .. t
  redis.call('HINCRBY', m, 'jobs:' .. status, 1)
  redis.call('HINCRBY', m, 'prompt_tokens', p)
  redis.call('HINCRBY', m, 'completion_tokens', c)
end
"""


def day_of(when: float | date) -> int:
    """Return the UTC day (days since 1970-01-01) of a Unix time or a date."""
    if isinstance(when, date):
        return (when - date(1970, 1, 1)).days
    return math.floor(when / DAY_S)


def seconds_to_next_day(now: float | None = None) -> int:
    """Return whole seconds until the next UTC midnight (at least 1)."""
    now = time.time() if now is None else now
    return max(1, math.ceil((day_of(now) + 1) * DAY_S - now))


def today() -> date:
    """Return today's UTC date."""
    return datetime.now(UTC).date()


def tokens_on(r: redis.Redis, tenant: str, day: int) -> int:
    """Return the prompt + completion tokens of a tenant's jobs that ended on one UTC day."""
    values = r.hmget(keys.usage_tenant(tenant, day), *FIELDS)
    return sum(int(v or 0) for v in values)


def _totals(stored: dict[str, str]) -> dict[str, Any]:
    jobs = {s.value: 0 for s in TERMINAL}
    for field, n in stored.items():
        if field.startswith("jobs:"):
            jobs[field[5:]] = jobs.get(field[5:], 0) + int(n)
    p, c = (int(stored.get(f) or 0) for f in FIELDS)
    return {"jobs": jobs, "prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c}


def _add(into: dict[str, Any], more: dict[str, Any]) -> None:
    for status, n in more["jobs"].items():
        into["jobs"][status] = into["jobs"].get(status, 0) + n
    for field in (*FIELDS, "total_tokens"):
        into[field] += more[field]


def read_usage(r: redis.Redis, tenant: str, start: date, end: date) -> dict[str, Any]:
    """Return a tenant's usage from start to end (UTC dates, inclusive): total, per day, per key."""
    days = list(range(day_of(start), day_of(end) + 1))
    pipe = r.pipeline(transaction=False)
    for day in days:
        pipe.hgetall(keys.usage_tenant(tenant, day))
        pipe.smembers(keys.usage_key_ids(tenant, day))
    replies = pipe.execute()
    per_day, key_days = [], []
    for i, day in enumerate(days):
        per_day.append(
            {"date": (date(1970, 1, 1) + timedelta(days=day)).isoformat(), **_totals(replies[2 * i])}
        )
        key_days += [(key_id, day) for key_id in replies[2 * i + 1]]
    pipe = r.pipeline(transaction=False)
    for key_id, day in key_days:
        pipe.hgetall(keys.usage_key(key_id, day))
    per_key: dict[str, dict[str, Any]] = {}
    for (key_id, _), stored in zip(key_days, pipe.execute(), strict=True):
        _add(per_key.setdefault(key_id, _totals({})), _totals(stored))
    total = _totals({})
    for day_totals in per_day:
        _add(total, day_totals)
    return {
        "object": "usage",
        "tenant": tenant,
        "start": start.isoformat(),
        "end": end.isoformat(),
        **total,
        "days": [d for d in per_day if any(d["jobs"].values())],
        "keys": [{"key_id": k, **v} for k, v in sorted(per_key.items())],
    }


def tenant_metrics(r: redis.Redis, max_tenants: int) -> Iterator[Any]:
    """Yield per-tenant counters while the tenants are at most max_tenants; always their number."""
    tenants = sorted(r.smembers(keys.METRICS_TENANTS))
    yield GaugeMetricFamily("genq_tenants", "Tenants that have had a job end.", value=len(tenants))
    if not tenants or len(tenants) > max_tenants:
        return  # past the cap, per-tenant series would blow up Prometheus's label cardinality
    pipe = r.pipeline(transaction=False)
    for tenant in tenants:
        pipe.hgetall(keys.metrics_tenant(tenant))
    jobs = CounterMetricFamily(
        "genq_tenant_jobs", "Jobs that ended, per tenant and status.", labels=["tenant", "status"]
    )
    tokens = CounterMetricFamily(
        "genq_tenant_tokens", "Tokens of ended jobs, per tenant and kind.", labels=["tenant", "kind"]
    )
    for tenant, stored in zip(tenants, pipe.execute(), strict=True):
        totals = _totals(stored)
        for status, n in sorted(totals["jobs"].items()):
            jobs.add_metric([tenant, status], n)
        tokens.add_metric([tenant, "prompt"], totals["prompt_tokens"])
        tokens.add_metric([tenant, "completion"], totals["completion_tokens"])
    yield jobs
    yield tokens
