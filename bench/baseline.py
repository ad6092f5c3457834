"""In-process baselines: transformers' generate (one at a time, one static batch) and genq's Engine."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.load import pct
from bench.plan import MODEL, Plan
from bench.processes import RssSampler
from shared.settings import default_catalog


def in_process(plan: Plan, prompts: list[str], device: str, cache_dir: Path) -> dict:
    """Time transformers' generate (one at a time, one static batch) and genq's Engine, in this process."""
    import torch

    from worker.engine import Engine, Request
    from worker.loader import load_model
    from worker.sampling import RowParams

    spec = next(m for m in default_catalog() if m.name == MODEL)
    sampler = RssSampler(os.getpid())
    model, tok = load_model(spec, device, cache_dir)
    n = plan.new_tokens

    def generate(batch: list[str], new: int) -> float:
        t0 = time.perf_counter()
        enc = tok(batch, padding=True, padding_side="left", return_tensors="pt").to(model.device)
        # min_new_tokens masks EOS: fixed work, the same count genq's ignore_eos produces.
        out = model.generate(
            **enc, max_new_tokens=new, min_new_tokens=new, do_sample=False, pad_token_id=tok.pad_token_id
        )
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        elapsed = time.perf_counter() - t0
        assert out.shape[1] - enc["input_ids"].shape[1] == new, "generate did not do the fixed work"
        return elapsed

    greedy = RowParams(sampling=False, temperature=1.0, top_k=0, top_p=1.0, repetition_penalty=1.0)
    engine = Engine(model, tok, max_batch=len(prompts), context_length=spec.context_length)

    def engine_run(batch: list[str], new: int) -> float:
        reqs = [
            Request(f"b{i}", engine.encode(prompt=p), new, greedy, 0, [], True) for i, p in enumerate(batch)
        ]
        t0 = time.perf_counter()
        results = engine.generate(reqs)
        elapsed = time.perf_counter() - t0
        assert all(r.completion_tokens == new for r in results), "the engine did not do the fixed work"
        return elapsed

    generate(prompts[:1], plan.warmup_tokens)  # first calls pay for allocator and kernel set-up
    generate(prompts, plan.warmup_tokens)
    engine_run(prompts, plan.warmup_tokens)
    out: dict[str, Any] = {
        "dtype": str(model.dtype).removeprefix("torch."),
        "threads": torch.get_num_threads(),
    }

    sampler.reset()
    lat = [generate([p], n) for p in prompts]
    ttft = [generate(prompts[:1], 1) for _ in range(plan.solo_reps)]
    out["one_at_a_time"] = {
        "jobs": len(prompts),
        "new_tokens": n,
        "tokens_per_s": round(len(prompts) * n / sum(lat), 1),
        "latency_ms": {"p50": pct(lat, 50), "p95": pct(lat, 95)},
        "ttft_ms": {"p50": pct(ttft, 50)},
        "peak_rss_mib": sampler.peak_mib(),
    }
    sampler.reset()
    walls = [generate(prompts, n) for _ in range(plan.static_reps)]
    wall = float(np.median(walls))
    out["static_batch"] = {
        "jobs": len(prompts),
        "new_tokens": n,
        "tokens_per_s": round(len(prompts) * n / wall, 1),
        "wall_s": round(wall, 3),
        "latency_ms": {"p50": round(wall * 1000, 1), "p95": round(wall * 1000, 1)},
        "ttft_ms": {"p50": round(generate(prompts, 1) * 1000, 1)},
        "peak_rss_mib": sampler.peak_mib(),
    }
    sampler.reset()
    wall = engine_run(prompts, n)
    out["engine_batch"] = {
        "jobs": len(prompts),
        "new_tokens": n,
        "tokens_per_s": round(len(prompts) * n / wall, 1),
        "wall_s": round(wall, 3),
        "latency_ms": {"p50": round(wall * 1000, 1), "p95": round(wall * 1000, 1)},
        "peak_rss_mib": sampler.peak_mib(),
    }
    solo = [generate(prompts[:1], n) for _ in range(plan.solo_reps)]
    solo_engine = [engine_run(prompts[:1], n) for _ in range(plan.solo_reps)]
    out["solo"] = {"generate_ms": pct(solo, 50), "engine_ms": pct(solo_engine, 50)}
    sampler.close()
    return out  # the model goes with this frame; the caller collects it
