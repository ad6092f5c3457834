"""Fencing: a worker that stopped without dying (paused, cut off) cannot write for a job it lost.

Every write a worker makes for a job carries the attempt its claim made; Redis drops the write
once the job has moved to another attempt or ended. Leases are timed by Redis's clock.
"""

from __future__ import annotations

import json
import signal
import time

import pytest

from genq.client import Client
from shared import keys, metrics
from shared.jobstore import JobStore, new_job_id
from shared.schemas import JobCreate, Status
from shared.settings import Settings
from tests.support import wait_until

SKEW_S = 300.0  # a worker host's clock off by five minutes
LONG_TOKENS = 60_000  # a job that outlasts several leases however fast this host runs the tiny model


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """Short leases, so that a paused worker loses its jobs within seconds; very long tiny jobs."""
    # The tiny model makes ~700 tokens/s on a quiet host: 7,000 tokens ended within three leases.
    tiny = settings.models[0].model_copy(update={"context_length": 65_536, "max_new_tokens_cap": 65_000})
    update = {"lease_seconds": 3.0, "heartbeat_interval": 0.5, "worker_ttl": 2.0}
    return settings.model_copy(update={**update, "models": [tiny, *settings.models[1:]]})


def stream_text(store: JobStore, job_id: str) -> str:
    """Read a job's stream as clients are told to: append tokens, drop the text on a reset."""
    text = ""
    for _, event in store.r.xrange(keys.events(job_id)):
        if event["type"] == "token":
            text += event["data"]
        elif event["type"] == "reset":
            text = ""
    return text


def _lapse_and_requeue(store: JobStore, job_id: str) -> None:
    store.r.zadd(keys.RUNNING, {job_id: 0}, xx=True)  # its lease lapsed long ago
    assert store.requeue(job_id, max_attempts=5) == "requeued"


# --- the job store's fenced steps -----------------------------------------------
def test_a_claim_returns_the_record_as_claimed_in_the_same_step(store: JobStore) -> None:
    job_id = new_job_id()
    store.create(job_id, "tiny", JobCreate(prompt="x", max_new_tokens=1, metadata={"k": "v"}))
    claim = store.claim(job_id, "w1", "cpu")
    assert claim.record is not None and claim.record.status is Status.RUNNING
    assert (claim.record.worker, claim.record.device, claim.record.attempts) == ("w1", "cpu", 1)
    assert claim.record.started_at is not None and claim.record.metadata == {"k": "v"}
    assert claim.record.job.max_new_tokens == 1
    assert claim.record == store.record(job_id)  # exactly what is stored
    assert store.claim(job_id, "w2", "cpu") == type(claim)("running")  # a second claim gets no record


def test_writes_of_an_attempt_that_lost_the_job_are_dropped(store: JobStore) -> None:
    job_id = new_job_id()
    store.create(job_id, "tiny", JobCreate(prompt="x"))
    assert store.claim(job_id, "w1", "cpu").attempt == 1
    assert store.publish_tokens({job_id: "old "}, {job_id: 1}) == set()
    _lapse_and_requeue(store, job_id)
    assert store.publish_tokens({job_id: "zombie "}, {job_id: 1}) == {job_id}  # queued again: not ours
    # The same worker may claim it again: its worker id alone would not fence the old attempt.
    assert store.claim(job_id, "w1", "cpu").attempt == 2
    other = new_job_id()
    store.create(other, "tiny", JobCreate(prompt="y"))
    assert store.claim(other, "w1", "cpu").attempt == 1
    # One step for several rows: the stale row is refused, the others go through.
    lost = store.publish_tokens({job_id: "zombie ", other: "fine "}, {job_id: 1, other: 1})
    assert lost == {job_id}
    assert store.publish_tokens({job_id: "new "}, {job_id: 2}) == set()
    assert stream_text(store, job_id) == "new " and stream_text(store, other) == "fine "
    assert store.renew({job_id: 1, other: 1}, lease_s=30) == {job_id}
    ops = metrics.job_ops("tiny", latency_s=1.0, completion_tokens=7)
    assert not store.finish(
        job_id,
        Status.SUCCEEDED,
        holder="w1",
        attempt=1,
        metrics=ops,
        output={"text": "1", "finish_reason": "length"},
    )
    assert store.r.hget(metrics.TOKENS, "tiny") is None  # a fenced-out result counts nothing
    assert store.finish(
        job_id,
        Status.SUCCEEDED,
        holder="w1",
        attempt=2,
        metrics=ops,
        output={"text": "2", "finish_reason": "length"},
    )
    assert store.r.hget(metrics.TOKENS, "tiny") == "7"
    assert store.get(job_id).output.text == "2"
    # Ended: nothing more is appended, and the lease is not renewed.
    assert store.publish_tokens({job_id: "late "}, {job_id: 2}) == {job_id}
    assert store.renew({job_id: 2}, lease_s=30) == {job_id}
    assert store.r.zscore(keys.RUNNING, job_id) is None
    events = [e["type"] for _, e in store.r.xrange(keys.events(job_id))]
    assert events[-1] == "done" and events.count("done") == 1


