"""The engine on the bundled SmolLM2: a real answer, and batched greedy equal to transformers' own."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from shared.schemas import FinishReason
from shared.settings import default_catalog
from worker.engine import Engine, Request
from worker.loader import load_model
from worker.sampling import RowParams

GREEDY = RowParams(sampling=False, temperature=1.0, top_k=0, top_p=1.0, repetition_penalty=1.0)
PROMPTS = [
    "Artificial Intelligence is",
    "The quick brown fox",
    "Write a haiku about the sea:",
    "In 1492, Christopher Columbus sailed across the Atlantic Ocean and reached",
]


@pytest.fixture(scope="module")
def smollm2(cache_dir: Path):
    """SmolLM2 from the project's cache of converted weights (converts once if the cache is cold)."""
    return load_model(default_catalog()[0], "cpu", cache_dir)


@pytest.fixture(scope="module")
def engine(smollm2) -> Engine:
    model, tokenizer = smollm2
    return Engine(model, tokenizer, max_batch=8, context_length=default_catalog()[0].context_length)


@pytest.mark.slow
class TestSmolLM2:
    def test_answers_the_capital_of_france(self, engine: Engine) -> None:
        ids = engine.encode(messages=[{"role": "user", "content": "What is the capital of France?"}])
        [result] = engine.generate([Request("france", ids, 64, GREEDY, 0)])
        assert result.text == "The capital of France is Paris."
        assert result.finish_reason is FinishReason.EOS
        assert result.prompt_tokens == len(ids)

    def test_batched_greedy_equals_transformers_alone(self, engine: Engine, smollm2) -> None:
        model, tokenizer = smollm2
        reqs = [Request(f"p{i}", engine.encode(p), 24, GREEDY, 0) for i, p in enumerate(PROMPTS)]
        assert len({len(r.input_ids) for r in reqs}) > 1  # the batch needs left padding
        results = engine.generate(reqs)
        expected, lengths = [], []
        for r in reqs:
            ids = torch.tensor([r.input_ids])
            with torch.inference_mode():
                out = model.generate(
                    input_ids=ids,
                    attention_mask=torch.ones_like(ids),
                    max_new_tokens=24,
                    do_sample=False,
                    pad_token_id=tokenizer.pad_token_id,
                )
            new = out[0, ids.shape[1] :].tolist()
            expected.append(tokenizer.decode(new, skip_special_tokens=True))
            lengths.append(len([t for t in new if t not in engine.eos_ids]))
        assert [r.text for r in results] == expected
        assert [r.completion_tokens for r in results] == lengths
