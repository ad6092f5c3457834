"""The readers behind api/waiters.py: each blocks in ONE XREAD over every stream its waiters watch.

A waiter arriving re-arms its reader's XREAD through the reader's own wake stream (at most one
wake per arming); each entry read is handed to the subscriptions of its stream.
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
from shared.waitstore import WaitStore

READERS = 4  # reader threads per API process; each holds one Redis connection while it blocks
BLOCK_MS = 5000  # longest XREAD BLOCK of a reader, in milliseconds
COUNT = 512  # most entries one XREAD returns per stream
RETRY_S = 1.0  # seconds a reader pauses after a Redis error
REARM_S = 0.05  # seconds a woken reader gathers more arriving waiters before it re-arms

log = logging.getLogger(__name__)
Entry = tuple[str, str, dict[str, str]]  # stream key, entry id, fields


def _order(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


class Subscription:
    """One waiter's streams: the readers queue each entry after the ids it started from."""

    def __init__(self, after: Mapping[str, str]) -> None:
        self.seen = dict(after)  # key -> last id handed over; written only by that key's reader
        self.gone = False  # its client hung up (set by the watchdog)
        self._queue: queue.Queue[list[Entry]] = queue.Queue()

    def hang_up(self) -> None:
        """Mark the client gone and wake its waiter."""
        self.gone = True
        self._queue.put([])

    def deliver(self, key: str, entries: list[tuple[str, dict[str, str]]]) -> None:
        """Queue the entries newer than what this waiter has seen (called by a reader)."""
        last = _order(self.seen[key])
        newer = [(key, i, f) for i, f in entries if _order(i) > last]
        if newer:
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

    def __init__(self, waits: WaitStore, name: str) -> None:
        self.waits = waits
        self.name = name
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
            self.waits.wake(self.name)

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
                reply = self.waits.read(streams, COUNT, BLOCK_MS)
            except redis.RedisError as exc:  # waiters notice through their own checks
                log.warning("waiter reader: %s", exc)
                time.sleep(RETRY_S)
                continue
            if len(reply) == 1 and reply[0][0] == self.wake:
                time.sleep(REARM_S)  # only new waiters: let more arrive, then re-arm once for them all
            for key, entries in reply:
                if key == self.wake:
                    self.wake_last = entries[-1][0]
                    continue
                with self.lock:
                    subs = list(self.subs.get(key, ()))
                for sub in subs:
                    sub.deliver(key, entries)
