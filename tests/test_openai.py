"""The OpenAI-compatible routes: the official openai client on the real stack, errors in process."""

from __future__ import annotations

import json
from typing import Any

import openai
import pytest
from openai import OpenAI

from api.app import create_app
from api.openai.replies import Diverged, _Sent
from genq.client import Client
from shared.jobstore import JobStore
from shared.settings import Settings
from tests.support import free_port

MESSAGES = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "The quick brown fox"},
]
GREEDY_CHAT = {"model": "tiny", "messages": MESSAGES, "temperature": 0}
SAMPLED = {"model": "tiny", "prompt": "Artificial Intelligence is", "max_tokens": 24, "temperature": 0.9}


@pytest.fixture
def oai(api_server: str) -> OpenAI:
    """The official client on the live API; no retries, so that an error is seen once."""
    return OpenAI(base_url=api_server + "/v1", api_key="unused", max_retries=0, timeout=60)


def _text(client: Client, **job: Any) -> dict[str, Any]:
    """Run the same work as a plain genq job and return the finished job."""
    done = client.wait(client.submit(**job)["id"], 60)
    assert done["status"] == "succeeded", done
    return done


# --- the real stack, through the openai package ------------------------------------
def test_chat_completion_is_the_same_genq_job(start_worker, oai: OpenAI, client: Client) -> None:
    start_worker()
    raw = oai.chat.completions.with_raw_response.create(**GREEDY_CHAT, max_tokens=12, user="ats-42")
    resp = raw.parse()
    assert resp.object == "chat.completion" and resp.id.startswith("chatcmpl-") and resp.model == "tiny"
    [choice] = resp.choices
    assert choice.index == 0 and choice.message.role == "assistant"
    assert choice.finish_reason in ("stop", "length") and choice.logprobs is None
    same = _text(client, messages=MESSAGES, max_new_tokens=12, temperature=0)
    assert choice.message.content == same["output"]["text"]
    assert resp.usage.prompt_tokens == same["usage"]["prompt_tokens"]
    assert resp.usage.completion_tokens == same["usage"]["completion_tokens"]
    assert resp.usage.total_tokens == resp.usage.prompt_tokens + resp.usage.completion_tokens
    [job_id] = raw.headers["x-genq-job-ids"].split(",")
    assert client.get(job_id)["metadata"] == {"user": "ats-42"}


def test_text_completion_is_the_same_genq_job(start_worker, oai: OpenAI, client: Client) -> None:
    start_worker()
    resp = oai.completions.create(model="tiny", prompt=["The quick brown fox"], max_tokens=10, temperature=0)
    assert resp.object == "text_completion" and resp.id.startswith("cmpl-")
    [choice] = resp.choices
    same = _text(client, prompt="The quick brown fox", max_new_tokens=10, temperature=0)
    assert choice.text == same["output"]["text"] and choice.index == 0
    assert resp.usage.completion_tokens == same["usage"]["completion_tokens"]


def test_chat_stream_with_usage(start_worker, oai: OpenAI) -> None:
    start_worker()
    knobs = {**GREEDY_CHAT, "max_completion_tokens": 20, "extra_body": {"ignore_eos": True}}
    chunks = list(oai.chat.completions.create(**knobs, stream=True, stream_options={"include_usage": True}))
    assert {(c.object, c.id) for c in chunks} == {("chat.completion.chunk", chunks[0].id)}
    assert chunks[0].choices[0].delta.role == "assistant"
    *body, last = chunks
    assert last.choices == [] and last.usage.completion_tokens == 20
    assert all(c.usage is None for c in body)
    contents = [c.choices[0].delta.content for c in body if c.choices[0].delta.content]
    assert len(contents) >= 2, "text should arrive in several chunks"
    assert [c.choices[0].finish_reason for c in body if c.choices[0].finish_reason] == ["length"]
    whole = oai.chat.completions.create(**knobs)
    assert "".join(contents) == whole.choices[0].message.content
    assert last.usage == whole.usage


