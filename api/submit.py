"""How a parsed job enters genq: checked against the catalog's limits, stored, then enqueued.

Every front door (genq's /v1/jobs, the OpenAI-compatible routes) goes through here, so all apply
the same rules.
"""

from __future__ import annotations

import contextlib
import json
import time

from celery import Celery

from api import quota
from api.errors import ApiError, invalid
from shared.celery_app import enqueue
from shared.jobstore import JobStore, QueueFull, TenantQueueFull, new_job_id
from shared.schemas import ErrorCode, JobCreate, JobPublic, Webhook
from shared.settings import Settings
from shared.webhooks import RefusedURL, resolve

QUEUE_FULL_RETRY_S = 5  # what a 429 tells clients to wait, in seconds (as api/errors.py RETRY_AFTER_S)


def check_limits(settings: Settings, job: JobCreate) -> JobCreate:
    """Check a schema-valid job against the catalog and settings; fill in its model and max_new_tokens."""
    spec = settings.model(job.model)
    if spec is None:
        raise invalid(
            ErrorCode.UNKNOWN_MODEL,
            f"unknown model {job.model!r}; available: {', '.join(settings.model_names)}",
            "model",
        )
    if job.max_new_tokens is not None and job.max_new_tokens > spec.max_new_tokens_cap:
        raise invalid(
            ErrorCode.MAX_NEW_TOKENS_EXCEEDED,
            f"max_new_tokens is {job.max_new_tokens}, above model {spec.name!r}'s cap of "
            f"{spec.max_new_tokens_cap}",
            "max_new_tokens",
        )
    chars = len(job.prompt) if job.prompt is not None else sum(len(m.content) for m in job.messages or [])
    if chars > settings.max_prompt_chars:
        raise invalid(
            ErrorCode.PROMPT_TOO_LONG,
            f"prompt is {chars} characters, above the limit of {settings.max_prompt_chars}",
            "prompt" if job.prompt is not None else "messages",
        )
    if job.messages is not None and len(job.messages) > settings.max_messages:
        raise invalid(
            ErrorCode.VALIDATION_ERROR,
            f"{len(job.messages)} messages, above the limit of {settings.max_messages}",
            "messages",
        )
    if job.metadata is not None:
        size = len(json.dumps(job.metadata, separators=(",", ":")).encode())
        if size > settings.max_metadata_bytes:
            raise invalid(
                ErrorCode.VALIDATION_ERROR,
                f"metadata is {size} bytes, above the limit of {settings.max_metadata_bytes}",
                "metadata",
            )
    if job.timeout_s is not None and job.timeout_s > settings.max_job_seconds:
        raise invalid(
            ErrorCode.VALIDATION_ERROR,
            f"timeout_s is {job.timeout_s:g}, above the limit of {settings.max_job_seconds:g}",
            "timeout_s",
        )
    if job.webhook is not None:
        check_webhook(settings, job.webhook)
    return job.model_copy(
        update={"model": spec.name, "max_new_tokens": job.max_new_tokens or spec.default_max_new_tokens}
    )


def check_webhook(settings: Settings, webhook: Webhook) -> None:
    """Refuse a webhook while none can be signed, or whose URL resolves to a non-public address."""
    if not settings.webhook_secret:
        raise invalid(
            ErrorCode.WEBHOOKS_DISABLED,
            "webhooks are disabled on this server; its operator enables them by setting GENQ_WEBHOOK_SECRET",
            "webhook",
        )
    try:
        resolve(webhook.url, settings.webhook_allow_private)
    except RefusedURL as exc:
        raise invalid(ErrorCode.WEBHOOK_URL_REFUSED, str(exc), "webhook.url") from None


def deadline_of(settings: Settings, job: JobCreate) -> float:
    """Return a new job's deadline: timeout_s (or the longest allowed) from now, in Unix seconds."""
    return time.time() + (job.timeout_s or settings.max_job_seconds)


def submit(
    settings: Settings,
    store: JobStore,
    celery: Celery,
    job: JobCreate,
    tenant: str,
    job_id: str | None = None,
) -> JobPublic:
    """Store a checked job, then enqueue it: 429 past either queued cap; never a record without a message."""
    spec = settings.model(job.model)
    assert spec is not None, "check_limits first"
    quota.check_budget(settings, tenant)
    tenant_cap = quota.queued_cap(settings)
    job_id = job_id or new_job_id()
    deadline = deadline_of(settings, job)
    try:
        public = store.create(
            job_id,
            spec.name,
            job,
            settings.max_queued,
            deadline,
            tenant,
            tenant_cap,
            key_id=quota.key_id(),
        )
        enqueue(celery, spec.queue, job_id, job.priority)
    except TenantQueueFull:
        raise ApiError(
            429,
            ErrorCode.TENANT_QUEUE_FULL,
            f"you already have {tenant_cap} queued jobs; retry later",
            headers={"Retry-After": str(QUEUE_FULL_RETRY_S)},
        ) from None
    except QueueFull:
        raise ApiError(
            429,
            ErrorCode.QUEUE_FULL,
            f"model {spec.name!r} already has {settings.max_queued} queued jobs; retry later",
            headers={"Retry-After": str(QUEUE_FULL_RETRY_S)},
        ) from None
    except Exception:
        # Never answer for a job no worker will see (nor leave its record behind).
        with contextlib.suppress(Exception):
            store.delete(job_id)
        raise
    return public
