"""OpenAI-compatible /v1/chat/completions and /v1/completions: each choice is one ordinary genq job.

A request is parsed into n JobCreate bodies, checked with the same limits as /v1/jobs, stored and
enqueued like any job; the answer waits for the jobs to end, or streams their text as chunks
(api/openai/replies.py). Parse errors name the parameter as OpenAI spells it (messages[0].content).
"""

from __future__ import annotations

import random
import time
from typing import Any

from flask import Blueprint, Response, jsonify
from pydantic import ValidationError

from api.context import Context, current
from api.errors import ApiError, OpenAIHTTPError, openai, register_error_handlers, to_openai
from api.events import event_stream
from api.openai.replies import Reply, cancel, failure, stream
from api.openai.schemas import ChatCompletionRequest, ChatMessage, CompletionRequest
from api.openai.structured import constraint_fields
from api.openai.tools import plan, render_messages
from api.submit import check_limits, submit
from api.waiters import request_socket
from api.wire import read_json_object
from shared.schemas import MAX_STOP_STRINGS, MAX_STORED_STOPS, JobCreate, JobPublic
from shared.settings import Settings

openai_bp = Blueprint("openai", __name__)
register_error_handlers(openai_bp, openai)  # every error of these routes in OpenAI's envelope
openai_bp.register_error_handler(OpenAIHTTPError, OpenAIHTTPError.response)  # already in that shape

WAIT_GRACE_S = 60.0  # past the last deadline and a lease: time for a worker's result retries to land
UNION_TAGS = {"str", "int", "float", "bool", "dict", "list", "none"}
ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}
CHAT_PATH, COMPLETIONS_PATH = "/v1/chat/completions", "/v1/completions"


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


def request_jobs(settings: Settings, path: str, data: dict[str, Any]) -> tuple[Any, list[JobCreate]]:
    """Validate an OpenAI request body for this path and build its n checked jobs (OpenAIHTTPError if not)."""
    if path == CHAT_PATH:
        req = _validate(ChatCompletionRequest, data)
        tools, constraint = plan(req), constraint_fields(req)
        if constraint and "json_schema" in tools.fields:
            message = (
                "a forced tool call constrains the output already; drop response_format or genq's constraint"
            )
            raise OpenAIHTTPError(400, message, param="tool_choice", code="invalid_value")
        inputs = {
            "messages": render_messages(req.messages, _message, tools.note),
            **constraint,
            **tools.fields,
        }
        budget = "max_completion_tokens" if req.max_completion_tokens is not None else "max_tokens"
        return req, _jobs(settings, req, inputs, getattr(req, budget), budget)
    req = _validate(CompletionRequest, data)
    prompts = req.prompts
    if not prompts or len(prompts) > settings.max_prompts_per_request:
        raise OpenAIHTTPError(
            400,
            f"'prompt' needs 1 to {settings.max_prompts_per_request} prompts; it has {len(prompts)}",
            param="prompt",
            code="invalid_value",
        )
    jobs = []
    for p in prompts:
        inputs = {"prompt": p} if isinstance(p, str) else {"prompt_ids": p}
        jobs += _jobs(settings, req, {**inputs, **constraint_fields(req)}, req.max_tokens, "max_tokens")
    return req, jobs


def _run(ctx: Context, req: Any, chat: bool, jobs: list[JobCreate]) -> Response:
    # A stream counts as a waiter before its jobs are enqueued (429 past the cap enqueues nothing);
    # a plain request's waits count themselves (api/waiters.py Hub.held).
    slot = ctx.waiters.open_slot(ctx.tenant) if req.stream else None
    try:
        queued = _submit_all(ctx, jobs)
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
        n=req.n or 1,
        echo=bool(getattr(req, "echo", False)),
        logprobs=bool(req.logprobs) if chat else req.logprobs is not None,
        tool_calls=jobs[0].tool_calls,
    )
    headers = {"X-Genq-Job-Ids": ",".join(j.id for j in queued)}  # to follow or cancel them via /v1/jobs
    if req.stream:
        assert slot is not None  # opened above for every stream
        body = stream(ctx.store, ctx.waiters, reply, [j.id for j in queued], request_socket())
        return event_stream(ctx.waiters.guard(body, slot), headers)
    resp = jsonify(reply.complete(_collect(ctx, queued, reply)).model_dump(mode="json"))
    resp.headers.update(headers)
    return resp


# --- requests → jobs ----------------------------------------------------------
def _validate(cls: type[ChatCompletionRequest | CompletionRequest], data: dict[str, Any]) -> Any:
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
        # text already streamed (see api/openai/replies.py, _Sent).
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
    body |= _logprob_fields(req)
    renames = {"max_new_tokens": budget, "prompt_ids": "prompt"}
    max_stops = MAX_STOP_STRINGS if isinstance(req, ChatCompletionRequest) else MAX_STORED_STOPS
    try:
        job = check_limits(settings, JobCreate.model_validate(body), max_stops)
    except ValidationError as exc:
        raise _invalid(exc, renames) from None
    except ApiError as exc:
        raise to_openai(exc, renames) from None
    return [job.model_copy(update={"seed": s}) for s in seeds]


def _logprob_fields(req: Any) -> dict[str, Any]:
    """Return the job fields that ask for log-probabilities (chat: logprobs, top_logprobs; text: k, echo)."""
    if isinstance(req, ChatCompletionRequest):
        return {"logprobs": True, "top_logprobs": req.top_logprobs or 0} if req.logprobs else {}
    fields: dict[str, Any] = {"echo": bool(req.echo)}  # echo's text comes from the prompt's tokens
    if req.logprobs is not None:
        fields |= {"logprobs": True, "top_logprobs": req.logprobs}
    return fields


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
            assert job is not None  # failure() answers a missing record
            done.append(job)
    except BaseException:
        cancel(ctx.store, [q.id for q in queued[len(done) :]])
        raise
    return done
