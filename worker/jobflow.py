"""One job's path through a worker, as plain functions: record → engine Request, Result → Outcome.

No Redis, no Celery, no threads here: worker/runtime.py (the process) claims the record, encodes the
input, submits the Request to the engine and stores the Outcome. Tests call these functions with
plain objects (tests/test_jobflow.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from shared.records import JobRecord
from shared.schemas import ErrorCode, FinishReason, JobCreate, Status
from worker.engine import Request, Result
from worker.sampling import RowParams

TIMEOUT_MESSAGE = "the job's deadline passed while it ran; output holds the text made so far"


def row_params(job: JobCreate) -> RowParams:
    """Return the engine's decoding parameters of an accepted job."""
    return RowParams(
        sampling=job.sampling,
        # Temperature 0 means greedy (sampling is off); the engine still wants a positive divisor.
        temperature=job.temperature or 1.0,
        top_k=job.top_k,
        top_p=job.top_p,
        repetition_penalty=job.repetition_penalty,
    )


def engine_request(record: JobRecord, input_ids: list[int]) -> Request:
    """Return the engine Request of a claimed job whose input has been encoded to input_ids.

    Defaults were resolved when the job was accepted (api/submit.py, JobRecord.new): nothing is
    re-derived here. A greedy job has no seed and needs none.
    """
    job = record.job
    if job.max_new_tokens is None:
        raise ValueError(f"job {record.id} has no max_new_tokens: it is resolved at acceptance")
    return Request(
        record.id,
        input_ids,
        job.max_new_tokens,
        row_params(job),
        job.seed if job.seed is not None else 0,
        list(job.stop),
        job.ignore_eos,
        deadline=record.deadline,
        solo=record.isolate,
    )


@dataclass(frozen=True)
class Outcome:
    """What a finished run stores on its job, and the figures it adds to the metrics."""

    status: Status
    error: dict[str, Any] | None
    output: dict[str, Any]
    usage: dict[str, int]
    timings: dict[str, float | None]  # milliseconds, as stored on the job
    seed: int | None  # reported only for a sampled job (a greedy one used none)
    ttft_s: float | None  # submission → first token
    tokens_per_s: float | None

    def fields(self) -> dict[str, Any]:
        """Return the fields JobStore.finish stores beside the status."""
        return {
            "error": self.error,
            "output": self.output,
            "usage": self.usage,
            "timings": self.timings,
            "seed": None if self.seed is None else str(self.seed),
        }


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 2)


def outcome(
    record: JobRecord, req: Request, result: Result, started: float, finished: float, tokenize_s: float
) -> Outcome:
    """Return the stored outcome of a run: status, error code, output with its finish reason, usage, timings.

    started and finished are Unix seconds (claim, result); tokenize_s is how long encoding took.
    """
    status, error = Status.SUCCEEDED, None
    if result.finish_reason is FinishReason.CANCELLED:
        status = Status.CANCELLED
    elif result.finish_reason is FinishReason.TIMEOUT:
        status, error = Status.FAILED, {"code": ErrorCode.TIMEOUT.value, "message": TIMEOUT_MESSAGE}
    created_at = record.created_at
    # The engine times from admission: its first token came (generate - first_token) + decode
    # seconds before the result did.
    ttft_s = (
        None
        if result.first_token_s is None
        else finished - result.decode_s - (result.generate_s - result.first_token_s) - created_at
    )
    tokens_per_s = result.completion_tokens / result.generate_s if result.generate_s > 0 else None
    timings = {
        "queued": _ms(started - created_at),
        "tokenize": _ms(tokenize_s),
        "generate": _ms(result.generate_s),
        "decode": _ms(result.decode_s),
        "total": _ms(finished - created_at),
        "time_to_first_token": _ms(ttft_s),
        "tokens_per_second": round(tokens_per_s, 2) if tokens_per_s is not None else None,
    }
    return Outcome(
        status=status,
        error=error,
        output={"text": result.text, "finish_reason": result.finish_reason.value},
        usage={"prompt_tokens": result.prompt_tokens, "completion_tokens": result.completion_tokens},
        timings=timings,
        seed=req.seed if req.params.sampling else None,
        ttft_s=ttft_s,
        tokens_per_s=tokens_per_s,
    )


def failure(code: ErrorCode, message: str) -> dict[str, str]:
    """Return the stored error of a job that failed before producing a result."""
    return {"code": code.value, "message": message}
