"""The benchmark's processes: a throwaway Redis, the real API and workers (genq.supervisor), their RSS."""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import psutil
import redis

from genq.supervisor import Child, ChildExited, Supervisor, free_port
from shared.jobstore import JobStore

ROOT = Path(__file__).resolve().parent.parent
RSS_EVERY_S = 0.05  # how often the memory sampler reads the worker's RSS
START_TIMEOUT_S = 300  # seconds a worker may take to load and register
STOP_TIMEOUT_S = 30  # seconds a child gets after SIGTERM before SIGKILL
MIB = 2**20


GENQ = [sys.executable, "-m", "genq"]


class BenchError(RuntimeError):
    """The benchmark cannot go on; the message says why."""


def supervisor(logdir: Path) -> Supervisor:
    """Return the supervisor of the benchmark's processes, each logging to logdir/NAME.log."""
    return Supervisor(logdir, ROOT)


def check(children: Supervisor) -> None:
    """Raise BenchError if a child has exited, with the end of its log."""
    try:
        children.check()
    except ChildExited as exc:
        raise BenchError(str(exc)) from None


def _env(redis_url: str, cache_dir: Path, **genq: object) -> dict[str, str]:
    """The environment of a child: no inherited GENQ_* (so the default catalog), plus these settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GENQ_")}
    env.update(
        PYTHONPATH=str(ROOT), PYTHONUNBUFFERED="1", GENQ_REDIS_URL=redis_url, GENQ_CACHE_DIR=str(cache_dir)
    )
    env.update({f"GENQ_{k.upper()}": str(v) for k, v in genq.items()})
    return env


def _until(predicate: Any, timeout_s: float, what: str, children: Supervisor) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        check(children)
        if time.monotonic() > deadline:
            raise BenchError(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(0.1)


def start_redis(children: Supervisor, workdir: Path) -> str:
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


def start_api(
    children: Supervisor, redis_url: str, cache_dir: Path, name: str = "api", **genq: object
) -> str:
    """Start the real API (gunicorn, as in production) on a free port; return its base URL.

    genq: more GENQ_* settings of the API (lower-case names), over the defaults.
    """
    port = free_port()
    # The per-tenant limiter stays in the path (its Redis calls are part of the cost), set too high to
    # throttle: the default 600/minute would turn a 32-client load into 429s.
    settings: dict[str, object] = {"rate_limit": "1000000/minute", **genq}
    env = _env(redis_url, cache_dir, host="127.0.0.1", port=port, **settings)
    children.start(name, [*GENQ, "api"], env)
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
    children: Supervisor,
    store: JobStore,
    redis_url: str,
    cache_dir: Path,
    device: str,
    max_batch: int,
    **genq: object,
) -> tuple[Child, RssSampler, float]:
    """Start a worker and wait until it registers; return it, its RSS sampler and its idle RSS in MiB.

    genq: more GENQ_* settings of the worker (lower-case names), over the defaults.
    """
    env = _env(redis_url, cache_dir, max_batch=max_batch, **genq)
    proc = children.start(f"worker-batch{max_batch}", [*GENQ, "worker", "--device", device], env)
    _until(
        lambda: any(w.get("pid") == proc.pid for w in store.workers()),
        START_TIMEOUT_S,
        f"the worker (GENQ_MAX_BATCH={max_batch}) to register",
        children,
    )
    time.sleep(1.0)  # let start-up allocations settle before reading the idle figure
    sampler = RssSampler(proc.pid)
    return proc, sampler, round(sampler.current() / MIB, 1)
