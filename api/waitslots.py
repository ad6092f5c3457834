"""Counting open streams and long polls: per-tenant caps across every API process, and their slots.

Each process counts its own waiters exactly and publishes the counts to one Redis hash every
SYNC_S seconds, reading the other processes' counts back in the same round trip. Admitting a
waiter therefore costs no Redis call; across processes the cap holds to within one SYNC_S of
arrivals. A process that dies stops counting once its figures are STALE_S old.
"""

from __future__ import annotations

import os
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from shared.waitstore import WaitStore

if TYPE_CHECKING:
    from api.waiters import Hub

SYNC_S = 2.0  # seconds between exchanges of counts with the other API processes
STALE_S = 10.0  # seconds after which a process's published count no longer counts (it died)


class TenantCounts:
    """Open waiters per tenant: this process's exactly, the others' as last published."""

    def __init__(self, waits: WaitStore, cap: int, process: str) -> None:
        self.waits = waits
        self.cap = cap
        self.process = process
        self.local: Counter[str] = Counter()
        self.others: Counter[str] = Counter()  # every other process's waiters, as of the last sync
        self.totals: dict[str, int] = {}  # all processes', as of the last sync (for /metrics)
        self._lock = threading.Lock()

    def admit(self, tenant: str) -> bool:
        """Count one more waiter for the tenant; False when that would pass the cap."""
        with self._lock:
            if self.cap and self.local[tenant] + self.others[tenant] >= self.cap:
                return False
            self.local[tenant] += 1
            return True

    def drop(self, tenant: str) -> None:
        """Count one waiter fewer (its zero is published at the next sync, then forgotten)."""
        with self._lock:
            self.local[tenant] -= 1

    def sync(self) -> None:
        """Publish this process's counts and read everyone's (one round trip)."""
        now = time.time()
        with self._lock:
            mine = {f"{t}|{self.process}": f"{n} {now!r}" for t, n in self.local.items()}
            for tenant in [t for t, n in self.local.items() if n <= 0]:
                del self.local[tenant]
        published = self.waits.exchange_counts(mine)
        others: Counter[str] = Counter()
        totals: Counter[str] = Counter()
        stale = []
        for field, value in published.items():
            tenant, _, process = field.rpartition("|")
            count, _, stamp = value.partition(" ")
            if now - float(stamp) > STALE_S:
                stale.append(field)
                continue
            totals[tenant] += int(count)
            if process != self.process:
                others[tenant] += int(count)
        self.waits.forget_counts(stale)
        with self._lock:
            self.others, self.totals = others, dict(totals)


class Slot:
    """One open waiter, counted against its process's and its tenant's caps until released."""

    def __init__(self, release: Callable[[Slot], None], tenant: str, token: str) -> None:
        self._release, self.tenant, self.token = release, tenant, token
        self._held = True

    def release(self) -> None:
        """Free the slot (idempotent)."""
        if self._held:
            self._held = False
            self._release(self)


class Guarded:
    """A response body that releases its waiter's slot when the server closes it."""

    def __init__(self, body: Iterable[str], slot: Slot) -> None:
        self.body, self.slot = body, slot

    def __iter__(self) -> Iterator[str]:
        return iter(self.body)

    def close(self) -> None:
        try:
            close = getattr(self.body, "close", None)
            if close is not None:
                close()
        finally:
            self.slot.release()


class WaiterCollector(Collector):
    """Open waiters for /metrics, as this process sees them (hence `genq_api_`: they differ by process)."""

    def __init__(self, hub: Hub) -> None:
        self.hub = hub

    def collect(self) -> Iterator[GaugeMetricFamily]:
        """Report the figures (no Redis call: the tenants' come from the last sync)."""
        process = GaugeMetricFamily(
            "genq_api_open_waiters", "Open streams and long polls held by this API process", labels=["pid"]
        )
        process.add_metric([str(os.getpid())], len(self.hub.open))
        yield process
        limit = GaugeMetricFamily("genq_api_waiters_limit", "Open-waiter caps, 0: none", labels=["scope"])
        limit.add_metric(["process"], self.hub.max_per_process)
        limit.add_metric(["tenant"], self.hub.tenants.cap)
        yield limit
        tenants = GaugeMetricFamily(
            "genq_api_tenant_waiters", "Tenants' open waiters, all processes, as last read", labels=["tenant"]
        )
        for tenant, count in sorted(self.hub.tenants.totals.items()):
            tenants.add_metric([tenant], count)
        yield tenants
