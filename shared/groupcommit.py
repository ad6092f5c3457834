"""Group commit: the script calls that threads make at the same moment go to Redis in one pipeline.

A worker's jobs arrive and end together: a batch of one-token rows ends at one step, and its
threads all store their results at once. Each call stays its own atomic script run, with its own
keys, fencing and reply, so batching changes the round trips, not what any call does. A caller
that finds no batch in flight sends at once, alone (no wait is added to a quiet worker); callers
that arrive while one is in flight go together in the next.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

import redis
from redis.commands.core import Script


@dataclass
class _Call:
    script: Script
    keys: list
    args: list
    done: bool = False
    reply: Any = None
    error: BaseException | None = None
    noscript: bool = False  # Redis had not loaded the script: the caller sends it alone


class GroupCommit:
    """Sends concurrent script calls on one client as one pipeline and hands each caller its reply."""

    def __init__(self, client: redis.Redis) -> None:
        self.client = client
        self._cond = threading.Condition()
        self._waiting: list[_Call] = []
        self._sending = False
        self.batches = 0  # pipelines sent (a test reads it, with calls, to see calls grouped)
        self.calls = 0

    def run(self, script: Script, keys: list, args: list) -> Any:
        """Run one script call, in a pipeline with those of the threads calling at the same time."""
        call = _Call(script, keys, args)
        with self._cond:
            self._waiting.append(call)
            while self._sending and not call.done:
                self._cond.wait()
            if not call.done:  # no batch in flight: this thread sends every call waiting
                batch, self._waiting = self._waiting, []
                self._sending = True
        if not call.done:
            try:
                self._send(batch)
            except Exception as exc:  # not Redis's (say, an argument it cannot encode): all fail
                for sent in batch:
                    sent.error, sent.noscript = exc, False
            finally:
                with self._cond:
                    self._sending = False
                    for sent in batch:
                        sent.done = True
                    self._cond.notify_all()
        if call.noscript:  # first use on this Redis (or after SCRIPT FLUSH): redis-py loads it
            return script(keys=keys, args=args)
        if call.error is not None:
            raise call.error
        return call.reply

    def _send(self, batch: list[_Call]) -> None:
        self.batches += 1
        self.calls += len(batch)
        if len(batch) == 1:  # alone: the plain call (it also loads a script Redis lacks)
            only = batch[0]
            try:
                only.reply = only.script(keys=only.keys, args=only.args)
            except redis.RedisError as exc:
                only.error = exc
            return
        pipe = self.client.pipeline(transaction=False)
        for call in batch:
            pipe.evalsha(call.script.sha, len(call.keys), *call.keys, *call.args)
        try:
            replies = pipe.execute(raise_on_error=False)
        except redis.RedisError as exc:  # the connection failed: no reply is known for any call
            for call in batch:
                call.error = exc
            return
        for call, reply in zip(batch, replies, strict=True):
            if isinstance(reply, redis.exceptions.NoScriptError):
                call.noscript = True
            elif isinstance(reply, Exception):
                call.error = reply
            else:
                call.reply = reply
