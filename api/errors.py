"""Every error leaves the API as {"error": {code, message, details}} with the right status."""

from __future__ import annotations

import logging

import redis
from flask import Flask, Response, jsonify
from kombu.exceptions import OperationalError
from pydantic import ValidationError
from werkzeug.exceptions import HTTPException

from shared.schemas import ErrorBody, ErrorCode, ErrorDetail, ErrorResponse

log = logging.getLogger(__name__)

RETRY_AFTER_S = 5  # what a 503 tells clients to wait, in seconds

_HTTP_CODES = {
    400: ErrorCode.MALFORMED_JSON,
    404: ErrorCode.NOT_FOUND,
    405: ErrorCode.METHOD_NOT_ALLOWED,
    413: ErrorCode.BODY_TOO_LARGE,
    415: ErrorCode.UNSUPPORTED_MEDIA_TYPE,
    429: ErrorCode.RATE_LIMITED,
}


class ApiError(Exception):
    """An error response raised from a route."""

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


def invalid(code: ErrorCode, message: str, field: str | None = None) -> ApiError:
    """Return a 422 whose one detail names the field at fault (none when field is None)."""
    details = [ErrorDetail(field=field, message=message)] if field else None
    return ApiError(422, code, message, details)


def error_response(
    status: int,
    code: ErrorCode,
    message: str,
    details: list[ErrorDetail] | None = None,
    headers: dict[str, str] | None = None,
) -> Response:
    """Build the JSON error response every failure path uses."""
    body = ErrorResponse(error=ErrorBody(code=code, message=message, details=details))
    resp = jsonify(body.model_dump(mode="json", exclude_none=True))
    resp.status_code = status
    resp.headers.update(headers or {})
    return resp


def store_full(exc: BaseException) -> bool:
    """Return True when Redis refused a write for want of memory (maxmemory under noeviction);
    kombu wraps the error, so its causes are searched too."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, redis.exceptions.OutOfMemoryError) or "used memory > 'maxmemory'" in str(seen):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def store_down_error(exc: Exception) -> tuple[ErrorCode, str]:
    """Return the code and message of a 503 for a Redis error: full, or unavailable."""
    if store_full(exc):
        log.warning("job store full: %s", exc)
        return ErrorCode.STORE_FULL, "the job store (Redis) is full; nothing was stored; retry later"
    log.warning("job store unavailable: %s", exc)
    return ErrorCode.SERVICE_UNAVAILABLE, "the job store (Redis) is unavailable; retry later"


def validation_details(exc: ValidationError) -> list[ErrorDetail]:
    """Name each bad field of a pydantic error, as dotted paths."""
    return [
        ErrorDetail(field=".".join(str(p) for p in e["loc"]) or "body", message=e["msg"])
        for e in exc.errors(include_url=False, include_input=False)
    ]


def register_error_handlers(app: Flask) -> None:
    """Route every exception to a JSON error body; nothing escapes as an HTML page or a bare 500."""

    @app.errorhandler(ApiError)
    def _api_error(exc: ApiError) -> Response:
        return error_response(exc.status, exc.code, exc.message, exc.details, exc.headers)

    @app.errorhandler(HTTPException)
    def _http_error(exc: HTTPException) -> Response:
        status = exc.code or 500
        code = _HTTP_CODES.get(status, ErrorCode.INTERNAL)
        message = exc.description or exc.name
        headers = {}
        if status == 413:
            message = f"request body exceeds the limit of {app.config['MAX_CONTENT_LENGTH']} bytes"
        if status == 429:  # Flask-Limiter's RateLimitExceeded carries the limit that tripped
            limit = getattr(getattr(exc, "limit", None), "limit", None)
            headers["Retry-After"] = str(limit.get_expiry() if limit else 60)
            message = f"rate limit of {limit} exceeded; retry later" if limit else "rate limit exceeded"
        return error_response(status, code, message, headers=headers)

    @app.errorhandler(redis.RedisError)
    @app.errorhandler(OperationalError)
    def _store_down(exc: Exception) -> Response:
        code, message = store_down_error(exc)
        return error_response(503, code, message, headers={"Retry-After": str(RETRY_AFTER_S)})

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception) -> Response:
        log.exception("unhandled error")
        return error_response(500, ErrorCode.INTERNAL, "internal error")
