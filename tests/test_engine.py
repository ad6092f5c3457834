"""The continuous-batching engine on the tiny random model: exact text, seeds, stops, cancel, streaming."""

from __future__ import annotations

import itertools
import threading
import time
from collections import defaultdict
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import pytest
import torch

from shared.schemas import ErrorCode, FinishReason
from shared.settings import ModelSpec
from tests.tiny_model import build_tiny_model
from worker import engine as engine_module
from worker.engine import Engine, GenerationError, Hooks, Request, Result, StepFailed
from worker.loader import load_model
from worker.sampling import RowParams

CONTEXT = 256  # tokens; small, so the context-length check is cheap to reach
MAX_BATCH = 8  # rows the module's engine holds at once
STEP_LIMIT = 2_000  # steps a test drives before it declares the engine stuck

GREEDY = RowParams(sampling=False, temperature=1.0, top_k=0, top_p=1.0, repetition_penalty=1.0)
SAMPLED = RowParams(sampling=True, temperature=1.0, top_k=0, top_p=1.0, repetition_penalty=1.0)
FILTERED = RowParams(sampling=True, temperature=0.7, top_k=40, top_p=0.9, repetition_penalty=1.0)

# Prompts of different lengths (2 to ~34 tokens), so a batch of them needs left padding.
PROMPTS = [
    "Hi",
    "The quick brown fox",
    "What is the capital of France? The capital",
    "Once upon a time there was a tiny model that generated text token by token. " * 2,
]
REPEATING = "the the the the"  # its greedy output on the tiny model cycles between two tokens

_ids = itertools.count()


def job(
    engine: Engine,
    prompt: str,
    max_new: int = 24,
    params: RowParams = GREEDY,
    seed: int = 0,
    stop: list[str] | None = None,
    ignore_eos: bool = False,
    id: str | None = None,
) -> Request:
    """Build a request with a fresh id unless one is given."""
    return Request(
        id=id or f"job-{next(_ids)}",
        input_ids=engine.encode(prompt),
        max_new_tokens=max_new,
        params=params,
        seed=seed,
        stop=list(stop or []),
        ignore_eos=ignore_eos,
    )


def alone(engine: Engine, req: Request) -> Result:
    """Run a copy of req with no other job in the batch."""
    copy = Request(
        f"alone-{next(_ids)}",
        list(req.input_ids),
        req.max_new_tokens,
        req.params,
        req.seed,
        list(req.stop),
        req.ignore_eos,
    )
    return engine.generate([copy])[0]


def drive(engine: Engine, futures: list[Future], check=None) -> int:
    """Step until every future is done; call check() after each step; return the steps taken."""
    for steps in range(1, STEP_LIMIT + 1):
        engine.step()
        if check is not None:
            check()
        if all(f.done() for f in futures):
            return steps
    raise AssertionError(f"engine did not finish {len(futures)} jobs in {STEP_LIMIT} steps")


def hf_greedy(model, tokenizer, input_ids: list[int], max_new: int, **kwargs) -> str:
    """Return transformers' own greedy continuation, decoded without special tokens."""
    ids = torch.tensor([input_ids])
    with torch.inference_mode():
        out = model.generate(
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=max_new,
            do_sample=False,
            pad_token_id=tokenizer.pad_token_id,
            **kwargs,
        )
    return tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True)


class Recorder(Hooks):
    """Keep every on_text delta, per job."""

    def __init__(self) -> None:
        self.deltas: dict[str, list[str]] = defaultdict(list)

    def on_text(self, deltas: dict[str, str]) -> None:
        for job_id, text in deltas.items():
            self.deltas[job_id].append(text)

    def streamed(self, job_id: str) -> str:
        return "".join(self.deltas[job_id])


class CancelAfter(Hooks):
    """Ask to cancel one job once the engine has asked about it `calls` times (one ask per token)."""

    def __init__(self, job_id: str, calls: int) -> None:
        self.job_id, self.calls, self.asked = job_id, calls, 0

    def cancelled(self, ids: list[str]) -> set[str]:
        if self.job_id in ids:
            self.asked += 1
            if self.asked >= self.calls:
                return {self.job_id}
        return set()


