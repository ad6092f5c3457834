"""Batches: validation through Flask's test client, then real workers, gunicorn and the CLI end to end."""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

import api.batches
from api.auth import hash_key, new_key
from genq.client import Client
from shared import keys
from shared.celery_app import queue_lists
from shared.jobstore import JobStore
from shared.schemas import Status
from shared.settings import Settings
from tests.support import ROOT

BATCH_ID = re.compile(r"^batch_[0-9a-f]{32}$")
UNKNOWN_BATCH = "batch_" + "0" * 32  # well-formed, never issued
ACME_KEY, GLOBEX_KEY = new_key(), new_key()
ACME = {"Authorization": f"Bearer {ACME_KEY}"}
GLOBEX = {"Authorization": f"Bearer {GLOBEX_KEY}"}


def _items(n: int, **extra: Any) -> list[dict[str, Any]]:
    return [{"custom_id": f"c{i}", "prompt": f"Item {i}:", "max_new_tokens": 3, **extra} for i in range(n)]


def _jsonl(items: list[dict[str, Any]]) -> bytes:
    return "".join(json.dumps(i) + "\n" for i in items).encode()


def _messages(store: JobStore) -> int:
    """Return how many Celery messages wait on any model's queue."""
    return sum(
        store.r.llen(name) for m in ("tiny", "smollm2-135m-instruct") for name in queue_lists(f"genq.{m}")
    )


def _nothing_stored(store: JobStore) -> None:
    assert store.r.keys("genq:job:*") == [] and store.r.keys("genq:batch:*") == []
    assert _messages(store) == 0 and store.r.keys("genq:tjobs:*") == []


def _created(resp: Any) -> dict[str, Any]:
    assert resp.status_code == 202, resp.get_json()
    return resp.get_json()


# --- validation: every item is checked before anything is stored ---------------
BAD = [
    # (items, the field named first)
    ([*_items(2), {"custom_id": "c2"}], "requests.2"),  # neither prompt nor messages
    ([*_items(1), {"custom_id": "x", "prompt": "p", "model": "nope"}], "requests.1.model"),
    ([{"custom_id": "x", "prompt": "p", "max_new_tokens": 9000}], "requests.0.max_new_tokens"),
    ([*_items(2), {"custom_id": "c0", "prompt": "again"}], "requests.2.custom_id"),
    ([{"prompt": "no id"}], "requests.0.custom_id"),
    ([{"custom_id": "", "prompt": "p"}], "requests.0.custom_id"),
    ([{"custom_id": "x" * 65, "prompt": "p"}], "requests.0.custom_id"),
    ([{"custom_id": "x", "prompt": "p", "temperature": -1}], "requests.0.temperature"),
    ([{"custom_id": "x", "prompt": "p", "surprise": 1}], "requests.0.surprise"),
    ([{"custom_id": "x", "prompt": "p", "metadata": {"k": "v" * 5000}}], "requests.0.metadata"),
    ([], "requests"),
    ("not a list", "requests"),
]


@pytest.mark.parametrize(("items", "field"), BAD)
def test_invalid_item_is_named_and_nothing_is_stored(http, store, items: Any, field: str) -> None:
    resp = http.post("/v1/batches", json={"requests": items})
    assert resp.status_code == 422, resp.get_json()
    error = resp.get_json()["error"]
    assert error["code"] == "validation_error" and error["details"][0]["field"] == field
    _nothing_stored(store)


def test_jsonl_errors_name_the_line(http, store) -> None:
    lines = _jsonl(_items(2)) + b"\n" + _jsonl([{"custom_id": "z", "prompt": "p", "top_p": 2}])
    resp = http.post("/v1/batches", data=lines, content_type="application/x-ndjson")
    assert resp.status_code == 422 and resp.get_json()["error"]["details"][0]["field"] == "line 4.top_p"
    broken = http.post("/v1/batches", data=_jsonl(_items(2)) + b"{oops\n", content_type="application/jsonl")
    assert broken.status_code == 400 and "line 3" in broken.get_json()["error"]["message"]
    empty = http.post("/v1/batches", data=b"\n\n", content_type="application/x-ndjson")
    assert empty.status_code == 422
    _nothing_stored(store)


