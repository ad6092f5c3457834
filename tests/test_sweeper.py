"""The reconciler does not need a worker: overdue queued jobs read expired, API processes sweep."""

from __future__ import annotations

import json
import time
import urllib.request
from pathlib import Path

from shared import keys
from shared.celery_app import queue_lists
from shared.jobstore import EVENT_DONE, JobStore
from shared.settings import Settings
from tests.support import start_api, wait_until

LEASE_S = 1.5  # short leases: the sweep runs every LEASE_S / 3 seconds


def _messages(store: JobStore, job_id: str) -> int:
    return sum(job_id in m for q in queue_lists(keys.queue("tiny")) for m in store.r.lrange(q, 0, -1))


def test_overdue_queued_job_reads_expired_before_any_sweep(http, store: JobStore) -> None:
    job_id = http.post("/v1/jobs", json={"model": "tiny", "prompt": "late", "timeout_s": 0.3}).get_json()[
        "id"
    ]
    assert http.get(f"/v1/jobs/{job_id}").get_json()["status"] == "queued"
    time.sleep(0.5)
    assert store.raw(job_id)["status"] == "queued"  # no worker and no sweep has touched it
    job = http.get(f"/v1/jobs/{job_id}").get_json()
    assert job["status"] == "failed" and job["error"]["code"] == "expired", job
    # The same one step as any end: the stream's done event, the long poll's ended entry, unqueued.
    assert [e["type"] for _, e in store.r.xrange(keys.events(job_id))][-1] == EVENT_DONE
    assert store.r.xlen(keys.ended(job_id)) == 1 and store.r.zscore(keys.queued("tiny"), job_id) is None
    assert http.get(f"/v1/jobs/{job_id}").get_json()["finished_at"] == job["finished_at"]  # once


def test_api_sweeps_with_no_worker_running(
    settings: Settings, store: JobStore, start_worker, tmp_path: Path
) -> None:
    settings = settings.model_copy(update={"lease_seconds": LEASE_S})
    api, base = start_api(settings, tmp_path / "api.log")
    try:

        def post(body: bytes) -> str:
            req = urllib.request.Request(f"{base}/v1/jobs", body, {"Content-Type": "application/json"})
            with urllib.request.urlopen(req, timeout=10) as resp:
                return json.load(resp)["id"]

        late = post(b'{"model": "tiny", "prompt": "late", "timeout_s": 1}')
        lost = post(b'{"model": "tiny", "prompt": "lost", "max_new_tokens": 3}')
        # Its message vanishes, as one lost with a worker's connection would.
        for q in queue_lists(keys.queue("tiny")):
            store.r.delete(q)
        assert _messages(store, lost) == 0
        # Nobody reads the late job: the API's sweep alone expires it, and re-sends the lost one.
        wait_until(lambda: store.raw(late).get("status") == "failed", 30, "the API sweep to expire a job")
        assert "expired" in store.raw(late)["error"]
        wait_until(lambda: _messages(store, lost) == 1, 30, "the API sweep to re-send a lost message")
        assert store.raw(lost)["status"] == "queued"
        start_worker(lease_seconds=LEASE_S)
        wait_until(lambda: store.raw(lost).get("status") == "succeeded", 120, "the re-sent job to run")
    finally:
        api.stop()