class ExplodingText(Hooks):
    """A hook that fails on purpose, as a Redis outage inside on_text would."""

    def on_text(self, deltas: dict[str, str]) -> None:
        raise RuntimeError("on_text failed on purpose")


@pytest.fixture(scope="module")
def tiny(tiny_model_dir: Path, cache_dir: Path):
    """The tiny model and tokenizer, loaded the way the worker loads them."""
    spec = ModelSpec(
        name="tiny",
        source=str(tiny_model_dir),
        context_length=CONTEXT,
        max_new_tokens_cap=CONTEXT - 1,
        default_max_new_tokens=16,
    )
    # A 64-wide model gains nothing from threads, and on 2 busy cores their spin-waits made
    # this module ~10x slower (111 s against 7 s measured); restore the setting afterwards.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield load_model(spec, "cpu", cache_dir)
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def engine(tiny) -> Engine:
    """One engine for the module; tests swap its hooks or max_batch with monkeypatch."""
    model, tokenizer = tiny
    return Engine(model, tokenizer, max_batch=MAX_BATCH, context_length=CONTEXT)


@pytest.fixture(autouse=True)
def _engine_left_idle(request: pytest.FixtureRequest):
    """Every test must leave the shared engine with no running rows."""
    yield
    if "engine" in request.fixturenames:
        assert request.getfixturevalue("engine").active == 0


# --- greedy equals transformers ----------------------------------------------


@pytest.mark.parametrize("prompt", PROMPTS)
def test_greedy_alone_matches_transformers(engine: Engine, tiny, prompt: str) -> None:
    req = job(engine, prompt, max_new=32)
    [result] = engine.generate([req])
    assert result.text == hf_greedy(*tiny, req.input_ids, 32)
    assert result.prompt_tokens == len(req.input_ids)
    assert result.finish_reason is FinishReason.LENGTH
    assert result.completion_tokens == 32


def test_greedy_batch_with_left_padding_matches_transformers(engine: Engine, tiny) -> None:
    reqs = [job(engine, p, max_new=32) for p in PROMPTS]
    assert len({len(r.input_ids) for r in reqs}) == len(PROMPTS)  # really needs padding
    results = engine.generate(reqs)
    assert [r.text for r in results] == [hf_greedy(*tiny, r.input_ids, 32) for r in reqs]


# --- seeds ---------------------------------------------------------------------


@pytest.mark.parametrize("params", [SAMPLED, FILTERED], ids=["plain", "temperature-top_k-top_p"])
def test_seeded_job_gives_same_text_alone_and_in_a_batch(engine: Engine, params: RowParams) -> None:
    target = job(engine, PROMPTS[1], max_new=40, params=params, seed=1234, ignore_eos=True)
    expected = alone(engine, target).text
    others = [
        job(engine, PROMPTS[0], max_new=30, params=SAMPLED, seed=1),
        job(engine, PROMPTS[3], max_new=50, params=FILTERED, seed=2),
        job(engine, PROMPTS[2], max_new=20),
    ]
    # In the middle of a batch admitted together ...
    results = engine.generate([others[0], target, *others[1:]])
    assert results[1].text == expected
    # ... and joining a batch that is already running.
    running = [
        engine.submit(r)
        for r in (
            job(engine, PROMPTS[3], max_new=60, params=SAMPLED, seed=3),
            job(engine, PROMPTS[0], max_new=60),
        )
    ]
    for _ in range(5):
        engine.step()
    late = engine.submit(Request("late", target.input_ids, 40, params, 1234, ignore_eos=True))
    drive(engine, [late, *running])
    assert late.result().text == expected


def test_different_seeds_give_different_text(engine: Engine) -> None:
    texts = {
        engine.generate([job(engine, PROMPTS[1], max_new=40, params=SAMPLED, seed=s, ignore_eos=True)])[
            0
        ].text
        for s in (1, 2, 3)
    }
    assert len(texts) == 3


def test_sampling_differs_from_greedy(engine: Engine) -> None:
    greedy = alone(engine, job(engine, PROMPTS[1], max_new=40, ignore_eos=True)).text
    sampled = alone(engine, job(engine, PROMPTS[1], max_new=40, params=SAMPLED, seed=5, ignore_eos=True)).text
    assert sampled != greedy


