"""Short jobs end to end: `python -m bench.shortjobs`.

N one-token jobs from 16 clients through the real API, Redis and one worker, on two models: a
tiny 2-layer one whose forward costs almost nothing, so that its rate is the service path's own
(target: >= 100 jobs/s), and the default model, compared with the same jobs run in process (its
compute ceiling). Two loads each: "open" (each client submits its share, then waits for each) and
"closed" (each client submits one job and long-polls it before the next, as an evaluation harness
does). Prints jobs/s end to end, latency percentiles, a breakdown of where a job's time goes (from
the timings each job record stores), CPU per job per process and the Redis commands per job.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import redis

from bench.processes import start_api, start_redis, start_worker, supervisor
from genq.client import Client
from shared.jobstore import JobStore
from shared.redisconn import connect
from shared.settings import ModelSpec, Settings, default_catalog

CLIENTS = 16  # concurrent HTTP clients
JOBS = 2000  # jobs per load
MAX_BATCH = 16  # the worker's GENQ_MAX_BATCH
TARGET_JOBS_S = 100  # end-to-end jobs/s through HTTP on a 2-core machine
CLIENT_TIMEOUT_S = 120  # seconds one long poll may take before the job counts as failed
STORE_TTL_S = 3600  # how long finished jobs stay readable, in seconds
PROMPTS = [f"Question {i}: is the answer yes or no? Answer:" for i in range(64)]


def _one(client: Client, i: int) -> dict[str, Any]:
    return client.submit(PROMPTS[i % len(PROMPTS)], max_new_tokens=1, temperature=0)


def open_load(base: str, jobs: int) -> tuple[float, float, list[tuple[float, dict]]]:
    """Each client submits its share, then waits for each; return (accept s, end-to-end s, jobs)."""
    shares = [list(range(c, jobs, CLIENTS)) for c in range(CLIENTS)]
    accepted: list[list[tuple[float, str]]] = [[] for _ in range(CLIENTS)]
    done: list[tuple[float, dict]] = []
    lock = threading.Lock()
    t0 = time.perf_counter()
    submitted = threading.Barrier(CLIENTS + 1)

    def client_loop(c: int) -> None:
        client = Client(base, timeout_s=CLIENT_TIMEOUT_S)
        for i in shares[c]:
            accepted[c].append((time.perf_counter(), _one(client, i)["id"]))
        submitted.wait()
        for at, job_id in accepted[c]:
            final = client.wait(job_id, CLIENT_TIMEOUT_S)
            with lock:
                done.append((time.perf_counter() - at, final))

    threads = [threading.Thread(target=client_loop, args=(c,)) for c in range(CLIENTS)]
    for t in threads:
        t.start()
    submitted.wait()
    accept_s = time.perf_counter() - t0
    for t in threads:
        t.join()
    return accept_s, time.perf_counter() - t0, done


def closed_load(base: str, jobs: int) -> tuple[float, list[tuple[float, dict]]]:
    """Each client submits one job and long-polls it before the next; return (seconds, jobs)."""
    done: list[tuple[float, dict]] = []
    lock = threading.Lock()
    counter = iter(range(jobs))

    def client_loop() -> None:
        client = Client(base, timeout_s=CLIENT_TIMEOUT_S)
        while True:
            with lock:
                i = next(counter, None)
            if i is None:
                return
            t = time.perf_counter()
            final = client.wait(_one(client, i)["id"], CLIENT_TIMEOUT_S)
            with lock:
                done.append((time.perf_counter() - t, final))

    t0 = time.perf_counter()
    threads = [threading.Thread(target=client_loop) for _ in range(CLIENTS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return time.perf_counter() - t0, done


def breakdown(done: list[tuple[float, dict]]) -> dict[str, float]:
    """Return the median milliseconds of each part of a job's life, from its stored timings."""
    parts: dict[str, list[float]] = {k: [] for k in ("queue wait", "tokenize", "engine", "claim+store+wait")}
    parts["API notice"] = []
    for latency_s, job in done:
        t = job.get("timings") or {}
        if job.get("status") != "succeeded" or t.get("total") is None:
            continue
        parts["queue wait"].append(t["queued"])  # created -> claimed by a worker thread
        parts["tokenize"].append(t["tokenize"])
        parts["engine"].append(t["generate"] + t["decode"])  # admission -> result in the engine
        rest = t["total"] - t["queued"] - t["tokenize"] - t["generate"] - t["decode"]
        parts["claim+store+wait"].append(rest)  # claim read, engine queue, before the finish write
        stored = (job["finished_at"] - job["created_at"]) * 1000  # the finish write's own clock
        parts["API notice"].append(latency_s * 1000 - stored)  # stored -> the client has it (+ submit)
    return {k: round(float(np.median(v)), 1) for k, v in parts.items() if v}


