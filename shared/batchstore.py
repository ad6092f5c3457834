"""Batch records: which jobs a batch holds, in order, and their states read in one round trip."""

from __future__ import annotations

import dataclasses
import json
import secrets
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any

from shared import keys, transitions
from shared.jobstore import JobStore, QueueFull, TenantQueueFull
from shared.records import JobRecord, flat
from shared.schemas import (
    BatchCounts,
    BatchFormat,
    BatchPublic,
    BatchResult,
    BatchStatus,
    ErrorCode,
    JobCreate,
    JobError,
    Status,
    Webhook,
    WebhookDelivery,
    WebhookEvent,
)

# What a batch reports for a job whose record is gone (expired before the batch, or never stored).
MISSING = JobError(code=ErrorCode.NOT_FOUND, message="the job's record is gone (expired or never stored)")


def new_batch_id() -> str:
    """Return a fresh random 128-bit batch id."""
    return "batch_" + secrets.token_hex(16)


@dataclass(frozen=True)
class BatchJob:
    """One job of a new batch: its custom_id and id, the checked request, and its deadline."""

    custom_id: str
    job_id: str
    request: JobCreate  # model already resolved (api/submit.check_limits)
    deadline: float  # Unix seconds


@dataclass(frozen=True)
class BatchRecord:
    """A stored batch: its owner, its (custom_id, job_id) items in submission order, and its state."""

    id: str
    tenant: str
    created_at: float
    cancelled: bool
    metadata: dict[str, Any] | None
    items: list[tuple[str, str]]
    submitted: bool = True  # False until every job's message has been sent
    started_at: float | None = None
    finished_at: float | None = None
    webhook_deliveries: dict[WebhookEvent, WebhookDelivery] | None = None
    format: BatchFormat = BatchFormat.GENQ

    @property
    def job_ids(self) -> list[str]:
        """Return the batch's job ids in submission order."""
        return [job_id for _, job_id in self.items]


