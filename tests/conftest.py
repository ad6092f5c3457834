"""Real parts for every test: a redis-server on a free port, a tiny model, worker and API processes."""

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
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis

from shared.client import Client
from shared.jobstore import JobStore
from shared.settings import ModelSpec, Settings, default_catalog
from tests.tiny_model import build_tiny_model

ROOT = Path(__file__).resolve().parent.parent
START_TIMEOUT_S = 120  # a worker converting SmolLM2 from GGUF needs ~20 s; a cold cache more


def free_port() -> int:
    """Return a TCP port that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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


class RedisServer:
    """A redis-server child process with its data in a temp dir."""

    def __init__(self, workdir: Path, port: int | None = None) -> None:
        self.workdir = workdir
        self.port = port or free_port()
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        """Return the URL of database 0."""
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        """Start redis-server (AOF on) and wait for it to answer."""
        binary = shutil.which("redis-server")
        assert binary, "redis-server is not installed; run `make setup`"
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            [
                binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--dir",
                str(self.workdir),
                "--appendonly",
                "yes",
                "--save",
                "",
                "--maxmemory-policy",
                "noeviction",
            ],
            stdout=subprocess.DEVNULL,
        )
        client = redis.Redis.from_url(self.url)
        wait_until(lambda: _ping(client), 10, "redis-server to answer")

    def stop(self) -> None:
        """Stop redis-server."""
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)


def _ping(client: redis.Redis) -> bool:
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """One redis-server for the whole session."""
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def redis_url(redis_server: RedisServer) -> Iterator[str]:
    """The session Redis, flushed before and after each test."""
    client = redis.Redis.from_url(redis_server.url)
    client.flushall()
    yield redis_server.url
    client.flushall()


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random Llama with a chat template, built once per session."""
    return build_tiny_model(tmp_path_factory.mktemp("tiny-model"))


@pytest.fixture(scope="session")
def tiny_spec(tiny_model_dir: Path) -> ModelSpec:
    """The catalog entry of the tiny model; a large cap lets tests run long jobs to cancel."""
    return ModelSpec(
        name="tiny",
        source=str(tiny_model_dir),
        context_length=8192,
        max_new_tokens_cap=8000,
        default_max_new_tokens=16,
    )


@pytest.fixture(scope="session")
def cache_dir() -> Path:
    """The project's model cache, shared with `make model`, so SmolLM2 converts once."""
    return ROOT / ".genq" / "cache"


@pytest.fixture
def settings(redis_url: str, tiny_spec: ModelSpec, cache_dir: Path) -> Settings:
    """Settings for one test: the fresh Redis, the tiny model first, SmolLM2 second."""
    return Settings(
        redis_url=redis_url,
        models=[tiny_spec, *default_catalog()],
        cache_dir=cache_dir,
        heartbeat_interval=0.5,
        worker_ttl=3.0,
        max_batch=8,
        # Load tests send thousands of requests a minute; the limit tests set their own.
        rate_limit="100000/minute",
        max_queued_per_tenant=0,
    )


@pytest.fixture
def store(settings: Settings) -> JobStore:
    """A job store on the test's Redis."""
    return JobStore(redis.Redis.from_url(settings.redis_url, decode_responses=True), settings.result_ttl)


def settings_env(settings: Settings) -> dict[str, str]:
    """Express settings as GENQ_* environment variables for a child process."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GENQ_")}
    for name, value in settings.model_dump(mode="json").items():
        env[f"GENQ_{name.upper()}"] = json.dumps(value) if isinstance(value, list | dict) else str(value)
    env["PYTHONPATH"] = str(ROOT)
    env["PYTHONUNBUFFERED"] = "1"
    return env


class Proc:
    """A child process of the suite, stopped with SIGTERM then SIGKILL."""

    def __init__(self, argv: list[str], env: dict[str, str], log: Path) -> None:
        self.log_path = log
        self._log = log.open("wb")
        self.proc = subprocess.Popen(argv, env=env, cwd=ROOT, stdout=self._log, stderr=subprocess.STDOUT)

    @property
    def pid(self) -> int:
        """Return the child's pid."""
        return self.proc.pid

    def log(self) -> str:
        """Return what the child printed so far."""
        return self.log_path.read_text(errors="replace")

    def signal(self, signum: int) -> None:
        """Send a signal to the child."""
        self.proc.send_signal(signum)

    def stop(self, timeout_s: float = 20) -> int:
        """Terminate the child and return its exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        return self.proc.returncode


GENQ = [sys.executable, "-m", "shared.cli"]


@pytest.fixture
def start_worker(settings: Settings, store: JobStore, tmp_path: Path) -> Iterator[Callable[..., Proc]]:
    """Start real `genq worker` processes; each is ready (registered) when returned."""
    procs: list[Proc] = []

    def _start(model: str = "tiny", wait_ready: bool = True, **overrides: object) -> Proc:
        env = settings_env(settings.model_copy(update=overrides))
        env["OMP_NUM_THREADS"] = "1"  # several workers share this machine's two cores
        proc = Proc(
            [*GENQ, "worker", "--model", model, "--device", "cpu"], env, tmp_path / f"worker-{len(procs)}.log"
        )
        procs.append(proc)
        if wait_ready:

            def ready() -> bool:
                if proc.proc.poll() is not None:
                    raise AssertionError(f"worker exited early:\n{proc.log()}")
                return any(w["pid"] == proc.pid for w in store.workers())

            wait_until(ready, START_TIMEOUT_S, f"worker for {model} to register", 0.2)
        return proc

    yield _start
    for proc in procs:
        proc.stop()


def start_api(settings: Settings, log: Path) -> tuple[Proc, str]:
    """Start `genq api` (gunicorn) on a free port, wait for /healthz; return it and its base URL."""
    port = free_port()
    env = settings_env(settings)
    env["GENQ_PORT"] = str(port)
    proc = Proc([*GENQ, "api"], env, log)
    base = f"http://127.0.0.1:{port}"

    def healthy() -> bool:
        if proc.proc.poll() is not None:
            raise AssertionError(f"API exited early:\n{proc.log()}")
        try:
            with urllib.request.urlopen(f"{base}/healthz", timeout=1) as resp:
                return resp.status == 200
        except OSError:
            return False

    wait_until(healthy, 30, f"the API at {base} to answer /healthz", 0.1)
    return proc, base


@pytest.fixture
def api_server(settings: Settings, tmp_path: Path) -> Iterator[str]:
    """The API under gunicorn on a free port; yields its base URL."""
    proc, base = start_api(settings, tmp_path / "api.log")
    yield base
    proc.stop()


@pytest.fixture
def client(api_server: str) -> Client:
    """The genq Python client, pointed at the live API."""
    return Client(api_server, timeout_s=30)


@pytest.fixture
def app(settings: Settings):
    """A Flask app from the factory, on the test's Redis."""
    from api.app import create_app

    app = create_app(settings)
    app.config["TESTING"] = True
    return app


@pytest.fixture
def http(app):
    """Flask's test client."""
    return app.test_client()
