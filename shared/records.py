"""JobRecord: one job as stored in its Redis hash, typed; the only code that reads or writes its fields.

The hash holds strings: numbers as repr(), structures as JSON. `JobRecord.from_hash` reads one,
`to_hash`/`pairs` write one, and `public` shapes it as the JobPublic clients see. Whatever else
touches a job's fields (the worker, the reconciler, the API, the batch code) goes through this type.
The Lua transitions (shared/transitions.py) write some fields too: status, the timestamps, worker,
device, attempts, error, cancel, isolate and webhook:<event>.
"""

from __future__ import annotations

import json
import random
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from shared.schemas import JobCreate, JobPublic, Priority, Status, WebhookEvent

DEFAULT_TENANT = "default"  # owner of every job while no API keys are configured
SEED_BITS = 63  # a drawn seed is below 2**63, the schema's bound


def flat(fields: Mapping[str, Any]) -> list[str]:
    """Return a hash's fields as the flat field, value, ... list that HSET and the Lua take."""
    return [str(x) for kv in fields.items() for x in kv]


def _loads(value: str | None) -> Any:
    return json.loads(value) if value else None


def _float(value: str | None) -> float | None:
    return float(value) if value else None


@dataclass
class JobRecord:
    """A job's stored record: what was accepted (request, with every default resolved) and its state."""

    id: str
    status: Status
    model: str
    created_at: float  # Unix seconds
    request: dict[str, Any]  # the accepted JobCreate as JSON, model and defaults filled in
    tenant: str = DEFAULT_TENANT
    priority: Priority = Priority.INTERACTIVE
    attempts: int = 0  # times a worker claimed it
    deadline: float | None = None  # Unix seconds
    metadata: dict[str, Any] | None = None
    webhook_url: str | None = None
    webhook_events: tuple[str, ...] = ()
    batch_id: str | None = None
    key_id: str | None = None  # the API key it came with: its end counts towards that key's usage
    started_at: float | None = None
    finished_at: float | None = None
    worker: str | None = None
    device: str | None = None
    output: dict[str, Any] | None = None
    usage: dict[str, Any] | None = None
    timings: dict[str, Any] | None = None
    error: dict[str, Any] | None = None
    seed: int | None = None  # the seed a worker used (stored with a sampled job's result)
    isolate: bool = False  # run alone: its last worker died running it
    cancel: bool = False  # a client asked a running job to stop
    webhook_deliveries: dict[str, dict[str, Any]] | None = None  # event → delivery state

    @classmethod
    def new(
        cls,
        job_id: str,
        model: str,
        request: JobCreate,
        now: float,
        deadline: float | None,
        tenant: str = DEFAULT_TENANT,
        batch_id: str | None = None,
        key_id: str | None = None,
    ) -> JobRecord:
        """Return the record of a newly accepted, queued job; a sampled job without a seed gets one here.

        Drawn at acceptance, not by the worker, so that a rerun after a lost worker repeats the text.
        """
        body = request.model_dump(mode="json", exclude={"metadata", "webhook"})
        body["model"] = model
        if request.sampling and request.seed is None:
            body["seed"] = random.getrandbits(SEED_BITS)
        webhook = request.webhook
        return cls(
            id=job_id,
            status=Status.QUEUED,
            model=model,
            created_at=now,
            request=body,
            tenant=tenant,
            priority=request.priority,
            deadline=deadline,
            metadata=request.metadata,
            webhook_url=webhook.url if webhook else None,  # the Lua schedules its deliveries
            webhook_events=tuple(webhook.events) if webhook else (),
            batch_id=batch_id,  # its start and end count towards the batch's (shared/transitions.py)
            key_id=key_id,  # its end counts towards the key's usage (shared/usage.py)
        )

    @classmethod
    def from_hash(cls, job_id: str, h: Mapping[str, str]) -> JobRecord | None:
        """Read a stored hash; None when it is empty (unknown or expired job)."""
        if not h or "status" not in h:
            return None
        return cls(
            id=job_id,
            status=Status(h["status"]),
            model=h.get("model", ""),
            created_at=float(h["created_at"]),
            request=json.loads(h.get("request") or "{}"),
            tenant=h.get("tenant", DEFAULT_TENANT),
            priority=Priority(h.get("priority") or Priority.INTERACTIVE),
            attempts=int(h.get("attempts") or 0),
            deadline=_float(h.get("deadline")),
            metadata=_loads(h.get("metadata")),
            webhook_url=h.get("webhook_url"),
            webhook_events=tuple(h["webhook_events"].split(",")) if h.get("webhook_events") else (),
            batch_id=h.get("batch"),
            key_id=h.get("key_id"),
            started_at=_float(h.get("started_at")),
            finished_at=_float(h.get("finished_at")),
            worker=h.get("worker"),
            device=h.get("device"),
            output=_loads(h.get("output")),
            usage=_loads(h.get("usage")),
            timings=_loads(h.get("timings")),
            error=_loads(h.get("error")),
            seed=int(h["seed"]) if h.get("seed") else None,
            isolate=h.get("isolate") == "1",
            cancel=bool(h.get("cancel")),
            webhook_deliveries={
                e.value: json.loads(h[f"webhook:{e}"]) for e in WebhookEvent if f"webhook:{e}" in h
            }
            or None,
        )

    def to_hash(self) -> dict[str, str]:
        """Return the hash's fields (absent values are left out, as the Lua expects)."""
        h = {
            "status": self.status.value,
            "model": self.model,
            "created_at": repr(self.created_at),
            "tenant": self.tenant,
            "request": json.dumps(self.request),
            "attempts": str(self.attempts),
            "priority": self.priority.value,
        }
        optional = {
            "deadline": None if self.deadline is None else repr(self.deadline),
            "metadata": None if self.metadata is None else json.dumps(self.metadata),
            "webhook_url": self.webhook_url,
            "webhook_events": ",".join(self.webhook_events) or None,
            "batch": self.batch_id,
            "key_id": self.key_id,
            "started_at": None if self.started_at is None else repr(self.started_at),
            "finished_at": None if self.finished_at is None else repr(self.finished_at),
            "worker": self.worker,
            "device": self.device,
            "output": None if self.output is None else json.dumps(self.output),
            "usage": None if self.usage is None else json.dumps(self.usage),
            "timings": None if self.timings is None else json.dumps(self.timings),
            "error": None if self.error is None else json.dumps(self.error),
            "seed": None if self.seed is None else str(self.seed),
            "isolate": "1" if self.isolate else None,
            "cancel": "1" if self.cancel else None,
        }
        h.update({k: v for k, v in optional.items() if v is not None})
        for event, delivery in (self.webhook_deliveries or {}).items():
            h[f"webhook:{event}"] = json.dumps(delivery)
        return h

    def pairs(self) -> list[str]:
        """Return the hash as the flat field, value, ... list that HSET and the Lua take."""
        return flat(self.to_hash())

    @property
    def job(self) -> JobCreate:
        """Return the accepted request, validated again (model and defaults already filled in)."""
        return JobCreate.model_validate(self.request)

    @property
    def chat(self) -> bool:
        """Return True when the job was asked with chat messages rather than a prompt."""
        return self.request.get("messages") is not None

    def public(self) -> JobPublic:
        """Shape the record as the job clients see."""
        return JobPublic(
            id=self.id,
            status=self.status,
            model=self.model,
            created_at=self.created_at,
            started_at=self.started_at,
            finished_at=self.finished_at,
            output=self.output,
            usage=self.usage,
            timings=self.timings,
            worker=self.worker,
            device=self.device,
            seed=self.seed,
            error=self.error,
            metadata=self.metadata,
            priority=self.priority,
            attempts=self.attempts,
            deadline=self.deadline,
            webhook_deliveries=self.webhook_deliveries,
            batch_id=self.batch_id,
        )
