"""Batch routes: many jobs in one request (JSON or a JSONL upload), run at batch priority."""

from __future__ import annotations

import contextlib
import json
import re
import time
from collections import Counter
from functools import partial
from typing import Any

from flask import Blueprint, Response, request, url_for
from pydantic import ValidationError

from api import idempotency, quota
from api.context import Context, current
from api.errors import ApiError, invalid, validation_details
from api.openai import batch as openai_batch
from api.submit import QUEUE_FULL_RETRY_S, check_limits, check_webhook, deadline_of
from api.wire import json_response, parse_json, read_upload, wait_arg
from shared.batchstore import BatchJob, BatchRecord, BatchStore, new_batch_id
from shared.celery_app import enqueue
from shared.jobstore import JobStore, QueueFull, TenantQueueFull, new_job_id
from shared.schemas import (
    BatchCreate,
    BatchFormat,
    BatchItem,
    BatchOptions,
    BatchStatus,
    ErrorCode,
    ErrorDetail,
    JobCreate,
    Priority,
)
from shared.settings import Settings

batches_bp = Blueprint("batches", __name__)

BATCH_ID = re.compile(r"^batch_[0-9a-f]{32}$")
MAX_ERROR_DETAILS = 50  # invalid items named in one 422; the message gives the total
SUBMIT_GRACE_S = 60  # seconds after which a batch never marked submitted means its request died


def _too_large(message: str) -> ApiError:
    return ApiError(413, ErrorCode.BATCH_TOO_LARGE, message)


def _options(fields: dict[str, str]) -> BatchOptions:
    """Parse a multipart upload's metadata and webhook fields, each a JSON text."""
    data = {name: parse_json(text, f"the {name!r} field") for name, text in fields.items()}
    try:
        return BatchOptions.model_validate(data)
    except ValidationError as exc:
        raise _rejected(validation_details(exc)) from None


def _item(settings: Settings, data: Any) -> BatchItem:
    """Validate one JSONL line: a genq job request with a custom_id, or an OpenAI batch line."""
    if openai_batch.is_openai_line(data):
        return openai_batch.to_item(settings, openai_batch.OpenAIBatchLine.model_validate(data))
    return BatchItem.model_validate(data)


def _parse(settings: Settings) -> tuple[list[tuple[str, BatchItem]], BatchOptions, BatchFormat]:
    """Return the labelled items ('requests.3' or 'line 4'), the batch's options and its format."""
    upload = read_upload(settings.max_batch_body_bytes)
    limit = settings.max_batch_items
    if upload.jsonl:
        options = _options(upload.fields)
        lines = [(n, line) for n, line in enumerate(upload.data.splitlines(), 1) if line.strip()]
        if len(lines) > limit:
            raise _too_large(f"batch has {len(lines)} requests, above the limit of {limit}")
        items, details, formats = [], [], set[BatchFormat]()
        for n, line in lines:
            data = parse_json(line, f"line {n}")
            formats.add(BatchFormat.OPENAI if openai_batch.is_openai_line(data) else BatchFormat.GENQ)
            if len(formats) > 1:
                message = "mixes genq job requests and OpenAI batch lines; use one format per batch"
                raise _rejected([ErrorDetail(field=f"line {n}", message=message)])
            try:
                items.append((f"line {n}", _item(settings, data)))
            except ValidationError as exc:
                details += [
                    ErrorDetail(field=f"line {n}.{d.field}", message=d.message)
                    for d in validation_details(exc)
                ]
            except ApiError as exc:
                details += [
                    ErrorDetail(field=f"line {n}.{d.field}", message=d.message) for d in exc.details or []
                ]
        if details:
            raise _rejected(details)
        if not items:
            raise ApiError(422, ErrorCode.VALIDATION_ERROR, "the upload holds no requests")
        return items, options, formats.pop()
    data = parse_json(upload.data)
    if isinstance(data, dict) and isinstance(data.get("requests"), list) and len(data["requests"]) > limit:
        raise _too_large(f"batch has {len(data['requests'])} requests, above the limit of {limit}")
    try:
        batch = BatchCreate.model_validate(data)
    except ValidationError as exc:
        raise _rejected(validation_details(exc)) from None
    options = BatchOptions(metadata=batch.metadata, webhook=batch.webhook)
    return [(f"requests.{i}", item) for i, item in enumerate(batch.requests)], options, BatchFormat.GENQ


def _rejected(details: list[ErrorDetail]) -> ApiError:
    first = details[0].field
    return ApiError(
        422,
        ErrorCode.VALIDATION_ERROR,
        f"{len(details)} problem(s) in the batch, the first at {first}; nothing was stored",
        details[:MAX_ERROR_DETAILS],
    )