@pytest.mark.parametrize("body", [b"{", b"[1]", b'"x"', b'{"requests": [], "extra": 1}'])
def test_malformed_or_misshapen_body(http, store, body: bytes) -> None:
    resp = http.post("/v1/batches", data=body, content_type="application/json")
    assert resp.status_code in (400, 422) and resp.get_json()["error"]["code"] in (
        "malformed_json",
        "validation_error",
    )
    _nothing_stored(store)


def test_too_many_items_names_the_limit(app, http, store, settings: Settings) -> None:
    app.extensions["genq"].settings = settings.model_copy(update={"max_batch_items": 3})
    for resp in (
        http.post("/v1/batches", json={"requests": _items(4)}),
        http.post("/v1/batches", data=_jsonl(_items(4)), content_type="application/x-ndjson"),
    ):
        assert resp.status_code == 413
        error = resp.get_json()["error"]
        assert (
            error["code"] == "batch_too_large"
            and "4 requests" in error["message"]
            and "3" in error["message"]
        )
    _nothing_stored(store)
    assert http.post("/v1/batches", json={"requests": _items(3)}).status_code == 202


def test_batch_uploads_have_their_own_size_limit(app, http, store, settings: Settings) -> None:
    items = _items(3, metadata={"note": "x" * 1000})  # about 3 KB in all
    app.extensions["genq"].settings = settings.model_copy(update={"max_batch_body_bytes": 2048})
    big = http.post("/v1/batches", json={"requests": items})
    assert big.status_code == 413 and big.get_json()["error"]["code"] == "body_too_large"
    assert "2048" in big.get_json()["error"]["message"]
    _nothing_stored(store)
    app.extensions["genq"].settings = settings
    app.config["MAX_CONTENT_LENGTH"] = 1024  # GENQ_MAX_BODY_BYTES, which bounds every other body
    assert (
        http.post("/v1/jobs", json={k: v for k, v in items[0].items() if k != "custom_id"}).status_code == 413
    )
    assert http.post("/v1/batches", json={"requests": items}).status_code == 202


def test_wait_must_be_in_range(http) -> None:
    batch = _created(http.post("/v1/batches", json={"requests": _items(1)}))
    for bad in ("-1", "61", "soon"):
        assert http.get(f"/v1/batches/{batch['id']}?wait={bad}").status_code == 422


# --- accepted batches, without a worker ----------------------------------------
def test_json_batch_is_stored_at_batch_priority(http, store) -> None:
    items = _items(3)
    items[1]["priority"] = "interactive"  # asked for, and overridden: a batch never jumps the queue
    resp = http.post("/v1/batches", json={"requests": items, "metadata": {"ticket": 7}})
    batch = _created(resp)
    assert BATCH_ID.match(batch["id"]) and resp.headers["Location"].endswith(f"/v1/batches/{batch['id']}")
    assert batch["status"] == "in_progress" and batch["metadata"] == {"ticket": 7}
    assert batch["counts"] == {
        "total": 3,
        "queued": 3,
        "running": 0,
        "succeeded": 0,
        "failed": 0,
        "cancelled": 0,
    }
    assert batch["results"] is None
    job_ids = [json.loads(i)[1] for i in store.r.lrange(keys.batch_items(batch["id"]), 0, -1)]
    assert [store.get(j).priority.value for j in job_ids] == ["batch"] * 3
    assert _messages(store) == 3
    assert 0 < store.r.ttl(keys.batch(batch["id"])) <= store.ttl_s
    assert 0 < store.r.ttl(keys.batch_items(batch["id"])) <= store.ttl_s
    assert http.get(f"/v1/batches/{batch['id']}").get_json()["counts"]["queued"] == 3
    early = http.get(f"/v1/batches/{batch['id']}/results")
    assert early.status_code == 409 and early.get_json()["error"]["code"] == "batch_in_progress"


