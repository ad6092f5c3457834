"""Backpressure, deadlines, priorities, idempotency and the reconciler, against real Redis and workers."""

from __future__ import annotations

import json
import time

import pytest

from genq.client import Client
from shared import keys
from shared.celery_app import make_celery, queue_lists
from shared.jobstore import ABANDONED_KEY_S, JobStore, new_job_id
from shared.reconciler import Reconciler
from shared.schemas import JobCreate, Status
from shared.settings import Settings
from tests.support import wait_until


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """Short leases, so that recovery happens within seconds."""
    return settings.model_copy(update={"lease_seconds": 3.0, "heartbeat_interval": 0.5, "worker_ttl": 3.0})


def _messages(store: JobStore, queue: str = "genq.tiny") -> int:
    return sum(store.r.llen(name) for name in queue_lists(queue))


# --- backpressure -------------------------------------------------------------
def test_queue_full_answers_429_and_stores_nothing(app, http, store: JobStore, settings: Settings) -> None:
    app.extensions["genq"].settings = settings.model_copy(update={"max_queued": 3})
    accepted = [http.post("/v1/jobs", json={"prompt": "x"}) for _ in range(3)]
    assert [r.status_code for r in accepted] == [202] * 3
    full = http.post("/v1/jobs", json={"prompt": "x"})
    assert full.status_code == 429
    assert full.json["error"]["code"] == "queue_full" and full.headers["Retry-After"]
    assert len(store.r.keys("genq:job:*")) == 3 and _messages(store) == 3
    # The limit is per model: the other model still takes jobs.
    assert http.post("/v1/jobs", json={"prompt": "x", "model": "smollm2-135m-instruct"}).status_code == 202
    # A cancelled job frees its place.
    assert http.post(f"/v1/jobs/{accepted[0].json['id']}/cancel").status_code == 200
    assert http.post("/v1/jobs", json={"prompt": "x"}).status_code == 202


# --- idempotency --------------------------------------------------------------
def test_idempotency_key_returns_the_same_job(http, store: JobStore) -> None:
    body = {"prompt": "hello", "max_new_tokens": 5}
    first = http.post("/v1/jobs", json=body, headers={"Idempotency-Key": "k-1"})
    again = http.post("/v1/jobs", json=body, headers={"Idempotency-Key": "k-1"})
    assert first.status_code == again.status_code == 202
    assert again.json["id"] == first.json["id"] and again.headers["Idempotent-Replayed"] == "true"
    assert _messages(store) == 1
    conflict = http.post("/v1/jobs", json={**body, "max_new_tokens": 6}, headers={"Idempotency-Key": "k-1"})
    assert conflict.status_code == 409 and conflict.json["error"]["code"] == "idempotency_conflict"
    other = http.post("/v1/jobs", json=body, headers={"Idempotency-Key": "k-2"})
    assert other.status_code == 202 and other.json["id"] != first.json["id"]
    assert _messages(store) == 2
    too_long = http.post("/v1/jobs", json=body, headers={"Idempotency-Key": "k" * 256})
    assert too_long.status_code == 422 and _messages(store) == 2


def test_idempotency_key_is_released_when_the_job_is_refused(app, http, settings: Settings) -> None:
    app.extensions["genq"].settings = settings.model_copy(update={"max_queued": 1})
    assert http.post("/v1/jobs", json={"prompt": "a"}).status_code == 202
    refused = http.post("/v1/jobs", json={"prompt": "b"}, headers={"Idempotency-Key": "k"})
    assert refused.status_code == 429
    app.extensions["genq"].settings = settings
    assert http.post("/v1/jobs", json={"prompt": "b"}, headers={"Idempotency-Key": "k"}).status_code == 202


def test_a_key_whose_first_request_died_before_storing_passes_to_a_retry(http, store: JobStore) -> None:
    # Found by the nemesis soak (make chaos): Redis was killed after the key was bound and before
    # the batch was stored, and every retry got 409 "still being processed" for the key's whole TTL.
    body = {"prompt": "hello", "max_new_tokens": 5}
    first = http.post("/v1/jobs", json=body, headers={"Idempotency-Key": "k-dead"})
    store.delete(first.json["id"])  # as if its request had died before storing the job
    busy = http.post("/v1/jobs", json=body, headers={"Idempotency-Key": "k-dead"})
    assert busy.status_code == 409 and "still being processed" in busy.json["error"]["message"]
    [name] = list(store.r.scan_iter(keys.idempotency("*")))
    binding = json.loads(store.r.get(name))
    binding["at"] -= ABANDONED_KEY_S + 1  # longer ago than any request can take
    store.r.set(name, json.dumps(binding), keepttl=True)
    retry = http.post("/v1/jobs", json=body, headers={"Idempotency-Key": "k-dead"})
    assert retry.status_code == 202 and retry.json["id"] != first.json["id"]
    again = http.post("/v1/jobs", json=body, headers={"Idempotency-Key": "k-dead"})
    assert again.status_code == 202 and again.json["id"] == retry.json["id"]
    assert _messages(store) == 2  # the first job's message (its record is gone) and the retry's


