"""The Redis side of the API's shared waiters: one XREAD over many streams, wake-ups, and counts."""

from __future__ import annotations

import redis

from shared import keys

WAKE_MAXLEN = 16  # entries kept in a reader's wake stream
WAKE_TTL_S = 3600  # seconds a dead process's wake stream outlives it


class WaitStore:
    """The few Redis calls behind api/waiters.py, so that the API never touches a connection itself.

    The readers' calls (`read`, `records`, `wake`) go through `readers`, a pool of their own, so
    that a reader blocked in XREAD never holds a connection the request handlers wait for.
    """

    def __init__(self, client: redis.Redis, readers: redis.Redis | None = None) -> None:
        self._redis = client
        self._readers = readers or client

    def read(self, streams: dict[str, str], count: int, block_ms: int) -> list:
        """Block up to block_ms in one XREAD over these streams (key -> last id seen); [] if none."""
        return self._readers.xread(streams, count=count, block=block_ms) or []

    def records(self, streams: list[str]) -> dict[str, dict[str, str]]:
        """Return the job records behind these job streams (events or ended), in one round trip.

        Keyed by stream; a job whose record is gone is left out.
        """
        pipe = self._readers.pipeline(transaction=False)
        for stream in streams:
            pipe.hgetall(stream.removesuffix(keys.EVENTS_SUFFIX).removesuffix(keys.ENDED_SUFFIX))
        return {s: h for s, h in zip(streams, pipe.execute(), strict=True) if h}

    def wake(self, reader: str) -> None:
        """Append to a reader's wake stream, so that its XREAD returns and is re-armed."""
        pipe = self._readers.pipeline(transaction=False)
        pipe.xadd(keys.waiter_wake(reader), {"w": "1"}, maxlen=WAKE_MAXLEN, approximate=True)
        pipe.expire(keys.waiter_wake(reader), WAKE_TTL_S)
        pipe.execute()

    def exchange_counts(self, mine: dict[str, str]) -> dict[str, str]:
        """Publish this process's waiter counts and return every process's (one round trip)."""
        pipe = self._redis.pipeline(transaction=False)
        if mine:
            pipe.hset(keys.WAITERS, mapping=mine)
        pipe.hgetall(keys.WAITERS)
        return pipe.execute()[-1]

    def forget_counts(self, fields: list[str]) -> None:
        """Drop the counts of processes that stopped publishing."""
        if fields:
            self._redis.hdel(keys.WAITERS, *fields)
