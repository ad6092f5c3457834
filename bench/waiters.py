"""Thousands of open streams and long polls on one API host, gevent workers against gthread (issue 12).

`python -m bench.waiters` starts its own Redis and, for each concurrency model in turn, the real API
(gunicorn, 2 processes); it opens --streams SSE streams and --polls long polls on queued jobs, and
a separate prober process times /healthz and job submissions, while they connect and once all are
held (reported apart). It prints p50/p99 of both, the load average, API memory per open waiter,
Redis connections, and how long every waiter took to get its job's end once the jobs ended. No
worker runs: the jobs are ended through the job store. It raises its open-files limit (children
inherit it) and refuses to start below what the load needs.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import sys
import tempfile
import threading
import time
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Any

import psutil
import redis

from bench.processes import ROOT, BenchError, start_api, start_redis, supervisor
from genq.supervisor import Supervisor
from shared import keys
from shared.jobstore import JobStore, new_job_id
from shared.schemas import JobCreate, Status
from tests import waitclient

MODEL = "smollm2-135m-instruct"  # the default catalog's model (the API checks names; nothing runs)
CONNECT_AT_ONCE = 256  # connections being opened at any moment
OPEN_TIMEOUT_S = 300  # longest time given to open every waiter
STALL_S = 20  # the open phase ends when the count of held waiters has not grown for this long
PROBE_TIMEOUT_S = 5.0  # a probe slower than this counts as this (and as a timeout)
HEALTH_EVERY_S = 0.1  # seconds between /healthz probes
SUBMIT_EVERY_S = 0.1  # seconds between job submissions (submissions continue through the hold)
END_TIMEOUT_S = 120  # longest wait for every waiter to get its job's end
MIB = 2**20
OWN_FILES = 1000  # open files besides the waiters' sockets (Redis, logs, the prober's)
TARGETS_MS = {"healthz_p99": 100, "submit_p99": 200}


def start_waiting_api(children: Supervisor, redis_url: str, cache_dir: Path, model: str, waiters: int) -> str:
    """Start `genq api` with 2 processes of this worker class, caps raised above the load."""
    return start_api(
        children,
        redis_url,
        cache_dir,
        f"api-{model}",
        api_workers=2,
        api_worker_class=model,
        api_worker_connections=waiters + 2000,
        max_waiters_per_process=waiters + 1000,  # gunicorn need not split connections evenly
        max_waiters_per_tenant=0,
        # Its jobs are stored without a broker message (no worker runs), so the reconciler of an
        # API process would re-send all 10,000 one lease after their creation, mid-measurement:
        # a lease of 10 minutes keeps that catch-up out of the figures.
        lease_seconds=600,
        max_queued=0,
        max_queued_per_tenant=0,
        rate_limit="100000000/minute",
    )


def api_rss(base_pid: int) -> int:
    """Return the resident memory of gunicorn's worker processes, in bytes."""
    total = 0
    for child in psutil.Process(base_pid).children(recursive=True):
        total += child.memory_info().rss
    return total


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000, 1) if ordered else float("nan")


