"""Structured output at the API: bad constraints refused before queueing; tools on the real stack."""

from __future__ import annotations

import contextlib
import json
import time
from typing import Any

import jsonschema_rs
import pytest
from openai import OpenAI

from genq.client import Client
from shared.constraints import json_schema_grammar, regex_grammar
from shared.jobstore import JobStore

CHAT, TEXT = "/v1/chat/completions", "/v1/completions"
OK_CHAT = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}]}
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather of a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string", "maxLength": 12}, "celsius": {"type": "boolean"}},
            "required": ["city", "celsius"],
            "additionalProperties": False,
        },
    },
}
NAMED = {"type": "function", "function": {"name": "get_weather"}}
SMALL = {
    "type": "object",
    "properties": {"n": {"type": "integer", "minimum": 0, "maximum": 99}, "ok": {"type": "boolean"}},
    "required": ["n", "ok"],
    "additionalProperties": False,
}


def _deep(levels: int) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "string"}
    for _ in range(levels):
        schema = {"type": "object", "properties": {"a": schema}, "required": ["a"]}
    return schema


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"json_schema": {"type": "nope"}}, "json_schema"),
        ({"json_schema": {"type": "object", "if": {}}}, "json_schema"),  # a keyword llguidance can't honour
        ({"json_schema": _deep(200)}, "json_schema"),
        ({"regex": "a(b"}, "regex"),
        ({"regex": "(?<=a)b"}, "regex"),  # look-around
        ({"choice": []}, "choice"),
        ({"choice": [""]}, "choice.0"),
        ({"regex": "a", "choice": ["a"]}, "choice"),
        ({"json_schema": {"type": "object"}, "regex": "a"}, "regex"),
    ],
)
def test_bad_constraints_are_422_naming_the_field(http: Any, store: JobStore, body: dict, field: str) -> None:
    resp = http.post("/v1/jobs", json={"prompt": "x", **body})
    assert resp.status_code == 422, resp.get_data(as_text=True)
    assert field in [d["field"] for d in resp.get_json()["error"]["details"]]
    assert store.r.keys("genq:job:*") == []


