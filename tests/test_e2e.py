"""End to end over real HTTP: gunicorn API, real worker processes, real Redis."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import pytest

from genq.client import Client
from shared.settings import ModelSpec, Settings
from tests.support import ROOT, run_cli, settings_env, wait_until
from tests.tiny_model import build_tiny_model

SEED_EXAMPLE = {"max_new_tokens": 50, "temperature": 0.7, "do_sample": True}


@pytest.fixture(scope="module")
def plain_spec(tmp_path_factory: pytest.TempPathFactory) -> ModelSpec:
    """A tiny model whose tokenizer has no chat template."""
    plain = build_tiny_model(tmp_path_factory.mktemp("plain-model"), chat=False)
    return ModelSpec(name="plain", source=str(plain), context_length=512, max_new_tokens_cap=64)


@pytest.fixture
def settings(settings: Settings, plain_spec: ModelSpec) -> Settings:
    """The suite's settings with the template-less model added to the catalog."""
    return settings.model_copy(update={"models": [*settings.models, plain_spec]})


def test_job_runs_end_to_end(start_worker, client: Client) -> None:
    start_worker()
    job = client.submit("The quick brown fox", max_new_tokens=12, temperature=0, metadata={"ticket": 7})
    assert job["status"] == "queued"
    done = client.wait(job["id"], 60)
    assert done["status"] == "succeeded", done
    assert done["output"]["finish_reason"] in ("length", "eos")
    assert done["usage"]["completion_tokens"] <= 12 and done["usage"]["prompt_tokens"] > 0
    assert done["metadata"] == {"ticket": 7}
    assert done["device"] == "cpu" and done["worker"].startswith("tiny@")
    timings = done["timings"]
    for part in ("queued", "tokenize", "generate", "decode", "total"):
        assert timings[part] >= 0
    assert timings["total"] >= timings["generate"]
    assert done["started_at"] >= done["created_at"] and done["finished_at"] >= done["started_at"]


def test_seed_example_is_reproducible(start_worker, client: Client) -> None:
    start_worker()
    first = client.wait(client.submit("Artificial Intelligence is", seed=1234, **SEED_EXAMPLE)["id"], 60)
    again = client.wait(client.submit("Artificial Intelligence is", seed=1234, **SEED_EXAMPLE)["id"], 60)
    other = client.wait(client.submit("Artificial Intelligence is", seed=99, **SEED_EXAMPLE)["id"], 60)
    assert first["status"] == again["status"] == "succeeded"
    assert first["output"]["text"] == again["output"]["text"]
    assert first["output"]["text"] != other["output"]["text"]
    assert first["seed"] == 1234
    # Without a seed, the job reports the one it drew, and replaying it gives the same text.
    unseeded = client.wait(client.submit("Artificial Intelligence is", **SEED_EXAMPLE)["id"], 60)
    replay = client.wait(
        client.submit("Artificial Intelligence is", seed=unseeded["seed"], **SEED_EXAMPLE)["id"], 60
    )
    assert replay["output"]["text"] == unseeded["output"]["text"]


def test_many_concurrent_jobs_all_finish(start_worker, client: Client) -> None:
    start_worker()
    ids = [
        client.submit(f"Story {i}: once upon a time", max_new_tokens=20, temperature=0)["id"]
        for i in range(20)
    ]
    done = [client.wait(i, 120) for i in ids]
    assert [d["status"] for d in done] == ["succeeded"] * 20


def test_cancel_queued_job_never_runs(start_worker, client: Client, store) -> None:
    job = client.submit("never run me", max_new_tokens=5)
    cancelled = client.cancel(job["id"])
    assert cancelled["status"] == "cancelled"
    start_worker()
    marker = client.wait(client.submit("after", max_new_tokens=3)["id"], 60)  # the worker drained the queue
    assert marker["status"] == "succeeded"
    final = client.get(job["id"])
    assert final["status"] == "cancelled" and final["started_at"] is None and final["output"] is None
    assert store.raw(job["id"])["attempts"] == "0"


def test_cancel_running_job_stops_and_keeps_text(start_worker, client: Client) -> None:
    start_worker()
    job = client.submit("The quick brown fox", max_new_tokens=7000, ignore_eos=True, temperature=0)
    wait_until(lambda: client.get(job["id"])["status"] == "running", 30, "the job to start")
    time.sleep(0.3)  # let it produce some text
    answer = client.cancel(job["id"])
    assert answer["status"] in ("running", "cancelled")
    done = client.wait(job["id"], 30)
    assert done["status"] == "cancelled"
    assert done["output"]["finish_reason"] == "cancelled"
    assert 0 < done["usage"]["completion_tokens"] < 7000
    assert done["output"]["text"]
    # The worker is still healthy and serves the next job.
    assert client.wait(client.submit("next", max_new_tokens=3)["id"], 30)["status"] == "succeeded"


def test_long_poll_returns_when_job_ends(start_worker, client: Client) -> None:
    start_worker()
    job = client.submit("The quick brown fox", max_new_tokens=200, ignore_eos=True, temperature=0)
    t0 = time.monotonic()
    done = client.get(job["id"], wait_s=30)
    elapsed = time.monotonic() - t0
    assert done["status"] == "succeeded"
    assert elapsed < 25, "the long poll should end with the job, not at its timeout"


def test_prompt_beyond_context_fails_job_and_worker_survives(start_worker, client: Client) -> None:
    start_worker()
    job = client.wait(client.submit("word " * 5000, max_new_tokens=7000)["id"], 60)
    assert job["status"] == "failed"
    assert job["error"]["code"] == "context_length_exceeded"
    assert "8192" in job["error"]["message"]
    assert client.wait(client.submit("ok", max_new_tokens=2)["id"], 30)["status"] == "succeeded"