# --- the prober: its own process, so that the waiters' client loop does not skew its timings -----
def probe(base: str, seconds: float) -> dict:
    """Time /healthz and job submissions (each on its own thread) for `seconds`; latencies in s."""
    out: dict[str, list] = {"healthz": [], "submit": [], "errors": []}
    body = json.dumps({"prompt": "hello", "model": MODEL, "max_new_tokens": 4}).encode()
    headers = {"Content-Type": "application/json"}
    end = time.monotonic() + seconds

    def loop(name: str, make: Any, expected: int, every_s: float) -> None:
        while time.monotonic() < end:
            out[name].append(_timed(make(), expected, out["errors"]))
            time.sleep(every_s)

    def submission() -> urllib.request.Request:
        return urllib.request.Request(f"{base}/v1/jobs", body, headers)

    threads = [
        threading.Thread(target=loop, args=("healthz", lambda: f"{base}/healthz", 200, HEALTH_EVERY_S)),
        threading.Thread(target=loop, args=("submit", submission, 202, SUBMIT_EVERY_S)),
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return out


def _timed(req: urllib.request.Request | str, expected: int, errors: list) -> float:
    t0 = time.monotonic()
    try:
        with urllib.request.urlopen(req, timeout=PROBE_TIMEOUT_S) as resp:
            resp.read()
            if resp.status != expected:
                errors.append(resp.status)
    except OSError as exc:
        errors.append(type(exc).__name__)
        return PROBE_TIMEOUT_S
    return time.monotonic() - t0


async def _start_prober(base: str, seconds: float) -> asyncio.subprocess.Process:
    """Start the prober in a process of its own, so that this client loop does not skew its timings."""
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bench.waiters", "--probe", base, "--hold-s", str(seconds),
        cwd=ROOT, stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip


# --- the waiters ---------------------------------------------------------------------------------
async def _poll(base: str, job_id: str, gate: asyncio.Semaphore, ended: list[float]) -> None:
    while True:  # a long poll that runs out (GENQ_MAX_WAIT) is sent again, as a client would
        async with gate:
            reader, writer = await waitclient.connect(base)
            await waitclient.send(writer, "GET", f"/v1/jobs/{job_id}?wait=60")
        reply = await waitclient.receive(reader, writer)
        if reply.status == 200 and reply.json()["status"] == Status.SUCCEEDED.value:
            ended.append(time.monotonic())
            return
        if reply.status != 200:
            await asyncio.sleep(1)


async def _stream(base: str, job_id: str, gate: asyncio.Semaphore, ended: list[float]) -> None:
    async with gate:
        reader, writer = await waitclient.connect(base)
        await waitclient.send(writer, "GET", f"/v1/jobs/{job_id}/stream")
    reply = await waitclient.receive(reader, writer)
    if "event: done" not in reply.body:
        events = re.findall(r"^event: (\w+)", reply.body, re.M)
        code = re.findall(r'"code":"(\w+)"', reply.body)
        raise BenchError(f"{reply.status} {events[-1] if events else '-'} {code[-1] if code else '-'}")
    ended.append(time.monotonic())


def _reason(exc: BaseException | None) -> str:
    return f"stream: {exc}" if isinstance(exc, BenchError) else type(exc).__name__


def _interleave(polls: list[str], streams: list[str]) -> list[tuple[str, Any]]:
    """Return (job id, waiter coroutine) pairs alternating long polls and streams."""
    out: list[tuple[str, Any]] = []
    for i in range(max(len(polls), len(streams))):
        out += [(polls[i], _poll)] if i < len(polls) else []
        out += [(streams[i], _stream)] if i < len(streams) else []
    return out


def _open_count(r: redis.Redis) -> int:
    return sum(int(v.split()[0]) for v in r.hgetall(keys.WAITERS).values())


def _finish(store: JobStore, ids: list[str]) -> None:
    for job_id in ids:
        attempt = store.claim(job_id, "bench", "cpu").attempt
        output = {"text": "ok", "finish_reason": "stop"}
        store.finish(job_id, Status.SUCCEEDED, holder="bench", attempt=attempt, output=output)


async def load(base: str, store: JobStore, args: argparse.Namespace, api_pid: int) -> dict:
    """Open the waiters, hold them while the prober runs, then end the jobs; return the figures."""
    polls = [new_job_id() for _ in range(args.polls)]
    streams = [new_job_id() for _ in range(args.streams)]
    for job_id in polls + streams:
        store.create(job_id, MODEL, JobCreate(prompt="wait", model=MODEL))
    total = len(polls) + len(streams)
    rss_before = api_rss(api_pid)
    gate, ended = asyncio.Semaphore(CONNECT_AT_ONCE), []
    # Probes while the clients connect too (reported apart: they queue behind the connection storm).
    opening = await _start_prober(base, total / args.open_rate)
    t0 = time.monotonic()
    tasks = []
    # Clients arrive at --open-rate a second, streams and polls interleaved, as users would.
    for i, (job_id, waiter) in enumerate(_interleave(polls, streams)):
        tasks.append(asyncio.create_task(waiter(base, job_id, gate, ended)))
        await asyncio.sleep(max(0.0, t0 + (i + 1) / args.open_rate - time.monotonic()))
    held, grew_at = 0, time.monotonic()
    # Until all are held, or the count stalls (the thread model holds only as many as its threads).
    while held < total and time.monotonic() - t0 < OPEN_TIMEOUT_S and time.monotonic() - grew_at < STALL_S:
        await asyncio.sleep(1)
        now_held = _open_count(store.r)
        if now_held > held:
            held, grew_at = now_held, time.monotonic()
    open_s = time.monotonic() - t0
    during_open = json.loads((await opening.communicate())[0])
    load_before = os.getloadavg()[0]
    probes = json.loads((await (await _start_prober(base, args.hold_s)).communicate())[0])
    load_after = os.getloadavg()[0]
    rss_after, clients = api_rss(api_pid), len(store.r.client_list())
    t_first = time.monotonic()
    await asyncio.get_running_loop().run_in_executor(None, _finish, store, polls + streams)
    t_end = time.monotonic()
    done, _ = await asyncio.wait(tasks, timeout=END_TIMEOUT_S)
    for task in tasks:
        task.cancel()
    # A stream without its done event: BenchError(status, its last event, its error code if any).
    failures = Counter(_reason(t.exception()) for t in done if t.exception() is not None)
    return {
        "waiters_wanted": total,
        "waiters_held": held,
        "open_s": round(open_s, 1),
        "healthz_p50_ms": _pct(probes["healthz"], 0.5),
        "healthz_p99_ms": _pct(probes["healthz"], 0.99),
        "submit_p50_ms": _pct(probes["submit"], 0.5),
        "submit_p99_ms": _pct(probes["submit"], 0.99),
        "probes": len(probes["healthz"]) + len(probes["submit"]),
        "probe_errors": len(probes["errors"]),
        "load_avg_1m": f"{load_before:.1f}-{load_after:.1f}",
        "opening_healthz_p50_ms": _pct(during_open["healthz"], 0.5),
        "opening_healthz_p99_ms": _pct(during_open["healthz"], 0.99),
        "opening_submit_p99_ms": _pct(during_open["submit"], 0.99),
        "opening_probe_errors": len(during_open["errors"]),
        "kib_per_waiter": round((rss_after - rss_before) / max(held, 1) / 1024, 1),
        "api_rss_mib": round(rss_after / MIB, 1),
        "redis_connections": clients,
        "ends_delivered": len(ended),
        "ending_s": round(t_end - t_first, 1),  # the bench ends the jobs one by one, this long
        "all_ends_s": round(max(ended) - t_first, 1) if len(ended) == total else None,  # from the first
        "last_end_after_ending_s": round(max(ended) - t_end, 1) if len(ended) == total else None,
        "unfinished": total - len(done),
        "client_errors": dict(failures) or None,
    }


def run(args: argparse.Namespace) -> dict[str, dict]:
    """Measure each concurrency model in turn on a fresh API (same Redis, flushed between)."""
    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="genq-bench-waiters-") as tmp:
        children = supervisor(Path(tmp))
        try:
            url = start_redis(children, Path(tmp))
            store = JobStore(redis.Redis.from_url(url, decode_responses=True), 3600)
            for model in args.models.split(","):
                store.r.flushall()
                base = start_waiting_api(children, url, Path(tmp) / "cache", model, args.streams + args.polls)
                api = children.children[-1]
                results[model] = asyncio.run(load(base, store, args, api.pid))
                children.stop(api)
                print(json.dumps({model: results[model]}), flush=True)
        finally:
            children.stop_all()
    return results


