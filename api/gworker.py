"""gunicorn's gevent worker, with a timeout on every socket so that a slow client costs only its socket.

It also hides the loaded app from the garbage collector (gc.freeze): with thousands of waiting
greenlets a full collection walked the app's ~85,000 start-up objects too and paused the whole
process for 75-180 ms on this project's machine (9 ms once frozen), which is what /healthz's p99
saw; none of those objects are ever garbage.
"""

from __future__ import annotations

import gc
from typing import Any

from gunicorn.workers.base_async import AsyncWorker
from gunicorn.workers.ggevent import GeventWorker

SOCKET_IDLE_S = 30.0  # a client that sends (a body) or reads (a stream) nothing this long is dropped


class Worker(GeventWorker):
    """Each connection is a greenlet; its headers must arrive within --keep-alive seconds (gunicorn's
    gevent worker times `next(parser)`), and each read or write of it within SOCKET_IDLE_S."""

    def load_wsgi(self) -> None:
        """Load the app, then freeze everything alive so far out of the collector's reach."""
        super().load_wsgi()
        gc.collect()
        gc.freeze()

    def handle(self, listener: Any, client: Any, addr: Any) -> None:
        """Serve one connection, with the idle timeout instead of GeventWorker's blocking mode."""
        client.settimeout(SOCKET_IDLE_S)
        AsyncWorker.handle(self, listener, client, addr)