def parse_batch(settings: Settings) -> tuple[list[tuple[str, JobCreate]], BatchOptions, BatchFormat]:
    """Validate every item (schema, catalog limits, unique custom_id) and the options before storing."""
    items, options, fmt = _parse(settings)
    details: list[ErrorDetail] = []
    if options.metadata is not None:
        size = len(json.dumps(options.metadata, separators=(",", ":")).encode())
        if size > settings.max_metadata_bytes:
            message = f"metadata is {size} bytes, above the limit of {settings.max_metadata_bytes}"
            details.append(ErrorDetail(field="metadata", message=message))
    if options.webhook is not None:
        check_webhook(settings, options.webhook)  # the batch's own: its error code as for a job's
    seen: dict[str, str] = {}
    jobs: list[tuple[str, JobCreate]] = []
    for label, item in items:
        if item.custom_id in seen:
            message = f"duplicate custom_id {item.custom_id!r} (first at {seen[item.custom_id]})"
            details.append(ErrorDetail(field=f"{label}.custom_id", message=message))
        seen.setdefault(item.custom_id, label)
        # Every batch job waits behind interactive ones, whatever the item asked for.
        job = JobCreate.model_validate(item.model_dump(exclude={"custom_id"}) | {"priority": Priority.BATCH})
        try:
            jobs.append((item.custom_id, check_limits(settings, job)))
        except ApiError as exc:
            details += [ErrorDetail(field=f"{label}.{d.field}", message=d.message) for d in exc.details or []]
    if details:
        raise _rejected(details)
    return jobs, options, fmt


def _never_fits(settings: Settings, jobs: list[JobCreate]) -> None:
    """Refuse (413) a batch larger than a queued cap: it could not be taken even by an empty queue."""
    caps = [(n, settings.max_queued, f"model {m!r}") for m, n in Counter(j.model for j in jobs).items()]
    caps.append((len(jobs), quota.queued_cap(settings), "your tenant"))
    for n, cap, what in caps:
        if cap and n > cap:
            raise _too_large(f"batch has {n} jobs for {what}, whose queued cap is {cap}; split it")


def _full(what: str, cap: int, n: int, code: ErrorCode) -> ApiError:
    return ApiError(
        429,
        code,
        f"{what} cannot take {n} more queued jobs now (cap {cap}); retry later; nothing was stored",
        headers={"Retry-After": str(QUEUE_FULL_RETRY_S)},
    )


def _withdraw(store: JobStore, batches: BatchStore, batch_id: str, job_ids: list[str]) -> None:
    """Undo a stored batch whose messages could not all be sent: cancel its jobs, forget the rest."""
    batches.delete(batch_id)  # first: its jobs' ends then count towards no batch (no webhook)
    for job_id in job_ids:
        # HACK: a job a worker took meanwhile is only flagged, and ends cancelled within a step.
        # Deleting a queued one first works with Redis full, when no write (and no claim) can; it
        # leaves no record, nor an entry in its tenant's job list.
        if store.delete(job_id) not in ("deleted", None):
            store.cancel(job_id)


@batches_bp.post("/v1/batches")
def create_batch() -> Response:
    """Validate every item, store the batch, then submit its jobs at batch priority: 202 with it."""
    ctx = current()
    jobs, options, fmt = parse_batch(ctx.settings)
    batch_id = new_batch_id()

    def canonical() -> str:
        return json.dumps(
            {
                "requests": [[custom_id, job.model_dump(mode="json")] for custom_id, job in jobs],
                "options": options.model_dump(mode="json"),
                "format": fmt,
            },
            sort_keys=True,
        )

    def create() -> Response:
        record = _submit_batch(ctx, batch_id, jobs, options, fmt)
        location = url_for("batches.get_batch", batch_id=batch_id)
        return json_response(ctx.batches.public(record, with_results=False), 202, {"Location": location})

    return idempotency.once(ctx, "batches", batch_id, canonical, create, partial(_replay, ctx))


