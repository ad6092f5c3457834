"""The readers behind api/waiters.py: each blocks in ONE XREAD over every stream its waiters watch.

A waiter arriving re-arms its reader's XREAD through the reader's own wake stream (at most one
wake per arming); each entry read is handed to the subscriptions of its stream. When entries end
jobs (an `ended` entry, a `done` event), the reader reads those jobs' records in one pipelined
call and hands each over with its entries: a burst of thousands of ends then costs each reader
two round trips, not one per waiter through the request handlers' connection pool.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
from collections.abc import Mapping

import redis

from shared import keys
from shared.jobstore import EVENT_DONE
from shared.waitstore import WaitStore

READERS = 4  # reader threads per API process; each holds one Redis connection while it blocks
CONNECTIONS = READERS + 1  # the readers' own pool: one each, and one for the waker's wake-ups
BLOCK_MS = 5000  # longest XREAD BLOCK of a reader, in milliseconds
COUNT = 512  # most entries one XREAD returns per stream
RETRY_S = 1.0  # seconds a reader pauses after a Redis error
REARM_S = 0.05  # seconds the waker gathers arriving waiters before it re-arms their readers
# Re-arming sends every watched stream again (~2-3 us of CPU a stream, measured, plus Redis's share),
# so a reader re-arms at most once per this many seconds per stream it watches: with 1,250 streams
# every 125 ms, whatever arrives or ends meanwhile. That bounds it to a few percent of a core however
# fast waiters come and go, at the price of that much delay for their entries.
REARM_S_PER_STREAM = 100e-6
MAX_GAP_S = 0.25  # the longest such pause, in seconds

log = logging.getLogger(__name__)
Entry = tuple[str, str, dict[str, str]]  # stream key, entry id, fields


def _order(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


def _earliest(key: str, subs: set[Subscription]) -> str:
    if len(subs) == 1:  # the common case, without parsing ids
        return next(iter(subs)).seen[key]
    return min((s.seen[key] for s in subs), key=_order)


class Subscription:
    """One waiter's streams: the readers queue each entry after the ids it started from."""

    def __init__(self, after: Mapping[str, str]) -> None:
        self.seen = dict(after)  # key -> last id handed over; written only by that key's reader
        self.gone = False  # its client hung up (set by the watchdog)
        self.records: dict[str, dict[str, str]] = {}  # key -> its job's record, read as the job ended
        self._queue: queue.Queue[list[Entry]] = queue.Queue()

    def hang_up(self) -> None:
        """Mark the client gone and wake its waiter."""
        self.gone = True
        self._queue.put([])

    def deliver(
        self, key: str, entries: list[tuple[str, dict[str, str]]], record: dict[str, str] | None = None
    ) -> None:
        """Queue the entries newer than what this waiter has seen (called by a reader), with the
        record of the job they end, if they do and it was read."""
        last = _order(self.seen[key])
        newer = [(key, i, f) for i, f in entries if _order(i) > last]
        if newer:
            if record is not None:
                self.records[key] = record  # before the entries: the waiter reads it once woken
            self.seen[key] = newer[-1][1]
            self._queue.put(newer)

    def get(self, timeout_s: float) -> list[Entry]:
        """Return the entries that arrived, waiting up to timeout_s for the first; [] if none (or gone)."""
        try:
            got = self._queue.get(timeout=timeout_s)
        except queue.Empty:
            return []
        with contextlib.suppress(queue.Empty):
            while True:
                got.extend(self._queue.get_nowait())
        return got


class Reader:
    """One thread that blocks in a single XREAD over all the streams its waiters watch."""

    def __init__(self, waits: WaitStore, name: str, arrivals: threading.Event) -> None:
        self.waits = waits
        self.name = name
        self.wake = keys.waiter_wake(name)
        self.wake_last = "0-0"
        self.subs: dict[str, set[Subscription]] = {}
        self.lock = threading.Lock()
        self.armed = 0  # streams in the XREAD (about to be) in flight; 0: none
        self.arrived = False  # a waiter arrived whose stream that XREAD does not watch
        self.wake_sent = False  # a wake was written since that XREAD was armed
        self.has_keys = threading.Event()
        self.arrivals = arrivals  # the waker's: set when a waiter arrives under an armed XREAD
        self.closed = threading.Event()  # its hub closed: stop after the XREAD in flight

    def gap_s(self) -> float:
        """Return the shortest time between two armings of this reader's XREAD, in seconds."""
        return min(MAX_GAP_S, self.armed * REARM_S_PER_STREAM)

    def add(self, key: str, sub: Subscription) -> None:
        """Watch one more stream for a waiter; the waker re-arms an XREAD in flight (no Redis call here)."""
        with self.lock:
            self.subs.setdefault(key, set()).add(sub)
            signal = bool(self.armed) and not self.arrived
            self.arrived = self.arrived or signal
        self.has_keys.set()
        if signal:
            self.arrivals.set()

    def wake_for_arrivals(self) -> None:
        """Re-arm the XREAD in flight if waiters arrived since it was armed (one wake per arming)."""
        with self.lock:
            wake = self.arrived and bool(self.armed) and not self.wake_sent
            self.wake_sent = self.wake_sent or wake
        if wake:
            self.waits.wake(self.name)

    def subscriptions(self) -> int:
        """Return how many (waiter, stream) subscriptions this reader serves."""
        with self.lock:
            return sum(len(subs) for subs in self.subs.values())

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
            streams = {k: _earliest(k, subs) for k, subs in self.subs.items()}
            self.armed, self.arrived, self.wake_sent = len(streams), False, False
        return streams

    def run(self) -> None:
        """Read until closed: arm, block, hand the entries out."""
        while not self.closed.is_set():
            streams = self._arm()
            if not streams:
                self.has_keys.wait(BLOCK_MS / 1000)
                continue
            streams[self.wake] = self.wake_last
            try:
                reply = self.waits.read(streams, COUNT, BLOCK_MS)
            except redis.RedisError as exc:  # waiters notice through their own checks
                if self.closed.is_set():
                    return
                log.warning("waiter reader: %s", exc)
                time.sleep(RETRY_S)
                continue
            records = self._records(reply)
            for key, entries in reply:
                if key == self.wake:
                    self.wake_last = entries[-1][0]
                    continue
                with self.lock:
                    subs = list(self.subs.get(key, ()))
                for sub in subs:
                    sub.deliver(key, entries, records.get(key))
            if any(key != self.wake for key, _ in reply):
                time.sleep(self.gap_s())  # entries keep coming: gather them rather than re-arm for each

    def _records(self, reply: list) -> dict[str, dict[str, str]]:
        """Read the records of the jobs this reply ends, in one round trip ({} if it ends none)."""
        ending = [
            key
            for key, entries in reply
            if key.endswith(keys.ENDED_SUFFIX)
            or (key.endswith(keys.EVENTS_SUFFIX) and any(f.get("type") == EVENT_DONE for _, f in entries))
        ]
        if not ending:
            return {}
        try:
            return self.waits.records(ending)
        except redis.RedisError as exc:  # each waiter then reads its job's record itself
            log.warning("waiter reader: %s", exc)
            return {}
