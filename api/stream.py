"""Server-sent events for one job, read from its Redis stream, so any API process can serve them."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import redis

from api.waiters import KEEPALIVE_S, Hub
from shared import keys
from shared.jobstore import EVENT_DONE, EVENT_RESET, EVENT_STATUS, EVENT_TOKEN, JobStore
from shared.schemas import ErrorCode, Status


def sse(event: str, data: object) -> str:
    """Format one server-sent event with a JSON payload."""
    return f"event: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n"


def job_events(store: JobStore, hub: Hub, job_id: str, sock: Any = None) -> Iterator[str]:
    """Yield a job's events from its first token (late clients catch up), ending with done.

    The process's shared readers deliver the events; a client that hangs up (its socket `sock`
    reads EOF) ends the stream within a second or so (api/waiters.py CHECK_S).
    """
    try:
        with hub.subscribe({keys.events(job_id): "0-0"}, sock) as sub:
            quiet_since = time.monotonic()
            while True:
                got = sub.get(max(0.0, quiet_since + KEEPALIVE_S - time.monotonic()))
                if sub.gone:
                    return
                for _, _, event in got:
                    kind = event.get("type")
                    if kind == EVENT_TOKEN:
                        yield sse("token", {"text": event.get("data", "")})
                    elif kind == EVENT_STATUS:
                        yield sse("status", {"status": event.get("data")})
                    elif kind == EVENT_RESET:  # its worker died; the job runs again from the start
                        yield sse("reset", {"status": event.get("data")})
                    elif kind == EVENT_DONE:
                        yield from _final(store, job_id)
                        return
                if got:
                    quiet_since = time.monotonic()
                elif time.monotonic() - quiet_since >= KEEPALIVE_S:
                    job = store.get(job_id)
                    if job is None or job.status.is_terminal:  # the stream expired before the record
                        yield from _final(store, job_id)
                        return
                    yield ": keepalive\n\n"
                    quiet_since = time.monotonic()
    except redis.RedisError as exc:
        yield sse(
            "error", {"code": ErrorCode.SERVICE_UNAVAILABLE.value, "message": f"job store unavailable: {exc}"}
        )


def _final(store: JobStore, job_id: str) -> Iterator[str]:
    job = store.get(job_id)
    if job is None:
        yield sse("error", {"code": ErrorCode.NOT_FOUND.value, "message": f"job {job_id} expired"})
        return
    if job.status is Status.FAILED and job.error is not None:
        yield sse("error", job.error.model_dump(mode="json"))
    yield sse("done", job.model_dump(mode="json"))
