"""Real parts for every test: a redis-server on a free port, a tiny model, worker and API processes."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis

from genq.client import Client
from shared.jobstore import JobStore
from shared.settings import ModelSpec, Settings, default_catalog
from tests import tiny_model
from tests.support import (
    GENQ,
    ROOT,
    START_TIMEOUT_S,
    Proc,
    RedisServer,
    settings_env,
    spawn,
    start_api,
    wait_until,
)


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """One redis-server for the whole session."""
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session", autouse=True)
def close_app_hubs() -> Iterator[None]:
    """At the session's end, stop the threads of in-process apps' waiter hubs (they outlive Redis)."""
    yield
    from api.waiters import close_all

    close_all()


@pytest.fixture
def redis_url(redis_server: RedisServer) -> Iterator[str]:
    """The session Redis, flushed before and after each test."""
    client = redis.Redis.from_url(redis_server.url)
    client.flushall()
    yield redis_server.url
    _no_sweep_left_running()
    client.flushall()


def _no_sweep_left_running() -> None:
    """Fail a test that leaves a reconciler sweeping the session Redis: it would race later tests."""
    left = [t for t in threading.enumerate() if t.name == "genq-reconciler"]
    for thread in left:
        thread.join(timeout=2.0)  # a stopped sweep ends at once; allow for one in progress
    assert not [t for t in left if t.is_alive()], "a test left a reconciler sweep running in this process"


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random Llama with a chat template, built once per session."""
    return tiny_model.build_tiny_model(tmp_path_factory.mktemp("tiny-model"))


@pytest.fixture(scope="session")
def tiny_spec(tiny_model_dir: Path) -> ModelSpec:
    """The catalog entry of the tiny model (tests/tiny_model.py)."""
    return tiny_model.tiny_spec(tiny_model_dir)


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


@pytest.fixture
def start_worker(settings: Settings, store: JobStore, tmp_path: Path) -> Iterator[Callable[..., Proc]]:
    """Start real `genq worker` processes; each is ready (registered) when returned."""
    procs: list[Proc] = []

    def _start(model: str = "tiny", wait_ready: bool = True, **overrides: object) -> Proc:
        env = settings_env(settings.model_copy(update=overrides))
        env["OMP_NUM_THREADS"] = "1"  # several workers share this machine's two cores
        proc = spawn(
            [*GENQ, "worker", "--model", model, "--device", "cpu"], env, tmp_path / f"worker-{len(procs)}.log"
        )
        procs.append(proc)
        if wait_ready:

            def ready() -> bool:
                if proc.poll() is not None:
                    raise AssertionError(f"worker exited early:\n{proc.log()}")
                return any(w["pid"] == proc.pid for w in store.workers())

            wait_until(ready, START_TIMEOUT_S, f"worker for {model} to register", 0.2)
        return proc

    yield _start
    for proc in procs:
        proc.stop()


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
