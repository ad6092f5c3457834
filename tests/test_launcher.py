"""`genq up` supervises its children: a dead worker is restarted while the API keeps serving, and a
child that keeps dying right after start stops the stack with one clear message."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from genq.client import Client
from shared.jobstore import JobStore
from shared.settings import ModelSpec, Settings
from tests.support import GENQ, START_TIMEOUT_S, Proc, free_port, healthy, settings_env, spawn, wait_until

FINISH_TIMEOUT_S = 240  # bound on waiting for every accepted job to end on two busy cores
CRASH_LOOP_TIMEOUT_S = 300  # five worker start-ups (imports and a failed load) plus 15 s of backoff


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """Short leases, so that the killed worker's jobs are re-queued within seconds."""
    return settings.model_copy(update={"lease_seconds": 3.0, "heartbeat_interval": 0.5, "worker_ttl": 2.0})


@pytest.fixture
def genq_up(tmp_path: Path) -> Iterator:
    """Start `genq up` on the test's Redis (GENQ_REDIS_URL set: no Redis of its own) and a free port."""
    started: list[Proc] = []

    def _start(settings: Settings) -> tuple[Proc, str]:
        port = free_port()
        env = settings_env(settings) | {"GENQ_HOST": "127.0.0.1", "GENQ_PORT": str(port)}
        env["OMP_NUM_THREADS"] = "1"  # the worker shares this machine's two cores with the API
        proc = spawn([*GENQ, "up"], env, tmp_path / "up.log")
        started.append(proc)
        return proc, f"http://127.0.0.1:{port}"

    yield _start
    for proc in started:
        proc.stop(90)  # the launcher gives each child up to 30 s


def ready(up: Proc, base: str) -> bool:
    """Return True once `genq up` printed its ready line; fail if it exited."""
    assert up.poll() is None, f"genq up exited:\n{up.log()}"
    return "genq ready at" in up.log() and healthy(base)


@pytest.mark.slow
def test_a_killed_worker_is_restarted_while_the_api_keeps_serving(
    genq_up, settings: Settings, store: JobStore
) -> None:
    up, base = genq_up(settings)
    wait_until(lambda: ready(up, base), START_TIMEOUT_S, "genq up to be ready", 0.2)
    client = Client(base, timeout_s=30)
    ids = [
        client.submit(f"Job {i}", max_new_tokens=80, ignore_eos=True, temperature=0)["id"] for i in range(8)
    ]
    wait_until(lambda: client.list_jobs("running")["data"], 60, "a job to be running", 0.1)
    [victim] = store.workers()
    os.kill(victim["pid"], signal.SIGKILL)

    # Accepted while no worker runs; the API answers all along, and a new worker registers.
    ids += [client.submit(f"Late {i}", max_new_tokens=8, temperature=0)["id"] for i in range(4)]

    def new_worker() -> bool:
        assert healthy(base), f"the API stopped answering:\n{up.log()[-3000:]}"
        return any(w["pid"] != victim["pid"] for w in store.workers())

    wait_until(new_worker, START_TIMEOUT_S, "a restarted worker to register", 0.2)
    assert client.models()["data"][0]["ready_workers"] == 1
    for job_id in ids:
        job = client.wait(job_id, FINISH_TIMEOUT_S)
        assert job["status"] == "succeeded", job
    assert any(client.get(job_id)["attempts"] > 1 for job_id in ids), (
        "no job was running on the killed worker"
    )
    log = up.log()
    assert f"genq: worker (pid {victim['pid']}) died: killed by SIGKILL after " in log, log[-3000:]
    assert "genq: worker restarted (pid " in log
    assert up.poll() is None, "the stack must keep serving"
    assert up.stop(90) == 0
    assert not healthy(base), "Ctrl-C/SIGTERM stops the API too"


@pytest.mark.slow
def test_a_worker_that_keeps_dying_at_start_stops_the_stack(
    genq_up, settings: Settings, tmp_path: Path
) -> None:
    broken = settings.model_copy(
        update={"models": [ModelSpec(name="broken", source=str(tmp_path / "nothing"))]}
    )
    up, base = genq_up(broken)
    code = up.proc.wait(CRASH_LOOP_TIMEOUT_S)
    log = up.log()
    assert code == 1, log[-3000:]
    assert log.count("cannot load model 'broken'") == 5, log[-3000:]
    assert log.count("genq: worker (pid ") == 5 and log.count("; restarting it in ") == 4, log[-3000:]
    assert (
        "died 5 times in a row within 60 s of its start, so it is not restarted again; stopping the stack"
        in log
    )
    assert not healthy(base), "the API stops with the stack"
