"""Constrained decoding in the continuous batch, on the tiny random model: masks per row, seeds, finishes."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import jsonschema_rs
import pytest
import torch

from shared.constraints import ConstraintFields
from shared.schemas import ErrorCode, FinishReason
from shared.settings import ModelSpec
from tests.test_engine import CONTEXT, FILTERED, GREEDY, MAX_BATCH, PROMPTS, SAMPLED, drive, job
from worker.engine import Engine, GenerationError, Request
from worker.grammar import mask_logits
from worker.loader import load_model

PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 8},
        "age": {"type": "integer", "minimum": 0, "maximum": 120},
        "ok": {"type": "boolean"},
    },
    "required": ["name", "age", "ok"],
    "additionalProperties": False,
}
LABEL = {
    "type": "object",
    "properties": {"label": {"enum": ["spam", "ham"]}},
    "required": ["label"],
    "additionalProperties": False,
}
CHOICES = ["yes", "no", "maybe later"]
DATE = r"[0-9]{4}-[0-9]{2}-[0-9]{2}"


@pytest.fixture(scope="module")
def engine(tiny_model_dir: Path, cache_dir: Path) -> Iterator[Engine]:
    """The tiny model's engine, one thread (as in test_engine.py, for the same reason)."""
    spec = ModelSpec(
        name="tiny", source=str(tiny_model_dir), context_length=CONTEXT, max_new_tokens_cap=CONTEXT - 1
    )
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    model, tokenizer = load_model(spec, "cpu", cache_dir)
    yield Engine(model, tokenizer, max_batch=MAX_BATCH, context_length=CONTEXT)
    torch.set_num_threads(threads)


def constrained(engine: Engine, prompt: str, max_new: int = 60, **fields) -> Request:
    """A request whose output must follow the given constraint fields."""
    req = job(
        engine, prompt, max_new=max_new, params=fields.pop("params", GREEDY), seed=fields.pop("seed", 0)
    )
    req.constraint = engine.constraint(ConstraintFields(**fields))
    return req


def copy(engine: Engine, req: Request, fields: dict) -> Request:
    """The same job again, with a fresh matcher for the same constraint."""
    twin = constrained(engine, PROMPTS[0], req.max_new_tokens, params=req.params, seed=req.seed, **fields)
    twin.input_ids = list(req.input_ids)
    return twin


def test_json_schema_output_parses_and_validates_and_stops(engine: Engine) -> None:
    [result] = engine.generate([constrained(engine, PROMPTS[2], json_schema=PERSON)])
    assert result.finish_reason is FinishReason.STOP
    jsonschema_rs.validate(PERSON, json.loads(result.text))


def test_choice_and_regex_outputs_match(engine: Engine) -> None:
    choice, date = engine.generate(
        [constrained(engine, PROMPTS[1], choice=CHOICES), constrained(engine, PROMPTS[3], regex=DATE)]
    )
    assert choice.text in CHOICES and choice.finish_reason is FinishReason.STOP
    assert re.fullmatch(DATE, date.text) and date.finish_reason is FinishReason.STOP
    assert date.completion_tokens >= 1


def test_length_when_max_tokens_end_the_json_early(engine: Engine) -> None:
    [result] = engine.generate([constrained(engine, PROMPTS[0], max_new=3, json_schema=PERSON)])
    assert result.finish_reason is FinishReason.LENGTH and result.completion_tokens == 3
    with pytest.raises(ValueError):
        json.loads(result.text)


