"""OpenAI-compatible /v1/chat/completions and /v1/completions: each choice is one ordinary genq job.

A request is parsed into n JobCreate bodies, checked with the same limits as /v1/jobs, stored and
enqueued like any job; the answer waits for the jobs to end, or streams their text as chunks.
"""

from __future__ import annotations

import json
import logging
import random
import time
from typing import Any

import redis
from flask import Blueprint, Response, current_app, g, jsonify, request
from kombu.exceptions import OperationalError
from pydantic import BaseModel, ValidationError
from werkzeug.exceptions import HTTPException

from api.errors import RETRY_AFTER_S, ApiError
from api.openai_replies import OpenAIHTTPError, Reply, cancel, failure, stream
from api.openai_schemas import ChatCompletionRequest, ChatMessage, CompletionRequest
from api.submit import check_limits, submit
from api.waiters import request_socket
from shared.jobstore import JobStore
from shared.schemas import JobCreate, JobPublic
from shared.settings import Settings

log = logging.getLogger(__name__)

openai_bp = Blueprint("openai", __name__)

WAIT_GRACE_S = 60.0  # past the last deadline and a lease: time for a worker's result retries to land
UNION_TAGS = {"str", "int", "float", "bool", "dict", "list", "none"}
ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}
CHAT_PATH, COMPLETIONS_PATH = "/v1/chat/completions", "/v1/completions"


def _ctx() -> tuple[Settings, JobStore]:
    ext = current_app.extensions["genq"]
    return ext["settings"], ext["store"]


@openai_bp.post("/v1/chat/completions")
def chat_completions() -> Response:
    """Run a chat request as n jobs; answer when they end, or stream their text as chunks."""
    settings, _ = _ctx()
    req, jobs = request_jobs(settings, CHAT_PATH, _body())
    return _run(req, True, jobs)


@openai_bp.post("/v1/completions")
def completions() -> Response:
    """Run a text completion as n jobs; answer when they end, or stream their text as chunks."""
    settings, _ = _ctx()
    req, jobs = request_jobs(settings, COMPLETIONS_PATH, _body())
    return _run(req, False, jobs)


def request_jobs(settings: Settings, path: str, data: dict[str, Any]) -> tuple[Any, list[JobCreate]]:
    """Validate an OpenAI request body for this path and build its n checked jobs (OpenAIHTTPError if not)."""
    if path == CHAT_PATH:
        req = _validate(ChatCompletionRequest, data)
        messages = [_message(i, m) for i, m in enumerate(req.messages)]
        budget = "max_completion_tokens" if req.max_completion_tokens is not None else "max_tokens"
        return req, _jobs(settings, req, {"messages": messages}, getattr(req, budget), budget)
    req = _validate(CompletionRequest, data)
    return req, _jobs(settings, req, {"prompt": req.text}, req.max_tokens, "max_tokens")


def _run(req: Any, chat: bool, jobs: list[JobCreate]) -> Response:
    settings, store = _ctx()
    hub = current_app.extensions["genq"]["waiters"]
    # A stream counts as a waiter before its jobs are enqueued (429 past the cap enqueues nothing);
    # a plain request's waits count themselves (api/waiters.py Hub.held).
    slot = hub.open_slot(g.tenant) if req.stream else None
    try:
        queued = _submit_all(settings, store, jobs)
    except BaseException:
        if slot is not None:
            slot.release()
        raise
    reply = Reply(
        chat=chat,
        id=("chatcmpl-" if chat else "cmpl-") + queued[0].id.removeprefix("job_"),
        created=int(time.time()),
        model=queued[0].model,
        include_usage=bool(req.stream and req.stream_options and req.stream_options.include_usage),
    )
    headers = {"X-Genq-Job-Ids": ",".join(j.id for j in queued)}  # to follow or cancel them via /v1/jobs
    if req.stream:
        headers |= {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}  # no proxy buffering
        body = hub.guard(stream(store, hub, reply, [j.id for j in queued], request_socket()), slot)
        return Response(body, mimetype="text/event-stream", headers=headers)
    resp = jsonify(reply.complete(_collect(settings, store, queued, reply)).model_dump(mode="json"))
    resp.headers.update(headers)
    return resp


