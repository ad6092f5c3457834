"""Native job routes (/v1/jobs): parse, call one store or queue function, shape the response."""

from __future__ import annotations

import re

from flask import Blueprint, Response, request, url_for
from pydantic import ValidationError

from api import idempotency
from api.context import current
from api.errors import ApiError, validation_details
from api.events import event_stream, job_events
from api.submit import check_limits, submit
from api.waiters import request_socket
from api.wire import json_response, read_json_object, wait_arg
from shared.jobstore import JobStore, new_job_id
from shared.schemas import ErrorCode, JobCreate, JobList, JobListQuery, JobPublic, Status
from shared.settings import Settings

jobs_bp = Blueprint("jobs", __name__)

JOB_ID = re.compile(r"^job_[0-9a-f]{32}$")


def parse_job(settings: Settings) -> JobCreate:
    """Validate the request body as a job against the schema and the catalog's limits."""
    try:
        job = JobCreate.model_validate(read_json_object())
    except ValidationError as exc:
        raise ApiError(
            422, ErrorCode.VALIDATION_ERROR, "request does not match the job schema", validation_details(exc)
        ) from None
    return check_limits(settings, job)


@jobs_bp.post("/v1/jobs")
def create_job() -> Response:
    """Store a job, then enqueue it on its model's queue: 202 with the queued job."""
    ctx = current()
    job = parse_job(ctx.settings)
    job_id = new_job_id()

    def create() -> Response:
        public = submit(ctx.settings, ctx.store, ctx.celery, job, ctx.tenant, job_id)
        return json_response(public, 202, {"Location": url_for("jobs.get_job", job_id=job_id)})

    def replay(earlier: str) -> Response:
        found = ctx.store.get(earlier, ctx.tenant)
        if found is None:
            raise idempotency.still_processing()
        return json_response(found, 202, {"Location": url_for("jobs.get_job", job_id=found.id)})

    return idempotency.once(ctx, "jobs", job_id, job.model_dump_json, create, replay)


def _job_or_404(store: JobStore, job_id: str, tenant: str, wait: float = 0) -> JobPublic:
    """Return the caller's job; another tenant's job is a 404, exactly like an unknown id."""
    job = store.wait(job_id, wait, tenant) if JOB_ID.match(job_id) else None
    if job is None:
        raise ApiError(404, ErrorCode.NOT_FOUND, f"no job {job_id!r} (unknown or expired)")
    return job


@jobs_bp.get("/v1/jobs")
def list_jobs() -> Response:
    """List the caller's recent jobs, newest first: ?status=, ?limit= (1-100), ?cursor= from next_cursor."""
    ctx = current()
    try:
        query = JobListQuery.model_validate(request.args.to_dict())
    except ValidationError as exc:
        raise ApiError(
            422, ErrorCode.VALIDATION_ERROR, "invalid query parameters", validation_details(exc)
        ) from None
    jobs = ctx.store.list_jobs(ctx.tenant, query.status, query.limit, query.cursor)
    cursor = jobs[-1].created_at if len(jobs) == query.limit else None
    return json_response(JobList(data=jobs, next_cursor=cursor))


@jobs_bp.get("/v1/jobs/<job_id>")
def get_job(job_id: str) -> Response:
    """Return a job; ?wait=N blocks up to N seconds for it to end."""
    ctx = current()
    return json_response(_job_or_404(ctx.store, job_id, ctx.tenant, wait_arg(ctx.settings.max_wait)))


@jobs_bp.get("/v1/jobs/<job_id>/stream")
def stream_job(job_id: str) -> Response:
    """Stream a job's text as server-sent events (token, status, error, done)."""
    ctx = current()
    _job_or_404(ctx.store, job_id, ctx.tenant)
    slot = ctx.waiters.open_slot(ctx.tenant)  # 429 past the tenant's cap; freed when the body closes
    body = job_events(ctx.store, ctx.waiters, job_id, request_socket())
    return event_stream(ctx.waiters.guard(body, slot))


@jobs_bp.post("/v1/jobs/<job_id>/cancel")
def cancel_job(job_id: str) -> Response:
    """Cancel a job: a queued one never runs; a running one stops within one decode step."""
    ctx = current()
    store = ctx.store
    seen = store.cancel(job_id) if JOB_ID.match(job_id) and store.owns(job_id, ctx.tenant) else None
    if seen is None:
        raise ApiError(404, ErrorCode.NOT_FOUND, f"no job {job_id!r} (unknown or expired)")
    if seen in (Status.SUCCEEDED.value, Status.FAILED.value):
        raise ApiError(409, ErrorCode.NOT_CANCELLABLE, f"job {job_id} has already {seen}")
    job = _job_or_404(store, job_id, ctx.tenant)
    # 202: a running job's worker has been asked to stop; poll for the cancelled state.
    return json_response(job, 200 if job.status is Status.CANCELLED else 202)
