"""OpenAI request bodies → checked genq jobs: each of a request's n choices is one ordinary job.

A body is validated against api/openai/schemas.py (unknown fields allowed, unsupported ones
refused), translated to JobCreate bodies and checked with the same limits as /v1/jobs. Errors are
OpenAIHTTPError, naming the parameter as OpenAI spells it (messages[0].content, max_tokens).
"""

from __future__ import annotations

import random
from typing import Any

from pydantic import BaseModel, ValidationError

from api.errors import ApiError
from api.openai.errors import OpenAIHTTPError, from_api_error
from api.openai.schemas import ChatCompletionRequest, ChatMessage, CompletionRequest
from api.submit import check_limits
from shared.schemas import JobCreate
from shared.settings import Settings

UNION_TAGS = {"str", "int", "float", "bool", "dict", "list", "none"}
ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}
CHAT_PATH, COMPLETIONS_PATH = "/v1/chat/completions", "/v1/completions"


def request_jobs(settings: Settings, path: str, data: dict[str, Any]) -> tuple[Any, list[JobCreate]]:
    """Validate an OpenAI request body for this path and build its n checked jobs (OpenAIHTTPError if not)."""
    if path == CHAT_PATH:
        req = _validate(ChatCompletionRequest, data)
        messages = [_message(i, m) for i, m in enumerate(req.messages)]
        budget = "max_completion_tokens" if req.max_completion_tokens is not None else "max_tokens"
        return req, _jobs(settings, req, {"messages": messages}, getattr(req, budget), budget)
    req = _validate(CompletionRequest, data)
    return req, _jobs(settings, req, {"prompt": req.text}, req.max_tokens, "max_tokens")


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
    renames = {"max_new_tokens": budget}
    try:
        job = check_limits(settings, JobCreate.model_validate(body))
    except ValidationError as exc:
        raise _invalid(exc, renames) from None
    except ApiError as exc:
        raise from_api_error(exc, renames) from None
    return [job.model_copy(update={"seed": s}) for s in seeds]
