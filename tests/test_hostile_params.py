"""Hostile sampling numbers on every front door: refused naming the field, nothing stored, never a 500."""

from __future__ import annotations

import json
from typing import Any

import pytest

from shared.celery_app import queue_lists
from shared.jobstore import JobStore
from shared.schemas import JobCreate

# Subnormals, values that round to 0 in float32, overflowing magnitudes, non-finite numbers (Python's
# json module, and so the API, admits NaN and Infinity) and negative zero where 0 is not allowed.
HOSTILE_BY_ID = {
    "subnormal": 2.225073858507e-311,
    "1e-320": 1e-320,
    "min-subnormal": 5e-324,
    "below-float32": 1e-40,
    "1e308": 1e308,
    "-1e308": -1e308,
    "nan": "NaN",
    "inf": "Infinity",
    "-inf": "-Infinity",
    "tiny": 1e-3 / 2,
}
HOSTILE, HOSTILE_IDS = list(HOSTILE_BY_ID.values()), list(HOSTILE_BY_ID)
NATIVE_FIELDS = ["temperature", "top_p", "repetition_penalty"]
OPENAI_FIELDS = ["temperature", "top_p", "repetition_penalty", "frequency_penalty", "presence_penalty"]
CHAT, TEXT = "/v1/chat/completions", "/v1/completions"


def _body(fields: dict[str, Any], value: Any, name: str) -> bytes:
    """Serialize a body with one field set to a raw JSON number token (NaN, 1e-320, ...)."""
    text = json.dumps({**fields, name: "@@"})
    token = value if isinstance(value, str) else repr(float(value))
    return text.replace('"@@"', token).encode()


def _nothing_stored(store: JobStore) -> None:
    assert store.r.keys("genq:job:*") == [] and store.r.keys("genq:batch:*") == []
    queued = sum(store.r.llen(q) for m in ("tiny", "smollm2-135m-instruct") for q in queue_lists(f"genq.{m}"))
    assert queued == 0


def _refused(resp: Any, status: int, field: str) -> None:
    assert resp.status_code == status, resp.get_data(as_text=True)
    error = resp.get_json()["error"]
    named = error.get("param") or "|".join(d["field"] for d in error.get("details", []))
    assert field in named, error


@pytest.mark.parametrize("value", HOSTILE, ids=HOSTILE_IDS)
@pytest.mark.parametrize("name", NATIVE_FIELDS)
def test_native_job_refuses_hostile_number(http, store, name: str, value: Any) -> None:
    body = _body({"model": "tiny", "prompt": "x"}, value, name)
    _refused(http.post("/v1/jobs", data=body, content_type="application/json"), 422, name)
    _nothing_stored(store)


@pytest.mark.parametrize("value", HOSTILE, ids=HOSTILE_IDS)
@pytest.mark.parametrize("name", OPENAI_FIELDS)
@pytest.mark.parametrize("path", [CHAT, TEXT])
def test_openai_refuses_hostile_number(http, store, path: str, name: str, value: Any) -> None:
    base = {"model": "tiny", "max_tokens": 2}
    base |= {"messages": [{"role": "user", "content": "hi"}]} if path == CHAT else {"prompt": "hi"}
    # OpenAI answers invalid values with 400 and names them in `param`; genq's routes use 422.
    _refused(http.post(path, data=_body(base, value, name), content_type="application/json"), 400, name)
    _nothing_stored(store)


@pytest.mark.parametrize("value", HOSTILE, ids=HOSTILE_IDS)
@pytest.mark.parametrize("name", NATIVE_FIELDS)
def test_batch_refuses_hostile_number(http, store, name: str, value: Any) -> None:
    item = _body({"custom_id": "a", "prompt": "x", "model": "tiny"}, value, name).decode()
    resp = http.post("/v1/batches", data=f'{{"requests": [{item}]}}', content_type="application/json")
    _refused(resp, 422, f"requests.0.{name}")
    line = _body({"model": "tiny", "messages": [{"role": "user", "content": "hi"}]}, value, name).decode()
    openai = f'{{"custom_id": "a", "method": "POST", "url": "{CHAT}", "body": {line}}}\n'
    _refused(http.post("/v1/batches", data=openai, content_type="application/x-ndjson"), 422, f"body.{name}")
    _nothing_stored(store)


@pytest.mark.parametrize("name", ["top_p", "repetition_penalty"])
def test_negative_zero_is_refused_where_zero_is(http, store, name: str) -> None:
    body = _body({"model": "tiny", "prompt": "x"}, "-0.0", name)
    _refused(http.post("/v1/jobs", data=body, content_type="application/json"), 422, name)
    _nothing_stored(store)


def test_negative_zero_temperature_is_greedy(http, store) -> None:
    resp = http.post("/v1/jobs", data=_body({"model": "tiny", "prompt": "x"}, -0.0, "temperature"))
    assert resp.status_code == 202, resp.get_json()
    assert json.loads(store.raw(resp.get_json()["id"])["request"])["temperature"] == 0.0


def test_openapi_states_the_bounds(http) -> None:
    doc = http.get("/openapi.json").get_json()
    schemas = json.dumps(doc)
    props = JobCreate.model_json_schema()["properties"]
    assert props["temperature"]["anyOf"][1]["minimum"] == 0.01 and props["top_p"]["minimum"] == 0.001
    assert props["repetition_penalty"]["minimum"] == 0.01 and props["repetition_penalty"]["maximum"] == 10
    # The served document is built from the same models, so it carries the same numbers.
    assert '"minimum": 0.01' in schemas and '"minimum": 0.001' in schemas
