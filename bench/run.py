"""Benchmark genq against in-process transformers in one run: `python -m bench.run [--quick] [--device D]`.

Every system does the same fixed work (the default model, greedy, ignore_eos), so the figures compare
as ratios; the issue's targets are computed from them and printed as PASS/MISS lines.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import datetime as dt
import gc
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import redis

from genq.client import Client
from shared.jobstore import JobStore
from shared.redisconn import connect
from shared.settings import default_catalog

ROOT = Path(__file__).resolve().parent.parent
MODEL = "smollm2-135m-instruct"  # the bundled default model
BATCHED_MAX = 16  # GENQ_MAX_BATCH of the batching-on worker (the default)
RSS_EVERY_S = 0.05  # how often the memory sampler reads the worker's RSS
START_TIMEOUT_S = 300  # seconds a worker may take to load and register
STOP_TIMEOUT_S = 30  # seconds a child gets after SIGTERM before SIGKILL
CLIENT_TIMEOUT_S = 60  # seconds one HTTP call may block (a 32-deep queue is slow on 2 cores)
MIB = 2**20

PROMPTS = [
    "The capital of France is",
    "Once upon a time in a small village by the sea, there lived",
    "Explain in simple words how a rainbow forms:",
    "Write a short poem about the autumn wind.",
    "The three most important inventions of the twentieth century are",
    "A good recipe for a quick weeknight dinner is",
    "In computer science, a hash table is",
    "Dear diary, today I finally",
    "The main differences between cats and dogs as pets are",
    "Here is a list of tips for learning a new language:",
    "The history of the Roman Empire began",
    "To fix a flat bicycle tire, first",
    "My favourite book is",
    "Photosynthesis is the process by which plants",
    "The weather forecast for tomorrow says",
    "Write a friendly email inviting a colleague to lunch.",
]


@dataclass(frozen=True)
class Plan:
    """How much work each part of the benchmark does."""

    prompts: int = 16  # distinct prompts: the static batch, and the clients of the batching-off run
    new_tokens: int = 64  # tokens per job in the throughput parts
    levels: tuple[int, ...] = (1, 4, 16, 32)  # concurrent clients with batching on
    rounds: int = 3  # jobs each client runs one after another at each level
    static_reps: int = 2  # timed runs of the in-process static batch (median kept)
    solo_reps: int = 5  # one-job-alone runs, each way (median kept)
    long_jobs: int = 8  # mixed load: long jobs running together
    long_tokens: int = 256
    short_tokens: int = 8
    idle_short_reps: int = 5  # short jobs on an idle worker, the mixed load's reference
    max_short_jobs: int = 80  # most short jobs sent during the mixed load
    warmup_tokens: int = 8


QUICK = Plan(
    new_tokens=16, rounds=1, static_reps=1, solo_reps=2, long_jobs=4, long_tokens=64, idle_short_reps=3
)


class BenchError(RuntimeError):
    """The benchmark cannot go on; the message says why."""


# --- processes ----------------------------------------------------------------
def _die_with_parent() -> None:
    """Have Linux SIGTERM this child if the benchmark itself is killed (no orphaned stack)."""
    with contextlib.suppress(OSError, AttributeError):  # not Linux: stop_all() still runs on Ctrl-C
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def free_port() -> int:
    """Return a TCP port that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Children:
    """The processes this benchmark started, each logging to a file; stop_all() ends them, newest first."""

    def __init__(self, logdir: Path) -> None:
        self.logdir = logdir
        self.procs: list[tuple[str, subprocess.Popen, Path]] = []

    def start(self, name: str, argv: list[str], env: dict[str, str]) -> subprocess.Popen:
        """Start a child in its own session, so that a terminal's Ctrl-C reaches only the benchmark."""
        log = self.logdir / f"{name}.log"
        with log.open("ab") as out:
            proc = subprocess.Popen(
                argv,
                env=env,
                cwd=ROOT,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=_die_with_parent,
            )
        self.procs.append((name, proc, log))
        return proc

    def check(self) -> None:
        """Raise BenchError if a child has exited, with the end of its log."""
        for name, proc, log in self.procs:
            if proc.poll() is not None:
                tail = log.read_text(errors="replace").splitlines()[-25:]
                raise BenchError(
                    f"{name} exited with code {proc.returncode}; its log ends:\n" + "\n".join(tail)
                )

    def stop(self, proc: subprocess.Popen) -> None:
        """SIGTERM one child, SIGKILL it if it hangs, and forget it."""
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self.procs = [p for p in self.procs if p[1] is not proc]

    def stop_all(self) -> None:
        """Stop every child still running (API and workers before Redis)."""
        for _, proc, _ in reversed(list(self.procs)):
            self.stop(proc)