# --- per-row parameters ------------------------------------------------------


def test_rows_keep_their_own_params_and_lengths(engine: Engine, tiny) -> None:
    reqs = [
        job(engine, PROMPTS[2], max_new=7, ignore_eos=True),
        job(engine, PROMPTS[1], max_new=19, params=SAMPLED, seed=11, ignore_eos=True),
        job(engine, PROMPTS[0], max_new=33, params=FILTERED, seed=12, ignore_eos=True),
        job(engine, PROMPTS[3], max_new=1, ignore_eos=True),
    ]
    expected = [alone(engine, r).text for r in reqs]
    results = engine.generate(reqs)
    assert [r.completion_tokens for r in results] == [7, 19, 33, 1]
    assert all(r.finish_reason is FinishReason.LENGTH for r in results)
    assert [r.text for r in results] == expected
    assert results[0].text == hf_greedy(*tiny, reqs[0].input_ids, 7)


# --- continuous batching -----------------------------------------------------


@pytest.mark.parametrize(
    ("long_prompt", "short_prompt"),
    [(PROMPTS[3], PROMPTS[1]), (PROMPTS[0], PROMPTS[3])],
    ids=["newcomer-narrower-than-cache", "newcomer-wider-than-cache"],
)
def test_late_job_joins_a_running_batch_and_leaves_first(
    engine: Engine, long_prompt: str, short_prompt: str
) -> None:
    long_req = job(engine, long_prompt, max_new=80, ignore_eos=True)
    short_req = job(engine, short_prompt, max_new=6, ignore_eos=True)
    long_alone, short_alone = alone(engine, long_req).text, alone(engine, short_req).text

    long_f = engine.submit(long_req)
    for _ in range(10):
        engine.step()
    assert engine.active == 1 and not long_f.done()
    short_f = engine.submit(short_req)
    steps = drive(engine, [short_f])
    assert steps <= 6  # joined at the next step, did not wait for the long job to drain
    assert not long_f.done() and engine.active == 1
    drive(engine, [long_f])
    assert short_f.result().text == short_alone
    assert long_f.result().text == long_alone
    assert long_f.result().completion_tokens == 80


def test_queued_job_cancelled_through_its_future_never_runs(engine: Engine) -> None:
    future = engine.submit(job(engine, PROMPTS[0], max_new=10))
    assert future.cancel()
    engine.step()
    assert engine.active == 0 and future.cancelled()


# --- stop strings and streaming ------------------------------------------------


