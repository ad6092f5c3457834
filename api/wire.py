"""The one reader of request bodies and arguments, and the one writer of JSON answers, for every route.

Reading refuses alike everywhere: past the size limit a 413 (api/errors.py names the limit),
unparsable JSON a 400 malformed_json, a body that is not an object a 422 naming "body".
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from flask import Response, jsonify, request
from pydantic import BaseModel

from api.errors import ApiError, invalid
from shared.schemas import ErrorCode, ErrorDetail

JSONL_TYPES = {
    "application/x-ndjson",
    "application/jsonl",
    "application/x-jsonlines",
    "application/jsonlines",
}
UPLOAD_FIELDS = ("metadata", "webhook")  # a multipart batch upload's fields besides its file


def read_body(limit_bytes: int | None = None) -> bytes:
    """Return the raw body; limit_bytes replaces GENQ_MAX_BODY_BYTES for this request."""
    if limit_bytes is not None:
        request.max_content_length = limit_bytes
    return request.get_data(cache=False)  # raises 413 past the limit


def parse_json(raw: bytes | str, where: str = "request body") -> Any:
    """Parse one JSON text, or raise a 400 saying where it is broken."""
    try:
        return json.loads(raw)
    except (ValueError, RecursionError) as exc:  # bad syntax or UTF-8, huge integers, deep nesting
        raise ApiError(400, ErrorCode.MALFORMED_JSON, f"{where} is not valid JSON: {exc}") from None


def read_json_object() -> dict[str, Any]:
    """Return the body as a JSON object (400 if not JSON, 422 naming "body" if not an object)."""
    data = parse_json(read_body())
    if not isinstance(data, dict):
        raise invalid(ErrorCode.VALIDATION_ERROR, "request body must be a JSON object", "body")
    return data


@dataclass(frozen=True)
class Upload:
    """A batch upload: its bytes, whether they are JSONL, and a multipart upload's other fields."""

    data: bytes
    jsonl: bool
    fields: dict[str, str] = field(default_factory=dict)  # JSON texts, by name


def read_upload(limit_bytes: int) -> Upload:
    """Read a batch: a JSON body, a JSONL body, or a multipart form whose 'file' holds JSONL."""
    request.max_content_length = limit_bytes  # a batch may exceed GENQ_MAX_BODY_BYTES
    if request.mimetype != "multipart/form-data":
        return Upload(read_body(), request.mimetype in JSONL_TYPES)
    upload = request.files.get("file")  # raises 413 past the limit, as read_body does
    if upload is None:
        raise ApiError(
            422,
            ErrorCode.VALIDATION_ERROR,
            "a multipart batch upload needs a 'file' field holding JSONL",
            [ErrorDetail(field="file", message="missing")],
        )
    fields = {name: request.form[name] for name in UPLOAD_FIELDS if name in request.form}
    return Upload(upload.read(), True, fields)


def wait_arg(max_wait_s: float) -> float:
    """Return the request's ?wait= in seconds (0 to max_wait_s), or raise a 422 naming it."""
    raw = request.args.get("wait", "0")
    try:
        wait = float(raw)
        if not 0 <= wait <= max_wait_s:
            raise ValueError
    except ValueError:
        raise ApiError(
            422,
            ErrorCode.VALIDATION_ERROR,
            f"wait must be a number of seconds from 0 to {max_wait_s}, got {raw!r}",
            [ErrorDetail(field="wait", message="out of range")],
        ) from None
    return wait


def json_response(model: BaseModel, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    """Answer with a model as JSON."""
    resp = jsonify(model.model_dump(mode="json"))
    resp.status_code = status
    resp.headers.update(headers or {})
    return resp
