"""The HTTP API through Flask's test client, on the real Redis: validation, queueing, polling, cancel."""

from __future__ import annotations

import base64
import json
import re
import threading
import time
from typing import Any

import pytest

from api.app import create_app
from shared.jobstore import JobStore, new_job_id
from shared.schemas import MAX_STOP_CHARS, JobCreate, JobPublic, Status
from shared.settings import Settings
from tests.support import free_port

SEED_EXAMPLE = {
    "prompt": "Artificial Intelligence is",
    "max_new_tokens": 50,
    "temperature": 0.7,
    "do_sample": True,
}
JOB_ID = re.compile(r"^job_[0-9a-f]{32}$")
UNKNOWN_ID = "job_" + "0" * 32  # well-formed, never issued
SLACK_S = 5.0  # generous upper bound on timed requests; CI machines are noisy


class Api:
    """Small helper around the test client for the requests every test repeats."""

    def __init__(self, http: Any, store: JobStore, settings: Settings) -> None:
        self.http, self.store, self.settings = http, store, settings

    def submit(self, body: Any = None, raw: bytes | None = None) -> Any:
        """POST /v1/jobs with a JSON body (or raw bytes)."""
        if raw is not None:
            return self.http.post("/v1/jobs", data=raw, content_type="application/json")
        return self.http.post("/v1/jobs", json=body)

    def queued(self, body: dict[str, Any] | None = None) -> str:
        """Submit a valid job and return its id."""
        resp = self.submit(body or {"prompt": "The quick"})
        assert resp.status_code == 202, resp.get_json()
        return resp.get_json()["id"]

    def queue_lengths(self) -> dict[str, int]:
        """Return how many messages wait on each model's Celery queue."""
        return {m.queue: self.store.r.llen(m.queue) for m in self.settings.models}

    def queue_messages(self, queue: str) -> list[dict[str, Any]]:
        """Return the kombu envelopes waiting on a queue, decoded from JSON."""
        return [json.loads(m) for m in self.store.r.lrange(queue, 0, -1)]

    def assert_nothing_stored(self) -> None:
        """Assert that no job record exists and no message was enqueued."""
        assert self.queue_lengths() == dict.fromkeys(self.queue_lengths(), 0)
        assert self.store.r.keys("genq:job:*") == []


@pytest.fixture
def api(http: Any, store: JobStore, settings: Settings) -> Api:
    """The helper on the default test app."""
    return Api(http, store, settings)


def app_with(settings: Settings, **overrides: Any) -> Any:
    """Return a test client for an app built from settings with these fields changed."""
    app = create_app(settings.model_copy(update=overrides))
    app.config["TESTING"] = True
    return app.test_client()


def fields(resp: Any) -> list[str]:
    """Return the fields named in an error response's details."""
    return [d["field"] for d in resp.get_json()["error"].get("details") or []]


def named(resp: Any, name: str) -> bool:
    """Return True if some detail of an error response names this field (as field or in its message)."""
    return any(name == d["field"] or name in d["message"] for d in resp.get_json()["error"]["details"])


# --- bad input ----------------------------------------------------------------


@pytest.mark.parametrize(
    "raw",
    [
        b"{",
        b"not json",
        b"",
        b'{"prompt": "x",}',
        b"{'prompt': 'x'}",
        b'{"prompt": "x"} trailing',
        b"\xff\xfe\x00",
        b'{"prompt": "\xff"}',
    ],
    ids=[
        "open-brace",
        "text",
        "empty",
        "trailing-comma",
        "single-quotes",
        "trailing-data",
        "bom",
        "bad-utf8",
    ],
)
def test_malformed_json_is_400(api: Api, raw: bytes) -> None:
    resp = api.submit(raw=raw)
    assert resp.status_code == 400
    assert resp.get_json()["error"]["code"] == "malformed_json"
    api.assert_nothing_stored()