def _env(redis_url: str, cache_dir: Path, **genq: object) -> dict[str, str]:
    """The environment of a child: no inherited GENQ_* (so the default catalog), plus these settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GENQ_")}
    env.update(
        PYTHONPATH=str(ROOT), PYTHONUNBUFFERED="1", GENQ_REDIS_URL=redis_url, GENQ_CACHE_DIR=str(cache_dir)
    )
    env.update({f"GENQ_{k.upper()}": str(v) for k, v in genq.items()})
    return env


def _until(predicate: Any, timeout_s: float, what: str, children: Children) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        children.check()
        if time.monotonic() > deadline:
            raise BenchError(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(0.1)


def start_redis(children: Children, workdir: Path) -> str:
    """Start a throwaway redis-server (no persistence) on a free port; return its URL."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise BenchError("redis-server not found; run `make setup`")
    port = free_port()
    argv = [binary, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(workdir)]
    argv += ["--save", "", "--appendonly", "no"]  # a throwaway store: no snapshots, no AOF
    children.start("redis", argv, os.environ.copy())
    url = f"redis://127.0.0.1:{port}/0"
    client = redis.Redis.from_url(url)

    def up() -> bool:
        try:
            return bool(client.ping())
        except redis.RedisError:
            return False

    _until(up, 10, "redis-server", children)
    return url


def start_api(children: Children, redis_url: str, cache_dir: Path) -> str:
    """Start the real API (gunicorn, as in production) on a free port; return its base URL."""
    port = free_port()
    # The per-tenant limiter stays in the path (its Redis calls are part of the cost), set too high to
    # throttle: the default 600/minute would turn a 32-client load into 429s.
    env = _env(redis_url, cache_dir, host="127.0.0.1", port=port, rate_limit="1000000/minute")
    children.start("api", [sys.executable, "-m", "shared.cli", "api"], env)
    base = f"http://127.0.0.1:{port}"

    def healthy() -> bool:
        try:
            with urllib.request.urlopen(f"{base}/healthz", timeout=1) as resp:
                return resp.status == 200
        except OSError:
            return False

    _until(healthy, 60, "the API to answer /healthz", children)
    return base


class RssSampler:
    """Reads a process tree's resident memory every RSS_EVERY_S in a thread; keeps the peak since reset()."""

    def __init__(self, pid: int) -> None:
        self.proc = psutil.Process(pid)
        self._peak = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        threading.Thread(target=self._loop, name="rss-sampler", daemon=True).start()

    def current(self) -> int:
        """Return the RSS of the process and all its children, in bytes."""
        try:
            procs = [self.proc, *self.proc.children(recursive=True)]
        except psutil.Error:
            return 0
        total = 0
        for p in procs:
            with contextlib.suppress(psutil.Error):  # a child that just exited
                total += p.memory_info().rss
        return total

    def _loop(self) -> None:
        while not self._stop.wait(RSS_EVERY_S):
            rss = self.current()
            with self._lock:
                self._peak = max(self._peak, rss)

    def reset(self) -> None:
        """Start a new peak from the present value."""
        with self._lock:
            self._peak = self.current()

    def peak_mib(self) -> float:
        """Return the peak since reset(), in MiB."""
        with self._lock:
            return round(max(self._peak, self.current()) / MIB, 1)

    def close(self) -> None:
        """Stop sampling."""
        self._stop.set()


def start_worker(
    children: Children, store: JobStore, redis_url: str, cache_dir: Path, device: str, max_batch: int
) -> tuple[subprocess.Popen, RssSampler, float]:
    """Start a worker and wait until it registers; return it, its RSS sampler and its idle RSS in MiB."""
    env = _env(redis_url, cache_dir, max_batch=max_batch)
    proc = children.start(
        f"worker-batch{max_batch}", [sys.executable, "-m", "shared.cli", "worker", "--device", device], env
    )
    _until(
        lambda: any(w.get("pid") == proc.pid for w in store.workers()),
        START_TIMEOUT_S,
        f"the worker (GENQ_MAX_BATCH={max_batch}) to register",
        children,
    )
    time.sleep(1.0)  # let start-up allocations settle before reading the idle figure
    sampler = RssSampler(proc.pid)
    return proc, sampler, round(sampler.current() / MIB, 1)