# --- requests → jobs ----------------------------------------------------------
def _body() -> dict[str, Any]:
    raw = request.get_data(cache=False)  # raises 413 past MAX_CONTENT_LENGTH
    try:
        data = json.loads(raw)
    except (ValueError, RecursionError) as exc:  # bad syntax or UTF-8, huge integers, deep nesting
        raise OpenAIHTTPError(
            400, f"the request body is not valid JSON: {exc}", code="malformed_json"
        ) from None
    if not isinstance(data, dict):
        raise OpenAIHTTPError(400, "the request body must be a JSON object")
    return data


def _validate(cls: type[BaseModel], data: dict[str, Any]) -> Any:
    try:
        req = cls.model_validate(data)
    except ValidationError as exc:
        raise _invalid(exc) from None
    problem = req.unsupported()
    if problem is not None:
        raise OpenAIHTTPError(400, problem[1], param=problem[0], code="unsupported_parameter")
    return req


def _param(loc: tuple[Any, ...], renames: dict[str, str] | None = None) -> str | None:
    """Spell a field path as OpenAI does: messages[0].content."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part not in UNION_TAGS and "[" not in part:  # pydantic names the union member it tried
            out += ("." if out else "") + (renames or {}).get(part, part)
    return out or None


def _invalid(exc: ValidationError, renames: dict[str, str] | None = None) -> OpenAIHTTPError:
    err = exc.errors(include_url=False, include_input=False)[0]
    param = _param(err["loc"], renames)
    if err["type"] == "missing":
        return OpenAIHTTPError(
            400, f"Missing required parameter: '{param}'.", param=param, code="missing_required_parameter"
        )
    message = f"Invalid '{param}': {err['msg']}" if param else err["msg"]
    return OpenAIHTTPError(400, message, param=param, code="invalid_value")


def _message(i: int, m: ChatMessage) -> dict[str, str]:
    role = ROLES.get(m.role)
    if role is None:
        raise OpenAIHTTPError(
            400, f"role {m.role!r} is not supported", param=f"messages[{i}].role", code="unsupported_value"
        )
    if m.content is None or getattr(m, "tool_calls", None):
        raise OpenAIHTTPError(
            400,
            "every message needs text content (tool calls are not supported)",
            param=f"messages[{i}].content",
        )
    if isinstance(m.content, str):
        return {"role": role, "content": m.content}
    if any(p.type != "text" or p.text is None for p in m.content):
        raise OpenAIHTTPError(
            400,
            "only text content parts are supported",
            param=f"messages[{i}].content",
            code="unsupported_value",
        )
    return {"role": role, "content": "\n".join(p.text or "" for p in m.content)}


def _jobs(
    settings: Settings, req: Any, inputs: dict[str, Any], max_new: int | None, budget: str
) -> list[JobCreate]:
    """Build choice i's job: the same input and knobs, seed + i when a seed is given."""
    if settings.model(req.model) is None:
        raise OpenAIHTTPError(
            404,
            f"The model `{req.model}` does not exist; available: {', '.join(settings.model_names)}",
            param="model",
            code="model_not_found",
        )
    n = req.n or 1
    temperature = 1.0 if req.temperature is None else req.temperature
    top_p = 1.0 if req.top_p is None else req.top_p
    if top_p == 0:
        temperature, top_p = 0.0, 1.0  # only the likeliest token survives: greedy
    if temperature == 0:
        seeds: list[int | None] = [None] * n
    elif req.seed is not None:
        seeds = [req.seed + i for i in range(n)]
    else:
        # Drawn here rather than by the worker, so that a rerun after a lost worker repeats the
        # text already streamed (see openai_replies._Sent).
        seeds = [random.getrandbits(62) for _ in range(n)]
    metadata = dict(req.metadata or {})
    if req.user is not None:
        metadata["user"] = req.user
    body = {
        **inputs,
        "model": req.model,
        "max_new_tokens": max_new,
        "temperature": temperature,
        "top_p": top_p,
        "stop": req.stop or [],
        "seed": seeds[0],
        "metadata": metadata or None,
    }
    body |= {
        k: getattr(req, k)
        for k in ("top_k", "repetition_penalty", "ignore_eos")
        if getattr(req, k) is not None
    }
    renames = {"max_new_tokens": budget}
    try:
        job = check_limits(settings, JobCreate.model_validate(body))
    except ValidationError as exc:
        raise _invalid(exc, renames) from None
    except ApiError as exc:
        raise _from_api_error(exc, renames) from None
    return [job.model_copy(update={"seed": s}) for s in seeds]