@pytest.mark.parametrize("upload", ["application/x-ndjson", "application/jsonl", "multipart"])
def test_jsonl_upload(http, upload: str) -> None:
    data = _jsonl(_items(4))
    if upload == "multipart":
        resp = http.post("/v1/batches", data={"file": (io.BytesIO(data), "jobs.jsonl")})
    else:
        resp = http.post("/v1/batches", data=data, content_type=upload)
    assert _created(resp)["counts"]["total"] == 4


def test_multipart_needs_a_file_field(http, store) -> None:
    resp = http.post("/v1/batches", data={"other": "x"}, content_type="multipart/form-data")
    assert resp.status_code == 422 and resp.get_json()["error"]["details"][0]["field"] == "file"
    _nothing_stored(store)


def test_multipart_carries_metadata_and_checks_its_fields(http, store) -> None:
    def upload(**fields: str) -> Any:
        data = {"file": (io.BytesIO(_jsonl(_items(2))), "jobs.jsonl"), **fields}
        return http.post("/v1/batches", data=data)

    assert _created(upload(metadata='{"req": "R-1"}'))["metadata"] == {"req": "R-1"}
    store.r.flushdb()
    malformed = upload(metadata="{not json")
    assert malformed.status_code == 400 and "'metadata' field" in malformed.get_json()["error"]["message"]
    wrong = upload(webhook='{"url": "ftp://x"}')
    assert wrong.status_code == 422 and wrong.get_json()["error"]["details"][0]["field"] == "webhook.url"
    nested = upload(metadata='{"a": ' * 10 + "1" + "}" * 10)  # deeper than 8 levels
    assert nested.status_code == 422 and nested.get_json()["error"]["details"][0]["field"] == "metadata"
    _nothing_stored(store)


def test_cancel_without_a_worker_cancels_every_job(http, store) -> None:
    batch = _created(http.post("/v1/batches", json={"requests": _items(5)}))
    resp = http.post(f"/v1/batches/{batch['id']}/cancel")
    assert resp.status_code == 200
    cancelled = resp.get_json()
    assert cancelled["status"] == "cancelled" and cancelled["counts"]["cancelled"] == 5
    assert [r["custom_id"] for r in cancelled["results"]] == [f"c{i}" for i in range(5)]
    assert {r["status"] for r in cancelled["results"]} == {"cancelled"}
    assert store.r.zcard(keys.queued("tiny")) == 0  # they no longer count against the queued cap
    download = http.get(f"/v1/batches/{batch['id']}/results")
    assert download.status_code == 200 and download.mimetype == "application/x-ndjson"
    assert download.headers["Content-Disposition"] == f'attachment; filename="{batch["id"]}.jsonl"'
    lines = [json.loads(line) for line in download.get_data(as_text=True).splitlines()]
    assert lines == cancelled["results"]
    assert http.post(f"/v1/batches/{batch['id']}/cancel").status_code == 200  # again: no change


def test_finished_batch_reports_results_and_refuses_cancel(http, store) -> None:
    batch = _created(http.post("/v1/batches", json={"requests": _items(3)}))
    ids = [json.loads(i)[1] for i in store.r.lrange(keys.batch_items(batch["id"]), 0, -1)]
    output = {"text": "ok", "finish_reason": "length"}
    store.finish(ids[0], Status.SUCCEEDED, output=output, usage={"prompt_tokens": 2, "completion_tokens": 3})
    store.finish(ids[1], Status.FAILED, error={"code": "internal_error", "message": "boom"})
    assert http.get(f"/v1/batches/{batch['id']}").get_json()["status"] == "in_progress"
    store.r.delete(keys.job(ids[2]))  # as if its record had expired
    done = http.get(f"/v1/batches/{batch['id']}").get_json()
    assert (
        done["status"] == "completed" and done["counts"]["succeeded"] == 1 and done["counts"]["failed"] == 2
    )
    first, second, third = done["results"]
    assert first["output"] == output and first["usage"]["completion_tokens"] == 3 and first["error"] is None
    assert second["error"]["code"] == "internal_error" and third["error"]["code"] == "not_found"
    refused = http.post(f"/v1/batches/{batch['id']}/cancel")
    assert refused.status_code == 409 and refused.get_json()["error"]["code"] == "not_cancellable"


