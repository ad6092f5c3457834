"""Redis full (maxmemory under noeviction): 503 store_full and nothing half-stored; workers keep
their results and retry; once memory is freed every accepted job finishes."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import pytest

from genq.client import Client
from shared.celery_app import queue_lists
from shared.jobstore import JobStore, new_job_id
from shared.schemas import JobCreate
from shared.settings import Settings
from tests.support import wait_until

LEASE_S = 6.0  # short leases, so that a job whose message or lease was lost meanwhile runs again soon
FULL_FOR_S = 5.0  # how long the running workers find Redis full
FINISH_TIMEOUT_S = 240  # bound on every accepted job finishing once memory is freed
CHAT = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """Short leases for every process of this module."""
    return settings.model_copy(update={"lease_seconds": LEASE_S})


@pytest.fixture
def fill(store: JobStore) -> Iterator[Callable[[bool], None]]:
    """Turn Redis full (maxmemory below what it holds, noeviction) or back; always freed afterwards."""

    def _fill(full: bool = True) -> None:
        used = int(store.r.info("memory")["used_memory"])
        store.r.config_set("maxmemory", used // 2 if full else 0)

    yield _fill
    store.r.config_set("maxmemory", 0)


def _stored(store: JobStore) -> list[str]:
    keys = store.r.keys("genq:job:*") + store.r.keys("genq:batch:*") + store.r.keys("genq:idem*")
    messages = sum(
        store.r.llen(q) for m in ("tiny", "smollm2-135m-instruct") for q in queue_lists(f"genq.{m}")
    )
    return keys + ["message"] * messages


def test_full_store_answers_503_store_full_and_keeps_nothing(http, store: JobStore, fill) -> None:
    fill(True)
    answers = {
        "job": http.post("/v1/jobs", json={"model": "tiny", "prompt": "x"}),
        "idempotent job": http.post(
            "/v1/jobs", json={"model": "tiny", "prompt": "x"}, headers={"Idempotency-Key": "k1"}
        ),
        "batch": http.post(
            "/v1/batches", json={"requests": [{"custom_id": f"c{i}", "prompt": "p"} for i in range(3)]}
        ),
        "chat": http.post("/v1/chat/completions", json=CHAT),
        "completion": http.post("/v1/completions", json={"model": "tiny", "prompt": "hi", "max_tokens": 2}),
    }
    for name, resp in answers.items():
        assert resp.status_code == 503, (name, resp.get_data(as_text=True))
        assert resp.get_json()["error"]["code"] == "store_full", name
        assert resp.headers["Retry-After"]
    assert _stored(store) == []
    fill(False)
    assert http.post("/v1/jobs", json={"model": "tiny", "prompt": "x"}).status_code == 202


def test_a_stored_job_is_removed_even_with_the_store_full(store: JobStore, fill) -> None:
    # submit() stores the record, then enqueues: if the enqueue is what finds Redis full, the
    # record must still go (DEL works under noeviction; a MULTI of any command does not).
    job_id = new_job_id()
    store.create(job_id, "tiny", JobCreate(prompt="x"), deadline=time.time() + 60)
    fill(True)
    assert store.delete(job_id) == "deleted"
    assert _stored(store) == [] and store.r.zcard("genq:queued:tiny") == 0


@pytest.mark.slow
def test_workers_keep_results_until_memory_is_freed(
    start_worker, client: Client, store: JobStore, fill
) -> None:
    start_worker()
    ids = [
        client.submit(f"Job {i}:", model="tiny", max_new_tokens=40, ignore_eos=True)["id"] for i in range(6)
    ]
    wait_until(lambda: any(store.raw(i).get("status") == "running" for i in ids), 60, "a job to run")
    fill(True)
    time.sleep(FULL_FOR_S)  # running jobs finish generating and cannot store; claims are refused
    assert all(store.raw(i)["status"] in ("queued", "running") for i in ids)  # none failed for it
    fill(False)
    deadline = time.monotonic() + FINISH_TIMEOUT_S
    done = [client.wait(i, max(1.0, deadline - time.monotonic())) for i in ids]
    assert [j["status"] for j in done] == ["succeeded"] * len(ids), done
    assert all(j["usage"]["completion_tokens"] == 40 for j in done)