@pytest.mark.parametrize(
    "raw",
    [
        b'{"prompt": "x", "max_new_tokens": ' + b"1" * 5000 + b"}",  # past Python's int-digits limit
        b"[" * 100_000 + b"]" * 100_000,  # deeper than the JSON decoder's recursion limit
    ],
    ids=["5000-digit-int", "deep-nesting"],
)
def test_hostile_json_is_rejected_never_500(api: Api, raw: bytes) -> None:
    resp = api.submit(raw=raw)
    assert resp.status_code in (400, 422), resp.get_json()
    assert resp.get_json()["error"]["code"] in ("malformed_json", "validation_error")
    api.assert_nothing_stored()


def test_deeply_nested_metadata_is_rejected_or_echoed_never_500(api: Api) -> None:
    depth = 300  # a ~600-byte object, well inside the body and metadata limits
    raw = b'{"prompt": "x", "metadata": {"a": ' + b"[" * depth + b"]" * depth + b"}}"
    resp = api.submit(raw=raw)
    assert resp.status_code in (202, 422), resp.get_json()
    if resp.status_code == 422:
        api.assert_nothing_stored()
    else:
        got = api.http.get(f"/v1/jobs/{resp.get_json()['id']}")
        assert got.status_code == 200
        assert got.get_json()["metadata"] == json.loads(raw)["metadata"]


@pytest.mark.parametrize("body", [[], [{"prompt": "x"}], "prompt", 42, 1.5, True, None])
def test_non_object_body_is_422(api: Api, body: Any) -> None:
    resp = api.submit(raw=json.dumps(body).encode())
    assert resp.status_code == 422
    error = resp.get_json()["error"]
    assert error["code"] == "validation_error"
    assert fields(resp) == ["body"]
    api.assert_nothing_stored()


@pytest.mark.parametrize(
    ("body", "bad"),
    [
        ({"prompt": "x", "foo": 1}, "foo"),
        ({"prompt": "x", "temperature": -0.1}, "temperature"),
        ({"prompt": "x", "temperature": 5.01}, "temperature"),
        ({"prompt": "x", "temperature": "hot"}, "temperature"),
        ({"prompt": "x", "top_p": 0}, "top_p"),
        ({"prompt": "x", "top_p": 1.01}, "top_p"),
        ({"prompt": "x", "top_k": -1}, "top_k"),
        ({"prompt": "x", "max_new_tokens": 0}, "max_new_tokens"),
        ({"prompt": "x", "max_new_tokens": -5}, "max_new_tokens"),
        ({"prompt": "x", "max_new_tokens": "ten"}, "max_new_tokens"),
        ({"prompt": "x", "max_new_tokens": 10.5}, "max_new_tokens"),
        ({"prompt": "x", "repetition_penalty": 0}, "repetition_penalty"),
        ({"prompt": "x", "do_sample": "maybe"}, "do_sample"),
        ({"prompt": "x", "seed": -1}, "seed"),
        ({"prompt": "x", "seed": 2**63}, "seed"),
        ({"prompt": "x", "stop": ["a", "b", "c", "d", "e"]}, "stop"),
        ({"prompt": "x", "stop": ["s" * (MAX_STOP_CHARS + 1)]}, "stop.0"),
        ({"prompt": "x", "stop": ["ok", ""]}, "stop.1"),
        ({"prompt": "x", "stop": 7}, "stop"),
        ({"prompt": "x", "metadata": [1, 2]}, "metadata"),
        ({"prompt": "x", "model": 5}, "model"),
        ({"prompt": "x", "model": ""}, "model"),
        ({"prompt": 123}, "prompt"),
        ({"messages": "hi"}, "messages"),
        ({"messages": [{"role": "robot", "content": "hi"}]}, "messages.0.role"),
        ({"messages": [{"role": "user"}]}, "messages.0.content"),
        ({"messages": [{"role": "user", "content": "hi", "name": "bob"}]}, "messages.0.name"),
        ({"messages": [{"role": "user", "content": "hi"}, "hello"]}, "messages.1"),
    ],
)
def test_schema_violation_names_the_field(api: Api, body: dict[str, Any], bad: str) -> None:
    resp = api.submit(body)
    assert resp.status_code == 422
    assert resp.get_json()["error"]["code"] == "validation_error"
    assert bad in fields(resp), resp.get_json()
    api.assert_nothing_stored()


