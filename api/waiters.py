"""Waiting clients (long polls, SSE streams) of one API process share a few Redis readers.

A waiter subscribes to the streams it waits on (a job's `ended` entry, or its events). Each of a
few reader threads (greenlets under gevent) blocks in ONE XREAD over every stream its waiters
watch and hands each entry to them, with the records of the jobs that the entries end; a waker
re-arms those XREADs for arriving waiters, in batches. One watchdog per process notices clients
that hang up. So a waiting client costs a queue and a socket, never a Redis connection nor a
timer of its own.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
import uuid
import weakref
import zlib
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import redis
from flask import g, has_request_context, request

from api.errors import ApiError
from api.waitreaders import READERS, REARM_S, Reader, Subscription
from api.waitslots import SYNC_S, Guarded, Slot, TenantCounts
from api.waitwatch import Watchdog
from shared import keys
from shared.jobstore import DEFAULT_TENANT
from shared.schemas import ErrorCode
from shared.waitstore import WaitStore

CHECK_S = 1.0  # seconds between the watchdog's checks that waiting clients are still connected

log = logging.getLogger(__name__)
_HUBS: weakref.WeakSet[Hub] = weakref.WeakSet()  # every hub of this process, for close_all


def close_all() -> None:
    """Close every hub of this process (tests whose in-process apps outlive their Redis)."""
    for hub in list(_HUBS):
        hub.close()


def request_socket() -> Any:
    """Return the current request's client socket as gunicorn passes it, or None."""
    return request.environ.get("gunicorn.socket") if has_request_context() else None


