"""OpenAI's response_format and genq's constraint fields (json_schema, regex, choice) as job fields."""

from __future__ import annotations

from typing import Any

from api.errors import OpenAIHTTPError
from shared.constraints import json_schema_grammar

GENQ_FIELDS = ("json_schema", "regex", "choice")  # genq's own constraints (send them with extra_body)
ANY_JSON_OBJECT = {"type": "object"}  # what response_format json_object asks for


def bad_param(message: str, param: str) -> OpenAIHTTPError:
    """Return the 400 that names the request field at fault, as OpenAI answers it."""
    return OpenAIHTTPError(400, message, param=param, code="invalid_value")


def constraint_fields(req: Any) -> dict[str, Any]:
    """Return the job fields that constrain a request's output; OpenAIHTTPError naming a bad field."""
    fields = {name: getattr(req, name) for name in GENQ_FIELDS if getattr(req, name, None) is not None}
    fmt = req.response_format
    if fmt is None or fmt.get("type") == "text":
        return fields
    if fields:
        raise bad_param(
            f"give either 'response_format' or genq's '{next(iter(fields))}', not both", "response_format"
        )
    kind = fmt.get("type")
    if kind == "json_object":
        return {"json_schema": ANY_JSON_OBJECT}
    if kind != "json_schema":
        raise bad_param(
            f"response_format type {kind!r} is not one of 'text', 'json_object', 'json_schema'",
            "response_format.type",
        )
    spec = fmt.get("json_schema")
    if not isinstance(spec, dict) or not isinstance(spec.get("name"), str):
        raise bad_param(
            "response_format json_schema needs an object with a 'name' and a 'schema'",
            "response_format.json_schema",
        )
    schema = spec.get("schema", ANY_JSON_OBJECT)  # OpenAI's default when the schema is left out
    if not isinstance(schema, dict):
        raise bad_param("the schema must be a JSON object", "response_format.json_schema.schema")
    try:
        json_schema_grammar(schema)
    except ValueError as exc:
        raise bad_param(str(exc), "response_format.json_schema.schema") from None
    return {"json_schema": schema}
