"""OpenAI's response_format and genq's constraint fields (json_schema, regex, choice) as job fields."""

from __future__ import annotations

from typing import Any

from api.errors import OpenAIHTTPError
from shared.constraints import json_schema_grammar

GENQ_FIELDS = ("json_schema", "regex", "choice")  # genq's own constraints (send them with extra_body)
ANY_JSON_OBJECT = {"type": "object"}  # what response_format json_object asks for


def constraint_fields(req: Any) -> dict[str, Any]:
    """Return the job fields that constrain a request's output; OpenAIHTTPError naming a bad field."""
    fields = {name: getattr(req, name) for name in GENQ_FIELDS if getattr(req, name, None) is not None}
    fmt = req.response_format
    if fmt is None or fmt.get("type") == "text":
        return fields
    if fields:
        raise OpenAIHTTPError(
            400,
            f"give either 'response_format' or genq's '{next(iter(fields))}', not both",
            param="response_format",
            code="invalid_value",
        )
    kind = fmt.get("type")
    if kind == "json_object":
        return {"json_schema": ANY_JSON_OBJECT}
    if kind != "json_schema":
        raise OpenAIHTTPError(
            400,
            f"response_format type {kind!r} is not one of 'text', 'json_object', 'json_schema'",
            param="response_format.type",
            code="invalid_value",
        )
    spec = fmt.get("json_schema")
    if not isinstance(spec, dict) or not isinstance(spec.get("name"), str):
        raise OpenAIHTTPError(
            400,
            "response_format json_schema needs an object with a 'name' and a 'schema'",
            param="response_format.json_schema",
            code="invalid_value",
        )
    schema = spec.get("schema", ANY_JSON_OBJECT)  # OpenAI's default when the schema is left out
    if not isinstance(schema, dict):
        raise OpenAIHTTPError(
            400, "the schema must be a JSON object", param="response_format.json_schema.schema"
        )
    try:
        json_schema_grammar(schema)
    except ValueError as exc:
        raise OpenAIHTTPError(
            400, str(exc), param="response_format.json_schema.schema", code="invalid_value"
        ) from None
    return {"json_schema": schema}