@pytest.mark.parametrize(
    ("body", "names"),
    [
        ({"prompt": "x", "messages": [{"role": "user", "content": "hi"}]}, ["prompt", "messages"]),
        ({}, ["prompt", "messages"]),
        ({"max_new_tokens": 5}, ["prompt", "messages"]),
        ({"prompt": ""}, ["prompt"]),
        ({"messages": []}, ["messages"]),
    ],
    ids=["both", "neither-empty-body", "neither", "empty-prompt", "empty-messages"],
)
def test_input_choice_violation_names_the_fields(api: Api, body: dict[str, Any], names: list[str]) -> None:
    resp = api.submit(body)
    assert resp.status_code == 422
    assert resp.get_json()["error"]["code"] == "validation_error"
    for name in names:
        assert named(resp, name), resp.get_json()
    api.assert_nothing_stored()


def test_every_bad_field_is_named(api: Api) -> None:
    resp = api.submit({"prompt": "x", "temperature": -1, "top_p": 0, "top_k": -1, "seed": -1, "bogus": 1})
    assert resp.status_code == 422
    assert set(fields(resp)) == {"temperature", "top_p", "top_k", "seed", "bogus"}
    api.assert_nothing_stored()


@pytest.mark.parametrize("model", ["gpt-17", "TINY", "tiny "])
def test_unknown_model_lists_the_available_ones(api: Api, settings: Settings, model: str) -> None:
    resp = api.submit({"prompt": "x", "model": model})
    assert resp.status_code == 422
    error = resp.get_json()["error"]
    assert error["code"] == "unknown_model"
    assert "model" in fields(resp)
    for name in settings.model_names:
        assert name in error["message"]
    api.assert_nothing_stored()


@pytest.mark.parametrize("model", ["tiny", "smollm2-135m-instruct"])
def test_max_new_tokens_over_the_cap_is_422_with_both_numbers(
    api: Api, settings: Settings, model: str
) -> None:
    cap = settings.model(model).max_new_tokens_cap
    resp = api.submit({"prompt": "x", "model": model, "max_new_tokens": cap + 1})
    assert resp.status_code == 422
    error = resp.get_json()["error"]
    assert error["code"] == "max_new_tokens_exceeded"
    assert str(cap + 1) in error["message"] and str(cap) in error["message"]
    assert fields(resp) == ["max_new_tokens"]
    api.assert_nothing_stored()


def test_max_new_tokens_at_the_cap_is_accepted(api: Api, settings: Settings) -> None:
    cap = settings.model("smollm2-135m-instruct").max_new_tokens_cap
    resp = api.submit({"prompt": "x", "model": "smollm2-135m-instruct", "max_new_tokens": cap})
    assert resp.status_code == 202


def test_body_over_the_limit_is_413(settings: Settings, store: JobStore) -> None:
    http = app_with(settings, max_body_bytes=1024)
    resp = http.post("/v1/jobs", json={"prompt": "x" * 2000})
    assert resp.status_code == 413
    error = resp.get_json()["error"]
    assert error["code"] == "body_too_large"
    assert "1024" in error["message"]
    Api(http, store, settings).assert_nothing_stored()


def test_body_exactly_at_the_limit_is_accepted(settings: Settings, store: JobStore) -> None:
    http = app_with(settings, max_body_bytes=1024)
    prefix, suffix = b'{"prompt": "', b'"}'
    raw = prefix + b"x" * (1024 - len(prefix) - len(suffix)) + suffix
    assert len(raw) == 1024
    assert http.post("/v1/jobs", data=raw, content_type="application/json").status_code == 202
    assert http.post("/v1/jobs", data=raw[:-2] + b'x"}', content_type="application/json").status_code == 413


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"prompt": "x" * 11}, "prompt"),
        (
            {"messages": [{"role": "user", "content": "x" * 6}, {"role": "user", "content": "y" * 5}]},
            "messages",
        ),
    ],
    ids=["prompt", "messages-together"],
)
def test_prompt_over_max_chars_is_422(settings: Settings, store: JobStore, body: dict, field: str) -> None:
    http = app_with(settings, max_prompt_chars=10)
    resp = http.post("/v1/jobs", json=body)
    assert resp.status_code == 422
    error = resp.get_json()["error"]
    assert error["code"] == "prompt_too_long"
    assert "11" in error["message"] and "10" in error["message"]
    assert fields(resp) == [field]
    Api(http, store, settings).assert_nothing_stored()
    assert http.post("/v1/jobs", json={"prompt": "x" * 10}).status_code == 202


