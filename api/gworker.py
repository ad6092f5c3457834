"""gunicorn's gevent worker, with a timeout on every socket so that a slow client costs only its socket."""

from __future__ import annotations

from typing import Any

from gunicorn.workers.base_async import AsyncWorker
from gunicorn.workers.ggevent import GeventWorker

SOCKET_IDLE_S = 30.0  # a client that sends (a body) or reads (a stream) nothing this long is dropped


class Worker(GeventWorker):
    """Each connection is a greenlet; its headers must arrive within --keep-alive seconds (gunicorn's
    gevent worker times `next(parser)`), and each read or write of it within SOCKET_IDLE_S."""

    def handle(self, listener: Any, client: Any, addr: Any) -> None:
        """Serve one connection, with the idle timeout instead of GeventWorker's blocking mode."""
        client.settimeout(SOCKET_IDLE_S)
        AsyncWorker.handle(self, listener, client, addr)
