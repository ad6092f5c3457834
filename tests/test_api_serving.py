"""How the served API treats connections: streams answer at once, a stop waits for no idle client."""

from __future__ import annotations

import http.client
import json
import signal
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from api.events import KEEPALIVE_S
from api.serving import GRACEFUL_TIMEOUT_S
from shared.settings import Settings
from tests.support import start_api


@pytest.mark.parametrize("worker_class", ["gevent", "gthread"])
def test_an_idle_keep_alive_connection_does_not_hold_a_stopping_api(
    settings: Settings, tmp_path: Path, worker_class: str
) -> None:
    proc, base = start_api(
        settings.model_copy(update={"api_workers": 1, "api_worker_class": worker_class}), tmp_path / "api.log"
    )
    try:
        host, port = urlsplit(base).hostname, urlsplit(base).port
        idle = http.client.HTTPConnection(host, port, timeout=30)
        idle.request("GET", "/healthz")
        assert idle.getresponse().read() and idle.sock is not None  # kept alive, then left idle
        job = http.client.HTTPConnection(host, port, timeout=30)
        job.request("POST", "/v1/jobs", body=b'{"prompt": "x"}', headers={"Content-Type": "application/json"})
        job_id = json.loads(job.getresponse().read())["id"]  # queued: no worker runs here
        polled: dict[str, object] = {}

        def long_poll() -> None:
            conn = http.client.HTTPConnection(host, port, timeout=30)
            conn.request("GET", f"/v1/jobs/{job_id}?wait=2")
            resp = conn.getresponse()
            polled["status"], polled["body"] = resp.status, resp.read()

        poller = threading.Thread(target=long_poll)
        poller.start()
        time.sleep(0.5)  # the long poll is in flight when the API is told to stop
        started = time.monotonic()
        proc.signal(signal.SIGTERM)
        code = proc.proc.wait(timeout=GRACEFUL_TIMEOUT_S * 3)
        took = time.monotonic() - started
        poller.join(10)
        # The request in flight was answered; the idle connection was closed cleanly, not waited for.
        assert polled["status"] == 200 and b'"queued"' in polled["body"]
        assert code == 0 and took < GRACEFUL_TIMEOUT_S, f"stopped after {took:.1f} s"
        assert idle.sock.recv(1) == b""
        assert "Traceback" not in proc.log() and "graceful timeout" not in proc.log().lower()
    finally:
        proc.stop()  # also when an assertion failed: no API left serving


@pytest.mark.parametrize("endpoint", ["native", "completions"])
def test_a_stream_of_a_queued_job_answers_before_its_first_event(api_server: str, endpoint: str) -> None:
    host, port = urlsplit(api_server).hostname, urlsplit(api_server).port
    conn = http.client.HTTPConnection(host, port, timeout=KEEPALIVE_S / 3)  # well before a keep-alive
    headers = {"Content-Type": "application/json"}
    if endpoint == "native":
        conn.request("POST", "/v1/jobs", body=b'{"prompt": "x"}', headers=headers)
        job_id = json.loads(conn.getresponse().read())["id"]  # no worker runs: it stays queued
        conn.request("GET", f"/v1/jobs/{job_id}/stream")
    else:
        body = {"model": "tiny", "prompt": "x", "stream": True}
        conn.request("POST", "/v1/completions", body=json.dumps(body).encode(), headers=headers)
    resp = conn.getresponse()  # raised a timeout when the headers waited for the first event
    assert resp.status == 200 and resp.getheader("Content-Type").startswith("text/event-stream")
    assert resp.read(8) == b": open\n\n"  # an SSE comment: clients skip it
    conn.close()