def report(name: str, seconds: float, done: list[tuple[float, dict]]) -> float:
    """Print one load's figures; return its jobs/s."""
    ok = [d for d in done if d[1].get("status") == "succeeded"]
    rate = len(ok) / seconds
    lat = [d[0] * 1000 for d in ok]
    print(f"{name}: {len(ok)}/{len(done)} succeeded in {seconds:.1f} s = {rate:.1f} jobs/s end to end")
    if lat:
        print(f"  latency ms: p50 {np.percentile(lat, 50):.0f}, p99 {np.percentile(lat, 99):.0f}")
    print(f"  median ms of a job: {breakdown(ok)}")
    return rate


def engine_floor(spec: ModelSpec, jobs: int = 8 * MAX_BATCH) -> float:
    """Return the jobs/s of the same one-token jobs run in process on the engine, in full batches."""
    import gc

    from worker.engine import Engine, Request
    from worker.loader import load_model
    from worker.runtime import GREEDY

    model, tokenizer = load_model(spec, "cpu", Settings().cache_dir)
    engine = Engine(model, tokenizer, MAX_BATCH, spec.context_length)
    ids = [engine.encode(prompt=p) for p in PROMPTS]
    engine.generate([Request("warm-up", ids[0], 1, GREEDY, 0)])
    t0, cpu0 = time.perf_counter(), time.process_time()
    for first in range(0, jobs, MAX_BATCH):
        engine.generate(
            [Request(f"j{i}", ids[i % len(ids)], 1, GREEDY, 0) for i in range(first, first + MAX_BATCH)]
        )
    rate = jobs / (time.perf_counter() - t0)
    cpu_ms = (time.process_time() - cpu0) * 1000 / jobs
    print(
        f"in-process engine, the same jobs in batches of {MAX_BATCH}: {rate:.1f} jobs/s, "
        f"{cpu_ms:.1f} CPU ms per job (the compute ceiling)"
    )
    del engine, model
    gc.collect()
    return rate


def cpu_seconds() -> dict[str, float]:
    """Return the CPU seconds (user + system) used so far by this process and each kind of child."""
    me = psutil.Process()
    used = {"clients": sum(me.cpu_times()[:2])}
    for child in me.children(recursive=True):
        line = " ".join(child.cmdline())
        kind = "redis" if "redis-server" in line else "worker" if " worker" in line else "api"
        with contextlib.suppress(psutil.Error):
            used[kind] = used.get(kind, 0.0) + sum(child.cpu_times()[:2])
    return used


def cpu_per_job(before: dict[str, float], jobs: int) -> dict[str, float]:
    """Return the CPU milliseconds each process kind spent per job since `before`."""
    return {k: round((v - before.get(k, 0.0)) * 1000 / jobs, 1) for k, v in cpu_seconds().items()}


def commands(r: redis.Redis) -> dict[str, int]:
    """Return Redis's call count per command since the last CONFIG RESETSTAT."""
    return {k.removeprefix("cmdstat_"): v["calls"] for k, v in r.info("commandstats").items()}


