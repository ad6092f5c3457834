"""The wire contract: what clients send, what they get back, and what the job store holds."""

from __future__ import annotations

import json
from enum import StrEnum
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    WithJsonSchema,
    field_validator,
    model_validator,
)

from shared.constraints import ConstraintFields

MAX_STOP_STRINGS = 4  # stop sequences per job (genq's API and chat; checked in api/submit.py)
MAX_STORED_STOPS = 32  # stop sequences a job may hold (/v1/completions allows more, as the harness sends)
MAX_STOP_CHARS = 64  # characters per stop sequence
MAX_METADATA_DEPTH = 8  # nesting levels of metadata objects and lists
MAX_TOP_LOGPROBS = 20  # alternatives per token a job may ask for (as OpenAI)


def _depth(value: Any) -> int:
    if isinstance(value, dict):
        return 1 + max((_depth(v) for v in value.values()), default=0)
    if isinstance(value, list):
        return 1 + max((_depth(v) for v in value), default=0)
    return 0


# Sampling bounds: inside them the sampler's arithmetic stays finite in float32 (logits of about
# ±30 divided by the smallest temperature and penalty stay far below 3.4e38); outside them, one
# job's row could turn to inf/NaN. 0 is allowed where it means "off" (greedy).
MIN_TEMPERATURE = 0.01  # smallest temperature that samples; 0 = greedy
MAX_TEMPERATURE = 5.0  # flatter than this is noise
MIN_TOP_P = 0.001  # smallest nucleus mass; below it a row is greedy in all but name
MIN_REPETITION_PENALTY = 0.01  # divides seen tokens' logits by at most 100x
MAX_REPETITION_PENALTY = 10.0
MAX_TOP_K = 100_000  # tokens; above any vocabulary genq serves


def zero_or(name: str, low: float, high: float) -> AfterValidator:
    """Check that a finite float is 0 (off: greedy) or within [low, high]; -0.0 becomes 0.0."""

    def check(value: float) -> float:
        if value == 0:
            return 0.0
        if not low <= value <= high:
            raise ValueError(f"{name} must be 0 (greedy) or from {low:g} to {high:g}")
        return value

    return AfterValidator(check)


def zero_or_schema(low: float, high: float) -> WithJsonSchema:
    """The JSON schema of zero_or's range, so the OpenAPI document states the same bounds."""
    return WithJsonSchema(
        {"anyOf": [{"type": "number", "const": 0}, {"type": "number", "minimum": low, "maximum": high}]}
    )


Temperature = Annotated[
    float,
    Field(allow_inf_nan=False),
    zero_or("temperature", MIN_TEMPERATURE, MAX_TEMPERATURE),
    zero_or_schema(MIN_TEMPERATURE, MAX_TEMPERATURE),
]


