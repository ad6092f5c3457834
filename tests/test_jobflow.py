"""One job's path as plain functions (worker/jobflow.py) and its record (shared/records.py): no Redis."""

from __future__ import annotations

import json

import pytest

from shared.records import JobRecord
from shared.schemas import ErrorCode, FinishReason, JobCreate, JobPublic, Priority, Status
from worker import jobflow
from worker.engine import Result

NOW = 1_700_000_000.0  # Unix seconds: the job's created_at in these tests


def accepted(deadline: float | None = NOW + 60, **fields: object) -> JobRecord:
    """Return the record of a job accepted as the API accepts one (model and max_new_tokens filled in)."""
    request = JobCreate.model_validate({"prompt": "Hi", "model": "tiny", "max_new_tokens": 7, **fields})
    return JobRecord.new("job_" + "a" * 32, "tiny", request, NOW, deadline, "acme")


def result(reason: FinishReason = FinishReason.LENGTH, first_token_s: float | None = 0.5) -> Result:
    return Result("text", reason, 3, 7, generate_s=2.0, decode_s=0.25, first_token_s=first_token_s)


def test_greedy_record_becomes_an_engine_request() -> None:
    rec = accepted(temperature=0, stop=["\n"], ignore_eos=True)
    req = jobflow.engine_request(rec, [1, 2, 3])
    assert (req.id, req.input_ids, req.max_new_tokens) == (rec.id, [1, 2, 3], 7)
    assert req.params.sampling is False and req.params.temperature == 1.0  # no zero divisor
    assert (req.stop, req.ignore_eos, req.deadline, req.solo) == (["\n"], True, NOW + 60, False)


def test_sampled_record_carries_its_knobs_and_the_seed_drawn_at_acceptance() -> None:
    rec = accepted(temperature=0.7, top_k=40, top_p=0.9, repetition_penalty=1.2)
    seed = rec.request["seed"]  # drawn once, when the job was accepted: a rerun repeats the text
    assert isinstance(seed, int) and 0 <= seed < 2**63
    req = jobflow.engine_request(rec, [5])
    assert req.seed == seed and jobflow.engine_request(rec, [5]).seed == seed
    p = req.params
    assert (p.sampling, p.temperature, p.top_k, p.top_p, p.repetition_penalty) == (True, 0.7, 40, 0.9, 1.2)
    assert jobflow.engine_request(accepted(seed=42), [5]).seed == 42


def test_a_requeued_record_runs_alone() -> None:
    h = accepted().to_hash() | {"status": "queued", "isolate": "1", "attempts": "1"}
    rec = JobRecord.from_hash("job_" + "b" * 32, h)
    assert rec is not None and jobflow.engine_request(rec, [1]).solo is True


def test_a_record_without_max_new_tokens_is_refused_not_guessed() -> None:
    rec = JobRecord.new("job_" + "c" * 32, "tiny", JobCreate(prompt="x"), NOW, None)
    with pytest.raises(ValueError, match="max_new_tokens"):
        jobflow.engine_request(rec, [1])


@pytest.mark.parametrize(
    ("reason", "status", "code"),
    [
        (FinishReason.LENGTH, Status.SUCCEEDED, None),
        (FinishReason.STOP, Status.SUCCEEDED, None),
        (FinishReason.EOS, Status.SUCCEEDED, None),
        (FinishReason.CANCELLED, Status.CANCELLED, None),
        (FinishReason.TIMEOUT, Status.FAILED, ErrorCode.TIMEOUT.value),
    ],
)
def test_result_becomes_the_stored_outcome(reason: FinishReason, status: Status, code: str | None) -> None:
    rec = accepted(temperature=0)
    req = jobflow.engine_request(rec, [1, 2, 3])
    out = jobflow.outcome(rec, req, result(reason), started=NOW + 1, finished=NOW + 4, tokenize_s=0.01)
    assert out.status is status
    assert (out.error or {}).get("code") == code
    assert out.output == {"text": "text", "finish_reason": reason.value}  # a timeout keeps its text
    assert out.usage == {"prompt_tokens": 3, "completion_tokens": 7}
    assert out.seed is None and out.fields()["seed"] is None  # greedy: no seed to report


def test_outcome_timings_in_milliseconds() -> None:
    rec = accepted(seed=9)
    req = jobflow.engine_request(rec, [1])
    out = jobflow.outcome(rec, req, result(), started=NOW + 1, finished=NOW + 4, tokenize_s=0.01)
    # The first token came 1.5 s (generate - first token) + 0.25 s (decode) before the result.
    assert out.ttft_s == pytest.approx(4 - 0.25 - 1.5)
    assert out.tokens_per_s == pytest.approx(3.5)
    assert out.timings == {
        "queued": 1000.0,
        "tokenize": 10.0,
        "generate": 2000.0,
        "decode": 250.0,
        "total": 4000.0,
        "time_to_first_token": 2250.0,
        "tokens_per_second": 3.5,
    }
    assert out.fields()["seed"] == "9"  # sampled: the seed is reported, so the job can be replayed
    no_token = jobflow.outcome(rec, req, result(first_token_s=None), NOW + 1, NOW + 4, 0.01)
    assert no_token.ttft_s is None and no_token.timings["time_to_first_token"] is None


def test_record_round_trips_through_its_hash() -> None:
    rec = accepted(metadata={"k": [1, 2]}, webhook={"url": "https://example.com/h", "events": ["started"]})
    h = rec.to_hash()
    assert h["attempts"] == "0" and h["status"] == "queued" and h["tenant"] == "acme"
    assert h["webhook_events"] == "started" and "metadata" in h and "output" not in h
    assert JobRecord.from_hash(rec.id, h) == rec
    assert json.loads(h["request"])["model"] == "tiny" and "webhook" not in json.loads(h["request"])
    assert JobRecord.from_hash(rec.id, {}) is None


def test_public_view_of_a_finished_record() -> None:
    h = accepted(temperature=0, metadata={"t": 1}).to_hash() | {
        "status": "succeeded",
        "started_at": repr(NOW + 1),
        "finished_at": repr(NOW + 4),
        "worker": "tiny@h:1",
        "device": "cpu",
        "attempts": "1",
        "output": json.dumps({"text": "x", "finish_reason": "length"}),
        "usage": json.dumps({"prompt_tokens": 3, "completion_tokens": 7}),
        "seed": "5",
        "webhook:completed": json.dumps({"status": "delivered", "attempts": 1}),
        "batch": "batch_" + "d" * 32,
    }
    public = JobRecord.from_hash("job_" + "e" * 32, h).public()
    assert isinstance(public, JobPublic) and public.priority is Priority.INTERACTIVE
    body = public.model_dump(mode="json")
    assert body["status"] == "succeeded" and body["created_at"] == NOW and body["finished_at"] == NOW + 4
    assert body["output"] == {"text": "x", "finish_reason": "length"} and body["seed"] == 5
    assert body["attempts"] == 1 and body["deadline"] == NOW + 60 and body["metadata"] == {"t": 1}
    assert body["webhook_deliveries"]["completed"]["status"] == "delivered"
    assert body["batch_id"] == "batch_" + "d" * 32 and body["error"] is None


def test_failure_is_an_error_code_and_message() -> None:
    assert jobflow.failure(ErrorCode.INTERNAL, "boom") == {"code": "internal_error", "message": "boom"}