# --- load -----------------------------------------------------------------------
@dataclass
class Timing:
    """One job as a client saw it."""

    latency_s: float  # submit → result
    ttft_s: float | None  # submit → first token event
    tokens: int
    ok: bool
    queued_ms: float | None = None  # the server's created → picked up
    error: str | None = None
    stream_cut: str | None = None  # why the SSE stream ended before the job's done event


def run_job(client: Client, prompt: str, tokens: int, stream: bool = True, on_first: Any = None) -> Timing:
    """Submit one fixed-work job and follow it to the end (by SSE stream, or by long-poll)."""
    t0 = time.perf_counter()
    ttft, cut = None, None
    try:
        job = client.submit(prompt, max_new_tokens=tokens, temperature=0, ignore_eos=True)
        final: dict[str, Any] = {}
        if stream:
            for event, data in client.stream(job["id"]):
                if event == "token" and ttft is None:
                    ttft = time.perf_counter() - t0
                    if on_first is not None:
                        on_first()
                elif event == "error":
                    cut = f"error event {data}"
                elif event == "done":
                    final = data
            if not final:  # the stream ended early: a service bug to report; still time the job's end
                cut = cut or "stream ended without a done event"
                final = client.wait(job["id"], CLIENT_TIMEOUT_S)
        else:
            final = client.wait(job["id"])
    except Exception as exc:  # a failed job is counted and reported, never fatal on its own
        return Timing(time.perf_counter() - t0, ttft, 0, False, error=f"{type(exc).__name__}: {exc}")
    latency = time.perf_counter() - t0
    done = (final.get("usage") or {}).get("completion_tokens", 0)
    ok = final.get("status") == "succeeded" and done == tokens
    error = None if ok else f"status {final.get('status')}, {done}/{tokens} tokens, {final.get('error')}"
    return Timing(latency, ttft, done, ok, (final.get("timings") or {}).get("queued"), error, cut)


def _pct(values: list[float], q: float, scale: float = 1000.0) -> float | None:
    return round(float(np.percentile(values, q)) * scale, 1) if values else None


def summarize(timings: list[Timing], wall_s: float, sampler: RssSampler | None = None, **extra: Any) -> dict:
    """Aggregate tokens/s, latency and TTFT percentiles (ms) of a set of jobs."""
    good = [t for t in timings if t.ok]
    failed = [t for t in timings if not t.ok]
    if failed:
        print(f"  warning: {len(failed)} of {len(timings)} jobs failed, e.g. {failed[0].error}", flush=True)
    cut = [t.stream_cut for t in timings if t.stream_cut]
    if cut:
        print(f"  warning: {len(cut)} of {len(timings)} streams ended early, e.g. {cut[0]}", flush=True)
    if timings and not good:
        raise BenchError(f"every job failed, e.g. {failed[0].error}")
    lat = [t.latency_s for t in good]
    ttft = [t.ttft_s for t in good if t.ttft_s is not None]
    queued = [t.queued_ms for t in good if t.queued_ms is not None]
    tokens = sum(t.tokens for t in timings)
    return {
        **extra,
        "jobs": len(timings),
        "failed": len(failed),
        "tokens": tokens,
        "wall_s": round(wall_s, 3),
        "tokens_per_s": round(tokens / wall_s, 1) if wall_s > 0 else None,
        "latency_ms": {"p50": _pct(lat, 50), "p95": _pct(lat, 95)},
        "ttft_ms": {"p50": _pct(ttft, 50), "p95": _pct(ttft, 95)},
        "server_queued_ms_p50": _pct(queued, 50, 1.0),
        "peak_rss_mib": sampler.peak_mib() if sampler else None,
        "errors": sorted({t.error for t in failed if t.error})[:3],
        "streams_cut": len(cut),
        "stream_errors": sorted(set(cut))[:3],
    }