# --- backpressure: all or nothing ----------------------------------------------
def test_queued_caps_refuse_the_whole_batch(app, http, store, settings: Settings) -> None:
    app.extensions["genq"].settings = settings.model_copy(update={"max_queued": 4})
    never = http.post("/v1/batches", json={"requests": _items(5)})
    assert never.status_code == 413 and never.get_json()["error"]["code"] == "batch_too_large"
    _nothing_stored(store)
    _created(http.post("/v1/batches", json={"requests": _items(2)}))
    full = http.post("/v1/batches", json={"requests": _items(3)})
    assert full.status_code == 429 and full.get_json()["error"]["code"] == "queue_full"
    assert full.headers["Retry-After"] and len(store.r.keys("genq:job:*")) == 2
    app.extensions["genq"].settings = settings.model_copy(update={"max_queued_per_tenant": 3})
    tenant_full = http.post("/v1/batches", json={"requests": _items(2)})
    assert tenant_full.status_code == 429 and tenant_full.get_json()["error"]["code"] == "tenant_queue_full"


def test_a_batch_is_stored_whole_or_not_at_all(app, http, store, settings: Settings) -> None:
    # The caps are checked for every model of the batch, in the same step that stores it: a full
    # model refuses the batch, and its jobs for the other model are not stored either.
    app.extensions["genq"].settings = settings.model_copy(update={"max_queued": 3})
    for _ in range(2):
        assert (
            http.post("/v1/jobs", json={"prompt": "x", "model": "smollm2-135m-instruct"}).status_code == 202
        )
    mixed = _items(2) + _items(2, model="smollm2-135m-instruct")
    mixed = [{**item, "custom_id": f"m{i}"} for i, item in enumerate(mixed)]
    resp = http.post("/v1/batches", json={"requests": mixed})
    assert resp.status_code == 429 and "nothing was stored" in resp.get_json()["error"]["message"]
    assert (
        resp.get_json()["error"]["code"] == "queue_full" and "smollm2" in resp.get_json()["error"]["message"]
    )
    assert len(store.r.keys("genq:job:*")) == 2 and store.r.keys("genq:batch:*") == []
    assert store.r.zcard(keys.queued("tiny")) == 0


def test_a_failed_enqueue_withdraws_the_whole_batch(app, http, store, monkeypatch) -> None:
    import redis

    real, sent = api.batches.enqueue, []

    def fail_on_the_third(*args: Any) -> None:
        if len(sent) == 2:
            raise redis.ConnectionError("Redis went away")  # as if it died mid-batch
        sent.append(args)
        real(*args)

    monkeypatch.setattr(api.batches, "enqueue", fail_on_the_third)
    resp = http.post("/v1/batches", json={"requests": _items(5)})
    assert resp.status_code == 503
    assert store.r.keys("genq:job:*") == [] and store.r.keys("genq:batch:*") == []
    assert store.r.zcard(keys.queued("tiny")) == 0 and store.r.keys("genq:tjobs:*") == []
    assert http.get("/v1/jobs").get_json()["data"] == []
    # The two messages already sent find no job: a worker drops them (tests/test_guarantees.py).
    assert _messages(store) == 2


# --- idempotency: a retried upload is the same batch ----------------------------
def test_idempotency_key_returns_the_same_batch(http, store, tmp_path: Path) -> None:
    key = {"Idempotency-Key": "upload-2026-11-29"}
    first = _created(http.post("/v1/batches", json={"requests": _items(3)}, headers=key))
    again = http.post("/v1/batches", json={"requests": _items(3)}, headers=key)
    assert again.status_code == 202 and again.headers["Idempotent-Replayed"] == "true"
    assert again.get_json()["id"] == first["id"] and again.headers["Location"].endswith(first["id"])
    # The same items as JSONL are the same request: still the first batch, nothing stored twice.
    jsonl = http.post("/v1/batches", data=_jsonl(_items(3)), content_type="application/x-ndjson", headers=key)
    assert jsonl.status_code == 202 and jsonl.get_json()["id"] == first["id"]
    assert len(store.r.keys("genq:job:*")) == 3 and _messages(store) == 3
    other = http.post("/v1/batches", json={"requests": _items(4)}, headers=key)
    assert other.status_code == 409 and other.get_json()["error"]["code"] == "idempotency_conflict"
    assert len(store.r.keys("genq:job:*")) == 3
    # Keys are per endpoint: the same key on /v1/jobs is another request, not a conflict.
    assert http.post("/v1/jobs", json={"prompt": "x"}, headers=key).status_code == 202


