"""What a job's output must match (a JSON schema, a regex, or one of a few strings), checked at the door.

The grammar library is llguidance, which imports without torch, so the API checks a constraint with the
very compiler the worker uses: whatever passes here compiles there (bar fuel limits, see the docs).
"""

from __future__ import annotations

import json
from enum import StrEnum
from typing import TYPE_CHECKING, Annotated, Any

import jsonschema_rs
import llguidance
from pydantic import BaseModel, Field, ValidationInfo, field_validator

if TYPE_CHECKING:
    from llguidance._lib import JsonCompileOptions

MAX_CHOICES = 1000  # strings in a choice list
MAX_CHOICE_CHARS = 1000  # characters per choice
MAX_REGEX_CHARS = 10_000  # characters of a regex
MAX_SCHEMA_BYTES = 200_000  # a JSON schema, as compact JSON, in bytes
# JSON output in Python's json.dumps style: small models know it well, and a fixed whitespace
# rule keeps a model from padding its answer with blank lines until max_new_tokens.
JSON_STYLE: JsonCompileOptions = {
    "whitespace_flexible": False,
    "item_separator": ", ",
    "key_separator": ": ",
}


def parser_limits() -> llguidance.LLParserLimits:
    """Return llguidance's work limits (fuel), which bound a grammar's compile and each mask step."""
    return llguidance.LLParserLimits(initial_lexer_fuel=2_000_000, max_grammar_size=500_000)


class ToolCalls(StrEnum):
    """How the OpenAI routes read a job's output as tool calls (set by them, not by clients)."""

    FORCED = "forced"  # the output is one JSON call {"name", "arguments"}, constrained by the tools' schemas
    AUTO = "auto"  # the output is text, or <tool_call>{...}</tool_call> (see api/openai/tools.py)


def _check(grammar: str) -> str:
    problem = llguidance.LLMatcher.validate_grammar(grammar, None, limits=parser_limits())
    if problem and not problem.startswith("WARNING"):
        raise ValueError(problem.split("\n")[0][:500])
    return grammar


def json_schema_grammar(schema: dict[str, Any]) -> str:
    """Return the llguidance grammar of a JSON schema; ValueError naming the problem if it has one."""
    if len(json.dumps(schema, separators=(",", ":"))) > MAX_SCHEMA_BYTES:
        raise ValueError(f"the schema is larger than {MAX_SCHEMA_BYTES} bytes")
    try:
        jsonschema_rs.meta.validate(schema)
    except jsonschema_rs.ValidationError as exc:
        raise ValueError(f"not a valid JSON Schema: {str(exc).splitlines()[0]}") from None
    except (jsonschema_rs.ReferencingError, ValueError) as exc:
        raise ValueError(f"not a valid JSON Schema: {exc}") from None
    try:
        return _check(llguidance.LLMatcher.grammar_from_json_schema(schema, defaults=JSON_STYLE))
    except ValueError as exc:
        raise ValueError(f"the schema cannot be enforced: {exc}") from None


def regex_grammar(regex: str) -> str:
    """Return the llguidance grammar of a regex (Rust regex syntax, no look-around)."""
    try:
        return _check(llguidance.LLMatcher.grammar_from_regex(regex))
    except ValueError as exc:
        raise ValueError(f"invalid regex: {exc}") from None


def choice_grammar(choices: list[str]) -> str:
    """Return the grammar that matches exactly one of the strings."""
    return _check(llguidance.grammar_from("choice", json.dumps(choices)))


class ConstraintFields(BaseModel):
    """genq's constraint fields: at most one of json_schema, regex and choice per job."""

    json_schema: dict[str, Any] | None = None  # the output is JSON valid against this schema
    regex: Annotated[str, Field(min_length=1, max_length=MAX_REGEX_CHARS)] | None = None  # matches whole
    choice: (
        Annotated[
            list[Annotated[str, Field(min_length=1, max_length=MAX_CHOICE_CHARS)]],
            Field(min_length=1, max_length=MAX_CHOICES),
        ]
        | None
    ) = None  # the output is exactly one of these strings
    tool_calls: ToolCalls | None = None  # the OpenAI routes: read the output as tool calls

    @field_validator("json_schema")
    @classmethod
    def _schema_enforceable(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        if value is not None:
            json_schema_grammar(value)
        return value

    @field_validator("regex")
    @classmethod
    def _regex_valid(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is not None:
            _alone(info, "regex")
            regex_grammar(value)
        return value

    @field_validator("choice")
    @classmethod
    def _choice_alone(cls, value: list[str] | None, info: ValidationInfo) -> list[str] | None:
        if value is not None:
            _alone(info, "choice")
        return value


def _alone(info: ValidationInfo, name: str) -> None:
    """Refuse a second constraint; the error lands on the later field, so a 422 names it."""
    earlier = [n for n in ("json_schema", "regex") if n != name and info.data.get(n) is not None]
    if earlier:
        raise ValueError(f"give at most one of 'json_schema', 'regex' and 'choice' ('{earlier[0]}' is given)")


def grammar_of(fields: ConstraintFields) -> str | None:
    """Return the grammar a job's constraint fields ask for, or None when the output is free."""
    if fields.json_schema is not None:
        return json_schema_grammar(fields.json_schema)
    if fields.regex is not None:
        return regex_grammar(fields.regex)
    if fields.choice is not None:
        return choice_grammar(fields.choice)
    return None
