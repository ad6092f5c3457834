"""Read a finished job's text as OpenAI tool calls: message.tool_calls and finish_reason tool_calls.

The format (SmolLM2's chat template has no tool format of its own, so genq uses a generic one):
- tool_choice required or a named function: the whole output is one JSON call
  {"name": ..., "arguments": {...}}, constrained to the tools' schemas, so it always parses.
- tool_choice auto: the output is either plain text (the answer) or starts with
  <tool_call>{"name": ..., "arguments": {...}}</tool_call> (one or more); nothing constrains it.
"""

from __future__ import annotations

import json
import re
from typing import Any

from shared.constraints import ToolCalls
from shared.schemas import FinishReason, JobPublic

CALL_OPEN, CALL_CLOSE = "<tool_call>", "</tool_call>"
_CALLS = re.compile(re.escape(CALL_OPEN) + r"(.*?)(?:" + re.escape(CALL_CLOSE) + r"|\Z)", re.S)
WHOLE = {FinishReason.EOS, FinishReason.STOP}  # outputs that ended on their own (not cut by a limit)


def _call(text: str) -> dict[str, Any] | None:
    try:
        obj = json.loads(text)
    except ValueError:
        return None
    if not isinstance(obj, dict) or not isinstance(obj.get("name"), str):
        return None
    arguments = obj.get("arguments", obj.get("parameters", {}))
    if not isinstance(arguments, dict):
        return None
    return {"name": obj["name"], "arguments": arguments}


def parse_calls(text: str, mode: ToolCalls) -> list[dict[str, Any]] | None:
    """Return the calls an output makes ({"name", "arguments"} each), or None when it is a text answer."""
    if mode is ToolCalls.FORCED:
        call = _call(text)
        return [call] if call else None
    if not text.lstrip().startswith(CALL_OPEN):
        return None
    calls = [_call(body.strip()) for body in _CALLS.findall(text)]
    whole = [c for c in calls if c is not None]
    return whole if whole and len(whole) == len(calls) else None


def tool_calls_of(job: JobPublic, mode: ToolCalls | None) -> list[dict[str, Any]] | None:
    """Return a finished job's calls in OpenAI's shape (id, type, function), or None for a text answer."""
    if mode is None or job.output is None or job.output.finish_reason not in WHOLE:
        return None
    calls = parse_calls(job.output.text, mode)
    if not calls:
        return None
    stem = "call_" + job.id.removeprefix("job_")[:20]
    return [
        {
            "id": f"{stem}_{k}",
            "type": "function",
            "function": {"name": c["name"], "arguments": json.dumps(c["arguments"], ensure_ascii=False)},
        }
        for k, c in enumerate(calls)
    ]
