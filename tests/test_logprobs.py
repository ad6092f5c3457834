"""Engine log-probabilities on the tiny model, checked against a direct full forward pass."""

from __future__ import annotations

import dataclasses
import itertools
from collections import defaultdict
from pathlib import Path

import pytest
import torch

from shared.schemas import FinishReason
from shared.settings import ModelSpec
from tests.test_engine import GREEDY, PROMPTS  # prompts of 2 to ~34 tokens: batches need padding
from worker.engine import Engine, Hooks, Request
from worker.loader import load_model
from worker.prefill import Prefix, PrefixCache, shared_prefixes
from worker.sampling import RowParams

CONTEXT = 512  # tokens
TOL = 1e-4  # logprob agreement with the direct forward pass
# A row whose sampling distorts the distribution: logprobs must still come from the raw logits.
SHAPED = RowParams(sampling=True, temperature=0.5, top_k=5, top_p=0.8, repetition_penalty=1.3)

_ids = itertools.count()


@pytest.fixture(scope="module")
def tiny(tiny_model_dir: Path, cache_dir: Path):
    """The tiny model and tokenizer, loaded the way the worker loads them."""
    spec = ModelSpec(
        name="tiny", source=str(tiny_model_dir), context_length=CONTEXT, max_new_tokens_cap=CONTEXT - 1
    )
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a 64-wide model gains nothing from threads on busy cores
    yield load_model(spec, "cpu", cache_dir)
    torch.set_num_threads(threads)


@pytest.fixture
def engine(tiny) -> Engine:
    model, tokenizer = tiny
    return Engine(model, tokenizer, max_batch=8, context_length=CONTEXT)


def req(engine: Engine, prompt: str, max_new: int = 6, params: RowParams = GREEDY, **kw) -> Request:
    return Request(f"lp-{next(_ids)}", engine.encode(prompt), max_new, params, seed=1, **kw)


def full_logprobs(model, ids: list[int]) -> torch.Tensor:
    """Return log_softmax of every position's raw logits [len(ids), vocab] from one unbatched forward."""
    with torch.inference_mode():
        logits = model(input_ids=torch.tensor([ids])).logits[0].float()
    return torch.log_softmax(logits, dim=-1)


def test_sampled_logprobs_match_forward_pass(engine: Engine, tiny) -> None:
    model, _ = tiny
    reqs = [
        req(engine, p, params=GREEDY if i % 2 else SHAPED, logprobs=i * 3, ignore_eos=True)
        for i, p in enumerate(PROMPTS)
    ]
    plain = req(engine, "The quick", max_new=4)
    results = engine.generate([*reqs, plain])
    assert results[-1].logprobs is None and results[-1].prompt_logprobs is None
    for r, res in zip(reqs, results[:-1], strict=True):
        entries = res.logprobs
        assert entries is not None and len(entries) == res.completion_tokens > 0
        made = [e["id"] for e in entries]
        lp = full_logprobs(model, r.input_ids + made)
        for j, e in enumerate(entries):
            row = lp[len(r.input_ids) - 1 + j]
            assert abs(e["logprob"] - float(row[e["id"]])) < TOL
            assert len(e["top_logprobs"]) == r.logprobs
            want = row.topk(r.logprobs) if r.logprobs else None
            for got, (value, index) in zip(
                e["top_logprobs"], zip(*want, strict=True) if want else [], strict=True
            ):
                assert got["id"] == int(index) and abs(got["logprob"] - float(value)) < TOL
            assert e["token"] == engine.tokenizer.decode([e["id"]])