def test_too_many_messages_is_422(settings: Settings, store: JobStore) -> None:
    http = app_with(settings, max_messages=2)
    messages = [{"role": "user", "content": "hi"}] * 3
    resp = http.post("/v1/jobs", json={"messages": messages})
    assert resp.status_code == 422
    assert resp.get_json()["error"]["code"] == "validation_error"
    assert fields(resp) == ["messages"]
    Api(http, store, settings).assert_nothing_stored()
    assert http.post("/v1/jobs", json={"messages": messages[:2]}).status_code == 202


def test_metadata_too_large_is_422(settings: Settings, store: JobStore) -> None:
    http = app_with(settings, max_metadata_bytes=32)
    resp = http.post("/v1/jobs", json={"prompt": "x", "metadata": {"note": "n" * 40}})
    assert resp.status_code == 422
    error = resp.get_json()["error"]
    assert error["code"] == "validation_error"
    assert "32" in error["message"]
    assert fields(resp) == ["metadata"]
    Api(http, store, settings).assert_nothing_stored()
    assert http.post("/v1/jobs", json={"prompt": "x", "metadata": {"n": 1}}).status_code == 202


# --- accepted jobs --------------------------------------------------------------


def test_accepted_job_is_stored_then_enqueued_as_json(api: Api, store: JobStore) -> None:
    before = time.time()
    resp = api.submit({"prompt": "The quick"})
    assert resp.status_code == 202
    body = resp.get_json()
    assert JOB_ID.match(body["id"])
    assert body["status"] == "queued"
    assert body["model"] == "tiny"
    assert before - 1 <= body["created_at"] <= time.time() + 1
    JobPublic.model_validate(body)
    assert resp.headers["Location"].endswith(f"/v1/jobs/{body['id']}")
    assert api.http.get(resp.headers["Location"]).get_json()["id"] == body["id"]

    record = store.raw(body["id"])
    assert record["status"] == "queued" and record["model"] == "tiny"
    assert json.loads(record["request"])["prompt"] == "The quick"
    assert api.queue_lengths() == {"genq.tiny": 1, "genq.smollm2-135m-instruct": 0}
    (message,) = api.queue_messages("genq.tiny")
    assert message["content-type"] == "application/json"
    assert message["headers"]["task"] == "genq.generate"
    args, kwargs, _ = json.loads(base64.b64decode(message["body"]))
    assert args == [body["id"]] and kwargs == {}


def test_job_for_the_second_model_goes_to_its_queue(api: Api, store: JobStore) -> None:
    resp = api.submit({"prompt": "x", "model": "smollm2-135m-instruct"})
    assert resp.status_code == 202
    assert resp.get_json()["model"] == "smollm2-135m-instruct"
    assert api.queue_lengths() == {"genq.tiny": 0, "genq.smollm2-135m-instruct": 1}
    (message,) = api.queue_messages("genq.smollm2-135m-instruct")
    assert json.loads(base64.b64decode(message["body"]))[0] == [resp.get_json()["id"]]


def test_seed_example_is_accepted_verbatim(api: Api, store: JobStore) -> None:
    resp = api.submit(SEED_EXAMPLE)
    assert resp.status_code == 202
    request = json.loads(store.raw(resp.get_json()["id"])["request"])
    assert {k: request[k] for k in SEED_EXAMPLE} == SEED_EXAMPLE
    assert api.queue_lengths()["genq.tiny"] == 1


def test_chat_job_is_accepted(api: Api, store: JobStore) -> None:
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi?"}]
    job_id = api.queued({"messages": messages})
    assert json.loads(store.raw(job_id)["request"])["messages"] == messages