def test_a_publish_retried_after_a_lost_reply_appends_nothing_twice(store: JobStore) -> None:
    job_id = new_job_id()
    store.create(job_id, "tiny", JobCreate(prompt="x"))
    assert store.claim(job_id, "w", "cpu").outcome == "claimed"
    assert store.publish_tokens({job_id: "héllo "}, {job_id: 1}, {job_id: 0}) == set()
    # Its reply was lost (Redis died after fsyncing it): the worker sends it again, with what came since.
    assert store.publish_tokens({job_id: "héllo world"}, {job_id: 1}, {job_id: 0}) == set()
    assert store.publish_tokens({job_id: "!"}, {job_id: 1}, {job_id: len("héllo world".encode())}) == set()
    tokens = [e["data"] for _, e in store.r.xrange(keys.events(job_id)) if e["type"] == "token"]
    assert tokens == ["héllo ", "world", "!"]


def test_leases_are_timed_by_redis_clock_not_the_workers(store: JobStore) -> None:
    skewed = JobStore(store.r, store.ttl_s, clock=lambda: time.time() - SKEW_S)
    job_id = new_job_id()
    skewed.create(job_id, "tiny", JobCreate(prompt="x"))
    assert skewed.claim(job_id, "w", "cpu", lease_s=30).outcome == "claimed"
    seconds, micros = store.r.time()
    redis_now = seconds + micros / 1e6
    lease = store.r.zscore(keys.RUNNING, job_id)
    assert redis_now + 25 < lease <= redis_now + 30
    assert skewed.renew({job_id: 1}, lease_s=10) == set()
    assert redis_now + 5 < store.r.zscore(keys.RUNNING, job_id) <= redis_now + 11
    assert skewed.requeue(job_id, max_attempts=3) == "alive"


# --- live workers ------------------------------------------------------------------
def _running_on(store: JobStore, pid: int) -> list[str]:
    running = store.r.zrange(keys.RUNNING, 0, -1)
    return [j for j in running if (store.r.hget(keys.job(j), "worker") or "").endswith(f":{pid}")]


