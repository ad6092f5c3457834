"""Waiting clients (long polls, SSE streams) of one API process share a few Redis readers.

A waiter subscribes to the streams it waits on (a job's `ended` entry, or its events). Each of a
few reader threads (greenlets under gevent) blocks in ONE XREAD over every stream its waiters
watch and hands each entry to them; a waiter arriving re-arms that XREAD through the reader's own
wake stream. So a waiting client costs a queue and a socket, never a Redis connection.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import select
import socket
import threading
import time
import uuid
import zlib
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import redis
from flask import g, has_request_context, request

from api.errors import ApiError
from api.waitslots import SYNC_S, Guarded, Slot, TenantCounts
from shared import keys
from shared.jobstore import DEFAULT_TENANT
from shared.schemas import ErrorCode

READERS = 4  # reader threads per API process; each holds one Redis connection while it blocks
BLOCK_MS = 5000  # longest XREAD BLOCK of a reader, in milliseconds
COUNT = 512  # most entries one XREAD returns per stream
CHECK_S = 1.0  # seconds between checks that a waiting client is still connected
RETRY_S = 1.0  # seconds a reader pauses after a Redis error
WAKE_MAXLEN = 16  # entries kept in a reader's wake stream
WAKE_TTL_S = 3600  # seconds a dead process's wake stream outlives it

log = logging.getLogger(__name__)
Entry = tuple[str, str, dict[str, str]]  # stream key, entry id, fields


def _order(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


class Subscription:
    """One waiter's streams: the readers queue each entry after the ids it started from."""

    def __init__(self, after: Mapping[str, str]) -> None:
        self.seen = dict(after)  # key -> last id handed over; written only by that key's reader
        self._queue: queue.Queue[list[Entry]] = queue.Queue()

    def deliver(self, key: str, entries: list[tuple[str, dict[str, str]]]) -> None:
        """Queue the entries newer than what this waiter has seen (called by a reader)."""
        last = _order(self.seen[key])
        newer = [(key, i, f) for i, f in entries if _order(i) > last]
        if newer:
            self.seen[key] = newer[-1][1]
            self._queue.put(newer)

    def get(self, timeout_s: float) -> list[Entry]:
        """Return the entries that arrived, waiting up to timeout_s for the first; [] if none."""
        try:
            got = self._queue.get(timeout=timeout_s)
        except queue.Empty:
            return []
        with contextlib.suppress(queue.Empty):
            while True:
                got.extend(self._queue.get_nowait())
        return got


class _Reader:
    """One thread that blocks in a single XREAD over all the streams its waiters watch."""

    def __init__(self, client: redis.Redis, name: str) -> None:
        self.r = client
        self.wake = keys.waiter_wake(name)
        self.wake_last = "0-0"
        self.subs: dict[str, set[Subscription]] = {}
        self.lock = threading.Lock()
        self.armed = False  # an XREAD is (about to be) in flight over the current keys
        self.wake_sent = False  # a wake was written since that XREAD was armed
        self.has_keys = threading.Event()

    def add(self, key: str, sub: Subscription) -> None:
        """Watch one more stream for a waiter; re-arm the XREAD when one is in flight."""
        with self.lock:
            self.subs.setdefault(key, set()).add(sub)
            wake = self.armed and not self.wake_sent
            self.wake_sent = self.wake_sent or wake
        self.has_keys.set()
        if wake:  # one wake per arming however many waiters arrive meanwhile
            pipe = self.r.pipeline(transaction=False)
            pipe.xadd(self.wake, {"w": "1"}, maxlen=WAKE_MAXLEN, approximate=True)
            pipe.expire(self.wake, WAKE_TTL_S)
            pipe.execute()

    def remove(self, key: str, sub: Subscription) -> None:
        """Stop handing a stream's entries to a waiter (its key leaves the XREAD at the next arming)."""
        with self.lock:
            subs = self.subs.get(key)
            if subs is not None:
                subs.discard(sub)
                if not subs:
                    del self.subs[key]

    def _arm(self) -> dict[str, str]:
        self.has_keys.clear()
        with self.lock:
            streams = {k: min((s.seen[k] for s in subs), key=_order) for k, subs in self.subs.items()}
            self.armed, self.wake_sent = bool(streams), False
        return streams

    def run(self) -> None:
        """Read forever: arm, block, hand the entries out."""
        while True:
            streams = self._arm()
            if not streams:
                self.has_keys.wait(BLOCK_MS / 1000)
                continue
            streams[self.wake] = self.wake_last
            try:
                reply = self.r.xread(streams, count=COUNT, block=BLOCK_MS)
            except redis.RedisError as exc:  # waiters notice through their own checks
                log.warning("waiter reader: %s", exc)
                time.sleep(RETRY_S)
                continue
            for key, entries in reply or []:
                if key == self.wake:
                    self.wake_last = entries[-1][0]
                    continue
                with self.lock:
                    subs = list(self.subs.get(key, ()))
                for sub in subs:
                    sub.deliver(key, entries)