def test_mixed_batch_gives_each_row_its_text_alone(engine: Engine) -> None:
    """Constrained (two schemas, greedy and seeded) and unconstrained rows share one batch."""
    specs = [
        ({"json_schema": PERSON}, GREEDY, 0),
        ({"json_schema": PERSON}, SAMPLED, 7),
        ({"json_schema": LABEL}, FILTERED, 8),
        ({}, SAMPLED, 9),
        ({}, GREEDY, 0),
        ({"choice": CHOICES}, SAMPLED, 10),
    ]
    reqs = []
    for i, (fields, params, seed) in enumerate(specs):
        req = constrained(engine, PROMPTS[i % len(PROMPTS)], 100, params=params, seed=seed, **fields)
        req.ignore_eos = not fields  # unconstrained rows run their full length beside the others
        reqs.append(req)
    expected = []
    for req, (fields, _, _) in zip(reqs, specs, strict=True):
        twin = copy(engine, req, fields)
        twin.ignore_eos = req.ignore_eos
        expected.append(engine.generate([twin])[0].text)
    # Admitted together, and a constrained job joining a batch that is already running.
    assert [r.text for r in engine.generate(reqs)] == expected
    running = [engine.submit(copy(engine, r, f)) for r, (f, _, _) in zip(reqs[3:5], specs[3:5], strict=True)]
    engine.step()
    engine.step()
    late = engine.submit(copy(engine, reqs[1], specs[1][0]))
    drive(engine, [late, *running])
    assert late.result().text == expected[1]
    jsonschema_rs.validate(PERSON, json.loads(expected[1]))
    jsonschema_rs.validate(LABEL, json.loads(expected[2]))
    assert expected[5] in CHOICES


def test_sampling_knobs_apply_on_top_of_the_mask(engine: Engine) -> None:
    texts = {
        engine.generate([constrained(engine, PROMPTS[1], params=FILTERED, seed=s, json_schema=PERSON)])[
            0
        ].text
        for s in range(4)
    }
    for text in texts:
        jsonschema_rs.validate(PERSON, json.loads(text))
    assert len(texts) > 1, "different seeds should draw different valid outputs"


def test_same_schema_compiles_once(engine: Engine) -> None:
    schema = {**PERSON, "title": "cache-test"}
    before = engine.grammars.stats.compiled
    hits = engine.grammars.stats.hits
    for _ in range(3):
        engine.constraint(ConstraintFields(json_schema=schema))
    assert engine.grammars.stats.compiled == before + 1
    assert engine.grammars.stats.hits == hits + 2


def test_a_constraint_the_worker_cannot_compile_fails_with_a_code(engine: Engine) -> None:
    bad = ConstraintFields.model_construct(regex="a(", json_schema=None, choice=None, tool_calls=None)
    with pytest.raises(GenerationError) as err:
        engine.constraint(bad)
    assert err.value.code is ErrorCode.GRAMMAR_INVALID


def test_mask_leaves_unconstrained_rows_untouched(engine: Engine) -> None:
    logits = torch.randn(3, engine.vocab)
    before = logits.clone()
    c = engine.constraint(ConstraintFields(choice=["yes"]))
    mask_logits(logits, [1], [c])
    assert torch.equal(logits[0], before[0]) and torch.equal(logits[2], before[2])
    assert torch.isinf(logits[1]).sum() > 0 and torch.isfinite(logits[1]).sum() >= 1


@pytest.mark.parametrize(
    "fields",
    [
        {
            "json_schema": {"$defs": {"a": {"$ref": "#/$defs/a"}}, "$ref": "#/$defs/a"}
        },  # only refers to itself
        {"regex": r"[^\x00-\x{10FFFF}]"},  # matches nothing
    ],
)
def test_an_unsatisfiable_constraint_fails_its_job_at_compile(engine: Engine, fields: dict) -> None:
    with pytest.raises(GenerationError) as err:
        engine.constraint(ConstraintFields(**fields))
    assert err.value.code is ErrorCode.GRAMMAR_INVALID


def test_a_matcher_that_fails_mid_output_fails_its_job_alone(engine: Engine) -> None:
    """A matcher error after a token (llguidance out of step fuel) fails that row with a code;
    before, the row ended `stop` as if its text were whole."""
    plain = job(engine, PROMPTS[1], max_new=8)
    plain.ignore_eos = True
    [alone] = engine.generate([job(engine, PROMPTS[1], max_new=8)])
    broken = constrained(engine, PROMPTS[0], choice=CHOICES)
    assert broken.constraint is not None
    broken.constraint.take(engine.encode(prompt="zebra")[-1])  # forbidden: a real matcher error
    assert broken.constraint.error is not None
    futures = [engine.submit(broken), engine.submit(plain)]
    drive(engine, futures)
    with pytest.raises(GenerationError) as err:
        futures[0].result()
    assert err.value.code is ErrorCode.GRAMMAR_TOO_COMPLEX and "matcher failed" in str(err.value)
    assert futures[1].result().text == alone.text  # the other row went on untouched
