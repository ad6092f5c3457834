"""OpenAI-compatible /v1/chat/completions and /v1/completions: each choice is one ordinary genq job.

A request is parsed into n JobCreate bodies (api/openai/parse.py), stored and enqueued like any
job; the answer waits for the jobs to end, or streams their text as chunks (api/openai/replies.py).
"""

from __future__ import annotations

import time
from typing import Any

from flask import Blueprint, Response, jsonify

from api.context import Context, current
from api.events import event_stream
from api.openai import errors
from api.openai.errors import OpenAIHTTPError
from api.openai.parse import CHAT_PATH, COMPLETIONS_PATH, request_jobs
from api.openai.replies import Reply, cancel, failure, stream
from api.submit import submit
from api.wire import read_json_object
from shared.schemas import JobCreate, JobPublic

openai_bp = Blueprint("openai", __name__)
errors.register(openai_bp)

WAIT_GRACE_S = 60.0  # past the last deadline and a lease: time for a worker's result retries to land


@openai_bp.post(CHAT_PATH)
def chat_completions() -> Response:
    """Run a chat request as n jobs; answer when they end, or stream their text as chunks."""
    ctx = current()
    req, jobs = request_jobs(ctx.settings, CHAT_PATH, read_json_object())
    return _run(ctx, req, True, jobs)


@openai_bp.post(COMPLETIONS_PATH)
def completions() -> Response:
    """Run a text completion as n jobs; answer when they end, or stream their text as chunks."""
    ctx = current()
    req, jobs = request_jobs(ctx.settings, COMPLETIONS_PATH, read_json_object())
    return _run(ctx, req, False, jobs)


def _run(ctx: Context, req: Any, chat: bool, jobs: list[JobCreate]) -> Response:
    queued = _submit_all(ctx, jobs)
    reply = Reply(
        chat=chat,
        id=("chatcmpl-" if chat else "cmpl-") + queued[0].id.removeprefix("job_"),
        created=int(time.time()),
        model=queued[0].model,
        include_usage=bool(req.stream and req.stream_options and req.stream_options.include_usage),
    )
    headers = {"X-Genq-Job-Ids": ",".join(j.id for j in queued)}  # to follow or cancel them via /v1/jobs
    if req.stream:
        return event_stream(stream(ctx.store, reply, [j.id for j in queued]), headers)
    resp = jsonify(reply.complete(_collect(ctx, queued, reply)).model_dump(mode="json"))
    resp.headers.update(headers)
    return resp


def _submit_all(ctx: Context, jobs: list[JobCreate]) -> list[JobPublic]:
    queued: list[JobPublic] = []
    try:
        for job in jobs:
            queued.append(submit(ctx.settings, ctx.store, ctx.celery, job, ctx.tenant))
    except BaseException:
        cancel(ctx.store, [j.id for j in queued])  # all choices or none
        raise
    return queued


def _collect(ctx: Context, queued: list[JobPublic], reply: Reply) -> list[JobPublic]:
    """Wait for every job to end (a little past the last deadline, for a lost worker's rerun)."""
    until = max(j.deadline or time.time() for j in queued) + ctx.settings.lease_seconds + WAIT_GRACE_S
    done: list[JobPublic] = []
    try:
        for q in queued:
            job = ctx.store.wait(q.id, max(0.0, until - time.time()))
            if job is not None and not job.status.is_terminal:
                raise OpenAIHTTPError(
                    503, "no worker finished the job in time", "server_error", code="timeout"
                )
            error = failure(job, reply.prompt_param)
            if error is not None:
                raise error
            done.append(job)
    except BaseException:
        cancel(ctx.store, [q.id for q in queued[len(done) :]])
        raise
    return done