class Hub:
    """The process's waiters: its readers, its count of open waiters, and the tenant caps."""

    def __init__(self, waits: WaitStore, max_per_process: int, max_per_tenant: int) -> None:
        self.name = uuid.uuid4().hex
        self.max_per_process = max_per_process
        self.tenants = TenantCounts(waits, max_per_tenant, self.name)
        self.open: dict[str, Slot] = {}
        self._watchdog = Watchdog()  # the waiting clients' sockets
        self._lock = threading.Lock()
        self._arrivals = threading.Event()  # a waiter arrived under an armed XREAD (see _wake)
        self._readers = [Reader(waits, f"{self.name}:{i}", self._arrivals) for i in range(READERS)]
        self._pid = 0  # the process whose threads run (gunicorn forks after a preload)
        self._closed = threading.Event()
        _HUBS.add(self)

    def close(self) -> None:
        """Stop this hub's threads (each within its own wait); for apps that end before their process."""
        self._closed.set()
        self._arrivals.set()
        for reader in self._readers:
            reader.closed.set()
            reader.has_keys.set()

    def _start(self) -> None:
        if self._pid == os.getpid():
            return
        with self._lock:
            if self._pid != os.getpid():
                for reader in self._readers:
                    threading.Thread(target=reader.run, name="genq-waiters", daemon=True).start()
                threading.Thread(target=self._sync, name="genq-waiter-counts", daemon=True).start()
                threading.Thread(target=self._watch, name="genq-waiter-watchdog", daemon=True).start()
                threading.Thread(target=self._wake, name="genq-waiter-waker", daemon=True).start()
                self._pid = os.getpid()

    def _sync(self) -> None:
        failing = False  # one line when an outage starts and one when it ends, not one per SYNC_S
        while not self._closed.wait(SYNC_S):
            try:
                self.tenants.sync()
            except redis.RedisError as exc:  # the counts stay as they were until Redis is back
                if self._closed.is_set():
                    return
                if not failing:
                    log.warning("waiter counts not shared until Redis answers: %s", exc)
                failing = True
                continue
            if failing:
                log.info("waiter counts shared again")
            failing = False

    def _wake(self) -> None:
        # Arrivals re-arm their readers in batches: one wake per reader per REARM_S at most (longer
        # for a reader watching thousands of streams), sent here, never from a request.
        while not self._closed.is_set():
            self._arrivals.wait()
            time.sleep(max(REARM_S, *(reader.gap_s() for reader in self._readers)))
            if self._closed.is_set():
                return
            self._arrivals.clear()
            for reader in self._readers:
                try:
                    reader.wake_for_arrivals()
                except redis.RedisError as exc:  # the reader's own BLOCK timeout re-arms it anyway
                    log.warning("waiter waker: %s", exc)

    def _watch(self) -> None:
        while not self._closed.wait(CHECK_S):
            try:
                for sub in self._watchdog.gone():
                    sub.hang_up()
            except Exception:  # never let one odd socket stop the watchdog
                log.exception("waiter watchdog")

    # --- caps ---------------------------------------------------------------
    def open_slot(self, tenant: str) -> Slot:
        """Count a new waiter, or raise 503/429 past the process's or the tenant's cap."""
        self._start()  # the counts' sync runs from the first waiter on
        token = uuid.uuid4().hex
        with self._lock:
            if len(self.open) >= self.max_per_process:
                raise ApiError(
                    503,
                    ErrorCode.TOO_MANY_WAITERS,
                    f"this API process holds {self.max_per_process} open streams and long polls "
                    "(GENQ_MAX_WAITERS_PER_PROCESS); retry shortly",
                    headers={"Retry-After": "1"},
                )
            if not self.tenants.admit(tenant):
                raise ApiError(
                    429,
                    ErrorCode.TOO_MANY_WAITERS,
                    f"tenant {tenant!r} already holds {self.tenants.cap} open streams and long polls "
                    "(GENQ_MAX_WAITERS_PER_TENANT); close one, or poll without ?wait=",
                    headers={"Retry-After": "1"},
                )
            slot = self.open[token] = Slot(self._release, tenant, token)
        return slot

    def _release(self, slot: Slot) -> None:
        with self._lock:
            if self.open.pop(slot.token, None) is not None:
                self.tenants.drop(slot.tenant)

    @contextlib.contextmanager
    def held(self) -> Iterator[None]:
        """Count the current request as one waiter, however many waits it makes."""
        if g.get("genq_waiting"):
            yield
            return
        slot = self.open_slot(g.get("tenant", DEFAULT_TENANT))
        g.genq_waiting = True
        try:
            yield
        finally:
            g.genq_waiting = False
            slot.release()

    def guard(self, body: Iterable[str], slot: Slot) -> Guarded:
        """Wrap a streamed response body so that closing it frees its waiter's slot."""
        return Guarded(body, slot)

    # --- waiting ------------------------------------------------------------
    def subscriptions(self) -> int:
        """Return how many (waiter, stream) subscriptions the readers serve now."""
        return sum(reader.subscriptions() for reader in self._readers)

    @contextlib.contextmanager
    def subscribe(self, after: Mapping[str, str], sock: Any = None) -> Iterator[Subscription]:
        """Receive the entries of these streams after these ids while the block runs.

        With the client's socket, the subscription is marked gone (and woken) when the client hangs up.
        """
        self._start()
        sub = Subscription(after)
        chosen = [(self._readers[zlib.crc32(k.encode()) % len(self._readers)], k) for k in after]
        if sock is not None:
            self._watchdog.add(sub, sock)
        try:
            for reader, key in chosen:
                reader.add(key, sub)
            yield sub
        finally:
            for reader, key in chosen:
                reader.remove(key, sub)
            if sock is not None:
                self._watchdog.remove(sub)

    def wait_ended(self, job_id: str, timeout_s: float) -> dict[str, str] | None:
        """Block until the job's `ended` entry exists, timeout_s passes, or the client hangs up.

        Return the job's record as its reader read it when it ended (None if it did not, or unread).
        """
        deadline = time.monotonic() + timeout_s
        counted = self.held() if has_request_context() else contextlib.nullcontext()
        key = keys.ended(job_id)
        with counted, self.subscribe({key: "0-0"}, request_socket()) as sub:
            while (left := deadline - time.monotonic()) > 0:
                if sub.get(left):
                    return sub.records.get(key)
                if sub.gone:
                    return None
        return None