def client_gone(sock: Any) -> bool:
    """Return True when the client's socket has been closed by its peer (EOF waiting to be read)."""
    if sock is None:
        return False
    try:
        readable, _, _ = select.select([sock], [], [], 0)
        return bool(readable) and sock.recv(1, socket.MSG_PEEK) == b""
    except ValueError:  # a TLS socket can't peek; the next write will tell
        return False
    except OSError:
        return True


def request_socket() -> Any:
    """Return the current request's client socket as gunicorn passes it, or None."""
    return request.environ.get("gunicorn.socket") if has_request_context() else None


class Hub:
    """The process's waiters: its readers, its count of open waiters, and the tenant caps."""

    def __init__(self, client: redis.Redis, max_per_process: int, max_per_tenant: int) -> None:
        self.r = client
        self.name = uuid.uuid4().hex
        self.max_per_process = max_per_process
        self.tenants = TenantCounts(client, max_per_tenant, self.name)
        self.open: dict[str, Slot] = {}
        self._lock = threading.Lock()
        self._readers = [_Reader(client, f"{self.name}:{i}") for i in range(READERS)]
        self._pid = 0  # the process whose threads run (gunicorn forks after a preload)

    def _start(self) -> None:
        if self._pid == os.getpid():
            return
        with self._lock:
            if self._pid != os.getpid():
                for reader in self._readers:
                    threading.Thread(target=reader.run, name="genq-waiters", daemon=True).start()
                threading.Thread(target=self._sync, name="genq-waiter-counts", daemon=True).start()
                self._pid = os.getpid()

    def _sync(self) -> None:
        while True:
            time.sleep(SYNC_S)
            try:
                self.tenants.sync()
            except redis.RedisError as exc:  # the counts stay as they were until Redis is back
                log.warning("waiter counts: %s", exc)

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
    @contextlib.contextmanager
    def subscribe(self, after: Mapping[str, str]) -> Iterator[Subscription]:
        """Receive the entries of these streams after these ids while the block runs."""
        self._start()
        sub = Subscription(after)
        chosen = [(self._readers[zlib.crc32(k.encode()) % len(self._readers)], k) for k in after]
        try:
            for reader, key in chosen:
                reader.add(key, sub)
            yield sub
        finally:
            for reader, key in chosen:
                reader.remove(key, sub)

    def wait_ended(self, job_id: str, timeout_s: float) -> None:
        """Block until the job's `ended` entry exists, timeout_s passes, or the client hangs up."""
        sock = request_socket()
        deadline = time.monotonic() + timeout_s
        counted = self.held() if has_request_context() else contextlib.nullcontext()
        with counted, self.subscribe({keys.ended(job_id): "0-0"}) as sub:
            while (left := deadline - time.monotonic()) > 0:
                if sub.get(min(left, CHECK_S)) or client_gone(sock):
                    return
