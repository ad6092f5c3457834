"""GET /metrics and Flower, against real Redis, real workers and real gunicorn API processes."""

from __future__ import annotations

import hashlib
import json
import math
import os
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from genq.client import Client
from shared import metrics
from shared.settings import Settings
from tests.support import free_port, spawn, start_api, wait_until

HISTOGRAMS = [h.name for h in metrics.HISTOGRAMS]
TOO_LONG = {"prompt": "word " * 5000, "max_new_tokens": 7000}  # over the tiny model's 8192 tokens


class Scrape:
    """One /metrics answer, parsed by prometheus_client's own parser."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.samples = {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text)
            for s in family.samples
        }

    def fleet(self) -> dict:
        """Return the samples read from Redis, alike on every process (genq_api_* are one process's own)."""
        return {key: v for key, v in self.samples.items() if not key[0].startswith("genq_api_")}

    def value(self, name: str, **labels: str) -> float:
        """Return the one sample with this name and exactly these labels."""
        return self.samples[(name, tuple(sorted(labels.items())))]

    def buckets(self, name: str, **labels: str) -> list[tuple[float, float]]:
        """Return a histogram's (upper bound, cumulative count) pairs, in order."""
        found = [
            (float(dict(lbl)["le"]), v)
            for (n, lbl), v in self.samples.items()
            if n == f"{name}_bucket" and {k: x for k, x in lbl if k != "le"} == labels
        ]
        return sorted(found)


def scrape(base: str) -> Scrape:
    """GET /metrics from a live API."""
    with urllib.request.urlopen(f"{base}/metrics", timeout=10) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"] == CONTENT_TYPE_LATEST
        return Scrape(resp.read().decode())


@pytest.fixture
def two_apis(settings: Settings, tmp_path: Path) -> Iterator[list[str]]:
    """Two separate API deployments on one Redis (each with its own gunicorn processes)."""
    started = [start_api(settings, tmp_path / f"api{i}.log") for i in range(2)]
    yield [base for _, base in started]
    for proc, _ in started:
        proc.stop()


def test_metrics_count_jobs_alike_on_every_api_process(start_worker, two_apis: list[str]) -> None:
    start_worker()
    client = Client(two_apis[0], timeout_s=30)
    ids = [
        client.submit(f"Job {n} says", max_new_tokens=n, temperature=0, ignore_eos=True)["id"]
        for n in (5, 6, 7)
    ]
    ids.append(client.submit(**TOO_LONG)["id"])
    done = [client.wait(i, 120) for i in ids]
    assert [d["status"] for d in done] == ["succeeded"] * 3 + ["failed"]
    assert done[-1]["error"]["code"] == "context_length_exceeded"
    succeeded = done[:3]

    # Every process of either deployment answers with the same figures: they live in Redis.
    scrapes = [scrape(base) for base in two_apis for _ in range(4)]  # gunicorn spreads them
    assert all(s.fleet() == scrapes[0].fleet() for s in scrapes)
    m = scrapes[0]

    assert m.value("genq_jobs_total", model="tiny", status="succeeded") == 3
    assert m.value("genq_jobs_total", model="tiny", status="failed") == 1
    assert m.value("genq_jobs_total", model="tiny", status="cancelled") == 0
    tokens = sum(d["usage"]["completion_tokens"] for d in succeeded)
    assert tokens == 5 + 6 + 7
    assert m.value("genq_tokens_generated_total", model="tiny") == tokens
    assert m.value("genq_tokens_generated_total", model="smollm2-135m-instruct") == 0

    for name in HISTOGRAMS:  # the failed job never ran, so only the three that did are observed
        assert m.value(f"{name}_count", model="tiny") == 3, name
        buckets = m.buckets(name, model="tiny")
        assert buckets[-1] == (math.inf, 3)
        assert [v for _, v in buckets] == sorted(v for _, v in buckets), f"{name} buckets are cumulative"
    # The sums match the timings each job reports (in ms, rounded to 0.01).
    latency = sum(d["timings"]["total"] for d in succeeded) / 1000
    assert m.value("genq_job_latency_seconds_sum", model="tiny") == pytest.approx(latency, abs=1e-3)
    queued = sum(d["timings"]["queued"] for d in succeeded) / 1000
    assert m.value("genq_queue_wait_seconds_sum", model="tiny") == pytest.approx(queued, abs=1e-3)
    ttft = sum(d["timings"]["time_to_first_token"] for d in succeeded) / 1000
    assert m.value("genq_time_to_first_token_seconds_sum", model="tiny") == pytest.approx(ttft, abs=1e-3)
    rates = sum(d["timings"]["tokens_per_second"] for d in succeeded)
    assert m.value("genq_tokens_per_second_sum", model="tiny") == pytest.approx(rates, abs=0.05)
    for d in succeeded:
        t = d["timings"]
        assert t["queued"] + t["tokenize"] <= t["time_to_first_token"] <= t["total"]

    assert m.value("genq_ready_workers", model="tiny", device="cpu") == 1
    assert m.value("genq_queue_depth", model="tiny") == 0
    assert m.value("genq_jobs_running") == 0


def test_queue_depth_counts_jobs_no_worker_has_taken(api_server: str, client: Client) -> None:
    ids = [client.submit("nobody runs me", max_new_tokens=3)["id"] for _ in range(3)]
    m = scrape(api_server)
    assert m.value("genq_queue_depth", model="tiny") == 3
    assert m.value("genq_queue_depth", model="smollm2-135m-instruct") == 0
    assert m.value("genq_jobs_running") == 0
    assert not [k for k in m.samples if k[0] == "genq_ready_workers"]
    client.cancel(ids[0])
    assert scrape(api_server).value("genq_queue_depth", model="tiny") == 2


def test_histograms_bucket_at_their_bounds(settings: Settings, store) -> None:
    for value in (0.1, 0.1000001, 7200.0):  # on a bound, just past it, past every bound
        metrics.record_job(store.r, "tiny", latency_s=value, completion_tokens=1)
    store.r.hincrby(metrics.LATENCY.key("tiny"), "0.3", 2)  # a bound that later left the list
    registry = CollectorRegistry(auto_describe=False)
    registry.register(metrics.GenqCollector(store, settings))
    m = Scrape(generate_latest(registry).decode())
    buckets = dict(m.buckets("genq_job_latency_seconds", model="tiny"))
    assert buckets[0.1] == 1 and buckets[0.25] == 2 and buckets[0.5] == 4
    assert buckets[3600] == 4 and buckets[math.inf] == 5
    assert m.value("genq_job_latency_seconds_sum", model="tiny") == pytest.approx(7200.2000001)
    assert m.value("genq_queue_wait_seconds_count", model="tiny") == 0
    assert m.value("genq_tokens_generated_total", model="tiny") == 3


def test_metrics_need_no_key(settings: Settings) -> None:
    from api.app import create_app

    digest = hashlib.sha256(b"gq_secret").hexdigest()
    http = create_app(settings.model_copy(update={"api_keys": f"acme:{digest}"})).test_client()
    assert http.get("/v1/models").status_code == 401
    resp = http.get("/metrics")
    assert resp.status_code == 200 and resp.content_type == CONTENT_TYPE_LATEST
    assert "genq_queue_depth" in resp.get_data(as_text=True)


def test_metrics_answer_503_while_redis_is_down(settings: Settings) -> None:
    from api.app import create_app

    down = settings.model_copy(update={"redis_url": f"redis://127.0.0.1:{free_port()}/0"})
    resp = create_app(down).test_client().get("/metrics")
    assert resp.status_code == 503
    assert resp.get_json()["error"]["code"] == "service_unavailable"


def test_a_metrics_error_never_fails_the_job(start_worker, client: Client, store) -> None:
    store.r.set(metrics.TOKENS, "not a hash")  # every HINCRBY on it now fails
    worker = start_worker()
    job = client.wait(client.submit("count me if you can", max_new_tokens=3)["id"], 60)
    assert job["status"] == "succeeded"
    wait_until(lambda: "could not record metrics" in worker.log(), 10, "the worker to log the error")


def test_workers_and_their_tasks_show_up_in_flower(
    start_worker, client: Client, settings: Settings, tmp_path: Path
) -> None:
    pytest.importorskip("flower")
    port = free_port()
    env = {**os.environ, "FLOWER_UNAUTHENTICATED_API": "true"}  # open its REST API to this test
    flower = spawn(
        [sys.executable, "-m", "celery", f"--broker={settings.redis_url}", "flower", f"--port={port}"],
        env,
        tmp_path / "flower.log",
    )
    base = f"http://127.0.0.1:{port}"

    def get(path: str) -> dict | None:
        if flower.proc.poll() is not None:
            raise AssertionError(f"flower exited early:\n{flower.log()}")
        try:
            with urllib.request.urlopen(base + path, timeout=10) as resp:
                return json.loads(resp.read())
        except OSError:
            return None

    try:
        wait_until(lambda: get("/api/workers") is not None, 30, "flower to answer", 0.2)
        start_worker()
        job = client.wait(client.submit("Flower sees me", max_new_tokens=4)["id"], 60)
        assert job["status"] == "succeeded"
        hostname = job["worker"].replace(":", "-")  # the Celery node name (see worker/main.py)
        workers = wait_until(lambda: get("/api/workers?refresh=1"), 30, "flower to list workers", 0.5)
        assert hostname in workers, workers

        def task() -> dict | None:
            tasks = get("/api/tasks") or {}
            return next((t for t in tasks.values() if job["id"] in (t.get("args") or "")), None)

        seen = wait_until(task, 30, "flower to show the job's task", 0.5)
        assert seen["name"] == "genq.generate" and seen["state"] == "SUCCESS"
        assert seen["worker"] == hostname
    finally:
        flower.stop()
