"""Log-probabilities on streamed answers: each token event carries the entries of its tokens."""

from __future__ import annotations

import json
from typing import Any

import pytest
from openai import OpenAI

from api.openai.replies import _Sent
from genq.client import Client
from shared import keys
from shared.jobstore import EVENT_LOGPROBS, EVENT_PROMPT_LOGPROBS, Entries, JobStore, new_job_id
from shared.schemas import JobCreate, TokenLogprob
from tests.test_structured_api import NAMED, WEATHER

MESSAGES = [{"role": "user", "content": "Is Paris in France? Answer yes or no."}]
PROMPT = "The quick brown fox"
MAX_TOKENS = 24  # enough tokens that the answer streams over several chunks


@pytest.fixture
def oai(api_server: str) -> OpenAI:
    """The official client on the live API; no retries, so that an error is seen once."""
    return OpenAI(base_url=api_server + "/v1", api_key="unused", max_retries=0, timeout=60)


def _entry(n: int) -> str:
    return json.dumps({"token": f"t{n}", "id": n, "logprob": -0.5 * n, "top_logprobs": []})


def _token_events(store: JobStore, job_id: str) -> list[dict]:
    return [e for _, e in store.r.xrange(keys.events(job_id)) if e["type"] == "token"]


# --- the job store ----------------------------------------------------------------
def test_entries_retried_after_a_lost_reply_are_appended_once(store: JobStore) -> None:
    job_id, plain = new_job_id(), new_job_id()
    for j in (job_id, plain):
        store.create(j, "tiny", JobCreate(prompt="x"))
        assert store.claim(j, "w", "cpu").outcome == "claimed"
    prompt = Entries([_entry(0), _entry(1)], 0, EVENT_PROMPT_LOGPROBS)
    assert store.publish_tokens({job_id: ""}, {job_id: 1}, {job_id: 0}, {job_id: prompt}) == set()
    first = Entries([_entry(2), _entry(3)], 2)
    both = {job_id: 1, plain: 1}
    assert store.publish_tokens({job_id: "héllo ", plain: "hi"}, both, {job_id: 0}, {job_id: first}) == set()
    # Its reply was lost: the worker sends it again with what came since, from the same offsets.
    again = Entries([_entry(2), _entry(3), _entry(4)], 2)
    assert store.publish_tokens({job_id: "héllo world"}, {job_id: 1}, {job_id: 0}, {job_id: again}) == set()
    assert store.publish_tokens({job_id: "héllo world"}, {job_id: 1}, {job_id: 0}, {job_id: again}) == set()
    events = _token_events(store, job_id)
    assert [e["data"] for e in events] == ["", "héllo ", "world"]
    assert [json.loads(e[EVENT_PROMPT_LOGPROBS]) for e in events[:1]] == [
        [json.loads(_entry(0)), json.loads(_entry(1))]
    ]
    lps = [[x["id"] for x in json.loads(e[EVENT_LOGPROBS])] for e in events[1:]]
    assert lps == [[2, 3], [4]]
    assert _token_events(store, plain) == [{"type": "token", "data": "hi"}]  # nothing more without asking
    # A new attempt starts its count again, as it starts its text again.
    store.r.zadd(keys.RUNNING, {job_id: 0}, xx=True)
    assert store.requeue(job_id, max_attempts=5) == "requeued"
    assert store.claim(job_id, "w", "cpu").outcome == "claimed"
    assert (
        store.publish_tokens({job_id: "re"}, {job_id: 2}, {job_id: 0}, {job_id: Entries([_entry(2)], 0)})
        == set()
    )
    assert json.loads(_token_events(store, job_id)[-1][EVENT_LOGPROBS])[0]["id"] == 2


def test_a_rerun_resends_no_entry() -> None:
    def lp(n: int) -> TokenLogprob:
        return TokenLogprob(token=f"t{n}", id=n, logprob=-1.0)

    sent = _Sent()
    assert sent.take([lp(0), lp(1)]) == [lp(0), lp(1)]
    sent.reset()  # the worker died; the job's rerun streams the same tokens again
    assert sent.take([lp(0)]) == []
    assert sent.take([lp(1), lp(2)]) == [lp(2)]
    assert sent.take([lp(3)]) == [lp(3)]
    assert sent.count == 4