def test_default_max_new_tokens_is_filled_in(api: Api, settings: Settings, store: JobStore) -> None:
    job_id = api.queued({"prompt": "x"})
    assert (
        json.loads(store.raw(job_id)["request"])["max_new_tokens"]
        == settings.model("tiny").default_max_new_tokens
    )


def test_metadata_is_echoed_back(api: Api) -> None:
    metadata = {"ticket": "A-17", "attempt": 2, "tags": ["x", "y"], "nested": {"ok": True}}
    resp = api.submit({"prompt": "x", "metadata": metadata})
    assert resp.get_json()["metadata"] == metadata
    assert api.http.get(f"/v1/jobs/{resp.get_json()['id']}").get_json()["metadata"] == metadata


def test_stop_as_a_single_string_becomes_a_list(api: Api, store: JobStore) -> None:
    job_id = api.queued({"prompt": "x", "stop": "\n\n"})
    assert json.loads(store.raw(job_id)["request"])["stop"] == ["\n\n"]


def test_each_job_gets_its_own_id(api: Api) -> None:
    ids = {api.queued() for _ in range(5)}
    assert len(ids) == 5
    assert api.queue_lengths()["genq.tiny"] == 5


# --- GET /v1/jobs/{id} ----------------------------------------------------------


@pytest.mark.parametrize("job_id", [UNKNOWN_ID, "job_123", "nope", "job_" + "G" * 32, "JOB_" + "a" * 32])
def test_unknown_or_malformed_id_is_404(api: Api, job_id: str) -> None:
    resp = api.http.get(f"/v1/jobs/{job_id}")
    assert resp.status_code == 404
    assert resp.get_json()["error"]["code"] == "not_found"


def test_get_returns_the_job(api: Api) -> None:
    job_id = api.queued()
    resp = api.http.get(f"/v1/jobs/{job_id}")
    assert resp.status_code == 200
    job = JobPublic.model_validate(resp.get_json())
    assert job.id == job_id and job.status is Status.QUEUED and job.model == "tiny"


@pytest.mark.parametrize("wait", ["abc", "-1", "61", "nan", "inf", ""])
def test_invalid_wait_is_422(api: Api, wait: str) -> None:
    job_id = api.queued()
    resp = api.http.get(f"/v1/jobs/{job_id}?wait={wait}")
    assert resp.status_code == 422
    assert resp.get_json()["error"]["code"] == "validation_error"
    assert fields(resp) == ["wait"]


def test_wait_on_a_queued_job_returns_after_the_timeout(api: Api) -> None:
    job_id = api.queued()
    start = time.monotonic()
    resp = api.http.get(f"/v1/jobs/{job_id}?wait=0.5")
    elapsed = time.monotonic() - start
    assert resp.status_code == 200
    assert resp.get_json()["status"] == "queued"
    assert 0.4 <= elapsed < SLACK_S


def test_wait_returns_as_soon_as_the_job_ends(api: Api, store: JobStore) -> None:
    job_id = api.queued()
    timer = threading.Timer(0.3, store.cancel, [job_id])
    timer.start()
    try:
        start = time.monotonic()
        resp = api.http.get(f"/v1/jobs/{job_id}?wait=20")
        elapsed = time.monotonic() - start
    finally:
        timer.join()
    assert resp.get_json()["status"] == "cancelled"
    assert 0.2 <= elapsed < SLACK_S


def test_wait_does_not_busy_poll_redis(api: Api, store: JobStore) -> None:
    job_id = api.queued()
    store.r.config_resetstat()
    api.http.get(f"/v1/jobs/{job_id}?wait=1")
    stats = store.r.info("commandstats")
    calls = sum(v["calls"] for k, v in stats.items() if k not in ("cmdstat_info", "cmdstat_config|resetstat"))
    assert calls <= 10, stats  # a 50 ms poll loop would make ~20


def test_wait_on_an_unknown_id_is_an_immediate_404(api: Api) -> None:
    start = time.monotonic()
    resp = api.http.get(f"/v1/jobs/{new_job_id()}?wait=5")
    assert resp.status_code == 404
    assert time.monotonic() - start < 2