class BatchStore:
    """Stores batches next to the jobs they hold; a batch expires with its jobs (the same TTL)."""

    def __init__(self, jobs: JobStore) -> None:
        self.jobs = jobs
        self.r = jobs.r
        self._create = self.r.register_script(transitions.CREATE_BATCH)

    def create(
        self,
        batch_id: str,
        tenant: str,
        jobs: list[BatchJob],
        metadata: dict[str, Any] | None,
        webhook: Webhook | None = None,
        fmt: BatchFormat = BatchFormat.GENQ,
        max_queued: int = 0,
        max_tenant_queued: int = 0,
        key_id: str | None = None,
    ) -> BatchRecord:
        """Store a batch and all its queued jobs in one step (QueueFull past either cap, nothing stored).

        The caller enqueues the jobs' messages after this, then calls submitted().
        """
        now = time.time()
        record: dict[str, Any] = {"tenant": tenant, "created_at": repr(now), "total": len(jobs)}
        record["format"] = fmt.value
        if metadata is not None:
            record["metadata"] = json.dumps(metadata)
        if webhook is not None:  # the jobs' state-change scripts schedule its deliveries
            record["webhook_url"] = webhook.url
            record["webhook_events"] = ",".join(webhook.events)
        models = Counter(str(j.request.model) for j in jobs)
        args: list[Any] = [repr(now), self.jobs.ttl_s, max_queued, max_tenant_queued, tenant, len(models)]
        args += [x for kv in models.items() for x in kv]
        args += [len(record) * 2, *flat(record)]
        args += [len(jobs), *(json.dumps([j.custom_id, j.job_id]) for j in jobs)]
        for j in jobs:
            fields = JobRecord.new(
                j.job_id, str(j.request.model), j.request, now, j.deadline, tenant, batch_id, key_id
            ).pairs()
            args += [j.job_id, j.request.model, len(fields), *fields]
        done = self._create(keys=[keys.batch(batch_id), keys.batch_items(batch_id)], args=args)
        if done[0] == "full":
            raise QueueFull(done[1])
        if done[0] == "tenant_full":
            raise TenantQueueFull(done[1])
        items = [(j.custom_id, j.job_id) for j in jobs]
        return BatchRecord(batch_id, tenant, now, False, metadata, items, submitted=False, format=fmt)

    def submitted(self, batch_id: str) -> None:
        """Note that every job of the batch has been submitted (idempotent replays wait for this)."""
        self.r.hset(keys.batch(batch_id), "submitted", "1")

    def get(self, batch_id: str, tenant: str | None) -> BatchRecord | None:
        """Return a batch; None when unknown, expired, or another tenant's (tenant None: anyone's)."""
        pipe = self.r.pipeline(transaction=False)
        pipe.hgetall(keys.batch(batch_id))
        pipe.lrange(keys.batch_items(batch_id), 0, -1)
        rec, items = pipe.execute()
        if not rec or "tenant" not in rec or tenant not in (None, rec["tenant"]):
            return None
        return _record(batch_id, rec, [tuple(json.loads(item)) for item in items])

    def delete(self, batch_id: str) -> None:
        """Remove a batch whose jobs could not all be submitted."""
        self.r.delete(keys.batch(batch_id), keys.batch_items(batch_id))

    def snapshot(self, batch: BatchRecord) -> tuple[BatchRecord, list[Status | None]]:
        """Return the batch as stored now and each job's status in submission order, read atomically.

        A job's status is None when its record is gone. Reading both in one transaction keeps them
        consistent: finished_at is set by the very step that ends the last job.
        """
        pipe = self.r.pipeline(transaction=True)
        pipe.hgetall(keys.batch(batch.id))
        for job_id in batch.job_ids:
            pipe.hget(keys.job(job_id), "status")
        rec, *statuses = pipe.execute()
        fresh = _record(batch.id, rec, batch.items) if rec.get("tenant") else batch
        return fresh, [Status(s) if s else None for s in statuses]

    def results(self, batch: BatchRecord) -> list[BatchResult]:
        """Return every item's outcome in submission order: one round trip."""
        out = []
        for (custom_id, job_id), rec in zip(batch.items, self.jobs.records(batch.job_ids), strict=True):
            if rec is None:  # a vanished record can no longer succeed
                out.append(
                    BatchResult(custom_id=custom_id, job_id=job_id, status=Status.FAILED, error=MISSING)
                )
                continue
            result = BatchResult(
                custom_id=custom_id,
                job_id=job_id,
                status=rec.status,
                output=rec.output,
                usage=rec.usage,
                error=rec.error,
            )
            out.append(result)
        return out

    def public(self, batch: BatchRecord, with_results: bool = True) -> BatchPublic:
        """Shape the batch as it is now for clients: counts always, results once every job has ended."""
        batch, statuses = self.snapshot(batch)
        counts = BatchCounts(total=len(statuses))
        for status in statuses:
            name = (status or Status.FAILED).value  # a vanished record can no longer succeed
            setattr(counts, name, getattr(counts, name) + 1)
        ended = all(s is None or s.is_terminal for s in statuses)
        if not ended:
            state = BatchStatus.IN_PROGRESS
        else:
            state = BatchStatus.CANCELLED if batch.cancelled else BatchStatus.COMPLETED
        return BatchPublic(
            id=batch.id,
            status=state,
            format=batch.format,
            created_at=batch.created_at,
            started_at=batch.started_at,
            finished_at=batch.finished_at,
            counts=counts,
            metadata=batch.metadata,
            results=self.results(batch) if ended and with_results else None,
            webhook_deliveries=batch.webhook_deliveries,
        )

    def wait(self, batch: BatchRecord, timeout_s: float) -> BatchPublic:
        """Return the batch once every job has ended or timeout_s has passed, blocking in Redis."""
        deadline = time.monotonic() + timeout_s
        while True:
            _, statuses = self.snapshot(batch)
            pending = [j for j, s in zip(batch.job_ids, statuses, strict=True) if s and not s.is_terminal]
            left = deadline - time.monotonic()
            if not pending or left <= 0:
                return self.public(batch)
            # Block on the first unfinished job's done event; later ones are seen on the next check.
            self.jobs.wait(pending[0], left)

    def cancel(self, batch: BatchRecord) -> BatchRecord:
        """Mark the batch cancelled and cancel each job that has not ended (running ones are flagged)."""
        self.r.hset(keys.batch(batch.id), "cancelled", "1")
        for job_id, status in zip(batch.job_ids, self.snapshot(batch)[1], strict=True):
            if status is not None and not status.is_terminal:
                self.jobs.cancel(job_id)  # one round trip each: the job store owns the transition
        return dataclasses.replace(batch, cancelled=True)


def _record(batch_id: str, rec: dict[str, str], items: list[tuple[str, str]]) -> BatchRecord:
    """Shape a stored batch hash (and its items) as a BatchRecord."""
    return BatchRecord(
        id=batch_id,
        tenant=rec["tenant"],
        created_at=float(rec["created_at"]),
        cancelled=bool(rec.get("cancelled")),
        metadata=json.loads(rec["metadata"]) if rec.get("metadata") else None,
        items=items,
        submitted=bool(rec.get("submitted")),
        started_at=float(rec["started_at"]) if rec.get("started_at") else None,
        finished_at=float(rec["finished_at"]) if rec.get("finished_at") else None,
        webhook_deliveries={
            e: WebhookDelivery.model_validate_json(rec[f"webhook:{e}"])
            for e in WebhookEvent
            if f"webhook:{e}" in rec
        }
        or None,
        format=BatchFormat(rec.get("format", BatchFormat.GENQ)),
    )