def test_idempotency_key_is_released_when_the_batch_is_refused(app, http, store, settings) -> None:
    key = {"Idempotency-Key": "k"}
    app.extensions["genq"].settings = settings.model_copy(update={"max_queued": 2})
    _created(http.post("/v1/batches", json={"requests": _items(2)}))
    assert http.post("/v1/batches", json={"requests": _items(2)}, headers=key).status_code == 429
    app.extensions["genq"].settings = settings
    retried = http.post("/v1/batches", json={"requests": _items(2)}, headers=key)
    assert retried.status_code == 202 and "Idempotent-Replayed" not in retried.headers
    assert len(store.r.keys("genq:job:*")) == 4


def test_a_replay_while_the_first_upload_is_still_submitting_is_409(http, store, monkeypatch) -> None:
    from shared.batchstore import BatchStore

    # The first request stored its batch but has not yet sent every message (or died doing so).
    monkeypatch.setattr(BatchStore, "submitted", lambda self, batch_id: None)
    key = {"Idempotency-Key": "k"}
    _created(http.post("/v1/batches", json={"requests": _items(2)}, headers=key))
    again = http.post("/v1/batches", json={"requests": _items(2)}, headers=key)
    assert again.status_code == 409 and "still being processed" in again.get_json()["error"]["message"]
    assert len(store.r.keys("genq:job:*")) == 2
    # A minute on, its request is dead, not slow: its jobs were all stored in one step, so the
    # batch stands (the reconciler sends any message it lacks) and the replay returns it.
    [batch_key] = [k for k in store.r.keys("genq:batch:*") if not k.endswith(":items")]
    store.r.hset(batch_key, "created_at", repr(time.time() - 61))
    later = http.post("/v1/batches", json={"requests": _items(2)}, headers=key)
    assert later.status_code == 202 and later.headers["Idempotent-Replayed"] == "true"
    assert "batch:" + later.get_json()["id"] in batch_key and len(store.r.keys("genq:job:*")) == 2


# --- tenants --------------------------------------------------------------------
@pytest.fixture
def two_tenants(settings: Settings) -> Any:
    """A test client of an app that requires keys: acme and globex, one each."""
    from api.app import create_app

    keyed = settings.model_copy(
        update={"api_keys": f"acme:{hash_key(ACME_KEY)},globex:{hash_key(GLOBEX_KEY)}"}
    )
    return create_app(keyed).test_client()


def test_another_tenants_batch_is_not_found(two_tenants, store) -> None:
    http = two_tenants
    assert http.post("/v1/batches", json={"requests": _items(1)}).status_code == 401
    batch = _created(http.post("/v1/batches", json={"requests": _items(2)}, headers=ACME))
    unknown = http.get(f"/v1/batches/{UNKNOWN_BATCH}", headers=GLOBEX).get_json()
    for method, suffix in [("get", ""), ("get", "/results"), ("post", "/cancel")]:
        other = getattr(http, method)(f"/v1/batches/{batch['id']}{suffix}", headers=GLOBEX)
        assert other.status_code == 404, suffix
        assert other.get_json()["error"]["code"] == unknown["error"]["code"] == "not_found"
    assert http.get(f"/v1/batches/{batch['id']}", headers=ACME).get_json()["counts"]["queued"] == 2
    assert http.get("/v1/batches/not-an-id", headers=ACME).status_code == 404
    jobs = http.get("/v1/jobs", headers=ACME).get_json()["data"]
    assert len(jobs) == 2 and all(j["priority"] == "batch" for j in jobs)