# --- cancel ---------------------------------------------------------------------


def test_cancel_a_queued_job(api: Api, store: JobStore) -> None:
    job_id = api.queued()
    resp = api.http.post(f"/v1/jobs/{job_id}/cancel")
    assert resp.status_code == 200
    assert resp.get_json()["status"] == "cancelled"
    assert resp.get_json()["finished_at"] is not None
    assert store.claim(job_id, "w1", "cpu").outcome == "cancelled"  # a worker picking it up must not run it
    assert api.http.get(f"/v1/jobs/{job_id}").get_json()["status"] == "cancelled"
    again = api.http.post(f"/v1/jobs/{job_id}/cancel")
    assert again.status_code == 200
    assert again.get_json()["status"] == "cancelled"


@pytest.mark.parametrize("job_id", [UNKNOWN_ID, "not-a-job"])
def test_cancel_unknown_job_is_404(api: Api, job_id: str) -> None:
    resp = api.http.post(f"/v1/jobs/{job_id}/cancel")
    assert resp.status_code == 404
    assert resp.get_json()["error"]["code"] == "not_found"
    assert api.store.r.keys("genq:job:*") == []


@pytest.mark.parametrize("status", [Status.SUCCEEDED, Status.FAILED])
def test_cancel_an_ended_job_is_409(api: Api, store: JobStore, status: Status) -> None:
    job_id = api.queued()
    assert store.claim(job_id, "w1", "cpu").outcome == "claimed"
    assert store.finish(job_id, status, output={"text": "done", "finish_reason": "length"})
    resp = api.http.post(f"/v1/jobs/{job_id}/cancel")
    assert resp.status_code == 409
    assert resp.get_json()["error"]["code"] == "not_cancellable"
    assert store.raw(job_id)["status"] == status.value
    assert store.cancel_requested([job_id]) == set()


def test_cancel_a_running_job_flags_it_for_its_worker(api: Api, store: JobStore) -> None:
    job_id = api.queued()
    other = api.queued()
    assert store.claim(job_id, "w1", "cpu").outcome == "claimed"
    assert store.claim(other, "w1", "cpu").outcome == "claimed"
    resp = api.http.post(f"/v1/jobs/{job_id}/cancel")
    assert resp.status_code == 202
    assert resp.get_json()["status"] == "running"
    assert store.cancel_requested([job_id, other]) == {job_id}


# --- models, health, readiness ------------------------------------------------


def ready_workers(api: Api) -> dict[str, int]:
    """Return GET /v1/models as name → ready workers."""
    resp = api.http.get("/v1/models")
    assert resp.status_code == 200
    return {m["name"]: m["ready_workers"] for m in resp.get_json()["data"]}


WORKER_INFO = {"model": "tiny", "device": "cpu", "host": "h", "pid": 1}


def test_models_lists_the_catalog_with_no_workers(api: Api, settings: Settings) -> None:
    resp = api.http.get("/v1/models")
    data = resp.get_json()["data"]
    assert [m["name"] for m in data] == settings.model_names
    for m, spec in zip(data, settings.models, strict=True):
        assert m["ready_workers"] == 0
        assert m["context_length"] == spec.context_length
        assert m["max_new_tokens_cap"] == spec.max_new_tokens_cap


def test_models_counts_live_workers_per_model(api: Api, store: JobStore) -> None:
    store.heartbeat("w1", WORKER_INFO, ttl_s=5)
    assert ready_workers(api) == {"tiny": 1, "smollm2-135m-instruct": 0}
    store.heartbeat("w2", WORKER_INFO, ttl_s=5)
    store.heartbeat("w3", {**WORKER_INFO, "model": "smollm2-135m-instruct"}, ttl_s=5)
    assert ready_workers(api) == {"tiny": 2, "smollm2-135m-instruct": 1}
    store.unregister("w2")
    assert ready_workers(api) == {"tiny": 1, "smollm2-135m-instruct": 1}


def test_a_lapsed_heartbeat_no_longer_counts(api: Api, store: JobStore) -> None:
    store.heartbeat("w1", WORKER_INFO, ttl_s=0.3)
    assert ready_workers(api)["tiny"] == 1
    time.sleep(0.5)
    assert ready_workers(api)["tiny"] == 0


