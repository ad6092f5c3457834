"""gunicorn's gevent worker, with a timeout on every socket so that a slow client costs only its socket.

It also keeps the garbage collector's full collections from stalling thousands of waiters. A full
collection walks every live object and stops every greenlet meanwhile: with 5,000 waiters a process
they came every few seconds and lasted 400-720 ms (logged by bench.waiters on this project's
machine), which is what /healthz's p99 saw. So the loaded app is frozen out of the collector's
reach (gc.freeze: none of it is ever garbage), automatic collections stay young (generations 0
and 1), and a full one runs every GC_FULL_EVERY_S instead.
"""

from __future__ import annotations

import gc
import logging
import time
from typing import Any

import gevent
from gunicorn.workers.base_async import AsyncWorker
from gunicorn.workers.ggevent import GeventWorker

SOCKET_IDLE_S = 30.0  # a client that sends (a body) or reads (a stream) nothing this long is dropped
GC_PAUSE_LOG_S = 0.1  # a garbage collection that stops the process longer than this is logged
GC_FULL_EVERY_S = 300.0  # seconds between full collections (reference cycles wait this long to go)
STOP_POLL_S = 0.1  # how often a stopping worker looks for idle connections to close
NEVER = 1 << 30  # a generation-2 threshold that automatic collection never reaches

log = logging.getLogger(__name__)
_gc_started = [0.0]


def _time_gc(phase: str, info: dict[str, int]) -> None:
    """Log a collection that paused every greenlet of the process for longer than GC_PAUSE_LOG_S."""
    if phase == "start":
        _gc_started[0] = time.perf_counter()
        return
    paused = time.perf_counter() - _gc_started[0]
    if paused > GC_PAUSE_LOG_S:
        ms, generation = paused * 1000, info["generation"]
        log.warning("garbage collection (generation %d) paused the process %.0f ms", generation, ms)


class _NextRequestWait:
    """A connection's wait for its next request, under its keep-alive timeout, which a stopping
    worker fires early (as gunicorn's gthread worker closes its idle connections when it stops)."""

    def __init__(self, idle: dict[Any, gevent.Timeout], timeout: gevent.Timeout) -> None:
        self.idle, self.timeout = idle, timeout

    def __enter__(self) -> None:
        self.timeout.__enter__()
        self.idle[gevent.getcurrent()] = self.timeout

    def __exit__(self, *exc: Any) -> bool | None:
        self.idle.pop(gevent.getcurrent(), None)
        return self.timeout.__exit__(*exc)  # swallows its own expiry: the connection just closes


def _collect_fully() -> None:
    while True:
        gevent.sleep(GC_FULL_EVERY_S)
        gc.collect()


class Worker(GeventWorker):
    """Each connection is a greenlet; its headers must arrive within --keep-alive seconds (gunicorn's
    gevent worker times `next(parser)`), and each read or write of it within SOCKET_IDLE_S."""

    def load_wsgi(self) -> None:
        """Load the app, then freeze everything alive so far out of the collector's reach."""
        super().load_wsgi()
        gc.collect()
        gc.freeze()
        gc.callbacks.append(_time_gc)
        young, middle, _ = gc.get_threshold()
        gc.set_threshold(young, middle, NEVER)
        gevent.spawn(_collect_fully)

    def run(self) -> None:
        """Serve until told to stop, then close idle keep-alive connections rather than wait for them."""
        # Without this, one client's idle keep-alive connection held a stopping worker (a restart,
        # a deploy) for the whole --graceful-timeout: gunicorn waits for every connection to end.
        self._idle: dict[Any, gevent.Timeout] = {}  # handler greenlet -> its keep-alive timeout
        gevent.spawn(self._close_idle_once_stopping)
        super().run()

    def timeout_ctx(self) -> _NextRequestWait:
        """Time the wait for a connection's next request (gunicorn calls it around exactly that)."""
        return _NextRequestWait(self._idle, super().timeout_ctx())

    def _close_idle_once_stopping(self) -> None:
        while self.alive:
            gevent.sleep(STOP_POLL_S)
        # Requests in flight are answered; then their connections wait for a next one, and close too.
        while True:
            for handler, timeout in list(self._idle.items()):
                handler.kill(timeout, block=False)  # as if its keep-alive timeout had passed
            gevent.sleep(STOP_POLL_S)

    def handle(self, listener: Any, client: Any, addr: Any) -> None:
        """Serve one connection, with the idle timeout instead of GeventWorker's blocking mode."""
        client.settimeout(SOCKET_IDLE_S)
        AsyncWorker.handle(self, listener, client, addr)
