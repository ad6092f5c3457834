"""Server-sent events: jobs' events read from their Redis streams, so any API process can serve them.

Both dialects stream from here: genq's named events (`job_events`) and the OpenAI dialect's
data-only chunks (`data_event`, read with `merged_events`), with the one keep-alive below.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import redis
from flask import Response

from shared.jobstore import BLOCK_SLICE_MS, EVENT_DONE, EVENT_RESET, EVENT_STATUS, EVENT_TOKEN, JobStore
from shared.schemas import ErrorCode, Status

KEEPALIVE_S = 15  # seconds between SSE comments while nothing happens (keeps proxies from closing)
KEEPALIVE = ": keepalive\n\n"  # an SSE comment: clients ignore it, proxies see traffic
NO_BUFFERING = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}  # no proxy holds events back


def sse(event: str, data: object) -> str:
    """Format one named server-sent event with a JSON payload."""
    return f"event: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n"


def data_event(body: object) -> str:
    """Format one unnamed server-sent event with a JSON payload, as OpenAI streams are."""
    return f"data: {json.dumps(body, separators=(',', ':'), ensure_ascii=False)}\n\n"


def event_stream(events: Iterator[str], headers: dict[str, str] | None = None) -> Response:
    """Answer with a stream of server-sent events, unbuffered by proxies."""
    return Response(events, mimetype="text/event-stream", headers=NO_BUFFERING | (headers or {}))


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
            yield KEEPALIVE
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


def merged_events(store: JobStore, job_ids: list[str]) -> Iterator[tuple[int, dict] | None]:
    """Yield (index in job_ids, event) from all the jobs' streams as they come; None when idle a while."""
    streams = {j: i for i, j in enumerate(job_ids)}
    last = dict.fromkeys(streams, "0-0")
    idle_since = time.monotonic()
    while last:
        reply = store.read_events(last, BLOCK_SLICE_MS)
        for key, entries in reply:
            for entry_id, fields in entries:
                last[key] = entry_id
                yield streams[key], fields
                if fields.get("type") == EVENT_DONE:
                    del last[key]
                    break
        if reply:
            idle_since = time.monotonic()
        elif time.monotonic() - idle_since >= KEEPALIVE_S:
            idle_since = time.monotonic()
            for key in list(last):  # a stream that expired before its record ends like job_events does
                job = store.get(job_ids[streams[key]])
                if job is None or job.status.is_terminal:
                    del last[key]
                    yield streams[key], {"type": EVENT_DONE}
            yield None