def _submit_batch(
    ctx: Context,
    batch_id: str,
    jobs: list[tuple[str, JobCreate]],
    options: BatchOptions,
    fmt: BatchFormat,
) -> BatchRecord:
    """Store the batch and its jobs in one step, then enqueue each job; on a failure keep nothing."""
    settings, store, batches, tenant = ctx.settings, ctx.store, ctx.batches, ctx.tenant
    _never_fits(settings, [job for _, job in jobs])
    quota.check_budget(settings, tenant)
    tenant_cap = quota.queued_cap(settings)
    new = [BatchJob(custom_id, new_job_id(), job, deadline_of(settings, job)) for custom_id, job in jobs]
    try:
        record = batches.create(
            batch_id,
            tenant,
            new,
            options.metadata,
            options.webhook,
            fmt,
            settings.max_queued,
            tenant_cap,
            quota.key_id(),
        )
    except TenantQueueFull:
        raise _full("your tenant", tenant_cap, len(new), ErrorCode.TENANT_QUEUE_FULL) from None
    except QueueFull as exc:
        n = sum(j.request.model == str(exc) for j in new)
        raise _full(f"model {str(exc)!r}", settings.max_queued, n, ErrorCode.QUEUE_FULL) from None
    try:
        for j in new:
            spec = settings.model(j.request.model)
            assert spec is not None, "check_limits first"
            enqueue(ctx.celery, spec.queue, j.job_id, j.request.priority)
    except Exception:
        # Only Redis failing midway gets here; a job whose message is lost would still be re-sent
        # by the reconciler, but the client is told "refused", so nothing may run.
        with contextlib.suppress(Exception):
            _withdraw(store, batches, batch_id, [j.job_id for j in new])
        raise
    batches.submitted(batch_id)
    return record


def _replay(ctx: Context, batch_id: str) -> Response:
    """Answer a repeated Idempotency-Key with the batch the first request created, as it is now."""
    batch = ctx.batches.get(batch_id, ctx.tenant)
    # Not yet marked submitted: its first request is still sending messages (and may yet withdraw
    # it), or died doing so, long ago; then its jobs are all stored and the reconciler sends them.
    if batch is None or (not batch.submitted and time.time() - batch.created_at < SUBMIT_GRACE_S):
        raise idempotency.still_processing()
    headers = {"Location": url_for("batches.get_batch", batch_id=batch_id)}
    return json_response(ctx.batches.public(batch, with_results=False), 202, headers)


def _batch_or_404(ctx: Context, batch_id: str) -> BatchRecord:
    """Return the caller's batch; another tenant's batch is a 404, exactly like an unknown id."""
    batch = ctx.batches.get(batch_id, ctx.tenant) if BATCH_ID.match(batch_id) else None
    if batch is None:
        raise ApiError(404, ErrorCode.NOT_FOUND, f"no batch {batch_id!r} (unknown or expired)")
    return batch


@batches_bp.get("/v1/batches/<batch_id>")
def get_batch(batch_id: str) -> Response:
    """Return a batch's counts, and its results once done; ?wait=N blocks up to N seconds for that."""
    ctx = current()
    wait = wait_arg(ctx.settings.max_wait)
    return json_response(ctx.batches.wait(_batch_or_404(ctx, batch_id), wait))


@batches_bp.get("/v1/batches/<batch_id>/results")
def batch_results(batch_id: str) -> Response:
    """Download a finished batch's results as JSONL, one line per item in submission order; 409 before.

    ?format=genq gives BatchResult lines, ?format=openai OpenAI batch output lines; the default is
    the format the batch's items came in.
    """
    ctx = current()
    batches = ctx.batches
    batch = _batch_or_404(ctx, batch_id)
    fmt = _format_arg(batch.format)
    public = batches.public(batch, with_results=False)
    if public.status is BatchStatus.IN_PROGRESS:
        left = public.counts.queued + public.counts.running
        raise ApiError(
            409,
            ErrorCode.BATCH_IN_PROGRESS,
            f"batch {batch_id} still has {left} unfinished jobs; retry later",
        )
    if fmt is BatchFormat.OPENAI:
        body = "".join(openai_batch.result_lines(batches.jobs, batch))
    else:
        body = "".join(r.model_dump_json() + "\n" for r in batches.results(batch))
    headers = {"Content-Disposition": f'attachment; filename="{batch_id}.jsonl"'}
    return Response(body, mimetype="application/x-ndjson", headers=headers)


def _format_arg(default: BatchFormat) -> BatchFormat:
    value = request.args.get("format")
    if value is None:
        return default
    try:
        return BatchFormat(value)
    except ValueError:
        message = f"format must be one of {', '.join(f.value for f in BatchFormat)}"
        raise invalid(ErrorCode.VALIDATION_ERROR, message, "format") from None


@batches_bp.post("/v1/batches/<batch_id>/cancel")
def cancel_batch(batch_id: str) -> Response:
    """Cancel every job of the batch that has not ended: 200 when all ended, 202 while running ones stop."""
    ctx = current()
    batches = ctx.batches
    batch = _batch_or_404(ctx, batch_id)
    if not batch.cancelled and batches.public(batch, with_results=False).status is BatchStatus.COMPLETED:
        raise ApiError(409, ErrorCode.NOT_CANCELLABLE, f"batch {batch_id} has already completed")
    public = batches.public(batches.cancel(batch))
    return json_response(public, 200 if public.status is BatchStatus.CANCELLED else 202)
