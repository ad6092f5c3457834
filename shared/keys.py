"""Names of every Redis key genq uses (besides Celery's own queue lists)."""

from __future__ import annotations

PREFIX = "genq"
WORKERS = f"{PREFIX}:workers"  # set of worker ids that have registered
RUNNING = f"{PREFIX}:running"  # zset: running job id → lease expiry (Unix seconds)
RECONCILER_LOCK = f"{PREFIX}:reconciler"  # one reconciler at a time across the fleet
WEBHOOKS_DUE = f"{PREFIX}:webhooks:due"  # zset: webhook delivery (JSON) → when it is due (Unix seconds)
UNACKED = "unacked"  # kombu's hash of delivered, not yet acked messages
UNACKED_INDEX = "unacked_index"  # kombu's zset: delivery tag → when it was delivered (Unix seconds)


def job(job_id: str) -> str:
    """Return the key of a job's record (a hash)."""
    return f"{PREFIX}:job:{job_id}"


def events(job_id: str) -> str:
    """Return the key of a job's event stream (tokens and state changes)."""
    return f"{PREFIX}:job:{job_id}:events"


def ended(job_id: str) -> str:
    """Return the key of a job's end: a stream of one entry, its final status (long polls block on it)."""
    return f"{PREFIX}:job:{job_id}:ended"


def queued(model: str) -> str:
    """Return the zset of a model's queued job ids, scored by when they were (re)queued."""
    return f"{PREFIX}:queued:{model}"


def worker(worker_id: str) -> str:
    """Return the key of a worker's heartbeat record."""
    return f"{PREFIX}:worker:{worker_id}"


def idempotency(key_hash: str) -> str:
    """Return the key that maps an Idempotency-Key (hashed) to its job."""
    return f"{PREFIX}:idem:{key_hash}"


def queue(model: str) -> str:
    """Return the Celery queue (and Redis list) that carries a model's jobs."""
    return f"{PREFIX}.{model}"


def tenant_queued(tenant: str) -> str:
    """Return the zset of a tenant's queued job ids (its queued-jobs cap counts these)."""
    return f"{PREFIX}:tqueued:{tenant}"


def tenant_jobs(tenant: str) -> str:
    """Return the zset of a tenant's jobs, scored by creation time (GET /v1/jobs)."""
    return f"{PREFIX}:tjobs:{tenant}"


def batch(batch_id: str) -> str:
    """Return the key of a batch's record (a hash: tenant, created_at, total, metadata, cancelled)."""
    return f"{PREFIX}:batch:{batch_id}"


def batch_items(batch_id: str) -> str:
    """Return the list of a batch's items in submission order, each JSON [custom_id, job_id]."""
    return f"{PREFIX}:batch:{batch_id}:items"


WAITERS = f"{PREFIX}:waiters"  # hash: 'tenant|api process' → 'open waiters, Unix s when published'


def waiter_wake(reader: str) -> str:
    """Return the stream an API process writes to so that one of its readers re-arms its XREAD."""
    return f"{PREFIX}:waiters:wake:{reader}"