@pytest.mark.slow
@pytest.mark.timeout(600)  # two workers start, then six jobs rerun one at a time
def test_a_paused_worker_wakes_up_fenced_and_drops_its_lost_rows(
    start_worker, client: Client, store: JobStore
) -> None:
    """The issue's scenario: SIGSTOP one of two workers past its lease, then SIGCONT it."""
    paused, other = start_worker(), start_worker()
    ids = [
        client.submit(f"Job {i}: once upon a time", max_new_tokens=600, ignore_eos=True, temperature=0)["id"]
        for i in range(12)
    ]
    wait_until(lambda: _running_on(store, paused.pid) and _running_on(store, other.pid), 60, "both busy")
    held = _running_on(store, paused.pid)
    paused.signal(signal.SIGSTOP)
    try:
        # Its leases lapse and the other worker's reconciler requeues its jobs, which run there.
        wait_until(
            lambda: store.raw(held[0])["status"] != "running" or store.raw(held[0])["attempts"] != "1",
            30,
            "the paused worker's job to be requeued",
            0.2,
        )
        time.sleep(3)
    finally:
        paused.signal(signal.SIGCONT)
    done = [client.wait(job_id, 240) for job_id in ids]
    assert all(j["status"] == "succeeded" for j in done), [j["error"] for j in done]
    for job in done:
        events = store.r.xrange(keys.events(job["id"]))
        assert sum(1 for _, e in events if e["type"] == "done") == 1, f"{job['id']} ended twice"
        assert stream_text(store, job["id"]) == job["output"]["text"], f"{job['id']}: stream differs"
        assert job["usage"]["completion_tokens"] == 600
    assert all(store.get(j).attempts >= 2 for j in held)
    wait_until(lambda: "no longer ours" in paused.log(), 30, "the resumed worker to log its dropped rows")
    assert paused.proc.poll() is None  # it dropped the rows, not itself


@pytest.mark.slow
@pytest.mark.parametrize("skew_s", [-SKEW_S, SKEW_S])
def test_a_worker_with_a_skewed_clock_keeps_its_leases_exactly_as_long_as_redis_says(
    skew_s: float, start_worker, client: Client, store: JobStore, settings: Settings
) -> None:
    skewed = start_worker(test_clock_skew_s=skew_s)
    job_id = client.submit("once upon a time", max_new_tokens=LONG_TOKENS, ignore_eos=True, temperature=0)[
        "id"
    ]
    wait_until(lambda: _running_on(store, skewed.pid), 30, "the job to run on the skewed worker")
    start_worker()  # a sweeping reconciler on a true clock
    # Not lost early: three leases on, it still runs at its first attempt, never reset.
    time.sleep(3 * settings.lease_seconds)
    record = store.raw(job_id)
    assert record["status"] == "running" and record["attempts"] == "1", record
    assert "reset" not in [e["type"] for _, e in store.r.xrange(keys.events(job_id))]
    # Not kept too long: once the skewed worker dies, its job runs again within about a lease,
    # not after the five minutes its clock is ahead.
    skewed.signal(signal.SIGKILL)
    killed = time.monotonic()
    wait_until(
        lambda: store.raw(job_id)["attempts"] == "2", 5 * settings.lease_seconds, "the job to run again", 0.1
    )
    assert time.monotonic() - killed < 5 * settings.lease_seconds
    assert client.cancel(job_id)["status"] in ("running", "cancelled")
    assert client.wait(job_id, 60)["status"] == "cancelled"


def test_a_worker_learns_at_its_next_step_that_another_attempt_took_its_job(
    start_worker, client: Client, store: JobStore, settings: Settings
) -> None:
    worker = start_worker()
    job_id = client.submit("once upon a time", max_new_tokens=7000, ignore_eos=True, temperature=0)["id"]
    wait_until(lambda: _running_on(store, worker.pid), 30, "the job to run")
    # Another attempt holds the job now, as if it had been requeued and claimed elsewhere.
    store.r.hincrby(keys.job(job_id), "attempts", 1)
    wait_until(lambda: "no longer ours" in worker.log(), 10 * settings.lease_seconds, "the row to be dropped")
    assert "job dropped" in worker.log()
    lines = [json.loads(x) for x in worker.log().splitlines() if x.startswith("{")]
    assert any(x.get("event") == "job dropped" and x.get("job_id") == job_id for x in lines)
    record = store.raw(job_id)
    assert record["status"] == "running" and "output" not in record  # nothing of attempt 1 stored
    assert worker.proc.poll() is None
    client.cancel(job_id)
    assert client.wait(job_id, 60)["status"] == "cancelled"
