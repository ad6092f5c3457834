"""The soak's own stack: Redis (AOF, fsync always), two API processes and the workers, each restartable."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import redis

from shared.settings import ModelSpec, Settings

GENQ = [sys.executable, "-m", "shared.cli"]  # the `genq` command, from this checkout
ROOT = Path(__file__).resolve().parent.parent
READY_TIMEOUT_S = 180  # a worker loading a model on a busy machine
WEBHOOK_SECRET = "chaos-webhook-secret"  # the receiver checks signatures with it


def free_port() -> int:
    """Return a TCP port that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Child:
    """One process of the stack, in its own process group so that a kill takes all of it."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], log: Path) -> None:
        self.name, self.argv, self.env, self.log_path = name, argv, env, log
        self.proc: subprocess.Popen | None = None
        self.paused = False

    def start(self) -> None:
        """Start (or start again) the process, appending to its log."""
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                self.argv,
                env=self.env,
                cwd=ROOT,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    @property
    def pid(self) -> int:
        """Return the running process's pid (0 when never started)."""
        return self.proc.pid if self.proc else 0

    def alive(self) -> bool:
        """Return True while the process runs."""
        return self.proc is not None and self.proc.poll() is None

    def signal(self, signum: int) -> None:
        """Send a signal to the whole process group (a gunicorn master and its workers alike)."""
        if self.alive():
            os.killpg(self.proc.pid, signum)

    def kill(self) -> None:
        """SIGKILL the process group and reap it."""
        if self.proc is not None:
            if self.paused:
                self.resume()
            self.signal(signal.SIGKILL)
            self.proc.wait(30)

    def resume(self) -> None:
        """SIGCONT a paused process."""
        self.signal(signal.SIGCONT)
        self.paused = False

    def stop(self, timeout_s: float = 60) -> int | None:
        """SIGTERM, then SIGKILL after timeout_s; return the exit status."""
        if self.proc is None:
            return None
        if self.paused:
            self.resume()
        self.signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.kill()
            return self.proc.returncode


def env_of(settings: Settings, **extra: str) -> dict[str, str]:
    """Express settings as GENQ_* environment variables for a child process."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GENQ_")}
    for name, value in settings.model_dump(mode="json").items():
        env[f"GENQ_{name.upper()}"] = json.dumps(value) if isinstance(value, list | dict) else str(value)
    return {**env, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1", **extra}


class Cluster:
    """Redis, APIs and workers of one soak, started from a work directory."""

    def __init__(self, workdir: Path, spec: ModelSpec, workers: int = 2, apis: int = 2) -> None:
        self.workdir = workdir
        self.spec = spec
        self.redis_port = free_port()
        self.settings = Settings(
            redis_url=f"redis://127.0.0.1:{self.redis_port}/0",
            models=[spec],
            lease_seconds=3.0,
            heartbeat_interval=0.5,
            worker_ttl=2.0,
            max_batch=8,
            max_attempts=20,  # a job may meet many kills in a soak; worker_lost is not what we test
            api_workers=1,
            api_threads=32,
            rate_limit="",
            max_queued_per_tenant=0,
            webhook_secret=WEBHOOK_SECRET,
            webhook_allow_private=True,  # the receiver is on loopback
            webhook_backoff_s=0.5,
            webhook_max_attempts=20,  # kills of every worker must not exhaust a delivery
        )
        logs = workdir / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        binary = shutil.which("redis-server")
        if not binary:
            raise SystemExit("chaos: redis-server is not installed; run `make setup`")
        redis_argv = [
            binary,
            *("--port", str(self.redis_port), "--bind", "127.0.0.1", "--dir", str(workdir)),
            *("--appendonly", "yes", "--appendfsync", "always", "--save", ""),
            *("--maxmemory-policy", "noeviction"),
        ]
        self.redis = Child("redis", redis_argv, dict(os.environ), logs / "redis.log")
        self.apis: list[Child] = []
        self.api_urls: list[str] = []
        for n in range(apis):
            port = free_port()
            env = env_of(self.settings, GENQ_PORT=str(port))
            self.apis.append(Child(f"api-{n}", [*GENQ, "api"], env, logs / f"api-{n}.log"))
            self.api_urls.append(f"http://127.0.0.1:{port}")
        worker_argv = [*GENQ, "worker", "--model", spec.name, "--device", "cpu"]
        self.workers = [
            Child(f"worker-{n}", worker_argv, env_of(self.settings), logs / f"worker-{n}.log")
            for n in range(workers)
        ]
        self.r = redis.Redis(port=self.redis_port, decode_responses=True, socket_timeout=5)

    def start(self) -> None:
        """Start everything and wait until the APIs answer and every worker is registered."""
        self.start_redis()
        for child in [*self.apis, *self.workers]:
            child.start()
        self.wait_ready()

    def start_redis(self) -> None:
        """Start Redis (same port, same AOF) and wait for it to answer."""
        self.redis.start()
        _wait(lambda: _answers(self.r), 30, "redis to answer")

    def wait_ready(self, timeout_s: float = READY_TIMEOUT_S) -> None:
        """Wait until both APIs answer /healthz and every worker process has registered."""
        for url in self.api_urls:
            _wait(lambda url=url: _healthy(url), timeout_s, f"the API at {url}")
        pids = {w.pid for w in self.workers}
        _wait(lambda: pids <= self.registered(), timeout_s, "every worker to register")

    def registered(self) -> set[int]:
        """Return the pids of the workers registered as ready (empty while Redis is away)."""
        try:
            ids = self.r.smembers("genq:workers")
            return {int(w.rsplit(":", 1)[1]) for w in ids if self.r.exists(f"genq:worker:{w}")}
        except redis.RedisError:
            return set()

    def heal(self) -> None:
        """Resume what is paused and restart what is dead, as the nemesis leaves it at the end."""
        if not self.redis.alive():
            self.start_redis()
        for child in [*self.apis, *self.workers]:
            if child.paused:
                child.resume()
            if not child.alive():
                child.start()
        self.wait_ready()

    def stop(self) -> None:
        """Stop every process of the stack."""
        for child in [*self.workers, *self.apis]:
            child.stop(timeout_s=20)
        self.redis.stop(timeout_s=10)


def _answers(r: redis.Redis) -> bool:
    try:
        return bool(r.ping())
    except redis.RedisError:
        return False


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/healthz", timeout=2) as resp:
            return resp.status == 200
    except OSError:
        return False


def _wait(predicate: Callable[[], object], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    raise TimeoutError(f"chaos: timed out after {timeout_s} s waiting for {what}")
