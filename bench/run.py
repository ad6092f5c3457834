"""Benchmark genq against in-process transformers in one run: `python -m bench.run [--quick] [--device D]`.

Every system does the same fixed work (the default model, greedy, ignore_eos), so the figures compare
as ratios; the issue's targets are computed from them and printed as PASS/MISS lines. This module only
orchestrates: bench/processes.py starts what is measured, bench/load.py drives it, bench/baseline.py
times the in-process baselines, bench/report.py turns the figures into targets, a table and a chart.
"""

from __future__ import annotations

import argparse
import datetime as dt
import gc
import json
import os
import signal
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from bench.baseline import in_process
from bench.load import CLIENT_TIMEOUT_S, closed_loop, mixed_load, run_job, summarize
from bench.plan import BATCHED_MAX, MODEL, PROMPTS, QUICK, Plan
from bench.processes import (
    MIB,
    ROOT,
    BenchError,
    check,
    start_api,
    start_redis,
    start_worker,
    supervisor,
)
from bench.report import chart, machine, markdown, targets
from genq.client import Client
from genq.supervisor import Supervisor
from shared.jobstore import JobStore
from shared.redisconn import connect


def genq_runs(
    plan: Plan, prompts: list[str], device: str, cache_dir: Path, children: Supervisor, workdir: Path
) -> dict:
    """Start Redis and the API once, then a batching-off worker and a batching-on worker in turn."""
    redis_url = start_redis(children, workdir)
    base = start_api(children, redis_url, cache_dir)
    store = JobStore(connect(redis_url), 3600)
    n = plan.new_tokens
    out: dict[str, Any] = {}

    print(f"[bench] genq, batching off (GENQ_MAX_BATCH=1): {plan.prompts} clients × {n} tokens", flush=True)
    proc, sampler, idle = start_worker(children, store, redis_url, cache_dir, device, 1)
    closed_loop(base, prompts, 2, 1, plan.warmup_tokens)
    out["batching_off"] = {**closed_loop(base, prompts, plan.prompts, 1, n, sampler), "idle_rss_mib": idle}
    check(children)
    sampler.close()
    children.stop(proc)

    print(f"[bench] genq, batching on (GENQ_MAX_BATCH={BATCHED_MAX})", flush=True)
    proc, sampler, idle = start_worker(children, store, redis_url, cache_dir, device, BATCHED_MAX)
    closed_loop(base, prompts, 1, 1, plan.warmup_tokens)
    closed_loop(base, prompts, 4, 1, plan.warmup_tokens)
    out["worker_rss_mib"] = {"idle_after_load": idle, "idle_after_warmup": round(sampler.current() / MIB, 1)}

    client = Client(base, timeout_s=CLIENT_TIMEOUT_S)
    solo = [run_job(client, prompts[0], n, stream=False) for _ in range(plan.solo_reps)]
    out["solo"] = summarize(solo, sum(t.latency_s for t in solo), new_tokens=n, how="submit + long-poll")

    out["batched"] = {}
    for clients in plan.levels:
        print(f"[bench]   {clients} concurrent clients × {plan.rounds} jobs × {n} tokens", flush=True)
        out["batched"][str(clients)] = closed_loop(base, prompts, clients, plan.rounds, n, sampler)
        check(children)

    print(
        f"[bench] genq, mixed load: {plan.long_jobs} × {plan.long_tokens}-token jobs while "
        f"{plan.short_tokens}-token jobs arrive one after another",
        flush=True,
    )
    idle_short = [
        run_job(client, prompts[i % len(prompts)], plan.short_tokens) for i in range(plan.idle_short_reps)
    ]
    out["idle_short"] = summarize(
        idle_short, sum(t.latency_s for t in idle_short), new_tokens=plan.short_tokens
    )
    out["mixed"] = mixed_load(base, prompts, plan, sampler)
    check(children)
    sampler.close()
    children.stop(proc)
    return out


def _cache_dir() -> Path:
    path = Path(os.environ.get("GENQ_CACHE_DIR", ".genq/cache"))
    return path if path.is_absolute() else ROOT / path


def run(args: argparse.Namespace, children: Supervisor, workdir: Path) -> int:
    """Measure everything, then write the JSON and the chart and print the table and targets."""
    plan = QUICK if args.quick else Plan()
    prompts = PROMPTS[: plan.prompts]
    cache_dir = _cache_dir()
    started = time.monotonic()
    load = os.getloadavg()[0]
    if load > 0.5 * (os.cpu_count() or 1):
        print(
            f"[bench] warning: load average {load:.1f} on {os.cpu_count()} cores; other work will skew "
            "the figures (run it on a quiet machine)",
            flush=True,
        )
    res: dict[str, Any] = {
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M"),
        "quick": args.quick,
        "model": MODEL,
        "machine": machine(args.device),
        "plan": asdict(plan),
        "load_average_at_start": round(load, 2),  # above ~half the cores, other work skewed the run
    }
    print(
        f"[bench] in-process transformers on {args.device}: {plan.prompts} prompts × {plan.new_tokens} "
        "tokens, one at a time and as one batch",
        flush=True,
    )
    res["in_process"] = in_process(plan, prompts, args.device, cache_dir)
    gc.collect()  # free the in-process model copy before the workers load theirs
    if args.device.startswith("cuda"):
        import torch

        torch.cuda.empty_cache()
    res["genq"] = genq_runs(plan, prompts, args.device, cache_dir, children, workdir)
    res["targets"] = targets(res, plan)
    res["bench_s"] = round(time.monotonic() - started, 1)

    label = args.label or args.device.split(":")[0]
    stem = f"{dt.datetime.now(dt.UTC):%Y-%m-%d}-{label}" + ("-quick" if args.quick else "")
    args.out.mkdir(parents=True, exist_ok=True)
    json_path, png_path = args.out / f"{stem}.json", args.out / f"{stem}.png"
    json_path.write_text(json.dumps(res, indent=2) + "\n")
    drew = chart(res, plan, png_path)
    print("\n" + markdown(res, plan) + "\n")  # ends with one PASS/MISS line per target
    print(
        f"\n[bench] {res['bench_s']:.0f} s; wrote {json_path.relative_to(ROOT)}"
        + (f" and {png_path.relative_to(ROOT)}" if drew else ""),
        flush=True,
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, run the benchmark, and stop every process it started, whatever happens."""
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a much smaller run, as a smoke check")
    parser.add_argument("--device", default="cpu", help="cpu or cuda:N (the worker and the baselines)")
    parser.add_argument("--label", help="results file name after the date (default: the device kind)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results", help="results folder")
    args = parser.parse_args(argv)

    def _on_term(signum: int, _frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, _on_term)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # even where a shell started us ignoring it
    workdir = Path(tempfile.mkdtemp(prefix="genq-bench-"))
    procs = supervisor(workdir)
    try:
        return run(args, procs, workdir)
    except BenchError as exc:
        print(f"[bench] failed: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\n[bench] interrupted; stopping its processes", file=sys.stderr)
        return 130
    finally:
        # A second Ctrl-C must not abandon the children half-stopped.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        procs.stop_all()
        print(f"[bench] logs of the processes it ran: {workdir}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
