"""Server-sent events for one job, read from its Redis stream, so any API process can serve them."""

from __future__ import annotations

import json
from collections.abc import Iterator

import redis

from shared.jobstore import EVENT_DONE, EVENT_RESET, EVENT_STATUS, EVENT_TOKEN, JobStore
from shared.schemas import ErrorCode, Status

KEEPALIVE_S = 15  # seconds between SSE comments while nothing happens (keeps proxies from closing)


def sse(event: str, data: object) -> str:
    """Format one server-sent event with a JSON payload."""
    return f"event: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n"


def job_events(store: JobStore, job_id: str) -> Iterator[str]:
    """Yield a job's events from its first token (late clients catch up), ending with done."""
    last = "0-0"
    try:
        while True:
            for event in store.events(job_id, after=last, timeout_s=KEEPALIVE_S):
                last = event["id"]
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
            job = store.get(job_id)
            if job is None or job.status.is_terminal:  # the stream expired before the record
                yield from _final(store, job_id)
                return
            yield ": keepalive\n\n"
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