def closed_loop(
    base: str, prompts: list[str], clients: int, rounds: int, tokens: int, sampler: RssSampler | None = None
) -> dict:
    """Run `clients` concurrent clients, each submitting and following `rounds` jobs one after another."""
    results: list[list[Timing]] = [[] for _ in range(clients)]
    go = threading.Barrier(clients + 1)

    def client_loop(i: int) -> None:
        client = Client(base, timeout_s=CLIENT_TIMEOUT_S)
        go.wait()
        for r in range(rounds):
            results[i].append(run_job(client, prompts[(i + r * clients) % len(prompts)], tokens))

    threads = [threading.Thread(target=client_loop, args=(i,), daemon=True) for i in range(clients)]
    for t in threads:
        t.start()
    if sampler:
        sampler.reset()
    go.wait()
    t0 = time.perf_counter()
    for t in threads:
        t.join()
    return summarize(
        [x for r in results for x in r], time.perf_counter() - t0, sampler, clients=clients, new_tokens=tokens
    )


def mixed_load(base: str, prompts: list[str], plan: Plan, sampler: RssSampler) -> dict:
    """Long jobs run together while short jobs arrive one after another; time the short ones."""
    longs: list[Timing] = []
    first_tokens = threading.Semaphore(0)

    def long_client(i: int) -> None:
        t = run_job(
            Client(base, timeout_s=CLIENT_TIMEOUT_S),
            prompts[i % len(prompts)],
            plan.long_tokens,
            on_first=first_tokens.release,
        )
        if t.ttft_s is None:
            first_tokens.release()  # failed before its first token: don't leave the main thread waiting
        longs.append(t)

    threads = [threading.Thread(target=long_client, args=(i,), daemon=True) for i in range(plan.long_jobs)]
    sampler.reset()
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for _ in threads:  # every long job is generating before the first short one arrives
        if not first_tokens.acquire(timeout=START_TIMEOUT_S):
            raise BenchError("the long jobs of the mixed load never started")
    client = Client(base, timeout_s=CLIENT_TIMEOUT_S)
    shorts: list[Timing] = []
    under_load: list[Timing] = []
    while len(shorts) < plan.max_short_jobs and all(t.is_alive() for t in threads):
        timing = run_job(client, prompts[len(shorts) % len(prompts)], plan.short_tokens)
        shorts.append(timing)
        if all(t.is_alive() for t in threads):  # finished while every long job was still running
            under_load.append(timing)
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    whole = summarize(longs + shorts, wall, sampler)
    short = summarize(under_load, wall)
    return {
        "long_jobs": plan.long_jobs,
        "long_tokens": plan.long_tokens,
        "short_tokens": plan.short_tokens,
        "tokens_per_s": whole["tokens_per_s"],
        "peak_rss_mib": whole["peak_rss_mib"],
        "long_latency_ms": summarize(longs, wall)["latency_ms"],
        "short_jobs_sent": len(shorts),
        "short_jobs_under_load": len(under_load),
        "short_latency_ms": short["latency_ms"],
        "short_ttft_ms": short["ttft_ms"],
        "failed": whole["failed"],
        "errors": whole["errors"],
    }


# --- in-process baselines -----------------------------------------------------------
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
        "latency_ms": {"p50": _pct(lat, 50), "p95": _pct(lat, 95)},
        "ttft_ms": {"p50": _pct(ttft, 50)},
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
    out["solo"] = {"generate_ms": _pct(solo, 50), "engine_ms": _pct(solo_engine, 50)}
    sampler.close()
    return out  # the model goes with this frame; the caller collects it


