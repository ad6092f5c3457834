"""OpenAI tools on /v1/chat/completions: tools and tool_choice become a system note and job constraints.

See api/openai/toolcalls.py for the output format and docs/structured-output.md for how reliable it is.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from api.openai.schemas import ChatMessage
from api.openai.structured import bad_param
from api.openai.toolcalls import CALL_CLOSE, CALL_OPEN
from shared.constraints import ToolCalls, json_schema_grammar

NO_PARAMETERS = {"type": "object", "properties": {}}  # OpenAI's meaning of a function without parameters
MAX_TOOLS = 128  # functions per request, as OpenAI allows


class FunctionSpec(BaseModel):
    """A function the model may call."""

    model_config = ConfigDict(extra="allow")

    name: Annotated[str, Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")]
    description: str | None = None
    parameters: dict[str, Any] | None = None  # a JSON schema of the arguments object
    strict: bool | None = None  # accepted; genq always enforces the schema when it constrains


class ToolSpec(BaseModel):
    """One entry of tools: only type function exists."""

    model_config = ConfigDict(extra="allow")

    type: Literal["function"]
    function: FunctionSpec


@dataclass
class ToolPlan:
    """What a request's tools add to its jobs: constraint fields and a system note describing them."""

    fields: dict[str, Any] = field(default_factory=dict)
    note: str | None = None


def _tools(raw: list[Any]) -> list[FunctionSpec]:
    if len(raw) > MAX_TOOLS:
        raise bad_param(f"at most {MAX_TOOLS} tools", "tools")
    specs: list[FunctionSpec] = []
    for i, item in enumerate(raw):
        try:
            spec = ToolSpec.model_validate(item).function
        except ValidationError as exc:
            err = exc.errors(include_url=False, include_input=False)[0]
            where = ".".join(str(p) for p in err["loc"])
            raise bad_param(
                f"invalid tool: {err['msg']}", f"tools[{i}]" + (f".{where}" if where else "")
            ) from None
        try:
            json_schema_grammar(spec.parameters or NO_PARAMETERS)
        except ValueError as exc:
            raise bad_param(str(exc), f"tools[{i}].function.parameters") from None
        if any(s.name == spec.name for s in specs):
            raise bad_param(f"two tools are named {spec.name!r}", f"tools[{i}].function.name")
        specs.append(spec)
    return specs


def call_schema(specs: list[FunctionSpec]) -> dict[str, Any]:
    """Return the JSON schema of one call {"name", "arguments"} to any of these functions."""
    options = [
        {
            "type": "object",
            "properties": {"name": {"const": s.name}, "arguments": s.parameters or NO_PARAMETERS},
            "required": ["name", "arguments"],
            "additionalProperties": False,
        }
        for s in specs
    ]
    return options[0] if len(options) == 1 else {"anyOf": options}


def _note(specs: list[FunctionSpec], mode: ToolCalls) -> str:
    listing = "\n".join(
        json.dumps(
            {"name": s.name, "description": s.description or "", "parameters": s.parameters or NO_PARAMETERS}
        )
        for s in specs
    )
    if mode is ToolCalls.FORCED:
        how = 'Reply with one function call as JSON: {"name": <function name>, "arguments": <object>}.'
    else:
        how = (
            f'To call a function, reply with only {CALL_OPEN}{{"name": <function name>, "arguments": '
            f"<arguments object>}}{CALL_CLOSE}. Otherwise answer in plain text."
        )
    return f"You can call these functions:\n{listing}\n{how}"


def plan(req: Any) -> ToolPlan:
    """Check tools and tool_choice; return the constraint and note they add (OpenAIHTTPError if bad)."""
    choice = req.tool_choice
    if not req.tools:
        if choice not in (None, "none"):
            raise bad_param("'tool_choice' needs 'tools'", "tool_choice")
        return ToolPlan()
    specs = _tools(req.tools)
    if choice is None or choice == "auto":
        return ToolPlan({"tool_calls": ToolCalls.AUTO}, _note(specs, ToolCalls.AUTO))
    if choice == "none":
        return ToolPlan()
    if choice != "required":
        name = choice.get("function", {}).get("name") if isinstance(choice, dict) else None
        if not isinstance(choice, dict) or choice.get("type") != "function" or not isinstance(name, str):
            raise bad_param(
                "tool_choice is 'none', 'auto', 'required' or {'type': 'function', 'function': {'name'}}",
                "tool_choice",
            )
        specs = [s for s in specs if s.name == name]
        if not specs:
            raise bad_param(
                f"tool_choice names {name!r}, which is not among the tools", "tool_choice.function.name"
            )
    return ToolPlan(
        {"json_schema": call_schema(specs), "tool_calls": ToolCalls.FORCED}, _note(specs, ToolCalls.FORCED)
    )


def render_messages(
    messages: list[ChatMessage], plain: Callable[[int, ChatMessage], dict[str, str]], note: str | None
) -> list[dict[str, str]]:
    """Turn OpenAI messages (tool results and assistant tool calls included) into genq's plain messages."""
    out: list[dict[str, str]] = []
    for i, m in enumerate(messages):
        calls = (m.model_extra or {}).get("tool_calls")
        if m.role == "tool":
            text = plain(i, m.model_copy(update={"role": "user"}))["content"]
            out.append({"role": "user", "content": f"<tool_response>\n{text}\n</tool_response>"})
        elif m.role == "assistant" and calls:
            text = m.content if isinstance(m.content, str) else ""
            out.append({"role": "assistant", "content": text + _calls_text(i, calls)})
        else:
            out.append(plain(i, m))
    if note:
        if out and out[0]["role"] == "system":
            out[0] = {"role": "system", "content": out[0]["content"] + "\n\n" + note}
        else:
            out.insert(0, {"role": "system", "content": note})
    return out


def _calls_text(i: int, calls: Any) -> str:
    """Write an earlier answer's tool calls back in the format the model produces them in."""
    parts = []
    for k, call in enumerate(calls if isinstance(calls, list) else [None]):
        fn = call.get("function") if isinstance(call, dict) else None
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
            raise bad_param(
                "a tool call needs function.name and function.arguments", f"messages[{i}].tool_calls[{k}]"
            )
        try:
            arguments = json.loads(fn.get("arguments") or "{}")
        except ValueError:
            raise bad_param(
                "function.arguments is not JSON", f"messages[{i}].tool_calls[{k}].function.arguments"
            ) from None
        parts.append(CALL_OPEN + json.dumps({"name": fn["name"], "arguments": arguments}) + CALL_CLOSE)
    return "".join(parts)
