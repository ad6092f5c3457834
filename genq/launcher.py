"""`genq up`: Redis (unless GENQ_REDIS_URL is set), one worker and the API, supervised together."""

from __future__ import annotations

import os
import shutil
import signal
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import urlparse

import redis

from genq.supervisor import CrashLoop, RestartPolicy, Supervisor, die_with_parent
from shared.redisconn import connect
from shared.settings import Settings

STATE_DIR = Path(".genq")  # Redis data (AOF) and logs of the local stack
READY_TIMEOUT_S = 600  # first start converts the model (~20 s); a cold disk can take longer
STOP_TIMEOUT_S = 30  # how long each child gets to stop before it is killed
TEND_EVERY_S = 0.5  # how often the launcher looks for dead children
RESTART = RestartPolicy()  # a dead child starts again with backoff; 5 deaths right after start stop us


def _ping(url: str, sentinel_master: str = "") -> bool:
    try:
        return bool(connect(url, sentinel_master, socket_connect_timeout=1, socket_timeout=1).ping())
    except redis.RedisError:
        return False


def _start_redis(stack: Supervisor, url: str, env: dict[str, str]) -> None:
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
    argv = [binary, "--bind", "127.0.0.1", "--port", str(port), "--dir", str(data.resolve())]
    argv += ["--appendonly", "yes", "--appendfsync", "everysec", "--maxmemory-policy", "noeviction"]
    argv += ["--save", "", "--logfile", "", "--loglevel", "warning"]
    # Restarted like the others: its AOF brings every job back.
    child = stack.start("redis", argv, env, restart=RESTART)
    deadline = time.monotonic() + 10
    while not _ping(url):
        if child.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"genq: redis-server did not start on port {port} (is the port taken?)")
        time.sleep(0.1)


def _wait_ready(stack: Supervisor, base: str) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        stack.tend()  # a child that dies while starting is restarted too, up to the policy
        try:
            with urllib.request.urlopen(f"{base}/readyz", timeout=2) as resp:
                if resp.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(TEND_EVERY_S)
    raise SystemExit(f"genq: not ready after {READY_TIMEOUT_S} s")


def run_stack(device: str = "cpu") -> int:
    """Start everything, print one ready line, and serve until Ctrl-C or SIGTERM, restarting what dies."""
    die_with_parent()
    settings = Settings()
    env = dict(os.environ)
    stack = Supervisor()

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
        genq = [sys.executable, "-m", "genq"]
        stack.start("worker", [*genq, "worker", "--device", device], env, restart=RESTART)
        stack.start("api", [*genq, "api"], env, restart=RESTART)
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
        while True:
            stack.tend()
            time.sleep(TEND_EVERY_S)
    except CrashLoop as exc:
        print(f"genq: {exc}; stopping the stack (see its log above)", file=sys.stderr, flush=True)
        return 1
    except KeyboardInterrupt:
        print("\ngenq: stopping...", file=sys.stderr)
        return 0
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not abandon children
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        stack.stop_all(STOP_TIMEOUT_S)