def run(args: argparse.Namespace, model: str, tmp: Path) -> float:
    """Start Redis, the API and one worker on one model; run the loads; return the slower jobs/s."""
    cache = Settings().cache_dir
    spec = default_catalog()[0]
    genq: dict[str, object] = {}
    if model == "tiny":
        from tests.tiny_model import build_tiny_model, tiny_spec

        spec = tiny_spec(build_tiny_model(tmp / "tiny"))
        genq["models"] = json.dumps([spec.model_dump()])
    what = "the service path alone" if model == "tiny" else "the default model"
    print(f"\n== {spec.name} ({what}), GENQ_PREFETCH_JOBS={args.prefetch} ==")
    floor = engine_floor(spec)  # before the services start, so that nothing else competes with it
    logdir = tmp / f"{model}-logs"
    logdir.mkdir()
    children = supervisor(logdir)
    try:
        redis_url = start_redis(children, tmp)
        base = start_api(children, redis_url, cache, **genq)
        r = connect(redis_url)
        store = JobStore(r, STORE_TTL_S)
        start_worker(
            children, store, redis_url, cache, args.device, MAX_BATCH, prefetch_jobs=args.prefetch, **genq
        )
        closed_load(base, 2 * CLIENTS)  # warm-up: connections, first prefills
        print(f"{args.jobs} one-token jobs, {CLIENTS} clients, one worker (GENQ_MAX_BATCH={MAX_BATCH})")
        rates = []
        if args.load in ("open", "both"):
            r.config_resetstat()
            cpu = cpu_seconds()
            accept_s, seconds, done = open_load(base, args.jobs)
            print(f"open: accepted at {args.jobs / accept_s:.1f} jobs/s")
            rates.append(report("open", seconds, done))
            print("  CPU ms per job:", cpu_per_job(cpu, args.jobs))
            calls = commands(r)
            print("  redis calls per job:", {k: round(v / args.jobs, 1) for k, v in calls.items()})
        if args.load in ("closed", "both"):
            cpu = cpu_seconds()
            seconds, done = closed_load(base, args.jobs)
            rates.append(report("closed", seconds, done))
            print("  CPU ms per job:", cpu_per_job(cpu, args.jobs))
        best = min(rates)
        print(f"{spec.name}: {best:.1f} jobs/s end to end (the slower load)")
        print(f"  {best / floor:.2f}x the in-process engine's {floor:.1f} jobs/s on the same jobs")
        return best
    finally:
        children.stop_all()
        # The worker's last lines say how far claims, finishes and acks shared round trips.
        worker_log = logdir / f"worker-batch{MAX_BATCH}.log"
        lines = worker_log.read_text(errors="replace").splitlines() if worker_log.exists() else []
        for line in lines:
            if "round trips" in line:
                with contextlib.suppress(ValueError):
                    line = json.loads(line)["msg"]  # JSON logs: the message alone
                print("  worker:", line)


def main() -> None:
    """Run the loads on the tiny model (the service path) and on the default model; print figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=JOBS)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--load", choices=["open", "closed", "both"], default="both")
    parser.add_argument(
        "--model",
        choices=["tiny", "default", "both"],
        default="both",
        help="tiny: a 2-layer model whose forward costs ~nothing, so its figures are the service path's",
    )
    parser.add_argument("--prefetch", type=int, default=MAX_BATCH, help="the worker's GENQ_PREFETCH_JOBS")
    args = parser.parse_args()
    models = ["tiny", "default"] if args.model == "both" else [args.model]
    with tempfile.TemporaryDirectory(prefix="genq-shortjobs-") as tmp:
        rates = {model: run(args, model, Path(tmp)) for model in models}
    if "tiny" in rates:
        verdict = "PASS" if rates["tiny"] >= TARGET_JOBS_S else "MISS"
        rate = f"{rates['tiny']:.1f} one-token jobs/s end to end"
        print(f"\nservice path: {rate} (target >= {TARGET_JOBS_S}) {verdict}")
    if "default" in rates:
        print(f"default model: {rates['default']:.1f} jobs/s, bounded by its compute (see the ratio above)")


if __name__ == "__main__":
    main()