def test_healthz(api: Api) -> None:
    resp = api.http.get("/healthz")
    assert resp.status_code == 200
    assert resp.get_json()["status"] == "ok"


def test_readyz_needs_a_worker(api: Api, store: JobStore) -> None:
    resp = api.http.get("/readyz")
    assert resp.status_code == 503
    assert resp.get_json()["status"] == "unavailable"
    assert resp.get_json()["reason"] == "no ready worker"
    store.heartbeat("w1", WORKER_INFO, ttl_s=5)
    resp = api.http.get("/readyz")
    assert resp.status_code == 200
    assert resp.get_json()["status"] == "ok"
    assert resp.get_json()["ready_workers"] == 1


@pytest.fixture
def down(settings: Settings) -> Any:
    """A test client whose Redis URL points at a closed port."""
    return app_with(settings, redis_url=f"redis://127.0.0.1:{free_port()}/0")


def test_readyz_when_redis_is_down_is_503(down: Any) -> None:
    resp = down.get("/readyz")
    assert resp.status_code == 503
    assert resp.get_json()["status"] == "unavailable"
    assert "redis" in resp.get_json()["reason"].lower()
    assert down.get("/healthz").status_code == 200


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("post", "/v1/jobs", {"prompt": "x"}),
        ("get", f"/v1/jobs/{UNKNOWN_ID}", None),
        ("post", f"/v1/jobs/{UNKNOWN_ID}/cancel", None),
        ("get", "/v1/models", None),
    ],
)
def test_redis_down_is_503_with_retry_after(down: Any, method: str, path: str, body: Any) -> None:
    start = time.monotonic()
    resp = getattr(down, method)(path, json=body)
    assert resp.status_code == 503
    assert resp.get_json()["error"]["code"] == "service_unavailable"
    assert int(resp.headers["Retry-After"]) > 0
    assert time.monotonic() - start < 10


def test_bad_input_is_still_rejected_when_redis_is_down(down: Any) -> None:
    resp = down.post("/v1/jobs", json={"prompt": "x", "temperature": -1})
    assert resp.status_code == 422


# --- routing errors and the OpenAPI document ----------------------------------


@pytest.mark.parametrize("path", ["/nope", "/v1", "/v1/job", f"/v1/jobs/{UNKNOWN_ID}/nope"])
def test_unknown_route_is_a_json_404(api: Api, path: str) -> None:
    resp = api.http.get(path)
    assert resp.status_code == 404
    assert resp.is_json
    assert resp.get_json()["error"]["code"] == "not_found"


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("delete", f"/v1/jobs/{UNKNOWN_ID}"),
        ("get", "/v1/jobs/x/cancel"),
        ("post", "/v1/models"),
        ("post", "/healthz"),
    ],
)
def test_wrong_method_is_a_json_405(api: Api, method: str, path: str) -> None:
    resp = getattr(api.http, method)(path)
    assert resp.status_code == 405
    assert resp.is_json
    assert resp.get_json()["error"]["code"] == "method_not_allowed"
    api.assert_nothing_stored()


def test_openapi_document(api: Api) -> None:
    resp = api.http.get("/openapi.json")
    assert resp.status_code == 200
    doc = resp.get_json()
    assert doc["openapi"] == "3.1.0"
    for path in [
        "/v1/jobs",
        "/v1/jobs/{job_id}",
        "/v1/jobs/{job_id}/cancel",
        "/v1/models",
        "/healthz",
        "/readyz",
    ]:
        assert path in doc["paths"], path
    schemas = doc["components"]["schemas"]
    assert {"JobCreate", "JobPublic"} <= set(schemas)
    assert set(schemas["JobCreate"]["properties"]) == set(JobCreate.model_json_schema()["properties"])
    assert set(schemas["JobPublic"]["properties"]) == set(JobPublic.model_fields)
    refs = re.findall(r'"\$ref": "#/components/schemas/([^"]+)"', json.dumps(doc))
    assert refs and set(refs) <= set(schemas)  # every reference resolves
