"""Structured output cost: `python -m bench.structured [--device D] [--tokens N]`.

16 jobs with a JSON schema against the same 16 unconstrained, all in one continuous batch of the
bundled SmolLM2's engine (the path a worker runs). Both sets make exactly the same number of tokens:
the schema asks for more items than the token budget allows, so every constrained row runs to its
max_new_tokens as the unconstrained rows (ignore_eos) do; the ratio then measures the masks alone.
Also prints the grammar compile time for a cold and a cached schema.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from shared.constraints import ConstraintFields
from shared.settings import Settings, default_catalog

JOBS = 16  # concurrent jobs per set (the default GENQ_MAX_BATCH)
TARGET_RATIO = 0.7  # constrained tokens/s over unconstrained tokens/s (issue 14)
PROMPT = "Write a JSON record of a software engineer's resume: name, years of experience and skills."
SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 40},
        "years_of_experience": {"type": "integer", "minimum": 0, "maximum": 60},
        # More items than the token budget holds: every row runs to max_new_tokens.
        "skills": {"type": "array", "items": {"type": "string", "maxLength": 20}, "minItems": 200},
    },
    "required": ["name", "years_of_experience", "skills"],
    "additionalProperties": False,
}


def _run(engine, fields: ConstraintFields | None, tokens: int) -> tuple[float, int]:
    from worker.engine import Request
    from worker.sampling import RowParams

    params = RowParams(sampling=True, temperature=0.8, top_k=0, top_p=0.95, repetition_penalty=1.0)
    ids = engine.encode(messages=[{"role": "user", "content": PROMPT}])
    reqs = [
        Request(
            f"r{i}",
            list(ids),
            tokens,
            params,
            seed=i,
            ignore_eos=fields is None,
            constraint=engine.constraint(fields) if fields else None,
        )
        for i in range(JOBS)
    ]
    t0 = time.perf_counter()
    results = engine.generate(reqs)
    return time.perf_counter() - t0, sum(r.completion_tokens for r in results)


def main(argv: list[str] | None = None) -> int:
    """Load SmolLM2, run both sets, print tokens/s, the ratio and compile times."""
    parser = argparse.ArgumentParser(prog="python -m bench.structured", description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--tokens", type=int, default=64, help="new tokens per job")
    args = parser.parse_args(argv)

    from worker.engine import Engine
    from worker.loader import load_model

    spec = default_catalog()[0]
    model, tokenizer = load_model(spec, args.device, Path(Settings().cache_dir))
    engine = Engine(model, tokenizer, max_batch=JOBS, context_length=spec.context_length)

    t0 = time.perf_counter()
    engine.grammars  # noqa: B018 - builds the model's token trie once
    trie_s = time.perf_counter() - t0
    fields = ConstraintFields(json_schema=SCHEMA)
    t0 = time.perf_counter()
    engine.constraint(fields)
    cold_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    engine.constraint(fields)
    cached_s = time.perf_counter() - t0

    _run(engine, None, 4)  # warm-up: page the weights in
    print(f"grammar compile: cold {cold_s * 1000:.2f} ms, cached {cached_s * 1000:.3f} ms", flush=True)
    free_s, free_tokens = _run(engine, None, args.tokens)
    print(f"unconstrained: {free_tokens} tokens in {free_s:.2f} s", flush=True)
    json_s, json_tokens = _run(engine, fields, args.tokens)
    free_rate, json_rate = free_tokens / free_s, json_tokens / json_s
    ratio = json_rate / free_rate
    print(f"model {spec.name} on {args.device}, {JOBS} concurrent jobs x {args.tokens} tokens, one batch")
    print(f"unconstrained: {free_tokens} tokens in {free_s:.2f} s = {free_rate:.1f} tokens/s")
    print(f"json schema:   {json_tokens} tokens in {json_s:.2f} s = {json_rate:.1f} tokens/s")
    print(f"ratio {ratio:.2f}x (target >= {TARGET_RATIO}x): {'PASS' if ratio >= TARGET_RATIO else 'MISS'}")
    print(f"token trie for the model (once): {trie_s * 1000:.0f} ms")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
