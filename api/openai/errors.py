"""The OpenAI renderer of api/errors.py's classifier: errors as {"error": {message, type, param, code}}."""

from __future__ import annotations

from flask import Blueprint, Response, jsonify

from api.errors import ApiError, register_error_handlers
from api.events import data_event
from api.openai.schemas import OpenAIError, OpenAIErrorResponse


class OpenAIHTTPError(Exception):
    """An error answered in OpenAI's shape: {"error": {message, type, param, code}}."""

    def __init__(
        self,
        status: int,
        message: str,
        type_: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.headers = status, headers or {}
        self.error = OpenAIError(message=message, type=type_, param=param, code=code)

    def response(self) -> Response:
        """Return the JSON error response."""
        resp = jsonify(OpenAIErrorResponse(error=self.error).model_dump(mode="json"))
        resp.status_code = self.status
        resp.headers.update(self.headers)
        return resp

    def chunk(self) -> str:
        """Return the error as one server-sent event (openai clients raise APIError on it)."""
        return data_event(OpenAIErrorResponse(error=self.error).model_dump(mode="json"))


def from_api_error(exc: ApiError, renames: dict[str, str] | None = None) -> OpenAIHTTPError:
    """Translate genq's error to OpenAI's shape and status; renames maps genq field names to OpenAI's."""
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


def render(exc: ApiError) -> Response:
    """Render a classified error in OpenAI's envelope."""
    return from_api_error(exc).response()


def register(bp: Blueprint) -> None:
    """Answer every error of bp's routes in OpenAI's envelope."""
    register_error_handlers(bp, render)
    bp.register_error_handler(OpenAIHTTPError, OpenAIHTTPError.response)  # already in OpenAI's shape
