"""HTTP routes: parse, call one store or queue function, shape the response."""

from __future__ import annotations

import contextlib
import json
import re
from typing import Any

from flask import Blueprint, Response, current_app, g, jsonify, request, url_for
from pydantic import BaseModel, ValidationError

from api import idempotency
from api.errors import ApiError, invalid, validation_details
from api.openapi import openapi_spec
from api.stream import job_events
from api.submit import check_limits, submit
from api.waiters import request_socket
from shared.jobstore import JobStore, new_job_id
from shared.schemas import (
    ErrorCode,
    ErrorDetail,
    Health,
    JobCreate,
    JobList,
    JobListQuery,
    ModelList,
    ModelPublic,
    Status,
)
from shared.settings import Settings

bp = Blueprint("genq", __name__)

JOB_ID = re.compile(r"^job_[0-9a-f]{32}$")


def _ctx() -> tuple[Settings, JobStore]:
    ext = current_app.extensions["genq"]
    return ext["settings"], ext["store"]


def json_response(model: BaseModel, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    resp = jsonify(model.model_dump(mode="json"))
    resp.status_code = status
    resp.headers.update(headers or {})
    return resp


def parse_job(settings: Settings) -> JobCreate:
    """Validate the request body as a job against the schema and the catalog's limits."""
    raw = request.get_data(cache=False)  # raises 413 past MAX_CONTENT_LENGTH
    try:
        data = json.loads(raw)
    except (ValueError, RecursionError) as exc:  # bad syntax or UTF-8, huge integers, deep nesting
        raise ApiError(400, ErrorCode.MALFORMED_JSON, f"request body is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise invalid(ErrorCode.VALIDATION_ERROR, "request body must be a JSON object", "body")
    try:
        job = JobCreate.model_validate(data)
    except ValidationError as exc:
        raise ApiError(
            422, ErrorCode.VALIDATION_ERROR, "request does not match the job schema", validation_details(exc)
        ) from None
    return check_limits(settings, job)


@bp.post("/v1/jobs")
def create_job() -> Response:
    """Store a job, then enqueue it on its model's queue: 202 with the queued job."""
    settings, store = _ctx()
    job = parse_job(settings)
    job_id = new_job_id()
    tenant = g.tenant
    idem_key = idempotency.key_of(tenant, "jobs")
    if idem_key is not None:
        digest = idempotency.fingerprint(job.model_dump_json())
        earlier = idempotency.claim(store, idem_key, digest, job_id, settings.idempotency_ttl)
        if earlier is not None:
            job = store.get(earlier, tenant)
            if job is None:
                raise idempotency.still_processing()
            headers = {"Location": url_for("genq.get_job", job_id=job.id), "Idempotent-Replayed": "true"}
            return json_response(job, 202, headers)
    try:
        public = submit(settings, store, current_app.extensions["genq"]["celery"], job, tenant, job_id)
    except Exception:
        with contextlib.suppress(Exception):
            idempotency.release(store, idem_key)  # a refused request leaves its key free for a retry
        raise
    return json_response(public, 202, {"Location": url_for("genq.get_job", job_id=job_id)})


def _job_or_404(store: JobStore, job_id: str, wait: float = 0) -> Any:
    """Return the caller's job; another tenant's job is a 404, exactly like an unknown id."""
    job = store.wait(job_id, wait, g.tenant) if JOB_ID.match(job_id) else None
    if job is None:
        raise ApiError(404, ErrorCode.NOT_FOUND, f"no job {job_id!r} (unknown or expired)")
    return job


@bp.get("/v1/jobs")
def list_jobs() -> Response:
    """List the caller's recent jobs, newest first: ?status=, ?limit= (1-100), ?cursor= from next_cursor."""
    _, store = _ctx()
    try:
        query = JobListQuery.model_validate(request.args.to_dict())
    except ValidationError as exc:
        raise ApiError(
            422, ErrorCode.VALIDATION_ERROR, "invalid query parameters", validation_details(exc)
        ) from None
    jobs = store.list_jobs(g.tenant, query.status, query.limit, query.cursor)
    cursor = jobs[-1].created_at if len(jobs) == query.limit else None
    return json_response(JobList(data=jobs, next_cursor=cursor))


@bp.get("/v1/jobs/<job_id>")
def get_job(job_id: str) -> Response:
    """Return a job; ?wait=N blocks up to N seconds for it to end."""
    settings, store = _ctx()
    return json_response(_job_or_404(store, job_id, wait_arg(settings)))


def wait_arg(settings: Settings) -> float:
    """Return the request's ?wait= in seconds (0 to GENQ_MAX_WAIT), or raise a 422 naming it."""
    raw = request.args.get("wait", "0")
    try:
        wait = float(raw)
        if not 0 <= wait <= settings.max_wait:
            raise ValueError
    except ValueError:
        raise ApiError(
            422,
            ErrorCode.VALIDATION_ERROR,
            f"wait must be a number of seconds from 0 to {settings.max_wait}, got {raw!r}",
            [ErrorDetail(field="wait", message="out of range")],
        ) from None
    return wait


@bp.get("/v1/jobs/<job_id>/stream")
def stream_job(job_id: str) -> Response:
    """Stream a job's text as server-sent events (token, status, error, done)."""
    _, store = _ctx()
    _job_or_404(store, job_id)
    hub = current_app.extensions["genq"]["waiters"]
    slot = hub.open_slot(g.tenant)  # 429 past the tenant's cap; freed when the server closes the body
    body = hub.guard(job_events(store, hub, job_id, request_socket()), slot)
    headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}  # no proxy buffering
    return Response(body, mimetype="text/event-stream", headers=headers)


@bp.post("/v1/jobs/<job_id>/cancel")
def cancel_job(job_id: str) -> Response:
    """Cancel a job: a queued one never runs; a running one stops within one decode step."""
    _, store = _ctx()
    seen = store.cancel(job_id) if JOB_ID.match(job_id) and store.owns(job_id, g.tenant) else None
    if seen is None:
        raise ApiError(404, ErrorCode.NOT_FOUND, f"no job {job_id!r} (unknown or expired)")
    if seen in (Status.SUCCEEDED.value, Status.FAILED.value):
        raise ApiError(409, ErrorCode.NOT_CANCELLABLE, f"job {job_id} has already {seen}")
    job = _job_or_404(store, job_id)
    # 202: a running job's worker has been asked to stop; poll for the cancelled state.
    return json_response(job, 200 if job.status is Status.CANCELLED else 202)


@bp.get("/v1/models")
def list_models() -> Response:
    """List the catalog with how many ready workers serve each model."""
    settings, store = _ctx()
    workers = store.workers()
    data = [
        ModelPublic(
            id=m.name,
            name=m.name,
            context_length=m.context_length,
            max_new_tokens_cap=m.max_new_tokens_cap,
            ready_workers=sum(w.get("model") == m.name for w in workers),
        )
        for m in settings.models
    ]
    return json_response(ModelList(data=data))


@bp.get("/healthz")
def healthz() -> Response:
    """The process is up (no dependency is checked)."""
    return json_response(Health(status="ok"))


@bp.get("/readyz")
def readyz() -> Response:
    """Ready when Redis answers and at least one worker is serving."""
    _, store = _ctx()
    try:
        store.r.ping()
        ready = len(store.workers())
    except Exception as exc:  # any Redis failure means not ready, never a 500
        return json_response(Health(status="unavailable", reason=f"redis unreachable: {exc}"), 503)
    if ready == 0:
        return json_response(Health(status="unavailable", reason="no ready worker", ready_workers=0), 503)
    return json_response(Health(status="ok", ready_workers=ready))


@bp.get("/openapi.json")
def openapi() -> Response:
    """The OpenAPI 3.1 document, generated from the same pydantic models that validate requests."""
    return jsonify(openapi_spec())