def test_worker_registry_and_graceful_stop(start_worker, client: Client, store) -> None:
    assert client.models()["data"][0]["ready_workers"] == 0
    proc = start_worker()
    workers = store.workers()
    assert len(workers) == 1
    w = workers[0]
    assert (w["model"], w["device"], w["pid"]) == ("tiny", "cpu", proc.pid) and w["host"]
    models = {m["name"]: m["ready_workers"] for m in client.models()["data"]}
    assert models == {"tiny": 1, "smollm2-135m-instruct": 0, "plain": 0}
    running = client.submit("The quick brown fox", max_new_tokens=300, ignore_eos=True, temperature=0)
    wait_until(lambda: client.get(running["id"])["status"] == "running", 30, "the job to start")
    proc.signal(signal.SIGTERM)
    # A warm shutdown leaves the registry at once but finishes the job in hand.
    wait_until(lambda: not store.workers(), 10, "the worker to leave the registry")
    assert proc.proc.wait(60) == 0
    assert client.get(running["id"])["status"] == "succeeded"


def test_heartbeat_lapses_when_worker_is_killed(start_worker, store, settings: Settings) -> None:
    proc = start_worker()
    proc.signal(signal.SIGKILL)
    proc.proc.wait(10)
    wait_until(lambda: not store.workers(), settings.worker_ttl + 5, "the dead worker's heartbeat to lapse")


def test_worker_with_unloadable_model_exits_with_clear_error(settings: Settings, tmp_path) -> None:
    bad = settings.model_copy(update={"models": [ModelSpec(name="broken", source=str(tmp_path / "nothing"))]})
    result = subprocess.run(
        [sys.executable, "-m", "genq", "worker", "--model", "broken"],
        env=settings_env(bad),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode != 0
    assert "cannot load model 'broken'" in result.stderr
    unknown = subprocess.run(
        [sys.executable, "-m", "genq", "worker", "--model", "nope"],
        env=settings_env(settings),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert unknown.returncode != 0 and "unknown model 'nope'" in unknown.stderr


def _cli(api: str, *args: str) -> subprocess.CompletedProcess:
    return run_cli(api, *args)


def test_cli_submit_wait_get_cancel(start_worker, api_server: str, client: Client) -> None:
    start_worker()
    out = _cli(
        api_server,
        "submit",
        "Artificial Intelligence is",
        "--max-new-tokens",
        "50",
        "--temperature",
        "0.7",
        "--seed",
        "5",
        "--wait",
    )
    assert out.returncode == 0, out.stderr
    expected = client.wait(client.submit("Artificial Intelligence is", seed=5, **SEED_EXAMPLE)["id"], 60)
    assert out.stdout.rstrip("\n") == expected["output"]["text"]
    job_id = _cli(api_server, "submit", "hello", "--max-new-tokens", "3").stdout.strip()
    assert job_id.startswith("job_")
    client.wait(job_id, 30)
    shown = _cli(api_server, "get", job_id)
    assert shown.returncode == 0 and '"status": "succeeded"' in shown.stdout
    refused = _cli(api_server, "cancel", job_id)
    assert refused.returncode == 1 and "not_cancellable" in refused.stderr
    missing = _cli(api_server, "get", "job_" + "0" * 32)
    assert missing.returncode == 1 and "404 not_found" in missing.stderr


@pytest.mark.slow
def test_smollm2_answers_through_the_whole_stack(start_worker, client: Client) -> None:
    start_worker(model="smollm2-135m-instruct")
    job = client.submit(
        messages=[{"role": "user", "content": "What is the capital of France?"}],
        model="smollm2-135m-instruct",
        temperature=0,
        max_new_tokens=30,
    )
    done = client.wait(job["id"], 120)
    assert done["status"] == "succeeded", done
    assert "Paris" in done["output"]["text"]
    assert done["output"]["finish_reason"] == "eos"


def test_messages_without_chat_template_fail_clearly(start_worker, client: Client) -> None:
    start_worker(model="plain")
    job = client.submit(messages=[{"role": "user", "content": "hi"}], model="plain", max_new_tokens=3)
    done = client.wait(job["id"], 60)
    assert done["status"] == "failed"
    assert done["error"]["code"] == "no_chat_template"
    assert (
        client.wait(client.submit("hi", model="plain", max_new_tokens=3)["id"], 60)["status"] == "succeeded"
    )


def test_stream_sends_tokens_then_done(start_worker, client: Client) -> None:
    start_worker()
    job = client.submit("The quick brown fox", max_new_tokens=40, ignore_eos=True, temperature=0)
    events = list(client.stream(job["id"]))
    kinds = [e for e, _ in events]
    assert kinds[-1] == "done" and kinds.count("token") >= 2
    text = "".join(d["text"] for e, d in events if e == "token")
    final = events[-1][1]
    assert final["status"] == "succeeded" and text == final["output"]["text"]
    # A client that connects after the job ended still gets the whole text, then done.
    late = list(client.stream(job["id"]))
    assert "".join(d["text"] for e, d in late if e == "token") == text and late[-1][0] == "done"


def test_stream_of_failed_and_cancelled_jobs_ends_cleanly(start_worker, client: Client) -> None:
    queued = client.submit("never", max_new_tokens=3)
    client.cancel(queued["id"])
    events = list(client.stream(queued["id"]))
    assert events[-1][0] == "done" and events[-1][1]["status"] == "cancelled"
    start_worker()
    failed = client.submit("word " * 5000, max_new_tokens=7000)
    events = list(client.stream(failed["id"]))
    assert [e for e, _ in events][-2:] == ["error", "done"]
    assert events[-2][1]["code"] == "context_length_exceeded"
