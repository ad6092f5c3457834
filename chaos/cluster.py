"""The soak's own stack: Redis (AOF, fsync always), two API processes and the workers, each restartable."""

from __future__ import annotations

import os
import shutil
import signal
from pathlib import Path

import redis

from genq.supervisor import Child, free_port
from shared import keys
from shared.settings import ModelSpec, Settings
from tests.support import GENQ, ROOT, healthy, ping, settings_env, wait_until

READY_TIMEOUT_S = 180  # a worker loading a model on a busy machine
WEBHOOK_SECRET = "chaos-webhook-secret"  # the receiver checks signatures with it


class Part:
    """One restartable process of the stack, in its own session so that a kill takes all of it."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], log: Path) -> None:
        self.name, self.argv, self.env, self.log_path = name, argv, env, log
        self.child: Child | None = None
        self.paused = False

    def start(self) -> None:
        """Start (or start again) the process, appending to its log."""
        if self.child is None:
            # Not orphan_safe: the parent-death signal follows the starting thread, and the
            # nemesis thread that restarts parts ends before the stack does.
            self.child = Child(self.name, self.argv, self.env, self.log_path, ROOT, own_session=True)
        else:
            self.child.start()

    @property
    def pid(self) -> int:
        """Return the running process's pid (0 when never started)."""
        return self.child.pid if self.child else 0

    def alive(self) -> bool:
        """Return True while the process runs."""
        return self.child is not None and self.child.poll() is None

    def signal(self, signum: int) -> None:
        """Send a signal to the whole process group (a gunicorn master and its workers alike)."""
        if self.alive():
            os.killpg(self.pid, signum)

    def kill(self) -> None:
        """SIGKILL the process group and reap it."""
        if self.child is not None:
            self.resume()
            self.signal(signal.SIGKILL)
            self.child.proc.wait(30)

    def resume(self) -> None:
        """SIGCONT a paused process."""
        if self.paused:
            self.signal(signal.SIGCONT)
            self.paused = False

    def stop(self, timeout_s: float = 60) -> int | None:
        """SIGTERM, then SIGKILL after timeout_s; return the exit status."""
        if self.child is None:
            return None
        self.resume()
        return self.child.stop(timeout_s)


def env_of(settings: Settings, **extra: str) -> dict[str, str]:
    """Return a child's environment: the settings as GENQ_* variables, one OpenMP thread each."""
    return {**settings_env(settings), "OMP_NUM_THREADS": "1", **extra}


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
        self.redis = Part("redis", redis_argv, dict(os.environ), logs / "redis.log")
        self.apis: list[Part] = []
        self.api_urls: list[str] = []
        for n in range(apis):
            port = free_port()
            env = env_of(self.settings, GENQ_PORT=str(port))
            self.apis.append(Part(f"api-{n}", [*GENQ, "api"], env, logs / f"api-{n}.log"))
            self.api_urls.append(f"http://127.0.0.1:{port}")
        worker_argv = [*GENQ, "worker", "--model", spec.name, "--device", "cpu"]
        self.workers = [
            Part(f"worker-{n}", worker_argv, env_of(self.settings), logs / f"worker-{n}.log")
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
        wait_until(lambda: ping(self.r), 30, "redis to answer", 0.1)

    def wait_ready(self, timeout_s: float = READY_TIMEOUT_S) -> None:
        """Wait until both APIs answer /healthz and every worker process has registered."""
        for url in self.api_urls:
            wait_until(lambda url=url: healthy(url), timeout_s, f"the API at {url}", 0.2)
        pids = {w.pid for w in self.workers}
        wait_until(lambda: pids <= self.registered(), timeout_s, "every worker to register", 0.2)

    def registered(self) -> set[int]:
        """Return the pids of the workers registered as ready (empty while Redis is away)."""
        try:
            ids = self.r.smembers(keys.WORKERS)
            return {int(w.rsplit(":", 1)[1]) for w in ids if self.r.exists(keys.worker(w))}
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