# --- genq through HTTP → Redis → worker ---------------------------------------------
def genq_runs(
    plan: Plan, prompts: list[str], device: str, cache_dir: Path, children: Children, workdir: Path
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
    children.check()
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
        children.check()

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
    children.check()
    sampler.close()
    children.stop(proc)
    return out


# --- targets and reports ---------------------------------------------------------------
def targets(res: dict, plan: Plan) -> list[dict]:
    """The issue's targets, as ratios of this run's figures."""
    ip, g = res["in_process"], res["genq"]
    n, t = plan.prompts, plan.new_tokens
    rows: list[dict] = []

    def check(name: str, ok: bool | None, detail: str) -> None:
        rows.append({"target": name, "pass": bool(ok), "detail": detail})

    on = g["batched"].get(str(n), {}).get("tokens_per_s") or 0.0
    off, static = g["batching_off"]["tokens_per_s"], ip["static_batch"]["tokens_per_s"]
    check(
        f"{n}×{t} genq batched ≥ 5× genq batching off",
        on >= 5 * off,
        f"{on:.1f} vs {off:.1f} tokens/s = {on / off:.2f}×",
    )
    check(
        f"{n}×{t} genq batched ≥ 0.85× in-process static batch",
        on >= 0.85 * static,
        f"{on:.1f} vs {static:.1f} tokens/s = {on / static:.2f}×",
    )
    solo, local = g["solo"]["latency_ms"]["p50"], ip["solo"]["generate_ms"]
    check(
        f"one {t}-token job alone within 30 ms of in-process generate",
        solo - local <= 30,
        f"genq {solo:.0f} ms vs in-process {local:.0f} ms: {solo - local:+.0f} ms "
        f"(in-process Engine {ip['solo']['engine_ms']:.0f} ms)",
    )
    p95, quiet = g["mixed"]["short_latency_ms"]["p95"], g["idle_short"]["latency_ms"]["p50"]
    if p95 is None:
        check("mixed load: short-job p95 ≤ 3× idle latency", False, "no short job finished under load")
    else:
        check(
            "mixed load: short-job p95 ≤ 3× idle latency",
            p95 <= 3 * quiet,
            f"p95 {p95:.0f} ms (n={g['mixed']['short_jobs_under_load']}) vs idle p50 {quiet:.0f} ms "
            f"= {p95 / quiet:.2f}×",
        )
    # The reference is idle after warm-up: the weights are mmapped (safetensors) and only become
    # resident at the first forward pass, so idle-after-load undercounts the model by its full size.
    top = str(max(plan.levels))
    peak, idle = g["batched"][top]["peak_rss_mib"], g["worker_rss_mib"]
    rest = idle["idle_after_warmup"]
    check(
        f"worker RSS at {top} concurrent ≤ 2× idle RSS",
        peak <= 2 * rest,
        f"peak {peak:.0f} MiB vs idle {rest:.0f} MiB (warmed up; {idle['idle_after_load']:.0f} MiB right "
        f"after load, weights not yet paged in) = {peak / rest:.2f}×",
    )
    return rows


def table_rows(res: dict, plan: Plan) -> list[dict]:
    """One row per system and load: what the Markdown table and the chart show."""
    ip, g = res["in_process"], res["genq"]
    n, p = plan.new_tokens, plan.prompts

    def row(system: str, clients: object, work: str, fig: dict) -> dict:
        return {
            "system": system,
            "clients": clients,
            "work": work,
            "tokens_per_s": fig.get("tokens_per_s"),
            "p50_ms": fig.get("latency_ms", {}).get("p50"),
            "p95_ms": fig.get("latency_ms", {}).get("p95"),
            "ttft_ms": fig.get("ttft_ms", {}).get("p50"),
            "rss_mib": fig.get("peak_rss_mib"),
        }

    rows = [
        row("transformers generate, one prompt at a time (in-process)", 1, f"{p} × {n}", ip["one_at_a_time"]),
        row("transformers generate, one static batch (in-process)", "—", f"{p} × {n}", ip["static_batch"]),
        row(
            "genq Engine.generate, one batch (in-process, no service)", "—", f"{p} × {n}", ip["engine_batch"]
        ),
        row("genq, batching off (GENQ_MAX_BATCH=1)", p, f"{p} × {n}", g["batching_off"]),
    ]
    for clients, fig in g["batched"].items():
        rows.append(
            row(
                f"genq, batching on (GENQ_MAX_BATCH={BATCHED_MAX})", int(clients), f"{fig['jobs']} × {n}", fig
            )
        )
    m = g["mixed"]
    rows.append(
        row(
            f"genq, short jobs beside {m['long_jobs']} long ({m['long_tokens']} tokens)",
            1,
            f"{m['short_jobs_under_load']} × {m['short_tokens']}",
            {
                "tokens_per_s": m["tokens_per_s"],
                "latency_ms": m["short_latency_ms"],
                "ttft_ms": m["short_ttft_ms"],
                "peak_rss_mib": m["peak_rss_mib"],
            },
        )
    )
    rows.append(
        row(
            "genq, short job on an idle worker",
            1,
            f"{g['idle_short']['jobs']} × {plan.short_tokens}",
            {**g["idle_short"], "tokens_per_s": None},
        )
    )
    return rows


def _fmt(value: object, unit: str = "") -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:,.0f}{unit}" if value >= 100 else f"{value:.1f}{unit}"
    return f"{value}{unit}"