BAD_TOOL = {"type": "function", "function": {"name": "f", "parameters": {"type": "nope"}}}
BAD_SCHEMA_FORMAT = {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": 5}}}
MISSING = {"type": "function", "function": {"name": "nope"}}
BAD_ARGUMENTS = [{"role": "assistant", "tool_calls": [{"function": {"name": "f", "arguments": "{"}}]}]


@pytest.mark.parametrize(
    ("path", "change", "param"),
    [
        (CHAT, {"response_format": BAD_SCHEMA_FORMAT}, "response_format.json_schema.schema"),
        (CHAT, {"response_format": {"type": "json_schema", "json_schema": {"schema": {}}}},
         "response_format.json_schema"),
        (CHAT, {"response_format": {"type": "yaml"}}, "response_format.type"),
        (CHAT, {"response_format": {"type": "json_object"}, "regex": "a"}, "response_format"),
        (TEXT, {"response_format": {"type": "json_object"}, "choice": ["a"]}, "response_format"),
        (TEXT, {"regex": "a("}, "regex"),
        (TEXT, {"choice": []}, "choice"),
        (CHAT, {"json_schema": {"type": "nope"}}, "json_schema"),
        (CHAT, {"tools": [BAD_TOOL]}, "tools[0].function.parameters"),
        (CHAT, {"tools": [{"type": "function", "function": {"name": "bad name"}}]}, "tools[0].function.name"),
        (CHAT, {"tools": [{"type": "retrieval"}]}, "tools[0].type"),
        (CHAT, {"tools": [WEATHER], "tool_choice": MISSING}, "tool_choice.function.name"),
        (CHAT, {"tools": [WEATHER], "tool_choice": "sometimes"}, "tool_choice"),
        (CHAT, {"tool_choice": "required"}, "tool_choice"),
        (CHAT, {"tools": [WEATHER, WEATHER]}, "tools[1].function.name"),
        (CHAT, {"tools": [WEATHER], "tool_choice": "required", "choice": ["a"]}, "tool_choice"),
        (CHAT, {"messages": BAD_ARGUMENTS}, "messages[0].tool_calls[0].function.arguments"),
    ],
)  # fmt: skip
def test_bad_structured_openai_requests_are_400_naming_the_param(
    http: Any, store: JobStore, path: str, change: dict, param: str
) -> None:
    body = {**OK_CHAT, **change}
    if path == TEXT:
        body = {k: v for k, v in body.items() if k != "messages"} | {"prompt": "hi"}
    resp = http.post(path, json=body)
    assert resp.status_code == 400, resp.get_data(as_text=True)
    assert resp.get_json()["error"]["param"] == param
    assert store.r.keys("genq:job:*") == []


@pytest.mark.parametrize(
    ("kind", "value"),
    [
        ("schema", {"enum": [f"value-{i}" for i in range(20_000)]}),
        ("schema", {"type": "array", "items": {"type": "integer"}, "minItems": 5000, "maxItems": 6000}),
        ("schema", {"type": "string", "pattern": "^(a{1,100}){1,100}$"}),
        ("schema", {"anyOf": [{"type": "object", "required": [f"k{i}"]} for i in range(300)]}),
        ("regex", "((a{1,50}){1,50}){1,50}"),
        ("regex", "(a|aa)*b(a|aa)*" * 20),
    ],
)
def test_pathological_constraints_are_checked_quickly(kind: str, value: Any) -> None:
    """The API's check of the worst inputs built here stays far from hanging (measured: < 0.1 s each)."""
    t0 = time.perf_counter()
    with contextlib.suppress(ValueError):  # refusing is fine; hanging is not
        json_schema_grammar(value) if kind == "schema" else regex_grammar(value)
    assert time.perf_counter() - t0 < 10.0  # a hang guard, 100x the measured time


# --- the real stack on the tiny model ----------------------------------------------
@pytest.fixture
def oai(api_server: str) -> OpenAI:
    """The official client on the live API."""
    return OpenAI(base_url=api_server + "/v1", api_key="unused", max_retries=0, timeout=120)


def test_native_job_constraints_hold_through_the_stack(start_worker, client: Client) -> None:
    start_worker()
    ids = [
        client.submit(prompt="The quick", json_schema=SMALL, max_new_tokens=60, temperature=0)["id"],
        client.submit(prompt="The quick", choice=["yes", "no"], max_new_tokens=10)["id"],
        client.submit(prompt="The quick", regex=r"[0-9]{3}", max_new_tokens=10, seed=3)["id"],
        client.submit(prompt="The quick", max_new_tokens=10, ignore_eos=True)["id"],
    ]
    schema, choice, regex, free = (client.wait(i, 120) for i in ids)
    jsonschema_rs.validate(SMALL, json.loads(schema["output"]["text"]))
    assert schema["output"]["finish_reason"] == "stop"
    assert choice["output"]["text"] in ("yes", "no")
    assert len(regex["output"]["text"]) == 3 and regex["output"]["text"].isdigit()
    assert free["usage"]["completion_tokens"] == 10


def test_forced_tool_call_then_follow_up(start_worker, oai: OpenAI) -> None:
    start_worker()
    messages: list[dict[str, Any]] = [{"role": "user", "content": "Weather in Paris?"}]
    resp = oai.chat.completions.create(
        model="tiny", messages=messages, tools=[WEATHER], tool_choice=NAMED, temperature=0, max_tokens=80
    )
    [choice] = resp.choices
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    [call] = choice.message.tool_calls
    assert call.type == "function" and call.function.name == "get_weather" and call.id.startswith("call_")
    jsonschema_rs.validate(WEATHER["function"]["parameters"], json.loads(call.function.arguments))
    # Streamed: the same call arrives as tool-call deltas, then finish_reason tool_calls.
    chunks = list(
        oai.chat.completions.create(
            model="tiny", messages=messages, tools=[WEATHER], tool_choice="required", temperature=0,
            max_tokens=80, stream=True,
        )
    )  # fmt: skip
    deltas = [tc for c in chunks if c.choices for tc in (c.choices[0].delta.tool_calls or [])]
    assert [d.function.name for d in deltas] == ["get_weather"]
    assert "".join(d.function.arguments for d in deltas) == call.function.arguments
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == [
        "tool_calls"
    ]
    # The follow-up carries the call and its result; the answer is plain text.
    messages += [
        choice.message.model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": call.id, "content": '{"temp": 21}'},
    ]
    after = oai.chat.completions.create(model="tiny", messages=messages, tools=[WEATHER], max_tokens=8)
    assert after.choices[0].finish_reason in ("stop", "length", "tool_calls")


def test_response_format_on_both_endpoints(start_worker, oai: OpenAI) -> None:
    start_worker()
    fmt = {"type": "json_schema", "json_schema": {"name": "small", "schema": SMALL, "strict": True}}
    chat = oai.chat.completions.create(
        model="tiny", messages=[{"role": "user", "content": "hi"}], response_format=fmt, max_tokens=60
    )
    jsonschema_rs.validate(SMALL, json.loads(chat.choices[0].message.content))
    text = oai.completions.create(
        model="tiny", prompt="hi", max_tokens=60, extra_body={"response_format": fmt}, seed=5, temperature=0.8
    )
    jsonschema_rs.validate(SMALL, json.loads(text.choices[0].text))
    label = oai.completions.create(model="tiny", prompt="hi", max_tokens=5, extra_body={"choice": ["a", "b"]})
    assert label.choices[0].text in ("a", "b")


# --- batches: per line -------------------------------------------------------------
def _line(custom_id: str, url: str = CHAT, **body: Any) -> dict[str, Any]:
    inputs = {"messages": [{"role": "user", "content": "hi"}]} if url == CHAT else {"prompt": "hi"}
    return {"custom_id": custom_id, "method": "POST", "url": url, "body": {"model": "tiny", **inputs, **body}}


@pytest.mark.parametrize(
    ("lines", "field"),
    [
        ([_line("a", tools=[BAD_TOOL])], "line 1.body.tools[0].function.parameters"),
        ([_line("a", url=TEXT, regex="a(")], "line 1.body.regex"),
        ([{"custom_id": "a", "prompt": "x", "json_schema": {"type": "nope"}}], "line 1.json_schema"),
        ([{"custom_id": "a", "prompt": "x", "choice": []}], "line 1.choice"),
    ],
)
def test_bad_constraints_in_batch_lines_are_named(
    http: Any, store: JobStore, lines: list, field: str
) -> None:
    data = b"".join(json.dumps(line).encode() + b"\n" for line in lines)
    resp = http.post("/v1/batches", data=data, content_type="application/x-ndjson")
    assert resp.status_code == 422, resp.get_json()
    assert field in [d["field"] for d in resp.get_json()["error"]["details"]]
    assert store.r.keys("genq:job:*") == []


def test_batch_lines_carry_constraints_and_tool_calls(start_worker, client: Client, tmp_path: Any) -> None:
    from openai.types import Completion
    from openai.types.chat import ChatCompletion

    start_worker()
    fmt = {"type": "json_schema", "json_schema": {"name": "small", "schema": SMALL}}
    lines = [
        _line("tool", tools=[WEATHER], tool_choice="required", max_tokens=80, temperature=0),
        _line("schema", response_format=fmt, max_tokens=60, temperature=0),
        _line("label", url=TEXT, choice=["spam", "ham"], max_tokens=5),
    ]
    path = tmp_path / "structured.jsonl"
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    batch = client.create_batch(jsonl=path)
    assert client.wait_batch(batch["id"], 300)["status"] == "completed"
    tool, schema, label = (line["response"]["body"] for line in client.batch_results(batch["id"]))
    call = ChatCompletion.model_validate(tool).choices[0]
    assert call.finish_reason == "tool_calls" and call.message.tool_calls[0].function.name == "get_weather"
    jsonschema_rs.validate(
        SMALL, json.loads(ChatCompletion.model_validate(schema).choices[0].message.content)
    )
    assert Completion.model_validate(label).choices[0].text in ("spam", "ham")