# --- deadlines ----------------------------------------------------------------
def test_timeout_above_the_cap_is_rejected(http) -> None:
    answer = http.post("/v1/jobs", json={"prompt": "x", "timeout_s": 10_000})
    assert answer.status_code == 422 and "3600" in answer.json["error"]["message"]


def test_job_past_its_deadline_while_queued_expires_without_running(start_worker, client: Client) -> None:
    job = client.submit("late", max_new_tokens=3, timeout_s=0.5)
    time.sleep(1.0)
    start_worker()
    done = client.wait(job["id"], 30)
    assert done["status"] == "failed" and done["error"]["code"] == "expired"
    assert done["started_at"] is None and done["attempts"] == 0


def test_running_job_past_its_deadline_fails_with_partial_text(start_worker, client: Client) -> None:
    start_worker()
    # A first job proves the worker consumes: on a loaded host its first message took over 2 s,
    # and the timed job then expired in the queue instead of timing out while running.
    assert client.wait(client.submit("warm", max_new_tokens=2)["id"], 60)["status"] == "succeeded"
    job = client.submit(
        "The quick brown fox", max_new_tokens=8000, ignore_eos=True, temperature=0, timeout_s=3
    )
    done = client.wait(job["id"], 30)
    assert done["status"] == "failed" and done["error"]["code"] == "timeout"
    assert done["output"]["finish_reason"] == "timeout" and done["output"]["text"]
    assert 0 < done["usage"]["completion_tokens"] < 8000
    assert client.wait(client.submit("next", max_new_tokens=2)["id"], 30)["status"] == "succeeded"


def test_reconciler_expires_overdue_queued_jobs(store: JobStore, settings: Settings) -> None:
    job_id = new_job_id()
    store.create(job_id, "tiny", JobCreate(prompt="x"), deadline=time.time() - 1)
    store.r.zadd(keys.queued("tiny"), {job_id: time.time() - 60})
    counts = Reconciler(store, make_celery(settings), settings).sweep()
    assert counts["expired"] == 1
    assert store.get(job_id).status is Status.FAILED and store.get(job_id).error.code == "expired"


# --- priorities ---------------------------------------------------------------
def test_interactive_jobs_run_before_queued_batch_jobs(start_worker, client: Client) -> None:
    batch = [client.submit(f"b{i}", max_new_tokens=2, priority="batch")["id"] for i in range(4)]
    interactive = [client.submit(f"i{i}", max_new_tokens=2)["id"] for i in range(4)]
    start_worker(max_batch=1)  # one job at a time, so the order is visible
    done = {j: client.wait(j, 60) for j in batch + interactive}
    assert all(d["status"] == "succeeded" for d in done.values())
    assert max(done[j]["started_at"] for j in interactive) < min(done[j]["started_at"] for j in batch)


def test_prefetch_claims_the_next_job_while_the_batch_is_full(start_worker, client: Client) -> None:
    start_worker(max_batch=1, prefetch_jobs=1)  # one row, and one more job held ready for it
    long = client.submit("The quick brown fox", max_new_tokens=7000, ignore_eos=True, temperature=0)["id"]
    wait_until(lambda: client.get(long)["status"] == "running", 30, "the long job to start")
    short = client.submit("next", max_new_tokens=2)["id"]
    # Claimed (leased, running) while the only row is still taken: it waits in the engine, not in
    # the queue. Without the extra thread it would stay queued until the long job ended.
    wait_until(lambda: client.get(short)["status"] == "running", 30, "the held job to be claimed")
    assert client.get(long)["status"] == "running"
    client.cancel(long)
    done_short, done_long = client.wait(short, 30), client.wait(long, 30)
    assert done_short["status"] == "succeeded" and done_long["status"] == "cancelled"
    assert done_short["started_at"] < done_long["finished_at"]
    assert done_short["output"]["text"] is not None