def markdown(res: dict, plan: Plan) -> str:
    """The figures as a Markdown table, with the targets below it, ready for the README."""
    m = res["machine"]
    lines = [
        f"{res['date']} UTC · {m['cores']} cores, {m['ram_gib']} GiB RAM · {m['device']} · torch {m['torch']}"
        f" · {res['model']} ({res['in_process']['dtype']}), greedy, ignore_eos"
        + (" · --quick" if res["quick"] else ""),
        "",
        "| system | clients | jobs × tokens | tokens/s | p50 latency | p95 latency | p50 TTFT | peak RSS |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in table_rows(res, plan):
        lines.append(
            f"| {r['system']} | {r['clients']} | {r['work']} | {_fmt(r['tokens_per_s'])} | "
            f"{_fmt(r['p50_ms'], ' ms')} | {_fmt(r['p95_ms'], ' ms')} | {_fmt(r['ttft_ms'], ' ms')} | "
            f"{_fmt(r['rss_mib'], ' MiB')} |"
        )
    lines += [
        "",
        "Latency is submit → result as the client sees it; TTFT is submit → first streamed token;",
        "in-process RSS is the benchmark process holding one model copy, genq RSS is the worker's.",
        "",
    ]
    lines += [f"- {'PASS' if t['pass'] else 'MISS'} {t['target']}: {t['detail']}" for t in res["targets"]]
    return "\n".join(lines)


def chart(res: dict, plan: Plan, path: Path) -> bool:
    """Draw tokens/s per system and latency per load as a PNG; False when matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("[bench] matplotlib is missing (pip install -r bench/requirements.txt): no chart", flush=True)
        return False
    rows = table_rows(res, plan)
    short = [
        r["system"].split(" (")[0] + (f", {r['clients']} clients" if "batching" in r["system"] else "")
        for r in rows
    ]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(15, 6))
    tput = [(s, r["tokens_per_s"]) for s, r in zip(short, rows, strict=True) if r["tokens_per_s"]]
    colors = [
        "#999999" if "transformers" in s else "#4c72b0" if "Engine" in s else "#dd8452" for s, _ in tput
    ]
    ax1.barh([s for s, _ in tput], [v for _, v in tput], color=colors)
    for i, (_, v) in enumerate(tput):
        ax1.text(v, i, f" {v:.0f}", va="center", fontsize=8)
    ax1.invert_yaxis()
    ax1.set_xlabel("aggregate tokens/s (higher is better)")
    ax1.tick_params(axis="y", labelsize=8)
    lat = [(s, r) for s, r in zip(short, rows, strict=True) if "genq," in r["system"] and r["p50_ms"]]
    x = np.arange(len(lat))
    for k, (key, label) in enumerate(
        (("ttft_ms", "p50 TTFT"), ("p50_ms", "p50 latency"), ("p95_ms", "p95 latency"))
    ):
        ax2.bar(x + (k - 1) * 0.27, [r[key] or 0 for _, r in lat], 0.27, label=label)
    ax2.set_xticks(x, [s.replace("genq, ", "") for s, _ in lat], rotation=30, ha="right", fontsize=8)
    ax2.set_yscale("log")
    ax2.set_ylabel("ms, submit → (log scale, lower is better)")
    ax2.legend(fontsize=8)
    m = res["machine"]
    fig.suptitle(
        f"genq, {res['model']}, {plan.new_tokens}-token jobs · {res['date']} · {m['cores']} cores, "
        f"{m['ram_gib']} GiB · {m['device']}" + (" · quick" if res["quick"] else "")
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def machine(device: str) -> dict:
    """What ran the benchmark."""
    import torch
    import transformers

    info = {
        "cores": os.cpu_count(),
        "ram_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "device": device,
        "python": sys.version.split()[0],
    }
    if device.startswith("cuda") and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(torch.device(device))
    return info


def _cache_dir() -> Path:
    path = Path(os.environ.get("GENQ_CACHE_DIR", ".genq/cache"))
    return path if path.is_absolute() else ROOT / path


def run(args: argparse.Namespace, children: Children, workdir: Path) -> int:
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
    children = Children(workdir)
    try:
        return run(args, children, workdir)
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
        children.stop_all()
        print(f"[bench] logs of the processes it ran: {workdir}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