# --- the real stack -----------------------------------------------------------------
def test_openai_streams_carry_the_logprobs_of_their_tokens(start_worker, oai: OpenAI) -> None:
    start_worker()
    chat = {"model": "tiny", "messages": MESSAGES, "max_tokens": MAX_TOKENS, "temperature": 0}
    chat |= {"logprobs": True, "top_logprobs": 3, "extra_body": {"ignore_eos": True}}
    whole = oai.chat.completions.create(**chat).choices[0]
    text, content = "", []
    for chunk in oai.chat.completions.create(**chat, stream=True):
        for c in chunk.choices:
            text += c.delta.content or ""
            if c.logprobs is not None:
                assert c.logprobs.content, "a chunk with logprobs carries some"
                content += c.logprobs.content
            elif c.delta.content:
                pytest.fail(f"text without its logprobs: {c.delta.content!r}")
    assert text == whole.message.content
    assert [t.model_dump() for t in content] == [t.model_dump() for t in whole.logprobs.content]
    assert all(len(t.top_logprobs) == 3 for t in content)

    text_req = {"model": "tiny", "prompt": PROMPT, "max_tokens": MAX_TOKENS, "temperature": 0, "logprobs": 2}
    for echo in (False, True):
        one = oai.completions.create(**text_req, echo=echo).choices[0]
        got: dict[str, list[Any]] = {
            "tokens": [],
            "token_logprobs": [],
            "top_logprobs": [],
            "text_offset": [],
        }
        streamed = ""
        chunks = list(oai.completions.create(**text_req, echo=echo, stream=True))
        for chunk in chunks:
            [c] = chunk.choices
            streamed += c.text
            if c.logprobs is not None:
                for name in got:
                    got[name] += getattr(c.logprobs, name)
        assert streamed == one.text
        assert got == {name: getattr(one.logprobs, name) for name in got}
        if echo:  # the first chunk is the prompt, with its logprobs (the first null)
            first = chunks[0].choices[0]
            assert first.text == "".join(first.logprobs.tokens) and first.logprobs.token_logprobs[0] is None
            assert one.text.startswith(first.text)
    assert len(chunks) > 3
    # Without logprobs, chunks carry none; echo alone still starts with the prompt.
    plain = {**chat, "logprobs": None, "top_logprobs": None}
    assert all(
        c.logprobs is None for k in oai.chat.completions.create(**plain, stream=True) for c in k.choices
    )
    no_lp = {**text_req, "logprobs": None, "echo": True}
    echoed = list(oai.completions.create(**no_lp, stream=True))
    assert all(k.choices[0].logprobs is None for k in echoed)
    assert "".join(k.choices[0].text for k in echoed) == oai.completions.create(**no_lp).choices[0].text
    assert echoed[0].choices[0].text == PROMPT


def test_native_stream_token_events_carry_logprobs_when_asked(start_worker, client: Client) -> None:
    start_worker()
    job = {"max_new_tokens": MAX_TOKENS, "temperature": 0, "ignore_eos": True}
    asked = client.submit(PROMPT, logprobs=True, top_logprobs=2, echo=True, **job)["id"]
    plain = client.submit(PROMPT, **job)["id"]
    events = list(client.stream(asked))
    tokens = [data for event, data in events if event == "token"]
    done = events[-1][1]
    assert events[-1][0] == "done" and done["status"] == "succeeded"
    assert "".join(t["text"] for t in tokens) == done["output"]["text"]
    assert [e for t in tokens for e in t.get("logprobs", [])] == done["output"]["logprobs"]
    assert all(t.get("logprobs") for t in tokens if t["text"])  # no text without its tokens' entries
    assert tokens[0]["prompt_logprobs"] == done["output"]["prompt_logprobs"]
    assert sum("prompt_logprobs" in t for t in tokens) == 1
    plain_tokens = [data for event, data in client.stream(plain) if event == "token"]
    assert plain_tokens and all(set(t) == {"text"} for t in plain_tokens)


# --- in process: what a streamed request may ask ---------------------------------------
def test_streamed_logprobs_and_common_openai_keys_are_accepted(http: Any, store: JobStore) -> None:
    """The keys docs/openai.md calls ignored change nothing; a stream asking for logprobs is stored."""
    ignored = {
        "parallel_tool_calls": True,
        "store": False,
        "service_tier": "auto",
        "reasoning_effort": "low",
        "modalities": ["text"],
        "prediction": None,
    }
    body = {"model": "tiny", "messages": MESSAGES, "stream": True, "logprobs": True, "top_logprobs": 3}
    resp = http.post("/v1/chat/completions", json={**body, **ignored})
    assert resp.status_code == 200 and resp.mimetype == "text/event-stream"
    [job_id] = resp.headers["X-Genq-Job-Ids"].split(",")
    request = json.loads(store.raw(job_id)["request"])
    assert (request["logprobs"], request["top_logprobs"]) == (True, 3)
    assert not set(ignored) & set(request)
    resp.close()  # a hang-up cancels the job and frees the stream's waiter
    text = {"model": "tiny", "prompt": PROMPT, "stream": True, "logprobs": 2, "echo": True}
    resp = http.post("/v1/completions", json=text)
    assert resp.status_code == 200
    [job_id] = resp.headers["X-Genq-Job-Ids"].split(",")
    request = json.loads(store.raw(job_id)["request"])
    assert (request["logprobs"], request["top_logprobs"], request["echo"]) == (True, 2, True)
    resp.close()


def test_a_streamed_tool_call_carries_its_logprobs(start_worker, oai: OpenAI) -> None:
    start_worker()
    knobs = {"model": "tiny", "messages": [{"role": "user", "content": "Weather in Paris?"}]}
    knobs |= {"tools": [WEATHER], "tool_choice": NAMED, "temperature": 0, "max_tokens": 80}
    knobs |= {"logprobs": True, "top_logprobs": 1}
    whole = oai.chat.completions.create(**knobs).choices[0]
    assert whole.finish_reason == "tool_calls" and whole.logprobs.content
    chunks = list(oai.chat.completions.create(**knobs, stream=True))
    streamed = [t for k in chunks for c in k.choices if c.logprobs for t in c.logprobs.content]
    assert [t.model_dump() for t in streamed] == [t.model_dump() for t in whole.logprobs.content]
    [with_calls] = [c for k in chunks for c in k.choices if c.delta.tool_calls]
    assert with_calls.logprobs is not None  # sent whole, with the call
