"""A seeded nemesis: at random times it kills, pauses or restarts one part of the stack, and
restarts what it killed; every action is logged with its time."""

from __future__ import annotations

import json
import random
import signal
import threading
import time
from collections import Counter
from pathlib import Path

from chaos.cluster import Cluster, Part

PAUSE_LEASES = (1.5, 3.0)  # a paused worker stays stopped this many leases (past its lease)
REDIS_DOWN_S = (0.5, 3.0)  # seconds Redis stays dead before it restarts from its AOF
API_DOWN_S = (0.2, 2.0)  # seconds a killed API process stays dead
GAP_S = (3.0, 8.0)  # seconds between two actions
KINDS = ("kill9_worker", "pause_worker", "kill9_api", "kill9_redis", "restart_worker")


class Nemesis:
    """Picks among KINDS with a seeded random generator until stopped."""

    def __init__(self, cluster: Cluster, seed: int, log: Path, kinds: tuple[str, ...] = KINDS) -> None:
        self.cluster = cluster
        self.kinds = kinds
        self.rng = random.Random(seed)
        self.log_path = log
        self.actions: Counter = Counter()
        self.t0 = time.monotonic()

    def run(self, stop: threading.Event) -> None:
        """Act at random intervals until stop is set; the stack is whole again between actions."""
        self.t0 = time.monotonic()  # action times count from the start of the load
        while not stop.wait(self.rng.uniform(*GAP_S)):
            kind = self.rng.choice(self.kinds)
            getattr(self, kind)()
            self.actions[kind] += 1

    def note(self, kind: str, target: str, **more: object) -> None:
        """Log one action with its time since the soak began."""
        line = {"t": round(time.monotonic() - self.t0, 2), "action": kind, "target": target, **more}
        print(f"nemesis {json.dumps(line)}", flush=True)
        with self.log_path.open("a") as f:
            f.write(json.dumps(line) + "\n")

    def _worker(self) -> Part:
        """Pick a worker, among the ready ones if any (one still loading has no jobs to lose)."""
        ready = self.cluster.registered()
        return self.rng.choice([w for w in self.cluster.workers if w.pid in ready] or self.cluster.workers)

    def kill9_worker(self) -> None:
        """SIGKILL a worker mid-generation, then start a new one in its place."""
        worker = self._worker()
        self.note("kill9_worker", worker.name, pid=worker.pid)
        worker.kill()
        worker.start()
        self.note("started", worker.name, pid=worker.pid)

    def pause_worker(self) -> None:
        """SIGSTOP a worker past its lease (its jobs run elsewhere), then SIGCONT it."""
        worker = self._worker()
        pause_s = self.rng.uniform(*PAUSE_LEASES) * self.cluster.settings.lease_seconds
        self.note("pause_worker", worker.name, pid=worker.pid, seconds=round(pause_s, 2))
        worker.signal(signal.SIGSTOP)
        worker.paused = True
        time.sleep(pause_s)
        worker.resume()
        self.note("resumed", worker.name, pid=worker.pid)

    def kill9_api(self) -> None:
        """SIGKILL an API process (gunicorn master and workers), then start it again."""
        api = self.rng.choice(self.cluster.apis)
        self.note("kill9_api", api.name, pid=api.pid)
        api.kill()
        time.sleep(self.rng.uniform(*API_DOWN_S))
        api.start()
        self.note("started", api.name, pid=api.pid)

    def kill9_redis(self) -> None:
        """SIGKILL Redis, then restart it from its AOF on the same port."""
        down_s = self.rng.uniform(*REDIS_DOWN_S)
        self.note("kill9_redis", "redis", pid=self.cluster.redis.pid, seconds=round(down_s, 2))
        self.cluster.redis.kill()
        time.sleep(down_s)
        self.cluster.start_redis()
        self.note("started", "redis", pid=self.cluster.redis.pid)

    def restart_worker(self) -> None:
        """SIGTERM a worker (it finishes the jobs in hand), then start a new one."""
        worker = self._worker()
        self.note("restart_worker", worker.name, pid=worker.pid)
        status = worker.stop(timeout_s=120)
        worker.start()
        self.note("started", worker.name, pid=worker.pid, previous_exit=status)
