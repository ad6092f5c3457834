"""`genq up`: Redis (unless GENQ_REDIS_URL is set), one worker and the API, stopped together."""

from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import urlparse

import redis

from shared.redisconn import connect
from shared.settings import Settings

STATE_DIR = Path(".genq")  # Redis data (AOF) and logs of the local stack
READY_TIMEOUT_S = 600  # first start converts the model (~20 s); a cold disk can take longer
STOP_TIMEOUT_S = 30  # how long each child gets to stop before it is killed
PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """Ask Linux to send SIGTERM to this process when its parent dies (no orphaned stack)."""
    # Not Linux: children are still stopped on Ctrl-C and SIGTERM.
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def _ping(url: str, sentinel_master: str = "") -> bool:
    try:
        return bool(connect(url, sentinel_master, socket_connect_timeout=1, socket_timeout=1).ping())
    except redis.RedisError:
        return False


class Stack:
    """The child processes of `genq up`, stopped in reverse order of start."""

    def __init__(self) -> None:
        self.children: list[tuple[str, subprocess.Popen]] = []
        self.stopping = False

    def start(self, name: str, argv: list[str], env: dict[str, str]) -> subprocess.Popen:
        """Start a child in its own session so that a terminal's Ctrl-C reaches only us."""
        proc = subprocess.Popen(argv, env=env, start_new_session=True, preexec_fn=_die_with_parent)
        self.children.append((name, proc))
        return proc

    def dead(self) -> str | None:
        """Return the name of a child that has exited, if any."""
        return next((n for n, p in self.children if p.poll() is not None), None)

    def stop(self) -> None:
        """SIGTERM each child, newest first (API, worker, then Redis), killing any that hang."""
        self.stopping = True
        for name, proc in reversed(self.children):
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(STOP_TIMEOUT_S)
                except subprocess.TimeoutExpired:
                    print(f"genq: {name} did not stop in {STOP_TIMEOUT_S} s; killing it", file=sys.stderr)
                    proc.kill()
                    proc.wait()


def _start_redis(stack: Stack, url: str, env: dict[str, str]) -> None:
    binary = shutil.which("redis-server")
    if binary is None:
        raise SystemExit("genq: redis-server not found; run `make setup` or install Redis")
    parsed = urlparse(url)
    port = parsed.port or 6379
    if _ping(url):
        raise SystemExit(
            f"genq: a Redis already answers at {url}; to use it, run with GENQ_REDIS_URL={url} (or stop it)"
        )
    data = STATE_DIR / "redis"
    data.mkdir(parents=True, exist_ok=True)
    stack.start(
        "redis",
        [
            binary,
            "--bind",
            "127.0.0.1",
            "--port",
            str(port),
            "--dir",
            str(data.resolve()),
            "--appendonly",
            "yes",
            "--appendfsync",
            "everysec",
            "--maxmemory-policy",
            "noeviction",
            "--save",
            "",
            "--logfile",
            "",
            "--loglevel",
            "warning",
        ],
        env,
    )
    deadline = time.monotonic() + 10
    while not _ping(url):
        if stack.dead() or time.monotonic() > deadline:
            raise SystemExit(f"genq: redis-server did not start on port {port} (is the port taken?)")
        time.sleep(0.1)


def _wait_ready(stack: Stack, base: str) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if (name := stack.dead()) is not None:
            raise SystemExit(f"genq: {name} exited during start-up; see its log above")
        try:
            with urllib.request.urlopen(f"{base}/readyz", timeout=2) as resp:
                if resp.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.5)
    raise SystemExit(f"genq: not ready after {READY_TIMEOUT_S} s")


def run_stack(device: str = "cpu") -> int:
    """Start everything, print one ready line, and run until Ctrl-C or SIGTERM."""
    _die_with_parent()
    settings = Settings()
    env = dict(os.environ)
    stack = Stack()

    def _on_signal(signum: int, _frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, _on_signal)
    try:
        if "GENQ_REDIS_URL" in os.environ:
            if not _ping(settings.redis_url, settings.redis_sentinel_master):
                raise SystemExit(f"genq: GENQ_REDIS_URL={settings.redis_url} does not answer")
        else:
            _start_redis(stack, settings.redis_url, env)
        env["GENQ_REDIS_URL"] = settings.redis_url
        genq = [sys.executable, "-m", "shared.cli"]
        stack.start("worker", [*genq, "worker", "--device", device], env)
        stack.start("api", [*genq, "api"], env)
        base = f"http://{settings.host}:{settings.port}"
        _wait_ready(stack, base)
        print(
            f"\ngenq ready at {base} (model {settings.models[0].name}, redis {settings.redis_url}). Try:\n"
            f"  curl -s -X POST {base}/v1/jobs -H 'Content-Type: application/json' "
            '-d \'{"prompt": "Artificial Intelligence is", "max_new_tokens": 50, '
            '"temperature": 0.7, "do_sample": true}\'\n'
            "Ctrl-C stops everything.\n",
            flush=True,
        )
        while (name := stack.dead()) is None:
            time.sleep(0.5)
        print(f"genq: {name} exited; stopping the stack", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\ngenq: stopping...", file=sys.stderr)
        return 0
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not abandon children
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        stack.stop()
