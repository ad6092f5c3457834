"""The benchmark's client load: one job followed to its end, closed-loop clients, and a mixed load."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from bench.plan import Plan
from bench.processes import START_TIMEOUT_S, BenchError, RssSampler
from genq.client import Client

CLIENT_TIMEOUT_S = 60  # seconds one HTTP call may block (a 32-deep queue is slow on 2 cores)


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


def pct(values: list[float], q: float, scale: float = 1000.0) -> float | None:
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
        "latency_ms": {"p50": pct(lat, 50), "p95": pct(lat, 95)},
        "ttft_ms": {"p50": pct(ttft, 50), "p95": pct(ttft, 95)},
        "server_queued_ms_p50": pct(queued, 50, 1.0),
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