# --- end to end: gunicorn, a real worker, the client and the CLI ----------------
def test_batch_runs_end_to_end(start_worker, client: Client) -> None:
    start_worker()
    items = _items(10, temperature=0)
    batch = client.create_batch(items, metadata={"source": "ats"})
    done = client.wait_batch(batch["id"], 120)
    assert done["status"] == "completed" and done["counts"]["succeeded"] == 10, done["counts"]
    by_id = {r["custom_id"]: r for r in done["results"]}
    assert [r["custom_id"] for r in done["results"]] == [i["custom_id"] for i in items]
    for item in items:
        job = client.get(by_id[item["custom_id"]]["job_id"])
        assert job["priority"] == "batch" and job["output"] == by_id[item["custom_id"]]["output"]
    assert client.batch_results(batch["id"]) == done["results"]


def test_interactive_jobs_run_before_a_waiting_batch(start_worker, client: Client) -> None:
    batch = client.create_batch(_items(6))
    interactive = [client.submit(f"i{i}", max_new_tokens=2)["id"] for i in range(3)]
    start_worker(max_batch=1)  # one job at a time, so the order is visible
    done = client.wait_batch(batch["id"], 120)
    assert done["counts"]["succeeded"] == 6
    started = {r["job_id"]: client.get(r["job_id"])["started_at"] for r in done["results"]}
    last_interactive = max(client.wait(j, 30)["started_at"] for j in interactive)
    assert last_interactive < min(started.values())


def test_cli_batch_writes_results(start_worker, api_server: str, client: Client, tmp_path: Path) -> None:
    start_worker()
    source, out = tmp_path / "jobs.jsonl", tmp_path / "results.jsonl"
    source.write_bytes(_jsonl(_items(4)))
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "genq",
            "--url",
            api_server,
            "batch",
            str(source),
            "--out",
            str(out),
            "--metadata",
            '{"req": "R-9"}',
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONIOENCODING": "utf-8"},
    )
    assert proc.returncode == 0, proc.stderr
    results = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["custom_id"] for r in results] == ["c0", "c1", "c2", "c3"]
    assert all(r["status"] == "succeeded" and r["output"]["text"] is not None for r in results)
    assert "completed: 4 succeeded" in proc.stderr
    batch_id = re.search(r"batch (batch_[0-9a-f]{32})", proc.stderr).group(1)
    assert client.batch_results(batch_id) == results
    assert client.get_batch(batch_id)["metadata"] == {"req": "R-9"}  # sent as a multipart field


# --- OpenAI batch lines ---------------------------------------------------------
def _openai_line(custom_id: str, chat: bool = True, **body: Any) -> dict[str, Any]:
    if chat:
        body = {"model": "tiny", "messages": [{"role": "user", "content": f"Hi {custom_id}"}], **body}
        return {"custom_id": custom_id, "method": "POST", "url": "/v1/chat/completions", "body": body}
    body = {"model": "tiny", "prompt": f"Once {custom_id}", **body}
    return {"custom_id": custom_id, "method": "POST", "url": "/v1/completions", "body": body}


def test_openai_batch_lines_become_batch_jobs(http, store) -> None:
    lines = [_openai_line("a", max_tokens=5, temperature=0), _openai_line("b", chat=False, max_tokens=4)]
    batch = _created(http.post("/v1/batches", data=_jsonl(lines), content_type="application/x-ndjson"))
    assert batch["format"] == "openai" and batch["counts"]["total"] == 2
    items = [json.loads(i) for i in store.r.lrange(keys.batch_items(batch["id"]), 0, -1)]
    first, second = (json.loads(store.r.hget(keys.job(job_id), "request")) for _, job_id in items)
    assert first["messages"] == [{"role": "user", "content": "Hi a"}] and first["max_new_tokens"] == 5
    assert first["temperature"] == 0 and first["priority"] == "batch"
    assert second["prompt"] == "Once b" and second["max_new_tokens"] == 4 and second["seed"] is not None


