"""Names of every Redis key genq uses (besides Celery's own queue lists): Python and Lua read them here.

The state-transition Lua (shared/transitions.py) builds keys from the prefixes below (LUA_PREFIXES),
so a key's name is written once, in this module.
"""

from __future__ import annotations

PREFIX = "genq"
WORKERS = f"{PREFIX}:workers"  # set of worker ids that have registered
RUNNING = f"{PREFIX}:running"  # zset: running job id → lease expiry (Unix seconds)
RECONCILER_LOCK = f"{PREFIX}:reconciler"  # one reconciler at a time across the fleet
WEBHOOKS_DUE = f"{PREFIX}:webhooks:due"  # zset: webhook delivery (JSON) → when it is due (Unix seconds)
RATELIMIT = f"{PREFIX}:ratelimit"  # prefix of flask-limiter's per-tenant window counters
UNACKED = "unacked"  # kombu's hash of delivered, not yet acked messages
UNACKED_INDEX = "unacked_index"  # kombu's zset: delivery tag → when it was delivered (Unix seconds)

# Prefixes: a key is its prefix followed by an id or a model name.
JOB = f"{PREFIX}:job:"  # hash: one job's record (shared/records.py)
QUEUED = f"{PREFIX}:queued:"  # zset per model: queued job id → when (re)queued
TENANT_QUEUED = f"{PREFIX}:tqueued:"  # zset per tenant: queued job ids
TENANT_JOBS = f"{PREFIX}:tjobs:"  # zset per tenant: job id → created_at
BATCH = f"{PREFIX}:batch:"  # hash: one batch's record
WORKER = f"{PREFIX}:worker:"  # string: one worker's heartbeat (JSON)
IDEMPOTENCY = f"{PREFIX}:idem:"  # string: a hashed Idempotency-Key → its job or batch
EVENTS_SUFFIX = ":events"  # after a job's key: its event stream
ENDED_SUFFIX = ":ended"  # after a job's key: its end (one entry)
TOKENIZER = f"{PREFIX}:tokenizer:"  # hash per model: its tokenizer as a worker published it (digest, info)

# Metrics (shared/metrics.py), kept in Redis so that every API process reports the same figures.
METRICS = f"{PREFIX}:metrics"
METRICS_MODELS = f"{METRICS}:models"  # set: every model that has recorded a job
METRICS_TOKENS = f"{METRICS}:tokens"  # hash: model → completion tokens generated
METRICS_JOBS = f"{METRICS}:jobs:"  # hash per model: final status → count

# Runtime API keys, tenants' limits and usage (shared/keystore.py, shared/usage.py).
API_KEY = f"{PREFIX}:apikey:"  # hash per key, named by the key's SHA-256 (hex): its record
API_KEY_ID = f"{PREFIX}:apikey-id:"  # string per key id: the key's SHA-256 (hex), to revoke by id
API_KEYS = f"{PREFIX}:apikeys"  # zset: every runtime key's id → when it was created (Unix seconds)
AUDIT = f"{PREFIX}:audit"  # stream: one entry per key created or revoked, or limits changed
TENANT_LIMITS = f"{PREFIX}:limits:"  # hash per tenant: its overrides of the global limits
USAGE_TENANT = f"{PREFIX}:usage:tenant:"  # hash per tenant and UTC day ("<tenant>:<day>")
USAGE_KEY = f"{PREFIX}:usage:key:"  # hash per key id and UTC day ("<key id>:<day>")
USAGE_KEY_IDS = f"{PREFIX}:usage:keys:"  # set per tenant and UTC day: the key ids its jobs came with
METRICS_TENANTS = f"{METRICS}:tenants"  # set: every tenant that has had a job end
METRICS_TENANT = f"{METRICS}:tenant:"  # hash per tenant: all-time counters for /metrics