def report(results: dict[str, dict]) -> str:
    """Render the figures as a Markdown table, one column per model, with the targets."""
    models = list(results)
    lines = ["| figure | " + " | ".join(models) + " |", "|---" * (len(models) + 1) + "|"]
    for name in next(iter(results.values())):
        target = f" (target < {TARGETS_MS[name[:-3]]})" if name[:-3] in TARGETS_MS else ""
        lines.append(f"| {name}{target} | " + " | ".join(str(results[m][name]) for m in models) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print its table."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--streams", type=int, default=5000)
    p.add_argument("--polls", type=int, default=5000)
    p.add_argument("--open-rate", type=float, default=200.0, help="new waiting clients a second")
    p.add_argument("--hold-s", type=float, default=20.0, help="seconds the prober runs while all are open")
    p.add_argument("--models", default="gevent,gthread", help="worker classes to compare, comma-separated")
    p.add_argument("--probe", metavar="URL", help=argparse.SUPPRESS)  # the prober child
    args = p.parse_args(argv)
    if args.probe:
        print(json.dumps(probe(args.probe, args.hold_s)))
        return 0
    wanted = args.streams + args.polls + OWN_FILES
    if waitclient.raise_open_files() < wanted:  # children (the API, the prober) inherit the limit
        print(f"bench: needs {wanted} open files (ulimit -n); raise the hard limit", file=sys.stderr)
        return 1
    try:
        results = run(args)
    except BenchError as exc:
        print(f"bench: {exc}", file=sys.stderr)
        return 1
    print(report(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