@pytest.mark.parametrize(
    ("line", "field"),
    [
        ({**_openai_line("a"), "url": "/v1/embeddings"}, "line 1.url"),
        ({**_openai_line("a"), "method": "GET"}, "line 1.method"),
        (_openai_line("a", stream=True), "line 1.body.stream"),
        (_openai_line("a", n=2), "line 1.body.n"),
        (_openai_line("a", temperature=9), "line 1.body.temperature"),
        (_openai_line("a", model="gpt-4o-mini"), "line 1.body.model"),
        (_openai_line("a", max_tokens=10**6), "line 1.body.max_tokens"),
        (_openai_line("a", logprobs=True, top_logprobs=21), "line 1.body.top_logprobs"),
        ({**_openai_line("a"), "body": {"model": "tiny"}}, "line 1.body.messages"),
        ({**_openai_line("a"), "custom_id": ""}, "line 1.custom_id"),
    ],
)
def test_invalid_openai_lines_are_named_and_nothing_is_stored(http, store, line: Any, field: str) -> None:
    resp = http.post("/v1/batches", data=_jsonl([line]), content_type="application/x-ndjson")
    assert resp.status_code == 422, resp.get_json()
    assert field in [d["field"] for d in resp.get_json()["error"]["details"]], resp.get_json()
    _nothing_stored(store)


def test_a_batch_is_one_format(http, store) -> None:
    mixed = [_openai_line("a"), {"custom_id": "b", "prompt": "x"}]
    resp = http.post("/v1/batches", data=_jsonl(mixed), content_type="application/x-ndjson")
    assert resp.status_code == 422
    assert resp.get_json()["error"]["details"][0]["field"] == "line 2"
    _nothing_stored(store)


def test_openai_batch_results_parse_as_openai_objects(start_worker, client: Client, tmp_path: Path) -> None:
    from openai.types import Completion
    from openai.types.chat import ChatCompletion

    start_worker()
    lines = [
        _openai_line("chat-1", max_completion_tokens=6, temperature=0, seed=1),
        _openai_line("text-1", chat=False, max_tokens=5, temperature=0),
        _openai_line("too-long", messages=[{"role": "user", "content": "word " * 5000}], max_tokens=7000),
    ]
    path = tmp_path / "openai.jsonl"
    path.write_bytes(_jsonl(lines))
    batch = client.create_batch(jsonl=path)
    done = client.wait_batch(batch["id"], 120)
    assert done["status"] == "completed" and done["format"] == "openai"
    out = client.batch_results(batch["id"])  # the default: the format the lines came in
    assert [line["custom_id"] for line in out] == ["chat-1", "text-1", "too-long"]
    by_id = {r["custom_id"]: r for r in done["results"]}
    chat, text, too_long = out
    assert chat["response"]["status_code"] == 200 and chat["error"] is None
    assert chat["response"]["request_id"] == by_id["chat-1"]["job_id"]
    answer = ChatCompletion.model_validate(chat["response"]["body"])
    assert answer.choices[0].message.content == by_id["chat-1"]["output"]["text"]
    assert answer.usage.completion_tokens == by_id["chat-1"]["usage"]["completion_tokens"]
    completion = Completion.model_validate(text["response"]["body"])
    assert completion.object == "text_completion"
    assert completion.choices[0].text == by_id["text-1"]["output"]["text"]
    # A request the model could not run is an error answer in its line, as OpenAI's files have it.
    assert by_id["too-long"]["status"] == "failed"
    assert too_long["response"]["status_code"] == 400
    assert too_long["response"]["body"]["error"]["code"] == "context_length_exceeded"
    assert chat["id"].startswith("batch_req_") and len({line["id"] for line in out}) == 3
    raw = client._send("GET", f"/v1/batches/{batch['id']}/results?format=genq", None, "application/json", 30)
    assert [json.loads(line)["custom_id"] for line in raw.splitlines()] == ["chat-1", "text-1", "too-long"]
    with pytest.raises(Exception, match="422"):
        client._send("GET", f"/v1/batches/{batch['id']}/results?format=csv", None, "application/json", 30)