def _utf8(text: str) -> str:
    """Reject text that cannot be encoded (lone surrogates from JSON escapes like \\ud800)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("text contains a lone surrogate (invalid Unicode)") from None
    return text


class Status(StrEnum):
    """Where a job is in its life."""

    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def is_terminal(self) -> bool:
        """Return True once the job can change no more."""
        return self in TERMINAL


TERMINAL = frozenset({Status.SUCCEEDED, Status.FAILED, Status.CANCELLED})


class FinishReason(StrEnum):
    """Why generation stopped."""

    LENGTH = "length"  # max_new_tokens reached
    STOP = "stop"  # a stop string matched; the output is cut before it
    EOS = "eos"  # the model emitted an end-of-sequence token
    CANCELLED = "cancelled"  # a client cancelled it while it ran
    TIMEOUT = "timeout"  # its deadline passed while it ran (the job fails with code timeout)


class Priority(StrEnum):
    """Which queued jobs a worker takes first."""

    INTERACTIVE = "interactive"  # someone is waiting: taken before any batch job
    BATCH = "batch"  # bulk work: runs when no interactive job waits


class ErrorCode(StrEnum):
    """Machine-readable error codes, in HTTP responses and failed jobs."""

    MALFORMED_JSON = "malformed_json"
    VALIDATION_ERROR = "validation_error"
    UNKNOWN_MODEL = "unknown_model"
    BODY_TOO_LARGE = "body_too_large"
    MAX_NEW_TOKENS_EXCEEDED = "max_new_tokens_exceeded"
    PROMPT_TOO_LONG = "prompt_too_long"
    CONTEXT_LENGTH_EXCEEDED = "context_length_exceeded"
    NO_CHAT_TEMPLATE = "no_chat_template"
    NOT_FOUND = "not_found"
    METHOD_NOT_ALLOWED = "method_not_allowed"
    UNSUPPORTED_MEDIA_TYPE = "unsupported_media_type"
    NOT_CANCELLABLE = "not_cancellable"
    QUEUE_FULL = "queue_full"
    TENANT_QUEUE_FULL = "tenant_queue_full"
    RATE_LIMITED = "rate_limited"
    UNAUTHORIZED = "unauthorized"
    KEY_EXPIRED = "key_expired"  # the key was valid once; only its holder can be told so
    KEY_REVOKED = "key_revoked"
    FORBIDDEN = "forbidden"  # a valid key without the right (admin routes need an admin key)
    BUDGET_EXCEEDED = "budget_exceeded"  # the tenant's tokens for today are spent; Retry-After: midnight UTC
    IDEMPOTENCY_CONFLICT = "idempotency_conflict"
    WEBHOOKS_DISABLED = "webhooks_disabled"  # a job names a webhook but GENQ_WEBHOOK_SECRET is unset
    WEBHOOK_URL_REFUSED = "webhook_url_refused"  # the URL resolves to a private address, or not at all
    BATCH_TOO_LARGE = "batch_too_large"  # more items than GENQ_MAX_BATCH_ITEMS, or than a queued cap
    BATCH_IN_PROGRESS = "batch_in_progress"  # its results are asked for before every job ended
    EXPIRED = "expired"  # the deadline passed while the job was queued; it never ran
    TIMEOUT = "timeout"  # the deadline passed while it ran; partial text kept
    WORKER_LOST = "worker_lost"  # its worker died on every attempt
    # This job's own row went wrong; the other jobs of its batch went on (see docs/faults.md).
    SAMPLING_FAILED = "sampling_failed"  # its logits or probabilities were not finite, or sampling raised
    DECODE_FAILED = "decode_failed"  # turning its tokens into text (or matching its stop strings) raised
    FORWARD_FAILED = (
        "forward_failed"  # the model's forward pass raised (out of memory, say) while it ran alone
    )
    STORE_FULL = "store_full"  # Redis reached its maxmemory; nothing was stored
    TOO_MANY_WAITERS = "too_many_waiters"  # open streams + long polls past a tenant's or a process's cap
    SERVICE_UNAVAILABLE = "service_unavailable"
    TOKENIZER_UNAVAILABLE = "tokenizer_unavailable"  # no worker of the model has published its tokenizer yet
    GRAMMAR_INVALID = "grammar_invalid"  # the job's constraint cannot be compiled by the worker
    GRAMMAR_TOO_COMPLEX = "grammar_too_complex"  # its constraint exceeds the work limits (compile time, fuel)
    INTERNAL = "internal_error"


class Role(StrEnum):
    """Speaker of a chat message."""

    SYSTEM = "system"
    USER = "user"
    ASSISTANT = "assistant"


class Message(BaseModel):
    """One chat message; the worker renders the list with the model's chat template."""

    model_config = ConfigDict(extra="forbid")

    role: Role
    content: Annotated[str, Field(max_length=1_000_000)]