def test_n_choices_with_a_seed_are_reproducible(start_worker, oai: OpenAI, client: Client) -> None:
    start_worker()
    first = oai.completions.create(**SAMPLED, n=2, seed=7)
    assert [c.index for c in first.choices] == [0, 1]
    texts = [c.text for c in first.choices]
    assert texts[0] != texts[1]
    # Choice i is the genq job with seed + i.
    seeded = [
        _text(client, prompt=SAMPLED["prompt"], max_new_tokens=24, temperature=0.9, seed=s) for s in (7, 8)
    ]
    assert texts == [j["output"]["text"] for j in seeded]
    assert first.usage.completion_tokens == sum(j["usage"]["completion_tokens"] for j in seeded)
    again = oai.completions.create(**SAMPLED, n=2, seed=7)
    assert [c.text for c in again.choices] == texts
    # Streamed, the two choices interleave by index and add up to the same texts.
    streamed = ["", ""]
    finishes = {}
    for chunk in oai.completions.create(**SAMPLED, n=2, seed=7, stream=True):
        assert chunk.object == "text_completion"
        [c] = chunk.choices
        streamed[c.index] += c.text
        if c.finish_reason:
            finishes[c.index] = c.finish_reason
    assert streamed == texts and set(finishes) == {0, 1}


def test_stop_cuts_the_text_before_it(start_worker, oai: OpenAI) -> None:
    start_worker()
    knobs = {"model": "tiny", "prompt": "The quick brown fox", "max_tokens": 40, "temperature": 0}
    knobs["extra_body"] = {"ignore_eos": True}
    base = oai.completions.create(**knobs).choices[0].text
    start = len(base) // 2
    stop = next(
        base[i : i + 3]
        for i in range(start, len(base) - 3)
        if base[i : i + 3].isprintable() and base.find(base[i : i + 3]) == i
    )
    cut = oai.completions.create(**knobs, stop=["never-in-this-output", stop]).choices[0]
    assert cut.text == base[: base.find(stop)] and cut.finish_reason == "stop"
    single = oai.chat.completions.create(**GREEDY_CHAT, max_tokens=5, stop="never").choices[0]
    assert single.finish_reason in ("stop", "length")


def test_errors_come_as_openai_exceptions(api_server: str, oai: OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as missing:
        oai.chat.completions.create(model="gpt-nope", messages=MESSAGES)
    assert missing.value.code == "model_not_found" and missing.value.param == "model"
    assert missing.value.type == "invalid_request_error"
    with pytest.raises(openai.BadRequestError) as hot:
        oai.chat.completions.create(model="tiny", messages=MESSAGES, temperature=2.5)
    assert hot.value.param == "temperature" and hot.value.code == "invalid_value"
    with pytest.raises(openai.BadRequestError) as big:
        oai.completions.create(model="tiny", prompt="hi", max_tokens=9000)
    assert big.value.param == "max_tokens" and big.value.code == "max_new_tokens_exceeded"


def test_models_list_in_openai_shape(start_worker, oai: OpenAI) -> None:
    start_worker()
    models = list(oai.models.list())
    assert [m.id for m in models] == ["tiny", "smollm2-135m-instruct"]
    tiny = models[0]
    assert tiny.object == "model" and tiny.owned_by == "genq" and isinstance(tiny.created, int)
    assert tiny.model_extra["ready_workers"] == 1 and tiny.model_extra["context_length"] == 8192


def test_prompt_beyond_context_is_a_bad_request(start_worker, oai: OpenAI) -> None:
    start_worker()
    with pytest.raises(openai.BadRequestError) as long:
        oai.completions.create(model="tiny", prompt="word " * 5000, max_tokens=7000)
    assert long.value.code == "context_length_exceeded" and long.value.param == "prompt"
    # Streamed, the failure arrives as an error event, which the client raises.
    with pytest.raises(openai.APIError) as streamed:
        list(
            oai.chat.completions.create(
                **GREEDY_CHAT | {"messages": [{"role": "user", "content": "word " * 5000}]},
                max_tokens=7000,
                stream=True,
            )
        )
    assert streamed.value.code == "context_length_exceeded"


def test_closing_a_stream_cancels_its_job(start_worker, oai: OpenAI, client: Client) -> None:
    start_worker()
    raw = oai.completions.with_raw_response.create(
        model="tiny",
        prompt="The quick brown fox",
        max_tokens=7000,
        temperature=0,
        stream=True,
        extra_body={"ignore_eos": True},
    )
    chunks = raw.parse()
    for _, _chunk in zip(range(3), chunks, strict=False):
        pass
    chunks.close()  # the client goes away; the server notices at its next write
    done = client.wait(raw.headers["x-genq-job-ids"], 30)
    assert done["status"] == "cancelled" and done["usage"]["completion_tokens"] < 7000


def test_a_rerun_after_a_lost_worker_resends_nothing() -> None:
    sent = _Sent()
    assert sent.feed("ab") == "ab"
    sent.reset()  # the worker died; the job starts over and streams its text again
    assert (sent.feed("a"), sent.feed("bc"), sent.feed("d")) == ("", "c", "d")
    assert sent.final("abcde") == "e"
    sent.reset()
    with pytest.raises(Diverged):
        sent.feed("x")


# --- errors and validation, in process (no worker needed) -------------------------
CHAT = "/v1/chat/completions"
TEXT = "/v1/completions"
OK_CHAT = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}]}


