"""Per-tenant caps on open streams and long polls, counted in Redis across every API process.

Each open waiter is a member of its tenant's zset, scored by when its lease lapses: the process
that holds it renews the lease, so the waiters of a process that died stop counting on their own.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING

import redis
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from shared import keys

if TYPE_CHECKING:
    from api.waiters import Hub

LEASE_S = 30  # seconds a waiter counts without its process renewing it

# Drop lapsed members, refuse past the cap, else add this waiter. ARGV: token, now, lease end, cap, tenant.
ACQUIRE = """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[2])
local cap = tonumber(ARGV[4])
if cap > 0 and redis.call('ZCARD', KEYS[1]) >= cap then return 0 end
redis.call('ZADD', KEYS[1], ARGV[3], ARGV[1])
redis.call('EXPIRE', KEYS[1], 2 * tonumber(ARGV[6]))
redis.call('SADD', KEYS[2], ARGV[5])
return 1
"""


class TenantSlots:
    """Count each tenant's open waiters in Redis and refuse one past GENQ_MAX_WAITERS_PER_TENANT."""

    def __init__(self, client: redis.Redis, cap: int) -> None:
        self.r = client
        self.cap = cap
        self._acquire = client.register_script(ACQUIRE)

    def acquire(self, tenant: str, token: str) -> bool:
        """Count a waiter for the tenant; False when it already holds `cap` of them."""
        now = time.time()
        args = [token, repr(now), repr(now + LEASE_S), self.cap, tenant, LEASE_S]
        return bool(self._acquire(keys=[keys.waiters(tenant), keys.WAITER_TENANTS], args=args))

    def release(self, tenant: str, token: str) -> None:
        """Stop counting a waiter."""
        self.r.zrem(keys.waiters(tenant), token)

    def renew(self, held: list[tuple[str, str]]) -> None:
        """Extend the leases of this process's open waiters (one round trip)."""
        if not held:
            return
        until = time.time() + LEASE_S
        pipe = self.r.pipeline(transaction=False)
        for tenant, token in held:
            pipe.zadd(keys.waiters(tenant), {token: until}, xx=True)
            pipe.expire(keys.waiters(tenant), 2 * LEASE_S)
        pipe.execute()

    def counts(self) -> dict[str, int]:
        """Return each tenant's open waiters across all API processes."""
        tenants = sorted(self.r.smembers(keys.WAITER_TENANTS))
        pipe = self.r.pipeline(transaction=False)
        for tenant in tenants:
            pipe.zcount(keys.waiters(tenant), repr(time.time()), "+inf")
        return dict(zip(tenants, pipe.execute(), strict=True))


class WaiterCollector(Collector):
    """Open waiters for /metrics: this process's count and caps, and each tenant's across processes."""

    def __init__(self, hub: Hub) -> None:
        self.hub = hub

    def collect(self) -> Iterator[GaugeMetricFamily]:
        """Read the figures at scrape time."""
        pid = str(os.getpid())
        process = GaugeMetricFamily(
            "genq_api_open_waiters", "Open streams and long polls held by this API process", labels=["pid"]
        )
        process.add_metric([pid], len(self.hub.open))
        yield process
        limit = GaugeMetricFamily("genq_api_waiters_limit", "Open-waiter caps, 0: none", labels=["scope"])
        limit.add_metric(["process"], self.hub.max_per_process)
        limit.add_metric(["tenant"], self.hub.slots.cap)
        yield limit
        tenants = GaugeMetricFamily(
            "genq_open_waiters", "Open streams and long polls per tenant, all processes", labels=["tenant"]
        )
        for tenant, count in self.hub.slots.counts().items():
            tenants.add_metric([tenant], count)
        yield tenants