# What the Lua reads: each name becomes a Lua local of the same name, prefixed K_ (K_QUEUED, ...).
LUA_PREFIXES = {
    "JOB": JOB,
    "QUEUED": QUEUED,
    "TENANT_QUEUED": TENANT_QUEUED,
    "TENANT_JOBS": TENANT_JOBS,
    "BATCH": BATCH,
    "ENDED_SUFFIX": ENDED_SUFFIX,
    "WEBHOOKS_DUE": WEBHOOKS_DUE,
    "METRICS_MODELS": METRICS_MODELS,
    "METRICS_JOBS": METRICS_JOBS,
    "USAGE_TENANT": USAGE_TENANT,
    "USAGE_KEY": USAGE_KEY,
    "USAGE_KEY_IDS": USAGE_KEY_IDS,
    "METRICS_TENANTS": METRICS_TENANTS,
    "METRICS_TENANT": METRICS_TENANT,
}


def tokenizer(model: str) -> str:
    """Return the key of a model's published tokenizer (shared/tokenizer_info.py)."""
    return TOKENIZER + model


def job(job_id: str) -> str:
    """Return the key of a job's record (a hash)."""
    return JOB + job_id


def events(job_id: str) -> str:
    """Return the key of a job's event stream (tokens and state changes)."""
    return JOB + job_id + EVENTS_SUFFIX


def ended(job_id: str) -> str:
    """Return the key of a job's end: a stream of one entry, its final status (long polls block on it)."""
    return JOB + job_id + ENDED_SUFFIX


def queued(model: str) -> str:
    """Return the zset of a model's queued job ids, scored by when they were (re)queued."""
    return QUEUED + model


def worker(worker_id: str) -> str:
    """Return the key of a worker's heartbeat record."""
    return WORKER + worker_id


def idempotency(key_hash: str) -> str:
    """Return the key that maps an Idempotency-Key (hashed) to its job."""
    return IDEMPOTENCY + key_hash


def queue(model: str) -> str:
    """Return the Celery queue (and Redis list) that carries a model's jobs."""
    return f"{PREFIX}.{model}"


def tenant_queued(tenant: str) -> str:
    """Return the zset of a tenant's queued job ids (its queued-jobs cap counts these)."""
    return TENANT_QUEUED + tenant


def tenant_jobs(tenant: str) -> str:
    """Return the zset of a tenant's jobs, scored by creation time (GET /v1/jobs)."""
    return TENANT_JOBS + tenant


def api_key(digest: str) -> str:
    """Return the hash of a runtime API key, named by the key's SHA-256 (hex): its one lookup."""
    return API_KEY + digest


def api_key_id(key_id: str) -> str:
    """Return the string that maps a key's public id to its SHA-256 (hex), for revoking by id."""
    return API_KEY_ID + key_id


def tenant_limits(tenant: str) -> str:
    """Return the hash of a tenant's limits that override the global defaults."""
    return TENANT_LIMITS + tenant


def usage_tenant(tenant: str, day: int) -> str:
    """Return the hash of a tenant's usage on one UTC day (days since 1970-01-01)."""
    return f"{USAGE_TENANT}{tenant}:{day}"


def usage_key(key_id: str, day: int) -> str:
    """Return the hash of one API key's usage on one UTC day."""
    return f"{USAGE_KEY}{key_id}:{day}"


def usage_key_ids(tenant: str, day: int) -> str:
    """Return the set of the key ids a tenant's jobs that ended on one UTC day were submitted with."""
    return f"{USAGE_KEY_IDS}{tenant}:{day}"


def metrics_tenant(tenant: str) -> str:
    """Return the hash of a tenant's all-time counters for /metrics: status → jobs, and tokens."""
    return METRICS_TENANT + tenant


def batch(batch_id: str) -> str:
    """Return the key of a batch's record (a hash: tenant, created_at, total, metadata, cancelled)."""
    return BATCH + batch_id


def batch_items(batch_id: str) -> str:
    """Return the list of a batch's items in submission order, each JSON [custom_id, job_id]."""
    return BATCH + batch_id + ":items"


def metrics_jobs(model: str) -> str:
    """Return the hash of a model's finished jobs: final status → count."""
    return METRICS_JOBS + model


def metrics_histogram(name: str, model: str) -> str:
    """Return the hash that holds one histogram (bucket → count, and sum) for one model."""
    return f"{METRICS}:{name}:{model}"


WAITERS = f"{PREFIX}:waiters"  # hash: 'tenant|api process' → 'open waiters, Unix s when published'


def waiter_wake(reader: str) -> str:
    """Return the stream an API process writes to so that one of its readers re-arms its XREAD."""
    return f"{PREFIX}:waiters:wake:{reader}"
