"""Helpers many test modules import: real processes (through genq.supervisor), waiting, settings as env."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import redis

from genq.supervisor import Child, free_port
from shared.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
START_TIMEOUT_S = 120  # a worker converting SmolLM2 from GGUF needs ~20 s; a cold cache more
GENQ = [sys.executable, "-m", "genq"]
Proc = Child  # a child process of the suite: .proc, .pid, .log(), .signal(), .stop()

__all__ = ["GENQ", "ROOT", "START_TIMEOUT_S", "Proc", "RedisServer", "free_port", "spawn", "wait_until"]


def wait_until(
    predicate: Callable[[], object], timeout_s: float, what: str, interval_s: float = 0.05
) -> object:
    """Poll predicate until it returns something truthy, or fail the test after timeout_s."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval_s)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")


def spawn(argv: list[str], env: dict[str, str], log: Path) -> Proc:
    """Start a child of the suite in the repository root, its output in log."""
    return Child(log.stem, argv, env, log, ROOT)


def ping(client: redis.Redis) -> bool:
    """Return True when Redis answers."""
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False


class RedisServer:
    """A redis-server child process with its data in a temp dir."""

    def __init__(self, workdir: Path, port: int | None = None) -> None:
        self.workdir = workdir
        self.port = port or free_port()
        self.child: Child | None = None

    @property
    def url(self) -> str:
        """Return the URL of database 0."""
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def proc(self) -> subprocess.Popen | None:
        """Return the running redis-server's process handle."""
        return self.child.proc if self.child else None

    def args(self) -> list[str]:
        """Return the server's arguments: AOF on, no snapshots, no eviction."""
        return ["--port", str(self.port), "--appendonly", "yes", "--maxmemory-policy", "noeviction"]

    def start(self) -> None:
        """Start redis-server and wait for it to answer."""
        binary = shutil.which("redis-server")
        assert binary, "redis-server is not installed; run `make setup`"
        self.workdir.mkdir(parents=True, exist_ok=True)
        argv = [binary, "--bind", "127.0.0.1", "--dir", str(self.workdir), "--save", "", *self.args()]
        self.child = Child("redis", argv, quiet=True)
        client = redis.Redis.from_url(self.url)
        wait_until(lambda: ping(client), 10, "redis-server to answer")

    def stop(self) -> None:
        """Stop redis-server."""
        if self.child:
            self.child.stop(10)


def settings_env(settings: Settings) -> dict[str, str]:
    """Express settings as GENQ_* environment variables for a child process."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GENQ_")}
    for name, value in settings.model_dump(mode="json").items():
        env[f"GENQ_{name.upper()}"] = json.dumps(value) if isinstance(value, list | dict) else str(value)
    env["PYTHONPATH"] = str(ROOT)
    env["PYTHONUNBUFFERED"] = "1"
    return env


def healthy(base: str) -> bool:
    """Return True when the API at base answers /healthz with 200."""
    try:
        with urllib.request.urlopen(f"{base}/healthz", timeout=1) as resp:
            return resp.status == 200
    except OSError:
        return False


def start_api(settings: Settings, log: Path) -> tuple[Proc, str]:
    """Start `genq api` (gunicorn) on a free port, wait for /healthz; return it and its base URL."""
    port = free_port()
    env = settings_env(settings)
    env["GENQ_PORT"] = str(port)
    proc = spawn([*GENQ, "api"], env, log)
    base = f"http://127.0.0.1:{port}"

    def up() -> bool:
        if proc.poll() is not None:
            raise AssertionError(f"API exited early:\n{proc.log()}")
        return healthy(base)

    wait_until(up, 30, f"the API at {base} to answer /healthz", 0.1)
    return proc, base


def run_cli(api: str, *args: str, **env: str) -> subprocess.CompletedProcess:
    """Run the real `genq` command against api; stdout and stderr decoded by hand."""
    # Bytes, decoded by hand: text=True would turn a generated "\r" into "\n".
    out = subprocess.run(
        [*GENQ, "--url", api, *args],
        cwd=ROOT,
        capture_output=True,
        timeout=120,
        env={**os.environ, "PYTHONIOENCODING": "utf-8", **env},
    )
    out.stdout, out.stderr = out.stdout.decode(), out.stderr.decode()
    return out