@pytest.mark.parametrize(("max_new", "chunk"), [(0, None), (1, None), (0, 7)])
def test_prompt_logprobs_match_forward_pass(
    engine: Engine, tiny, max_new: int, chunk: int | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Echo rows with different k share one vocabulary projection; chunk 7 cuts across their rows."""
    if chunk is not None:
        import worker.logprobs as logprobs

        monkeypatch.setattr(logprobs.prompt_logprobs, "__defaults__", (chunk,))
    model, _ = tiny
    echo = [
        req(engine, p, max_new=max_new, prompt_logprobs=k, logprobs=k)
        for p, k in zip(PROMPTS, [0, 1, 5, 20], strict=True)
    ]
    others = [
        req(engine, "What is", max_new=3, ignore_eos=True),
        req(engine, "The lazy dog", max_new=2, logprobs=2, ignore_eos=True),
    ]
    results = engine.generate([*echo, *others])
    assert [r.completion_tokens for r in results[len(echo) :]] == [3, 2]  # the others still decode
    assert engine.active == 0
    for r, res in zip(echo, results[: len(echo)], strict=True):
        entries = res.prompt_logprobs
        assert entries is not None and [e["id"] for e in entries] == r.input_ids
        assert entries[0]["logprob"] is None and entries[0]["top_logprobs"] == []
        lp = full_logprobs(model, r.input_ids)
        for j, e in enumerate(entries[1:], start=1):
            assert abs(e["logprob"] - float(lp[j - 1, r.input_ids[j]])) < TOL
            values, index = lp[j - 1].topk(r.prompt_logprobs) if r.prompt_logprobs else ([], [])
            assert [t["id"] for t in e["top_logprobs"]] == [int(i) for i in index]
            assert all(
                abs(t["logprob"] - float(v)) < TOL for t, v in zip(e["top_logprobs"], values, strict=True)
            )
        assert res.completion_tokens <= max_new and res.prompt_tokens == len(r.input_ids)
        if max_new == 0:
            assert res.text == "" and res.logprobs == []
    assert all(res.prompt_logprobs is None for res in results[len(echo) :])


def test_echo_long_prompt_is_chunked(engine: Engine, tiny, monkeypatch: pytest.MonkeyPatch) -> None:
    """A prompt many chunks long gets the same prompt logprobs as from one forward pass."""
    import worker.logprobs as logprobs

    seen: list[int] = []
    real = logprobs._entries

    def counting(logits, chosen, k):
        seen.append(logits.shape[0])
        return real(logits, chosen, k)

    monkeypatch.setattr(logprobs, "_entries", counting)
    monkeypatch.setattr(logprobs.prompt_logprobs, "__defaults__", (16,))  # chunk of 16 positions
    model, _ = tiny
    long = req(engine, PROMPTS[3] * 3, max_new=0, prompt_logprobs=2)
    (res,) = engine.generate([long])
    assert max(seen) <= 16 and len(seen) >= 3
    lp = full_logprobs(model, long.input_ids)
    got = torch.tensor([e["logprob"] for e in res.prompt_logprobs[1:]])
    want = lp[torch.arange(len(long.input_ids) - 1), torch.tensor(long.input_ids[1:])]
    assert torch.allclose(got, want, atol=TOL)


def test_logprobs_do_not_change_text(engine: Engine) -> None:
    """Asking for logprobs (or echo) leaves the generated text as it was."""
    asked = [req(engine, p, max_new=8, logprobs=3, prompt_logprobs=3) for p in PROMPTS]
    plain = [req(engine, p, max_new=8) for p in PROMPTS]
    a = engine.generate(asked)
    b = engine.generate(plain)
    assert [x.text for x in a] == [y.text for y in b]


class StreamRecorder(Hooks):
    """Keep every on_text call's text and entries, per job, and the prompt entries handed on."""

    def __init__(self) -> None:
        self.events: dict[str, list[tuple[str, list[dict] | None]]] = defaultdict(list)
        self.prompts: dict[str, list[dict]] = {}

    def on_text(self, deltas, logprobs=None, prompt_logprobs=None) -> None:
        for job_id, text in deltas.items():
            self.events[job_id].append((text, (logprobs or {}).get(job_id)))
        self.prompts |= prompt_logprobs or {}


def test_streamed_entries_ride_with_their_text(engine: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each delta carries the entries of exactly the tokens whose text it carries; all add up."""
    recorder = StreamRecorder()
    monkeypatch.setattr(engine, "hooks", recorder)
    sampled = RowParams(sampling=True, temperature=1.0, top_k=0, top_p=1.0, repetition_penalty=1.0)
    # Random weights emit stray bytes: tokens whose text is an incomplete character wait for the rest.
    asked = [req(engine, p, max_new=40, params=sampled, logprobs=i % 3) for i, p in enumerate(PROMPTS * 2)]
    base = engine.generate([req(engine, PROMPTS[1], max_new=40, ignore_eos=True)])[0].text
    stopped = req(engine, PROMPTS[1], max_new=40, logprobs=1, ignore_eos=True, stop=[base[20:23]])
    echo = req(engine, PROMPTS[2], max_new=5, logprobs=2, prompt_logprobs=2)
    plain = req(engine, PROMPTS[0], max_new=8, params=sampled)
    reqs = [*asked, stopped, echo, plain]
    results = engine.generate(reqs)
    assert results[len(asked)].finish_reason is FinishReason.STOP
    assert all(entries is None for _, entries in recorder.events[plain.id]) and recorder.events[plain.id]
    assert set(recorder.prompts) == {echo.id} and recorder.prompts[echo.id] == results[-2].prompt_logprobs
    for r, res in zip(reqs[:-1], results[:-1], strict=True):
        events = recorder.events[r.id]
        assert "".join(text for text, _ in events) == res.text
        assert [e for _, entries in events for e in entries or []] == res.logprobs
        assert all(entries for text, entries in events if text)  # no text without its tokens
        ids, so_far = [], ""
        for text, entries in events[:-1]:  # all but the last: it may be cut at a stop
            ids += [e["id"] for e in entries or []]
            so_far += text
            assert so_far == engine.tokenizer.decode(ids, skip_special_tokens=True), r.id


def test_prompts_differing_in_their_last_token_share_one_prefill(
    engine: Engine, tiny, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A question's one-token answers (and a repeated prompt) prefill their prefix once, exactly."""
    shared: list[int] = []
    real = engine._prefill_shared

    def counting(new, reps):
        shared.append(len(new) - len(set(reps)))  # rows whose prefix another row's forward served
        return real(new, reps)

    monkeypatch.setattr(engine, "_prefill_shared", counting)
    model, _ = tiny
    stem = engine.encode("What is the capital of France? The capital of France is")
    answers = [[*stem, t] for t in (5, 17, 42, 99)]
    group = [
        Request(f"lp-{next(_ids)}", ids, n, GREEDY, seed=1, prompt_logprobs=k, logprobs=k, ignore_eos=True)
        for ids, n, k in zip(answers, [0, 1, 3, 2], [0, 2, 5, 1], strict=True)
    ]
    # Sampled logprobs show any cache mix-up, which greedy text from a random tiny model may not.
    again = Request(f"lp-{next(_ids)}", answers[2], 4, GREEDY, seed=1, logprobs=2, ignore_eos=True)  # no echo
    other = req(
        engine, "The lazy dog", max_new=3, prompt_logprobs=3, logprobs=1, ignore_eos=True
    )  # own prefix
    reqs = [*group, again, other]
    together = engine.generate(reqs)
    assert shared == [4]  # 6 rows, 2 distinct prefixes: the stem served 5 rows with one forward
    alone = [engine.generate([dataclasses.replace(r, id=f"lp-{next(_ids)}")])[0] for r in reqs]
    assert shared == [4]  # alone, nothing is shared
    for r, got, want in zip(reqs, together, alone, strict=True):
        assert got.text == want.text and got.completion_tokens == want.completion_tokens == r.max_new_tokens
        assert (
            len(got.logprobs or [])
            == len(want.logprobs or [])
            == (r.max_new_tokens if r.logprobs is not None else 0)
        )
        for a, b in zip(got.logprobs or [], want.logprobs or [], strict=True):
            assert a["id"] == b["id"] and abs(a["logprob"] - b["logprob"]) < TOL
        if r.prompt_logprobs is None:
            assert got.prompt_logprobs is None
            continue
        assert [e["id"] for e in got.prompt_logprobs] == r.input_ids
        lp = full_logprobs(model, r.input_ids)
        for j, e in enumerate(got.prompt_logprobs[1:], start=1):
            assert abs(e["logprob"] - float(lp[j - 1, r.input_ids[j]])) < TOL
            want_top = lp[j - 1].topk(r.prompt_logprobs).indices.tolist() if r.prompt_logprobs else []
            assert [t["id"] for t in e["top_logprobs"]] == want_top


def test_prefixes_are_shared_only_when_that_saves_work() -> None:
    stem = list(range(10, 30))
    assert shared_prefixes([[*stem, 1], [*stem, 2], [7, 8, 9], [*stem, 1]]) == [0, 0, 2, 0]
    assert shared_prefixes([[1, 2], [1, 3], [4, 5, 6]]) is None  # saves 1 token, costs a step of 3 rows
    assert shared_prefixes([[*stem, 1], [9, *stem]]) is None  # nothing in common at the start
    assert shared_prefixes([[*stem, 1]]) is None and shared_prefixes([[5], [5]]) is None
    # A cached prefix saves its tokens for every row that has it, even a row alone.
    kept = {tuple(stem)}.__contains__
    assert shared_prefixes([[*stem, 1]], kept) == [0]
    assert shared_prefixes([[*stem, 1], [7, 8, 9]], kept) == [0, 1]
    assert shared_prefixes([[1, 2], [1, 3], [4, 5, 6]], lambda p: p == (1,)) is None  # 2 tokens, 3 rows


def test_a_question_split_across_admissions_prefills_its_prefix_once(tiny) -> None:
    """Answers that arrive in a later step reuse the kept prefix, with the results of separate runs."""
    model, tokenizer = tiny
    engine = Engine(model, tokenizer, max_batch=8, context_length=CONTEXT, prefix_cache_tokens=1024)
    plain = Engine(model, tokenizer, max_batch=8, context_length=CONTEXT)  # keeps nothing
    stem = engine.encode("Question: where was the cat found? It was a quiet day.\nAnswer: In the")
    other = engine.encode("The lazy dog sleeps")

    def answer(last: int, max_new: int, k: int | None) -> Request:
        return Request(
            f"lp-{next(_ids)}", [*stem, last], max_new, GREEDY, seed=1, prompt_logprobs=k, logprobs=k
        )

    first = [answer(5, 0, 2), answer(17, 1, 0)]  # two of the four answers, and their prefix is kept
    later = [answer(42, 0, 3), answer(99, 2, 1)]  # the other two, in a later admission
    engine.generate([*first, Request(f"lp-{next(_ids)}", other, 2, GREEDY, seed=1)])
    assert engine.prefixes.hits == 0 and tuple(stem) in engine.prefixes
    got = engine.generate(later)
    assert engine.prefixes.hits == 1  # the later pair ran only its one-token step
    got_alone = engine.generate([dataclasses.replace(later[0], id=f"lp-{next(_ids)}")])  # a row alone, too
    assert engine.prefixes.hits == 2
    want = [plain.generate([dataclasses.replace(r, id=f"lp-{next(_ids)}")])[0] for r in later]
    assert plain.prefixes.hits == 0
    for g, w, r in zip([*got, *got_alone], [*want, want[0]], [*later, later[0]], strict=True):
        assert g.text == w.text and g.completion_tokens == w.completion_tokens == r.max_new_tokens
        for a, b in zip(g.logprobs or [], w.logprobs or [], strict=True):
            assert a["id"] == b["id"] and abs(a["logprob"] - b["logprob"]) < TOL
        assert [e["id"] for e in g.prompt_logprobs] == r.input_ids
        lp = full_logprobs(model, r.input_ids)
        for j, e in enumerate(g.prompt_logprobs[1:], start=1):
            assert abs(e["logprob"] - float(lp[j - 1, r.input_ids[j]])) < TOL
            assert [t["id"] for t in e["top_logprobs"]] == lp[j - 1].topk(r.prompt_logprobs).indices.tolist()


def test_the_prefix_cache_keeps_the_most_recently_used_within_its_tokens() -> None:
    def entry(tokens: int) -> Prefix:
        return Prefix(keys=[], values=[], hidden=torch.zeros(tokens, 4))

    kept = PrefixCache(max_tokens=10)
    kept.put((1,), entry(4))
    kept.put((2,), entry(4))
    assert kept.get((1,)) is not None  # now the most recently used
    kept.put((3,), entry(4))  # 12 tokens: the least recently used goes
    assert (1,) in kept and (3,) in kept and (2,) not in kept
    kept.put((4,), entry(11))  # larger than the whole cache: not kept, nothing dropped for it
    assert (4,) not in kept and (1,) in kept and (3,) in kept
    assert PrefixCache(0).get((1,)) is None
    off = PrefixCache(0)
    off.put((1,), entry(1))
    assert (1,) not in off
