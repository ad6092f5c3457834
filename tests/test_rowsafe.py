"""One job never fails another: hostile rows in a full batch fail alone; a failed step hands jobs back."""

from __future__ import annotations

import pytest
import torch

from shared.schemas import ErrorCode
from tests import test_engine
from tests.test_engine import GREEDY, MAX_BATCH, PROMPTS, SAMPLED, alone, drive, job
from worker.engine import Engine, GenerationError, StepFailed
from worker.rowsafe import broken_rows, sample_rows
from worker.sampling import RowParams

tiny, engine = test_engine.tiny, test_engine.engine  # the same module-scoped fixtures

# What API validation refuses, handed straight to the engine (as a poisoned record would be).
HOSTILE = {
    "subnormal-penalty": RowParams(True, 1.0, 0, 1.0, 2.225073858507e-311),
    "subnormal-temperature": RowParams(True, 1e-320, 0, 1.0, 1.0),
    "nan-temperature": RowParams(True, float("nan"), 0, 1.0, 1.0),
    "nan-penalty": RowParams(True, 1.0, 0, 1.0, float("nan")),
}


def _full_batch(engine: Engine, hostile):
    """Fill a batch: the hostile request in the middle, greedy and seeded neighbours around it."""
    others = [
        job(engine, PROMPTS[i % len(PROMPTS)], 12, GREEDY if i % 2 else SAMPLED, seed=i)
        for i in range(MAX_BATCH - 1)
    ]
    reqs = [*others[:3], hostile, *others[3:]]
    futures = [engine.submit(r) for r in reqs]
    drive(engine, futures)
    return others, futures[:3] + futures[4:], futures[3]


@pytest.mark.parametrize("params", HOSTILE.values(), ids=HOSTILE.keys())
def test_hostile_row_fails_alone_and_the_batch_goes_on(engine: Engine, params: RowParams) -> None:
    hostile = job(engine, PROMPTS[1] + " again the the", 12, params, seed=7)
    others, futures, bad = _full_batch(engine, hostile)
    error = bad.exception()
    assert isinstance(error, GenerationError) and error.code is ErrorCode.SAMPLING_FAILED, error
    for req, future in zip(others, futures, strict=True):
        assert future.result().text == alone(engine, req).text  # as if the hostile row never joined


def test_row_with_nan_logits_fails_alone(engine: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    # A token whose embedding is NaN poisons every logit of the row that reads it, and no other row.
    poison = engine.encode("zebra")[-1]
    weight = engine.model.get_input_embeddings().weight
    saved = weight[poison].clone()
    with torch.no_grad():
        weight[poison] = float("nan")
    try:
        hostile = job(engine, "zebra", 12, GREEDY)
        others, futures, bad = _full_batch(engine, hostile)
    finally:
        with torch.no_grad():
            weight[poison] = saved
    assert bad.exception().code is ErrorCode.SAMPLING_FAILED
    assert "not finite" in str(bad.exception())
    for req, future in zip(others, futures, strict=True):
        assert future.result().text == alone(engine, req).text


def test_row_whose_stop_strings_raise_fails_alone(engine: Engine) -> None:
    hostile = job(engine, PROMPTS[2], 12, GREEDY)
    hostile.stop = [None]  # type: ignore[list-item] - what a poisoned record could carry
    others, futures, bad = _full_batch(engine, hostile)
    assert bad.exception().code is ErrorCode.DECODE_FAILED
    for req, future in zip(others, futures, strict=True):
        assert future.result().text == alone(engine, req).text


def test_failed_forward_hands_back_the_batch_then_fails_only_a_solo_job(engine: Engine) -> None:
    # A forward hook that raises whenever one marked token is in the batch, as an OOM would.
    marker = engine.encode("zebra")[-1]

    def explode(module, args, kwargs):
        ids = kwargs.get("input_ids")
        if ids is not None and bool((ids == marker).any()):
            raise RuntimeError("out of memory (on purpose)")

    handle = engine.model.register_forward_pre_hook(explode, with_kwargs=True)
    try:
        reqs = [job(engine, p, 8) for p in PROMPTS] + [job(engine, "zebra", 8)]
        futures = [engine.submit(r) for r in reqs]
        drive(engine, futures)
        failures = [f.exception() for f in futures]
        assert all(isinstance(e, StepFailed) and not e.solo for e in failures), failures
        assert "on purpose" in str(failures[0]) and failures[0].code is ErrorCode.FORWARD_FAILED
        # Run again one by one (the runtime requeues them solo): only the culprit fails.
        for req in reqs:
            req.solo = True
        retried = [engine.submit(r) for r in reqs]
        drive(engine, retried)
    finally:
        handle.remove()
    assert [f.exception() is None for f in retried] == [True] * len(PROMPTS) + [False]
    assert isinstance(retried[-1].exception(), StepFailed) and retried[-1].exception().solo
    for req, future in zip(reqs[:-1], retried, strict=False):
        assert future.result().text == alone(engine, req).text


def test_sample_rows_restores_generators_so_seeds_hold() -> None:
    logits = torch.randn(3, 50)
    logits[1] = float("nan")
    params = [RowParams(True, 0.8, 0, 1.0, 1.0)] * 3
    gens = [torch.Generator().manual_seed(s) for s in (1, 2, 3)]
    tokens, bad = sample_rows(logits, params, gens, None)
    assert set(bad) == {1} and broken_rows(logits) == [1]
    alone_gens = [torch.Generator().manual_seed(s) for s in (1, 3)]
    clean = logits[[0, 2]]
    expected, none = sample_rows(clean, [params[0], params[2]], alone_gens, None)
    assert none == {} and tokens[[0, 2]].tolist() == expected.tolist()