def _error(resp: Any, status: int) -> dict[str, Any]:
    assert resp.status_code == status, resp.get_data(as_text=True)
    error = resp.get_json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"]
    return error


@pytest.mark.parametrize(
    ("path", "change", "param", "code"),
    [
        (CHAT, {"temperature": 2.5}, "temperature", "invalid_value"),
        (CHAT, {"top_p": 1.5}, "top_p", "invalid_value"),
        (CHAT, {"n": 0}, "n", "invalid_value"),
        (CHAT, {"n": 9}, "n", "invalid_value"),
        (CHAT, {"max_tokens": 0}, "max_tokens", "invalid_value"),
        (CHAT, {"max_completion_tokens": 9000}, "max_completion_tokens", "max_new_tokens_exceeded"),
        (CHAT, {"stop": ["a", "b", "c", "d", "e"]}, "stop", "invalid_value"),
        (CHAT, {"seed": -1}, "seed", "invalid_value"),
        (CHAT, {"messages": []}, "messages", "invalid_value"),
        (CHAT, {"messages": None}, "messages", "missing_required_parameter"),
        (CHAT, {"messages": [{"role": "function", "content": "x"}]}, "messages[0].role", "unsupported_value"),
        (
            CHAT,
            {"messages": [{"role": "user", "content": [{"type": "image_url"}]}]},
            "messages[0].content",
            "unsupported_value",
        ),
        (CHAT, {"logprobs": True, "top_logprobs": 21, "stream": True}, "top_logprobs", "invalid_value"),
        (CHAT, {"top_logprobs": 2, "stream": True}, "top_logprobs", "unsupported_parameter"),
        (CHAT, {"logprobs": True, "top_logprobs": 21}, "top_logprobs", "invalid_value"),
        (CHAT, {"top_logprobs": 2}, "top_logprobs", "unsupported_parameter"),
        (CHAT, {"frequency_penalty": 0.5}, "frequency_penalty", "unsupported_parameter"),
        (CHAT, {"logit_bias": {"50256": -100}}, "logit_bias", "unsupported_parameter"),
        (CHAT, {"functions": [{"name": "f"}]}, "functions", "unsupported_parameter"),
        (CHAT, {"response_format": {"type": "xml"}}, "response_format.type", "invalid_value"),
        (CHAT, {"stream_options": {"include_usage": True}}, "stream_options", "unsupported_parameter"),
        (CHAT, {"model": "nope"}, "model", "model_not_found"),
        (TEXT, {"messages": None, "prompt": []}, "prompt", "invalid_value"),
        (TEXT, {"messages": None, "prompt": ["x"] * 65}, "prompt", "invalid_value"),
        (TEXT, {"messages": None, "prompt": [1, -2, 3]}, "prompt", "invalid_value"),
        (TEXT, {"messages": None, "prompt": [1] * 8200, "echo": True}, "prompt", "context_length_exceeded"),
        (TEXT, {"messages": None, "prompt": "hi", "logprobs": 21}, "logprobs", "invalid_value"),
        (TEXT, {"messages": None, "prompt": "hi", "max_tokens": 0}, "max_tokens", "validation_error"),
        (
            TEXT,
            {"messages": None, "prompt": "hi", "logprobs": 21, "stream": True},
            "logprobs",
            "invalid_value",
        ),
        (
            TEXT,
            {"messages": None, "prompt": "hi", "echo": True, "suffix": "x", "stream": True},
            "suffix",
            "unsupported_parameter",
        ),
        (TEXT, {"messages": None, "prompt": "hi", "best_of": 3}, "best_of", "unsupported_parameter"),
        (TEXT, {"messages": None}, "prompt", "missing_required_parameter"),
    ],
)
def test_invalid_requests_are_400_in_openai_shape(
    http: Any, store: JobStore, path: str, change: dict, param: str, code: str
) -> None:
    body = {k: v for k, v in {**OK_CHAT, **change}.items() if v is not None}
    error = _error(http.post(path, json=body), 404 if code == "model_not_found" else 400)
    assert (error["param"], error["code"], error["type"]) == (param, code, "invalid_request_error")
    assert store.r.keys("genq:job:*") == []