def _stop_string(text: str, length: int) -> str:
    """Pick a substring of printable text whose first occurrence starts in the middle of text."""
    for start in range(len(text) // 3, len(text) - length):
        sub = text[start : start + length]
        if sub.isprintable() and "\ufffd" not in sub and text.find(sub) == start:
            return sub
    raise AssertionError(f"no usable stop string of length {length} in {text!r}")


@pytest.mark.parametrize("length", [1, 3, 6])
def test_stop_string_cuts_before_its_first_occurrence(
    engine: Engine, monkeypatch: pytest.MonkeyPatch, length: int
) -> None:
    base = alone(engine, job(engine, PROMPTS[3], max_new=48, ignore_eos=True)).text
    stop = _stop_string(base, length)
    other = job(engine, PROMPTS[0], max_new=48, ignore_eos=True)
    other_alone = alone(engine, other).text
    recorder = Recorder()
    monkeypatch.setattr(engine, "hooks", recorder)
    req = job(engine, PROMPTS[3], max_new=48, stop=["never-in-this-output", stop], ignore_eos=True)
    result, other_result = engine.generate([req, other])
    assert result.text == base[: base.find(stop)]
    assert stop not in result.text
    assert result.finish_reason is FinishReason.STOP
    assert result.completion_tokens < 48
    assert recorder.streamed(req.id) == result.text  # nothing after the stop was ever streamed
    assert other_result.text == other_alone


def test_stop_string_absent_from_output_changes_nothing(engine: Engine) -> None:
    base = alone(engine, job(engine, PROMPTS[2], max_new=30, ignore_eos=True))
    [result] = engine.generate([job(engine, PROMPTS[2], max_new=30, stop=["\x00never\x00"], ignore_eos=True)])
    assert (result.text, result.finish_reason) == (base.text, FinishReason.LENGTH)


def test_streamed_deltas_add_up_to_the_final_text(engine: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    recorder = Recorder()
    monkeypatch.setattr(engine, "hooks", recorder)
    # Random weights emit stray bytes, so this also covers incomplete UTF-8 held back mid-stream.
    reqs = [job(engine, p, max_new=48, params=SAMPLED, seed=i) for i, p in enumerate(PROMPTS * 2)]
    results = engine.generate(reqs)
    for req, result in zip(reqs, results, strict=True):
        assert recorder.streamed(req.id) == result.text, req.id
    assert sum(len(d) for d in recorder.deltas.values()) > 0
    assert max(len(d) for d in recorder.deltas.values()) > 1  # text arrived over several steps


def test_a_job_resolves_only_after_its_last_text_is_reported(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The worker stores the result as soon as the future resolves, and that ends the job's
    # stream: text reported after it would never reach a streaming client.
    futures: dict[str, Future] = {}
    late: list[str] = []

    class Watch(Hooks):
        def on_text(self, deltas: dict[str, str]) -> None:
            late.extend(job_id for job_id in deltas if futures[job_id].done())

    monkeypatch.setattr(engine, "hooks", Watch())
    for i, prompt in enumerate(PROMPTS):
        req = job(engine, prompt, max_new=24, params=SAMPLED, seed=i)
        futures[req.id] = engine.submit(req)
    drive(engine, list(futures.values()))
    assert late == []


def test_streamed_deltas_with_stops_never_pass_the_stop(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    bases = [alone(engine, job(engine, p, max_new=40, ignore_eos=True)).text for p in PROMPTS]
    stops = [[_stop_string(b, 2), _stop_string(b, 4)] for b in bases]
    recorder = Recorder()
    monkeypatch.setattr(engine, "hooks", recorder)
    reqs = [job(engine, p, max_new=40, stop=s, ignore_eos=True) for p, s in zip(PROMPTS, stops, strict=True)]
    results = engine.generate(reqs)
    for req, result, base in zip(reqs, results, bases, strict=True):
        assert result.finish_reason is FinishReason.STOP
        assert base.startswith(result.text)
        assert recorder.streamed(req.id) == result.text
        assert not any(s in recorder.streamed(req.id) for s in req.stop)


# --- cancel --------------------------------------------------------------------


def test_cancel_stops_one_job_and_keeps_its_text(engine: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    victim = job(engine, PROMPTS[1], max_new=100, ignore_eos=True, id="victim")
    others = [
        job(engine, PROMPTS[0], max_new=30, params=SAMPLED, seed=4),
        job(engine, PROMPTS[3], max_new=30),
    ]
    full = alone(engine, victim)
    expected_others = [alone(engine, r).text for r in others]
    monkeypatch.setattr(engine, "hooks", CancelAfter("victim", 5))
    result, *rest = engine.generate([victim, *others])
    assert result.finish_reason is FinishReason.CANCELLED
    assert 4 <= result.completion_tokens <= 6
    assert full.text.startswith(result.text) and len(result.text) < len(full.text)
    assert [r.text for r in rest] == expected_others
    assert all(r.finish_reason is FinishReason.LENGTH for r in rest)


# --- limits and inputs ---------------------------------------------------------


def test_context_length_is_checked_at_submit(engine: Engine) -> None:
    prompt_ids = engine.encode(PROMPTS[3])
    fits = CONTEXT - len(prompt_ids)
    with pytest.raises(GenerationError) as info:
        engine.submit(Request("too-long", prompt_ids, fits + 1, GREEDY, 0))
    assert info.value.code is ErrorCode.CONTEXT_LENGTH_EXCEEDED
    for number in (len(prompt_ids), fits + 1, CONTEXT + 1, CONTEXT):
        assert str(number) in str(info.value)
    assert engine.active == 0
    # Exactly at the limit is allowed, and the engine carries on as before.
    [result] = engine.generate([Request("fits", prompt_ids, fits, GREEDY, 0, ignore_eos=True)])
    assert result.completion_tokens == fits
    after = job(engine, PROMPTS[1], max_new=10)
    assert engine.generate([after])[0].text == alone(engine, after).text


def test_messages_need_a_chat_template(tmp_path: Path, cache_dir: Path) -> None:
    source = build_tiny_model(tmp_path / "plain", chat=False)
    spec = ModelSpec(
        name="plain",
        source=str(source),
        context_length=CONTEXT,
        max_new_tokens_cap=CONTEXT - 1,
        default_max_new_tokens=16,
    )
    plain = Engine(*load_model(spec, "cpu", cache_dir), max_batch=2)
    with pytest.raises(GenerationError) as info:
        plain.encode(messages=[{"role": "user", "content": "Hi"}])
    assert info.value.code is ErrorCode.NO_CHAT_TEMPLATE
    assert plain.encode("Hi") == plain.tokenizer("Hi")["input_ids"]


def test_messages_are_rendered_with_the_chat_template(engine: Engine) -> None:
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "What is the capital?"},
    ]
    rendered = engine.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert rendered.endswith("<|im_start|>assistant\n")
    assert (
        engine.encode(messages=messages) == engine.tokenizer(rendered, add_special_tokens=False)["input_ids"]
    )


def test_repetition_penalty_applies_per_row(engine: Engine, tiny) -> None:
    plain = job(engine, REPEATING, max_new=30, ignore_eos=True)
    penalized = Request(
        "penalized", plain.input_ids, 30, RowParams(False, 1.0, 0, 1.0, 1.5), 0, ignore_eos=True
    )
    plain_alone, penalized_alone = alone(engine, plain).text, alone(engine, penalized).text
    ids = engine.tokenizer(plain_alone, add_special_tokens=False)["input_ids"]
    assert len(set(ids)) < len(ids) / 2  # the unpenalized output really repeats
    assert penalized_alone != plain_alone
    assert penalized_alone == hf_greedy(*tiny, plain.input_ids, 30, repetition_penalty=1.5)
    neighbours = [job(engine, REPEATING, max_new=30, ignore_eos=True), job(engine, PROMPTS[2], max_new=30)]
    results = engine.generate([neighbours[0], penalized, neighbours[1]])
    assert results[1].text == penalized_alone
    assert results[0].text == plain_alone
    assert results[2].text == alone(engine, neighbours[1]).text


def test_never_holds_more_than_max_batch(engine: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(engine, "max_batch", 3)
    reqs = [job(engine, PROMPTS[i % 4], max_new=4 + 3 * i, ignore_eos=True) for i in range(8)]
    expected = [alone(engine, r).text for r in reqs]
    sizes: list[int] = []
    futures = [engine.submit(r) for r in reqs]
    drive(engine, futures, check=lambda: sizes.append(engine.active))
    assert max(sizes) == 3
    assert [f.result().text for f in futures] == expected
    assert [f.result().completion_tokens for f in futures] == [r.max_new_tokens for r in reqs]


# --- the engine thread and failures -----------------------------------------


def test_engine_thread_serves_jobs_from_other_threads(engine: Engine) -> None:
    reqs = [job(engine, p, max_new=12 + i) for i, p in enumerate(PROMPTS * 2)]
    expected = [alone(engine, r).text for r in reqs]
    stop = threading.Event()
    thread = threading.Thread(target=engine.run, args=(stop,), daemon=True)
    thread.start()
    try:
        with ThreadPoolExecutor(4) as pool:
            texts = list(pool.map(lambda r: engine.submit(r).result(timeout=60).text, reqs))
    finally:
        stop.set()
        thread.join(10)
    assert not thread.is_alive()
    assert texts == expected


def test_a_worker_computes_on_one_thread_only(settings, tiny_spec: ModelSpec) -> None:
    from worker.runtime import Runtime

    # A second computing thread (say, a warm-up on the main thread) would keep a second OpenMP
    # team competing with the engine's for the cores: one sequence ran 1.7x slower on 2 cores.
    runtime = Runtime(settings, tiny_spec, "cpu")
    runtime.load()
    try:
        assert runtime.engine.submit(job(runtime.engine, "Hello", max_new=4)).result(timeout=60)
        assert runtime.engine.threads == {"genq-engine"}
    finally:
        runtime.stop()


def test_a_model_that_cannot_load_fails_load_on_the_callers_thread(settings, tmp_path: Path) -> None:
    from worker.loader import ModelLoadError
    from worker.runtime import Runtime

    missing = ModelSpec(name="missing", source=str(tmp_path / "nothing-here"))
    with pytest.raises(ModelLoadError):
        Runtime(settings, missing, "cpu").load()


def test_failed_step_fails_its_batch_and_the_engine_goes_on(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    reqs = [job(engine, p, max_new=10) for p in PROMPTS[:3]]
    with monkeypatch.context() as patch:
        patch.setattr(engine, "hooks", ExplodingText())
        futures = [engine.submit(r) for r in reqs]
        drive(engine, futures)
    for f in futures:
        # Handed back, not blamed: the runtime runs each again alone (see tests/test_rowsafe.py).
        with pytest.raises(StepFailed, match="on purpose") as failed:
            f.result()
        assert isinstance(failed.value.__cause__, RuntimeError) and not failed.value.solo
    assert engine.active == 0
    after = job(engine, PROMPTS[0], max_new=10)
    assert engine.generate([after])[0].text == alone(engine, after).text


def test_failed_prefill_resolves_the_new_jobs_future(engine: Engine) -> None:
    # Token ids outside the vocabulary make the prefill forward raise, as an out-of-memory would.
    running = engine.submit(job(engine, PROMPTS[1], max_new=20, ignore_eos=True))
    engine.step()
    bad = engine.submit(Request("bad-token", [1, 2, engine.vocab + 1000], 5, GREEDY, 0))
    for _ in range(40):
        engine.step()
    assert running.done()  # it finished, or failed with the batch it was in
    assert bad.done(), "a job whose prefill raised was never resolved: its caller waits forever"
    assert isinstance(bad.exception(), StepFailed) and isinstance(bad.exception().__cause__, IndexError)
    assert bad.exception().solo  # admitted alone: the failure is its own
    after = job(engine, PROMPTS[0], max_new=10)
    assert engine.generate([after])[0].text == alone(engine, after).text


def _admitted_batches(engine: Engine, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Record how many waiting jobs each admission found."""
    sizes: list[int] = []
    admit = engine._admit

    def counting() -> None:
        if engine._pending:
            sizes.append(len(engine._pending))
        admit()

    monkeypatch.setattr(engine, "_admit", counting)
    return sizes


def test_jobs_being_claimed_share_the_idle_engines_prefill(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(engine_module, "GATHER_S", 30.0)  # only the arrivals end the wait here
    sizes = _admitted_batches(engine, monkeypatch)
    arrivals = [engine.arriving() for _ in range(3)]
    stop = threading.Event()
    thread = threading.Thread(target=engine.run, args=(stop,), daemon=True)
    thread.start()
    try:
        futures = []
        for arrival, prompt in zip(arrivals, PROMPTS, strict=False):
            futures.append(engine.submit(job(engine, prompt, max_new=1)))
            arrival.done()
            arrival.done()  # idempotent: a job's finally calls it again
            time.sleep(0.2)  # the next job is still being claimed: the engine must not start
        results = [f.result(timeout=60) for f in futures]
    finally:
        stop.set()
        thread.join(10)
    assert sizes == [3]
    assert [r.completion_tokens for r in results] == [1, 1, 1]


def test_a_job_that_never_arrives_delays_the_others_by_gather_s_at_most(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(engine_module, "GATHER_S", 0.3)
    sizes = _admitted_batches(engine, monkeypatch)
    stuck = engine.arriving()  # a job whose claim hangs (Redis away): it must not hold the engine
    stop = threading.Event()
    thread = threading.Thread(target=engine.run, args=(stop,), daemon=True)
    thread.start()
    try:
        assert engine.submit(job(engine, "Hi", max_new=2)).result(timeout=60).completion_tokens == 2
    finally:
        stop.set()
        thread.join(10)
        stuck.done()
    assert sizes == [1]
