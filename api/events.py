"""Server-sent events: jobs' events read from their Redis streams, so any API process can serve them.

Both dialects stream from here: genq's named events (`job_events`) and the OpenAI dialect's
data-only chunks (`data_event`, read with `merged_events`), with the one keep-alive below.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any

import redis
from flask import Response

from shared import keys
from shared.jobstore import (
    EVENT_DONE,
    EVENT_LOGPROBS,
    EVENT_PROMPT_LOGPROBS,
    EVENT_RESET,
    EVENT_STATUS,
    EVENT_TOKEN,
    JobStore,
)
from shared.schemas import ErrorCode, Status

if TYPE_CHECKING:  # api.waiters imports api.errors, which imports this module
    from api.waiters import Hub

KEEPALIVE_S = 15  # seconds between SSE comments while nothing happens (keeps proxies from closing)
# Keep-alives between reads of a quiet stream's job record (once a minute): a read each 15 s
# per stream cost about a tenth of a busy API process at 5,000 streams a process (measured).
RECHECK_EVERY = 4
KEEPALIVE = ": keepalive\n\n"  # an SSE comment: clients ignore it, proxies see traffic
# Sent first: a WSGI server sends the headers with the first bytes of the body, so without it a
# client of a queued job saw no response at all (not even its 200) until a token or a keep-alive.
OPENED = ": open\n\n"
NO_BUFFERING = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}  # no proxy holds events back


def sse(event: str, data: object) -> str:
    """Format one named server-sent event with a JSON payload."""
    return f"event: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n"


def data_event(body: object) -> str:
    """Format one unnamed server-sent event with a JSON payload, as OpenAI streams are."""
    return f"data: {json.dumps(body, separators=(',', ':'), ensure_ascii=False)}\n\n"


def event_stream(events: Iterable[str], headers: dict[str, str] | None = None) -> Response:
    """Answer with a stream of server-sent events, unbuffered by proxies."""
    return Response(events, mimetype="text/event-stream", headers=NO_BUFFERING | (headers or {}))


def job_events(store: JobStore, hub: Hub, job_id: str, sock: Any = None) -> Iterator[str]:
    """Yield a job's events from its first token (late clients catch up), ending with done.

    The process's shared readers deliver them (api/waiters.py); a client that hangs up (its
    socket `sock` reads EOF) ends the stream within about a second.
    """
    try:
        key = keys.events(job_id)
        with hub.subscribe({key: "0-0"}, sock) as sub:
            yield OPENED
            quiet_since, keepalives = time.monotonic(), 0
            while True:
                got = sub.get(max(0.0, quiet_since + KEEPALIVE_S - time.monotonic()))
                if sub.gone:
                    return
                for _, _, event in got:
                    kind = event.get("type")
                    if kind == EVENT_TOKEN:
                        yield sse("token", token_payload(event))
                    elif kind == EVENT_STATUS:
                        yield sse("status", {"status": event.get("data")})
                    elif kind == EVENT_RESET:  # its worker died; the job runs again from the start
                        yield sse("reset", {"status": event.get("data")})
                    elif kind == EVENT_DONE:  # its reader read the record with it (a burst's one call)
                        yield from _final(store, job_id, sub.records.get(key))
                        return
                if got:
                    quiet_since = time.monotonic()
                elif time.monotonic() - quiet_since >= KEEPALIVE_S:
                    keepalives += 1
                    if keepalives % RECHECK_EVERY == 0:  # the stream may have expired before the record
                        job = store.get(job_id)
                        if job is None or job.status.is_terminal:
                            yield from _final(store, job_id)
                            return
                    yield KEEPALIVE
                    quiet_since = time.monotonic()
    except redis.RedisError as exc:
        yield sse(
            "error", {"code": ErrorCode.SERVICE_UNAVAILABLE.value, "message": f"job store unavailable: {exc}"}
        )


def token_payload(event: dict) -> dict[str, Any]:
    """Return a token event's data: its text, and the log-probability entries its job asked for."""
    data: dict[str, Any] = {"text": event.get("data", "")}
    for name in (EVENT_PROMPT_LOGPROBS, EVENT_LOGPROBS):  # absent unless the job asked
        if name in event:
            data[name] = json.loads(event[name])
    return data


def _final(store: JobStore, job_id: str, raw: dict[str, str] | None = None) -> Iterator[str]:
    job = store.get(job_id, raw=raw)
    if job is None:
        yield sse("error", {"code": ErrorCode.NOT_FOUND.value, "message": f"job {job_id} expired"})
        return
    if job.status is Status.FAILED and job.error is not None:
        yield sse("error", job.error.model_dump(mode="json"))
    yield sse("done", job.model_dump(mode="json"))


def merged_events(
    store: JobStore, hub: Hub, job_ids: list[str], sock: Any = None
) -> Iterator[tuple[int, dict, dict[str, str] | None] | None]:
    """Yield (index in job_ids, event, record) from all the jobs' streams as they come; None when idle.

    The record is the job's raw record when its reader read it with a `done` event (a burst's one
    call), else None. It stops early, with nothing more, when the client hangs up.
    """
    streams = {keys.events(j): i for i, j in enumerate(job_ids)}
    open_keys = set(streams)
    idle_since, keepalives = time.monotonic(), 0
    with hub.subscribe(dict.fromkeys(streams, "0-0"), sock) as sub:
        while open_keys:
            got = sub.get(max(0.0, idle_since + KEEPALIVE_S - time.monotonic()))
            if sub.gone:
                return
            for key, _, fields in got:
                if key in open_keys:
                    done = fields.get("type") == EVENT_DONE
                    yield streams[key], fields, sub.records.get(key) if done else None
                    if done:
                        open_keys.discard(key)
            if got:
                idle_since = time.monotonic()
            elif time.monotonic() - idle_since >= KEEPALIVE_S:
                idle_since, keepalives = time.monotonic(), keepalives + 1
                # A stream that expired before its record ends like job_events (checked as rarely).
                for key in sorted(open_keys) if keepalives % RECHECK_EVERY == 0 else []:
                    job = store.get(job_ids[streams[key]])
                    if job is None or job.status.is_terminal:
                        open_keys.discard(key)
                        yield streams[key], {"type": EVENT_DONE}, None
                yield None
