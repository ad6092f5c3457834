"""Log-probabilities, echo and prompt lists through the official openai client, against genq's own jobs."""

from __future__ import annotations

import math

import httpx
import pytest
from openai import OpenAI

from genq.client import Client
from shared.jobstore import JobStore

PROMPTS = ["The quick brown fox", "What is the capital of France?"]
TOL = 1e-4  # the same numbers travel two ways: through /v1/jobs and through /v1/completions


@pytest.fixture
def oai(api_server: str) -> OpenAI:
    """The official client on the live API; no retries, so that an error is seen once."""
    return OpenAI(base_url=api_server + "/v1", api_key="unused", max_retries=0, timeout=60)


def _done(client: Client, **job) -> dict:
    done = client.wait(client.submit(**job)["id"], 60)
    assert done["status"] == "succeeded", done
    return done


def test_completion_logprobs_echo_and_prompt_lists(start_worker, oai: OpenAI, client: Client) -> None:
    start_worker()
    ids = _done(client, prompt=PROMPTS[0], max_new_tokens=0, echo=True)["output"]["prompt_logprobs"]
    token_ids = [e["id"] for e in ids]
    resp = oai.completions.create(
        model="tiny",
        prompt=[token_ids, token_ids[:2]],
        max_tokens=1,
        temperature=0,
        logprobs=3,
        echo=True,
        n=2,
    )
    assert [c.index for c in resp.choices] == [0, 1, 2, 3]
    first, _, short, _ = resp.choices
    lp = first.logprobs
    assert lp is not None and len(lp.tokens) == len(token_ids) + 1  # the prompt, then one new token
    assert lp.token_logprobs[0] is None and lp.top_logprobs[0] is None
    assert first.text.startswith("".join(lp.tokens[: len(token_ids)]))
    assert lp.text_offset == [sum(len(t) for t in lp.tokens[:i]) for i in range(len(lp.tokens))]
    for tok, value, top in zip(lp.tokens[1:], lp.token_logprobs[1:], lp.top_logprobs[1:], strict=True):
        assert top[tok] == value and len(top) <= 4 and max(top.values()) >= value
    # the same prompt's numbers through genq's own API
    for e, value in zip(ids[1:], lp.token_logprobs[1 : len(token_ids)], strict=True):
        assert math.isclose(e["logprob"], value, abs_tol=TOL)
    assert len(short.logprobs.tokens) == 3
    assert resp.usage.prompt_tokens == len(token_ids) + 2

    scored = oai.completions.create(model="tiny", prompt=PROMPTS, max_tokens=0, echo=True, logprobs=0)
    assert [c.text for c in scored.choices] == PROMPTS  # nothing generated, the prompt echoed
    assert scored.usage.completion_tokens == 0


def test_chat_logprobs_match_the_native_job(start_worker, oai: OpenAI, client: Client) -> None:
    start_worker()
    messages = [{"role": "user", "content": "Is Paris in France? Answer yes or no."}]
    resp = oai.chat.completions.create(
        model="tiny", messages=messages, max_tokens=4, temperature=0, logprobs=True, top_logprobs=5
    )
    content = resp.choices[0].logprobs.content
    assert content and all(len(t.top_logprobs) == 5 for t in content)
    assert all(t.bytes == list(t.token.encode()) for t in content)
    same = _done(client, messages=messages, max_new_tokens=4, temperature=0, logprobs=True, top_logprobs=5)
    native = same["output"]["logprobs"]
    assert [t.token for t in content] == [e["token"] for e in native]
    assert all(
        math.isclose(t.logprob, e["logprob"], abs_tol=TOL) for t, e in zip(content, native, strict=True)
    )
    plain = oai.chat.completions.create(model="tiny", messages=messages, max_tokens=4, temperature=0)
    assert plain.choices[0].logprobs is None


def test_tokenizer_endpoints_serve_the_workers_tokenizer(
    start_worker, api_server: str, tiny_model_dir, store: JobStore
) -> None:
    from transformers import AutoTokenizer

    info = httpx.get(f"{api_server}/tokenizer_info")
    assert info.status_code == 503 and info.json()["error"]["code"] == "tokenizer_unavailable"
    start_worker()
    hf = AutoTokenizer.from_pretrained(tiny_model_dir)
    info = httpx.get(f"{api_server}/tokenizer_info", params={"model": "tiny"}).json()
    assert info["eos_token"] == hf.eos_token and info["pad_token"] == hf.pad_token
    assert info["chat_template"] == hf.chat_template and info["model"] == "tiny"
    text = "What is the capital of France?"
    tokens = httpx.post(f"{api_server}/tokenize", json={"prompt": text, "add_special_tokens": False}).json()
    assert tokens["tokens"] == hf(text, add_special_tokens=False)["input_ids"]
    back = httpx.post(f"{api_server}/detokenize", json={"tokens": tokens["tokens"]}).json()
    assert back == {"prompt": text}
    bad = httpx.post(f"{api_server}/tokenize", json={"prompt": 5})
    assert bad.status_code == 422 and "prompt" in bad.text
    assert httpx.get(f"{api_server}/tokenizer_info", params={"model": "nope"}).status_code == 422
    # token ids are checked against the published vocabulary: nothing is enqueued
    before = store.r.keys("genq:job:*")
    resp = httpx.post(f"{api_server}/v1/completions", json={"model": "tiny", "prompt": [1, len(hf) + 5]})
    assert resp.status_code == 400 and resp.json()["error"]["param"] == "prompt"
    native = httpx.post(f"{api_server}/v1/jobs", json={"prompt_ids": [len(hf) + 5]})
    assert native.status_code == 422 and "prompt_ids" in native.text
    top = httpx.post(f"{api_server}/v1/jobs", json={"prompt": "x", "logprobs": True, "top_logprobs": 21})
    assert top.status_code == 422 and "top_logprobs" in top.text
    zero = httpx.post(f"{api_server}/v1/jobs", json={"prompt": "x", "max_new_tokens": 0})
    assert zero.status_code == 422 and "max_new_tokens" in zero.text
    assert store.r.keys("genq:job:*") == before
