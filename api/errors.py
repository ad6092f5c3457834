"""One error classifier for every route, and the two envelopes it is rendered in.

`classify` turns any exception into an `ApiError` (status, code, message, details, headers): an
ApiError raised by a route is kept, an HTTP error (404, 405, 413, 429...) and a store outage (503)
are named, anything else is logged and becomes a bare 500. genq's routes render it as
{"error": {code, message, details}} (`native`), the OpenAI dialect's as
{"error": {message, type, param, code}} (`openai`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import redis
from flask import Blueprint, Flask, Response, jsonify, request
from kombu.exceptions import OperationalError
from pydantic import ValidationError
from werkzeug.exceptions import HTTPException

from api.events import data_event
from api.openai.schemas import OpenAIError, OpenAIErrorResponse
from shared.schemas import ErrorBody, ErrorCode, ErrorDetail, ErrorResponse

log = logging.getLogger(__name__)

RETRY_AFTER_S = 5  # what a 503 tells clients to wait, in seconds
RATE_LIMIT_RETRY_S = 60  # what a 429 from the rate limiter says when it names no window, in seconds
STORE_DOWN = "the job store (Redis) is unavailable; retry later"
STORE_FULL = "the job store (Redis) is full; nothing was stored; retry later"

_HTTP_CODES = {
    400: ErrorCode.MALFORMED_JSON,
    404: ErrorCode.NOT_FOUND,
    405: ErrorCode.METHOD_NOT_ALLOWED,
    413: ErrorCode.BODY_TOO_LARGE,
    415: ErrorCode.UNSUPPORTED_MEDIA_TYPE,
    429: ErrorCode.RATE_LIMITED,
}


class ApiError(Exception):
    """An error response raised from a route, and what `classify` makes of any other exception."""

    def __init__(
        self,
        status: int,
        code: ErrorCode,
        message: str,
        details: list[ErrorDetail] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message
        self.details, self.headers = details, headers or {}


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


def invalid(code: ErrorCode, message: str, field: str | None = None) -> ApiError:
    """Return a 422 whose one detail names the field at fault (none when field is None)."""
    details = [ErrorDetail(field=field, message=message)] if field else None
    return ApiError(422, code, message, details)


def store_full(exc: BaseException) -> bool:
    """Return True when Redis refused a write for want of memory (maxmemory under noeviction);
    kombu wraps the error, so its causes are searched too."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, redis.exceptions.OutOfMemoryError) or "used memory > 'maxmemory'" in str(seen):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def validation_details(exc: ValidationError) -> list[ErrorDetail]:
    """Name each bad field of a pydantic error, as dotted paths."""
    return [
        ErrorDetail(field=".".join(str(p) for p in e["loc"]) or "body", message=e["msg"])
        for e in exc.errors(include_url=False, include_input=False)
    ]


def classify(exc: Exception) -> ApiError:
    """Say what an exception means to the client; an unexpected one is logged and becomes a 500."""
    if isinstance(exc, ApiError):
        return exc
    if isinstance(exc, HTTPException):
        return _http_error(exc)
    if isinstance(exc, redis.RedisError | OperationalError):
        retry = {"Retry-After": str(RETRY_AFTER_S)}
        if store_full(exc):  # up but at maxmemory: every write refused, nothing stored half-way
            log.warning("job store full: %s", exc)
            return ApiError(503, ErrorCode.STORE_FULL, STORE_FULL, headers=retry)
        log.warning("job store unavailable: %s", exc)
        return ApiError(503, ErrorCode.SERVICE_UNAVAILABLE, STORE_DOWN, headers=retry)
    log.error("unhandled error", exc_info=exc)
    return ApiError(500, ErrorCode.INTERNAL, "internal error")


def _http_error(exc: HTTPException) -> ApiError:
    status = exc.code or 500
    message, headers = exc.description or exc.name, {}
    if status == 413:  # the limit of this request: batches raise it above GENQ_MAX_BODY_BYTES
        message = f"request body exceeds the limit of {request.max_content_length} bytes"
    if status == 429:  # Flask-Limiter's RateLimitExceeded carries the limit that tripped
        limit = getattr(getattr(exc, "limit", None), "limit", None)
        headers["Retry-After"] = str(limit.get_expiry() if limit else RATE_LIMIT_RETRY_S)
        message = f"rate limit of {limit} exceeded; retry later" if limit else "rate limit exceeded"
    return ApiError(status, _HTTP_CODES.get(status, ErrorCode.INTERNAL), message, headers=headers)


def native(error: ApiError) -> Response:
    """Render an error in genq's envelope: {"error": {code, message, details}}."""
    body = ErrorResponse(error=ErrorBody(code=error.code, message=error.message, details=error.details))
    resp = jsonify(body.model_dump(mode="json", exclude_none=True))
    resp.status_code = error.status
    resp.headers.update(error.headers)
    return resp


def to_openai(exc: ApiError, renames: dict[str, str] | None = None) -> OpenAIHTTPError:
    """Translate genq's error to OpenAI's shape and status; renames maps genq field names to OpenAI's."""
    field = exc.details[0].field if exc.details else None
    param = (renames or {}).get(field, field) if field else None
    if exc.code is ErrorCode.BUDGET_EXCEEDED:  # OpenAI's word for a spent budget
        quota = "insufficient_quota"
        return OpenAIHTTPError(429, exc.message, quota, None, quota, exc.headers)
    if exc.status == 429:
        return OpenAIHTTPError(429, exc.message, "requests", None, "rate_limit_exceeded", exc.headers)
    if exc.status < 500:
        status = 400 if exc.status == 422 else exc.status
        return OpenAIHTTPError(
            status, exc.message, "invalid_request_error", param, exc.code.value, exc.headers
        )
    return OpenAIHTTPError(exc.status, exc.message, "server_error", None, exc.code.value, exc.headers)


def openai(error: ApiError) -> Response:
    """Render an error in OpenAI's envelope: {"error": {message, type, param, code}}."""
    return to_openai(error).response()


def register_error_handlers(
    scope: Flask | Blueprint, render: Callable[[ApiError], Response] = native
) -> None:
    """Answer every exception raised under scope (an app or a blueprint) as render shapes its class."""

    def _handle(exc: Exception) -> Response:
        return render(classify(exc))

    scope.register_error_handler(Exception, _handle)