@pytest.mark.parametrize("raw", [b"{not json", b"[1, 2]", b'"text"'])
def test_malformed_bodies_are_400(http: Any, raw: bytes) -> None:
    error = _error(http.post(CHAT, data=raw, content_type="application/json"), 400)
    assert error["type"] == "invalid_request_error"


def test_body_too_large_is_413_in_openai_shape(http: Any, settings: Settings) -> None:
    body = json.dumps({**OK_CHAT, "messages": [{"role": "user", "content": "x" * settings.max_body_bytes}]})
    error = _error(http.post(CHAT, data=body, content_type="application/json"), 413)
    assert str(settings.max_body_bytes) in error["message"]


def test_both_dialects_classify_an_error_alike(http: Any, store: JobStore, settings: Settings) -> None:
    big = json.dumps({"model": "tiny", "prompt": "x" * settings.max_body_bytes})
    native = http.post("/v1/jobs", data=big, content_type="application/json")
    assert native.status_code == 413
    ours = native.get_json()["error"]
    error = _error(http.post(TEXT, data=big, content_type="application/json"), 413)
    assert (error["code"], error["message"]) == (ours["code"], ours["message"])
    assert error["type"] == "invalid_request_error" and store.r.keys("genq:job:*") == []


def test_harmless_params_are_accepted_and_jobs_queued(http: Any, store: JobStore) -> None:
    body = {
        **OK_CHAT,
        "n": 3,
        "seed": 10,
        "temperature": 0.5,
        "frequency_penalty": 0,
        "presence_penalty": 0,
        "logit_bias": {},
        "response_format": {"type": "text"},
        "parallel_tool_calls": True,
        "some_future_param": {"x": 1},
        "user": "u1",
        "metadata": {"ticket": "7"},
        "stream": True,
    }
    resp = http.post(CHAT, json=body)
    assert resp.status_code == 200 and resp.mimetype == "text/event-stream"
    ids = resp.headers["X-Genq-Job-Ids"].split(",")
    jobs = [store.get(i) for i in ids]
    assert [j.seed for j in jobs] == [None, None, None]  # not reported until a worker ran them
    assert [json.loads(store.raw(i)["request"])["seed"] for i in ids] == [10, 11, 12]
    assert {j.status.value for j in jobs} == {"queued"} and jobs[0].metadata == {"ticket": "7", "user": "u1"}
    resp.close()  # a hang-up: it frees the stream's waiter (else this app's hub counts it on) and cancels
    assert {store.get(i).status.value for i in ids} == {"cancelled"}


def _app(settings: Settings, **overrides: Any) -> Any:
    app = create_app(settings.model_copy(update=overrides))
    app.config["TESTING"] = True
    return app.test_client()


def test_queue_full_is_429_and_no_choice_is_left_queued(settings: Settings, store: JobStore) -> None:
    http = _app(settings, max_queued=2)
    assert http.post("/v1/jobs", json={"prompt": "fill"}).status_code == 202
    resp = http.post(CHAT, json={**OK_CHAT, "n": 2, "stream": True})
    error = _error(resp, 429)
    assert (error["type"], error["code"]) == ("requests", "rate_limit_exceeded")
    assert resp.headers["Retry-After"]
    records = [k for k in store.r.keys("genq:job:*") if k.count(":") == 2]  # not :events, :ended
    statuses = [store.get(k.removeprefix("genq:job:")).status.value for k in records]
    assert sorted(statuses) == ["cancelled", "queued"]  # the fill job, and the choice that fitted


def test_redis_down_is_503_in_openai_shape(settings: Settings) -> None:
    http = _app(settings, redis_url=f"redis://127.0.0.1:{free_port()}/0")
    error = _error(http.post(TEXT, json={"model": "tiny", "prompt": "hi"}), 503)
    assert (error["type"], error["code"]) == ("server_error", "service_unavailable")