# --- leases and lost messages -------------------------------------------------
def test_lapsed_lease_requeues_then_fails_worker_lost(store: JobStore, settings: Settings) -> None:
    job_id = new_job_id()
    store.create(job_id, "tiny", JobCreate(prompt="x"))
    reconciler = Reconciler(store, make_celery(settings), settings)
    for attempt in range(1, settings.max_attempts + 1):
        assert store.claim(job_id, "dead-worker", "cpu", lease_s=0.01).outcome == "claimed"
        time.sleep(0.05)
        counts = reconciler.sweep()
        record = store.raw(job_id)
        assert record["attempts"] == str(attempt)
        if attempt < settings.max_attempts:
            assert counts["lease_requeued"] == 1 and record["status"] == "queued" and record["isolate"] == "1"
        else:
            assert counts["lease_failed"] == 1
    job = store.get(job_id)
    assert job.status is Status.FAILED and job.error.code == "worker_lost"
    assert _messages(store) == settings.max_attempts - 1  # one new message per requeue
    # A late result from the dead worker is refused: one result per job.
    assert not store.finish(job_id, Status.SUCCEEDED, holder="dead-worker", output={"text": "x"})


def test_live_lease_is_left_alone(store: JobStore, settings: Settings) -> None:
    job_id = new_job_id()
    store.create(job_id, "tiny", JobCreate(prompt="x"))
    store.claim(job_id, "w", "cpu", lease_s=60)
    assert Reconciler(store, make_celery(settings), settings).sweep()["lease_requeued"] == 0
    assert store.raw(job_id)["status"] == "running"


def test_accepted_job_whose_message_was_lost_still_runs(
    start_worker, client: Client, store: JobStore
) -> None:
    # A record with no message: as if the API died between storing and enqueueing, or a
    # worker died between BRPOP and kombu's unacked set.
    job_id = new_job_id()
    store.create(job_id, "tiny", JobCreate(prompt="orphan", max_new_tokens=3))
    start_worker()
    done = client.wait(job_id, 30)
    assert done["status"] == "succeeded"


def test_a_message_stuck_unacked_past_a_lease_is_resent(store: JobStore, settings: Settings) -> None:
    # As after a Redis failover: the message sits in kombu's unacked hash, delivered to a worker
    # whose connection died, while its job is still queued.
    job_id = new_job_id()
    store.create(job_id, "tiny", JobCreate(prompt="x"))
    app = make_celery(settings)
    store.r.zadd(keys.queued("tiny"), {job_id: time.time() - 2 * settings.lease_seconds}, xx=True)
    fresh = {"tag-fresh": time.time()}
    store.r.hset(keys.UNACKED, "tag-old", f'[{{"body": "{job_id}"}}, "", "genq.tiny"]')
    store.r.zadd(keys.UNACKED_INDEX, {"tag-old": time.time() - 2 * settings.lease_seconds})
    assert Reconciler(store, app, settings).sweep()["resent"] == 1
    assert _messages(store) == 1
    # Delivered within the last lease, it counts as held by a live worker: nothing is re-sent.
    other = new_job_id()
    store.create(other, "tiny", JobCreate(prompt="y"))
    store.r.zadd(keys.queued("tiny"), {other: time.time() - 2 * settings.lease_seconds}, xx=True)
    store.r.hset(keys.UNACKED, "tag-fresh", f'[{{"body": "{other}"}}, "", "genq.tiny"]')
    store.r.zadd(keys.UNACKED_INDEX, fresh)
    assert Reconciler(store, app, settings).sweep().get("resent", 0) == 0


# --- long polls -----------------------------------------------------------------
def _xreads(store: JobStore) -> int:
    return int(store.r.info("commandstats").get("cmdstat_xread", {}).get("calls", 0))


def test_a_long_poll_wakes_when_the_job_ends_not_at_each_token(store: JobStore) -> None:
    import threading

    job_id = new_job_id()
    store.create(job_id, "tiny", JobCreate(prompt="x", model="tiny"))
    assert store.claim(job_id, "w", "cpu").outcome == "claimed"
    seen: list = []
    before = _xreads(store)
    poll = threading.Thread(target=lambda: seen.append(store.wait(job_id, 30)))
    poll.start()
    for i in range(200):
        store.publish_tokens({job_id: f"t{i} "}, {job_id: 1})
    time.sleep(0.3)
    assert not seen  # tokens do not end it
    assert store.finish(job_id, Status.SUCCEEDED, holder="w")
    poll.join(5)
    assert seen and seen[0].status is Status.SUCCEEDED
    assert _xreads(store) - before <= 3  # one blocking read (plus a slice or two), not one per token
    # A job that has already ended answers at once, from the same ended entry.
    t0 = time.monotonic()
    assert store.wait(job_id, 30).status is Status.SUCCEEDED and time.monotonic() - t0 < 1
