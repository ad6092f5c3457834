"""One job never fails another, through the API with a real worker: poisoned jobs fail alone."""

from __future__ import annotations

import json
import time

import pytest

from genq.client import Client
from shared import keys
from shared.celery_app import enqueue, make_celery
from shared.jobstore import JobStore, new_job_id
from shared.schemas import JobCreate, Priority
from shared.settings import FORWARD_FAULT_MARKER, Settings

FINISH_TIMEOUT_S = 180  # bound on waiting for a batch of tiny-model jobs on a busy machine
HOSTILE_REQUEST = {
    "prompt": "Job x:",
    "max_new_tokens": 8,
    "temperature": 1.0,
    "repetition_penalty": 2.225073858507e-311,
}


def _poisoned(settings: Settings, store: JobStore) -> str:
    """Store and enqueue a job whose request no API would accept, as a store-level write could."""
    job_id = new_job_id()
    store.create(job_id, "tiny", JobCreate(prompt="Job x:", max_new_tokens=8), deadline=time.time() + 600)
    store.r.hset(keys.job(job_id), "request", json.dumps(HOSTILE_REQUEST))
    enqueue(make_celery(settings), keys.queue("tiny"), job_id, Priority.INTERACTIVE)
    return job_id


def _all_end(client: Client, ids: list[str]) -> list[dict]:
    deadline = time.monotonic() + FINISH_TIMEOUT_S
    return [client.wait(i, max(1.0, deadline - time.monotonic())) for i in ids]


def test_poisoned_record_fails_alone_in_a_full_batch(start_worker, client: Client, settings, store) -> None:
    start_worker()
    long = client.submit("Running:", model="tiny", max_new_tokens=120, ignore_eos=True)["id"]
    others = [
        client.submit(f"Job {i}:", model="tiny", max_new_tokens=24, ignore_eos=True)["id"] for i in range(6)
    ]
    bad = _poisoned(settings, store)
    done = {j["id"]: j for j in _all_end(client, [long, *others, bad])}
    assert done[bad]["status"] == "failed" and done[bad]["error"]["code"] == "validation_error", done[bad]
    for job_id in [long, *others]:
        assert done[job_id]["status"] == "succeeded", done[job_id]
        assert done[job_id]["usage"]["completion_tokens"] in (24, 120)


@pytest.mark.slow
def test_failed_forward_hands_jobs_back_and_only_the_culprit_fails(start_worker, client: Client) -> None:
    worker = start_worker(fault_injection=True)
    long = client.submit("Running:", model="tiny", max_new_tokens=200, ignore_eos=True)["id"]
    time.sleep(0.5)  # the long job runs; what follows is admitted in steps beside it
    others = [
        client.submit(f"Job {i}:", model="tiny", max_new_tokens=16, ignore_eos=True)["id"] for i in range(5)
    ]
    culprit = client.submit(f"Job x: {FORWARD_FAULT_MARKER}", model="tiny", max_new_tokens=16)["id"]
    others += [
        client.submit(f"Job {i}:", model="tiny", max_new_tokens=16, ignore_eos=True)["id"]
        for i in range(5, 7)
    ]
    done = {j["id"]: j for j in _all_end(client, [long, *others, culprit])}
    assert done[culprit]["status"] == "failed" and done[culprit]["error"]["code"] == "forward_failed", done[
        culprit
    ]
    assert done[culprit]["attempts"] <= 2  # handed back at most once
    for job_id in [long, *others]:
        assert done[job_id]["status"] == "succeeded", (done[job_id], worker.log()[-3000:])
    handed = sum(1 for j in done.values() if j["attempts"] == 2)
    assert handed == 0 or "handed back to run alone" in worker.log()