class GenerationParams(BaseModel):
    """Decoding knobs; each applies to its own job only."""

    model_config = ConfigDict(extra="forbid")

    max_new_tokens: Annotated[int, Field(ge=0)] | None = None  # None = the model's default; 0 only with echo
    # 0 = greedy; < 1 sharper, > 1 flatter
    temperature: Temperature = 1.0
    # nucleus mass kept; 1.0 = all tokens
    top_p: Annotated[float, Field(ge=MIN_TOP_P, le=1.0, allow_inf_nan=False)] = 1.0
    top_k: Annotated[int, Field(ge=0, le=MAX_TOP_K)] = 0  # keep the k likeliest tokens; 0 = all
    # > 1 discourages repeats, < 1 encourages them; 1.0 = off
    repetition_penalty: Annotated[
        float, Field(ge=MIN_REPETITION_PENALTY, le=MAX_REPETITION_PENALTY, allow_inf_nan=False)
    ] = 1.0
    do_sample: bool | None = None  # None = sample when temperature > 0; False forces greedy
    seed: Annotated[int, Field(ge=0, le=2**63 - 1)] | None = None  # same seed and input, same text
    stop: list[Annotated[str, Field(min_length=1, max_length=MAX_STOP_CHARS)]] = Field(
        default_factory=list, max_length=MAX_STORED_STOPS
    )  # output is cut before the first match
    ignore_eos: bool = False  # keep generating to max_new_tokens (fixed work for benchmarks)

    @field_validator("stop", mode="before")
    @classmethod
    def _stop_as_list(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value

    @property
    def sampling(self) -> bool:
        """Return True when tokens are drawn at random rather than greedily."""
        return self.temperature > 0 and self.do_sample is not False


class WebhookEvent(StrEnum):
    """When genq POSTs a job (or a batch) to its webhook."""

    # A job: a worker began running it (again, if its first worker died). A batch: its first job did.
    STARTED = "started"
    # A job: it reached a terminal state (succeeded, failed or cancelled). A batch: its last job did.
    COMPLETED = "completed"


class Webhook(BaseModel):
    """Where and when to POST the job; the address is checked at submission and at each delivery."""

    model_config = ConfigDict(extra="forbid")

    url: Annotated[str, Field(max_length=2048, pattern=r"^https?://")]
    events: Annotated[list[WebhookEvent], Field(min_length=1, json_schema_extra={"uniqueItems": True})] = [
        WebhookEvent.COMPLETED
    ]

    @field_validator("url")
    @classmethod
    def _url_parts(cls, value: str) -> str:
        parts = urlsplit(value)
        try:
            parts.port  # noqa: B018 - raises ValueError on a bad port
        except ValueError:
            raise ValueError("the URL's port is not a number from 0 to 65535") from None
        if not parts.hostname or any(c.isspace() for c in value):
            raise ValueError("the URL needs a host and no whitespace")
        if parts.username is not None:
            raise ValueError("the URL must not carry credentials (user:password@)")
        return value

    @field_validator("events")
    @classmethod
    def _unique_events(cls, value: list[WebhookEvent]) -> list[WebhookEvent]:
        if len(set(value)) != len(value):
            raise ValueError("events must not repeat")
        return value


class JobCreate(GenerationParams, ConstraintFields):
    """A client's request for one generation job."""

    # The schema says what _one_input enforces, so generated clients and fuzzers send valid jobs.
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"oneOf": [{"required": ["prompt"]}, {"required": ["messages"]}]},
    )

    model: Annotated[str, Field(min_length=1, max_length=64)] | None = None  # None = catalog's first
    prompt: str | None = None  # plain text, continued as is
    prompt_ids: Annotated[list[Annotated[int, Field(ge=0)]], Field(min_length=1)] | None = (
        None  # token ids, as sent
    )
    messages: list[Message] | None = None  # chat, rendered with the model's chat template
    metadata: dict[str, Any] | None = None  # echoed back unchanged
    priority: Priority = Priority.INTERACTIVE
    timeout_s: Annotated[float, Field(gt=0, allow_inf_nan=False)] | None = (
        None  # deadline from submission; capped by settings
    )
    webhook: Webhook | None = None  # POST the job there on these events, signed (see shared/webhooks.py)
    logprobs: bool = False  # output.logprobs: each new token's log-probability (raw logits)
    top_logprobs: Annotated[int, Field(ge=0, le=MAX_TOP_LOGPROBS)] = 0  # alternatives per token
    echo: bool = False  # output.prompt_logprobs: each prompt token's log-probability given those before

    @field_validator("prompt")
    @classmethod
    def _prompt_utf8(cls, value: str | None) -> str | None:
        return value if value is None else _utf8(value)

    @field_validator("metadata")
    @classmethod
    def _metadata_shape(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        if value is None:
            return None
        if _depth(value) > MAX_METADATA_DEPTH:
            raise ValueError(f"metadata nests deeper than {MAX_METADATA_DEPTH} levels")
        _utf8(json.dumps(value, ensure_ascii=False))
        return value

    @model_validator(mode="after")
    def _one_input(self) -> JobCreate:
        if [self.prompt, self.messages, self.prompt_ids].count(None) != 2:
            raise ValueError("give exactly one of 'prompt', 'prompt_ids' or 'messages'")
        if self.prompt is not None and not self.prompt:
            raise ValueError("'prompt' must not be empty")
        if self.messages is not None and not self.messages:
            raise ValueError("'messages' must not be empty")
        return self


class JobError(BaseModel):
    """Why a job failed."""

    code: ErrorCode | str
    message: str


class TopLogprob(BaseModel):
    """One alternative token and its log-probability."""

    token: str
    id: int
    logprob: float


class TokenLogprob(TopLogprob):
    """One token's log-probability (None for a prompt's first token) and its top alternatives."""

    logprob: float | None  # type: ignore[assignment]  # a prompt's first token has none
    top_logprobs: list[TopLogprob] = []


class Output(BaseModel):
    """The generated text and why it ended."""

    text: str
    finish_reason: FinishReason
    # Present only when the job asked (absent, not null, otherwise: outputs stay as they were).
    logprobs: list[TokenLogprob] | None = Field(default=None, exclude_if=lambda v: v is None)  # per new token
    prompt_logprobs: list[TokenLogprob] | None = Field(default=None, exclude_if=lambda v: v is None)  # echo


class Usage(BaseModel):
    """Token counts."""

    prompt_tokens: int
    completion_tokens: int


class Timings(BaseModel):
    """Where the time went, in milliseconds."""

    queued: float | None = None  # created → picked up by a worker
    tokenize: float | None = None
    generate: float | None = None
    decode: float | None = None
    total: float | None = None  # created → finished
    time_to_first_token: float | None = None  # created → first token generated (queue wait included)
    tokens_per_second: float | None = None  # completion tokens / generate time


class WebhookDelivery(BaseModel):
    """How one webhook event's delivery went."""

    status: Literal["pending", "delivered", "failed"]  # failed = refused, or every attempt failed
    attempts: int = 0  # POSTs tried so far
    last_error: str | None = None  # why the latest attempt failed


class JobPublic(BaseModel):
    """A job as clients see it."""

    id: str
    object: Literal["job"] = "job"
    status: Status
    model: str
    created_at: float  # Unix seconds
    started_at: float | None = None
    finished_at: float | None = None
    output: Output | None = None
    usage: Usage | None = None
    timings: Timings | None = None
    worker: str | None = None
    device: str | None = None
    seed: int | None = None  # the seed actually used, so a sampled job can be replayed
    error: JobError | None = None
    metadata: dict[str, Any] | None = None
    priority: Priority = Priority.INTERACTIVE
    attempts: int = 0  # times a worker started it (more than 1 after a worker died)
    deadline: float | None = None  # Unix seconds; queued past it → expired, running past it → timeout
    webhook_deliveries: dict[WebhookEvent, WebhookDelivery] | None = None  # only for jobs with a webhook
    batch_id: str | None = None  # the batch it belongs to, if any


class JobListQuery(BaseModel):
    """Query parameters of GET /v1/jobs."""

    model_config = ConfigDict(extra="forbid")

    status: Status | None = None
    limit: Annotated[int, Field(ge=1, le=100)] = 20
    cursor: float | None = None  # next_cursor of the previous page


class JobList(BaseModel):
    """GET /v1/jobs: the caller's jobs, newest first."""

    object: Literal["list"] = "list"
    data: list[JobPublic]
    next_cursor: float | None = None  # pass as ?cursor= for the next page; null on the last one


class ModelPublic(BaseModel):
    """A catalog model and how many ready workers serve it (also OpenAI's model shape)."""

    id: str  # OpenAI clients read the name here; always equal to name
    name: str
    object: Literal["model"] = "model"
    created: int = 0  # Unix seconds, as OpenAI clients expect; genq's catalog has no dates
    owned_by: str = "genq"
    context_length: int
    max_new_tokens_cap: int
    ready_workers: int


class ModelList(BaseModel):
    """GET /v1/models."""

    object: Literal["list"] = "list"
    data: list[ModelPublic]


class ErrorDetail(BaseModel):
    """One problem with one field of a request."""

    field: str
    message: str


class ErrorBody(BaseModel):
    """The body of every error response."""

    code: ErrorCode
    message: str
    details: list[ErrorDetail] | None = None


class ErrorResponse(BaseModel):
    """Every 4xx/5xx response is {"error": {...}}."""

    error: ErrorBody


class Health(BaseModel):
    """GET /healthz and /readyz."""

    status: Literal["ok", "unavailable"]
    reason: str | None = None
    ready_workers: int | None = None


# --- batches ------------------------------------------------------------------
MAX_CUSTOM_ID_CHARS = 64  # characters of a batch item's custom_id


class BatchStatus(StrEnum):
    """Where a batch is in its life."""

    IN_PROGRESS = "in_progress"  # some of its jobs have not ended
    COMPLETED = "completed"  # every job has ended
    CANCELLED = "cancelled"  # a client cancelled it and every job has ended


class BatchFormat(StrEnum):
    """How a batch's items were written, and so how its results download is written by default."""

    GENQ = "genq"  # genq job requests, each with a custom_id; results are BatchResult lines
    OPENAI = "openai"  # OpenAI batch input lines; results are OpenAI batch output lines


class BatchItem(JobCreate):
    """One job of a batch: a job request plus the caller's id for it (unique within the batch)."""

    custom_id: Annotated[str, Field(min_length=1, max_length=MAX_CUSTOM_ID_CHARS)]


class BatchOptions(BaseModel):
    """What a batch carries besides its jobs: metadata, and a webhook for the batch as a whole."""

    model_config = ConfigDict(extra="forbid")

    metadata: dict[str, Any] | None = None  # echoed back unchanged
    webhook: Webhook | None = None  # POST the batch there when its first job starts / its last one ends

    @field_validator("metadata")
    @classmethod
    def _metadata_shape(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        if value is not None and _depth(value) > MAX_METADATA_DEPTH:
            raise ValueError(f"metadata nests deeper than {MAX_METADATA_DEPTH} levels")
        if value is not None:
            _utf8(json.dumps(value, ensure_ascii=False))
        return value


class BatchCreate(BatchOptions):
    """POST /v1/batches as JSON: the jobs (each runs at batch priority), metadata and a webhook."""

    requests: Annotated[list[BatchItem], Field(min_length=1)]  # at most GENQ_MAX_BATCH_ITEMS


class BatchCounts(BaseModel):
    """How many of a batch's jobs are in each state."""

    total: int = 0
    queued: int = 0
    running: int = 0
    succeeded: int = 0
    failed: int = 0
    cancelled: int = 0


class BatchResult(BaseModel):
    """The outcome of one batch item (also one line of the JSONL download)."""

    custom_id: str
    job_id: str
    status: Status
    output: Output | None = None
    usage: Usage | None = None
    error: JobError | None = None


class BatchPublic(BaseModel):
    """A batch as clients see it; results, in submission order, once every job has ended."""

    id: str
    object: Literal["batch"] = "batch"
    status: BatchStatus
    format: BatchFormat = BatchFormat.GENQ  # its items' format: the default of its results download
    created_at: float  # Unix seconds
    started_at: float | None = None  # when a worker first started one of its jobs
    finished_at: float | None = None  # when its last job ended
    counts: BatchCounts
    metadata: dict[str, Any] | None = None
    results: list[BatchResult] | None = None
    webhook_deliveries: dict[WebhookEvent, WebhookDelivery] | None = None  # only for batches with a webhook