def _submit_all(settings: Settings, store: JobStore, jobs: list[JobCreate]) -> list[JobPublic]:
    celery = current_app.extensions["genq"]["celery"]
    queued: list[JobPublic] = []
    try:
        for job in jobs:
            queued.append(submit(settings, store, celery, job, g.tenant))
    except BaseException:
        cancel(store, [j.id for j in queued])  # all choices or none
        raise
    return queued


def _collect(settings: Settings, store: JobStore, queued: list[JobPublic], reply: Reply) -> list[JobPublic]:
    """Wait for every job to end (a little past the last deadline, for a lost worker's rerun)."""
    until = max(j.deadline or time.time() for j in queued) + settings.lease_seconds + WAIT_GRACE_S
    done: list[JobPublic] = []
    try:
        for q in queued:
            job = store.wait(q.id, max(0.0, until - time.time()))
            if job is not None and not job.status.is_terminal:
                raise OpenAIHTTPError(
                    503, "no worker finished the job in time", "server_error", code="timeout"
                )
            error = failure(job, reply.prompt_param)
            if error is not None:
                raise error
            done.append(job)
    except BaseException:
        cancel(store, [q.id for q in queued[len(done) :]])
        raise
    return done


# --- errors ---------------------------------------------------------------------
def _from_api_error(exc: ApiError, renames: dict[str, str] | None = None) -> OpenAIHTTPError:
    """Translate genq's error (as the shared limit checks raise it) to OpenAI's shape and status."""
    field = exc.details[0].field if exc.details else None
    param = (renames or {}).get(field, field) if field else None
    if exc.status == 429:
        return OpenAIHTTPError(429, exc.message, "requests", None, "rate_limit_exceeded", exc.headers)
    if exc.status < 500:
        status = 400 if exc.status == 422 else exc.status
        return OpenAIHTTPError(
            status, exc.message, "invalid_request_error", param, exc.code.value, exc.headers
        )
    return OpenAIHTTPError(exc.status, exc.message, "server_error", None, exc.code.value, exc.headers)


@openai_bp.errorhandler(OpenAIHTTPError)
def _openai_error(exc: OpenAIHTTPError) -> Response:
    return exc.response()


@openai_bp.errorhandler(ApiError)
def _api_error(exc: ApiError) -> Response:
    return _from_api_error(exc).response()


@openai_bp.errorhandler(HTTPException)
def _http_error(exc: HTTPException) -> Response:
    status = exc.code or 500
    message = exc.description or exc.name
    if status == 413:
        message = f"request body exceeds the limit of {current_app.config['MAX_CONTENT_LENGTH']} bytes"
    kind = "invalid_request_error" if status < 500 else "server_error"
    return OpenAIHTTPError(status, message, kind, None, exc.name.lower().replace(" ", "_")).response()


@openai_bp.errorhandler(redis.RedisError)
@openai_bp.errorhandler(OperationalError)
def _store_down(exc: Exception) -> Response:
    log.warning("job store unavailable: %s", exc)
    message = "the job store (Redis) is unavailable; retry later"
    headers = {"Retry-After": str(RETRY_AFTER_S)}
    return OpenAIHTTPError(503, message, "server_error", None, "service_unavailable", headers).response()


@openai_bp.errorhandler(Exception)
def _unexpected(exc: Exception) -> Response:
    log.exception("unhandled error")
    return OpenAIHTTPError(500, "internal error", "server_error", None, "internal_error").response()
