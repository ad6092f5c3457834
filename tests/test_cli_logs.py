"""`genq jobs`, `genq submit --wait`'s stderr, and JSON log lines from real worker and API processes."""

from __future__ import annotations

import io
import json
import logging
import subprocess
import sys
from pathlib import Path

import pytest

from genq.client import Client, GenqError
from shared.logs import JsonFormatter, setup_logging
from shared.settings import Settings
from tests.support import run_cli, wait_until


def _record(msg: str, **extra: object) -> logging.LogRecord:
    return logging.getLogger("genq.test").makeRecord(
        "genq.test", logging.INFO, __file__, 1, msg, ("x",), None, extra=extra
    )


def _json_lines(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


def test_json_formatter_puts_extra_fields_beside_the_message() -> None:
    line = JsonFormatter().format(_record("job %s finished", job_id="job_1", timings={"total": 1.5}))
    entry = json.loads(line)
    assert entry["msg"] == "job x finished" and entry["level"] == "INFO" and entry["logger"] == "genq.test"
    assert entry["job_id"] == "job_1" and entry["timings"] == {"total": 1.5}
    assert entry["ts"].endswith("Z") and "T" in entry["ts"]
    assert "args" not in entry and "exc" not in entry  # LogRecord's own attributes stay out


def test_json_formatter_keeps_a_traceback_on_its_one_line() -> None:
    try:
        raise ValueError("bad\nthing")
    except ValueError:
        record = logging.getLogger("genq.test").makeRecord(
            "genq.test", logging.ERROR, __file__, 1, "failed", (), sys.exc_info()
        )
    line = JsonFormatter().format(record)
    assert "\n" not in line
    entry = json.loads(line)
    assert entry["msg"] == "failed" and "ValueError: bad" in entry["exc"] and "Traceback" in entry["exc"]


def test_an_extra_field_cannot_hide_the_message() -> None:
    entry = json.loads(JsonFormatter().format(_record("real %s", level="fake", unserialisable=object())))
    assert entry["level"] == "INFO" and entry["msg"] == "real x"
    assert entry["unserialisable"].startswith("<object")  # repr'd, not an exception


def test_setup_logging_is_idempotent(settings: Settings, monkeypatch) -> None:
    root = logging.getLogger()
    before = list(root.handlers)
    out = io.StringIO()
    monkeypatch.setattr(sys, "stdout", out)
    try:
        setup_logging(settings)
        setup_logging(settings)
        added = [h for h in root.handlers if h not in before]
        assert len(added) == 1
        logging.getLogger("genq.test").warning("once", extra={"job_id": "job_2"})
        assert [e["job_id"] for e in _json_lines(out.getvalue())] == ["job_2"]
        setup_logging(settings.model_copy(update={"log_format": "text"}))
        logging.getLogger("genq.test").warning("plain")
        assert out.getvalue().splitlines()[-1].endswith("WARNING genq.test: plain")
    finally:
        for handler in [h for h in root.handlers if h not in before]:
            root.removeHandler(handler)


def test_worker_logs_one_json_line_per_job_event(start_worker, client: Client) -> None:
    worker = start_worker()
    done = client.wait(client.submit("Hello there", max_new_tokens=5)["id"], 60)
    assert done["status"] == "succeeded", done

    def finished() -> list[dict]:
        return [e for e in _json_lines(worker.log()) if e.get("event") == "job finished"]

    [entry] = wait_until(finished, 10, "the job finished log line")
    assert entry["job_id"] == done["id"] and entry["model"] == "tiny" and entry["status"] == "succeeded"
    assert entry["worker"] == done["worker"] and entry["finish_reason"] == done["output"]["finish_reason"]
    assert entry["completion_tokens"] == done["usage"]["completion_tokens"]
    assert entry["timings"] == done["timings"]
    entries = _json_lines(worker.log())
    [started] = [e for e in entries if e.get("event") == "job started"]
    assert started["job_id"] == done["id"] and started["attempt"] == 1
    assert any(e["msg"].startswith("model tiny loaded") for e in entries)
    # Celery's own lines ("Task genq.generate[...] received", "... ready.") are JSON too.
    celery = [e for e in entries if e["logger"].startswith("celery")]
    assert any("received" in e["msg"] and done["id"] in e["msg"] for e in celery), celery
    assert any(e["msg"].endswith("ready.") for e in celery)
    # Nothing else: no banner, no plain-text lines.
    assert all(line.startswith("{") for line in worker.log().splitlines() if line.strip()), worker.log()
    assert "Hello there" not in worker.log() and done["output"]["text"] not in worker.log()


def test_failed_job_logs_its_code(start_worker, client: Client) -> None:
    worker = start_worker()
    done = client.wait(client.submit("word " * 5000, max_new_tokens=7000)["id"], 60)
    assert done["status"] == "failed", done

    def failed() -> list[dict]:
        return [e for e in _json_lines(worker.log()) if e.get("event") == "job failed"]

    [entry] = wait_until(failed, 10, "the job failed log line")
    assert entry["job_id"] == done["id"] and entry["code"] == done["error"]["code"]


def test_text_format_is_for_humans(start_worker, client: Client) -> None:
    worker = start_worker(log_format="text")
    done = client.wait(client.submit("Hello", max_new_tokens=3)["id"], 60)
    wait_until(lambda: f"job {done['id']} succeeded" in worker.log(), 10, "the job's text log line")
    assert not _json_lines(worker.log())


def test_api_logs_are_json(api_server: str, tmp_path: Path) -> None:
    log = tmp_path / "api.log"  # where the api_server fixture sends gunicorn's output
    Client(api_server).models()

    def access() -> list[dict]:
        return [e for e in _json_lines(log.read_text()) if e.get("path") == "/v1/models"]

    [entry] = wait_until(access, 10, "the access line of GET /v1/models")
    assert entry["method"] == "GET" and entry["status"] == 200 and entry["duration_ms"] >= 0
    # Gunicorn's own start-up lines and genq's (the OPEN warning) too: nothing else reaches stdout.
    lines = [line for line in log.read_text().splitlines() if line.strip()]
    assert all(line.startswith("{") for line in lines), lines
    assert any("OPEN" in e["msg"] for e in _json_lines(log.read_text()))


def _cli(api: str, *args: str, columns: int = 200) -> subprocess.CompletedProcess:
    return run_cli(api, *args, COLUMNS=str(columns))


def test_cli_jobs_lists_recent_jobs(start_worker, api_server: str, client: Client) -> None:
    start_worker()
    ids = [client.submit(f"job {i}", max_new_tokens=3)["id"] for i in range(3)]
    for job_id in ids:
        client.wait(job_id, 60)
    out = _cli(api_server, "jobs", "--json")
    assert out.returncode == 0, out.stderr
    listed = json.loads(out.stdout)
    assert listed["object"] == "list" and [j["id"] for j in listed["data"]] == ids[::-1]  # newest first
    two = json.loads(_cli(api_server, "jobs", "--json", "--limit", "2").stdout)
    assert [j["id"] for j in two["data"]] == ids[:0:-1] and two["next_cursor"] is not None
    rest = json.loads(_cli(api_server, "jobs", "--json", "--cursor", repr(two["next_cursor"])).stdout)
    assert [j["id"] for j in rest["data"]] == ids[:1]
    assert json.loads(_cli(api_server, "jobs", "--json", "--status", "failed").stdout)["data"] == []

    table = _cli(api_server, "jobs", columns=80)  # piped, rows are whole however narrow COLUMNS is
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    assert "id" in lines[0] and "finish reason" in lines[0]
    for job_id in ids:
        [row] = [line for line in lines if job_id in line]
        assert "succeeded" in row and "tiny" in row and ("length" in row or "eos" in row)
    assert "\x1b[" not in table.stdout  # no colour codes when piped


def test_cli_submit_wait_summary_on_stderr(start_worker, api_server: str, client: Client) -> None:
    start_worker()
    out = _cli(api_server, "submit", "Hello", "--max-new-tokens", "6", "--seed", "1", "--wait")
    assert out.returncode == 0, out.stderr
    [job] = client.list_jobs()["data"]
    assert out.stdout.rstrip("\n") == job["output"]["text"]
    assert f"{job['usage']['completion_tokens']} tokens" in out.stderr and "tok/s" in out.stderr
    assert "\x1b[" not in out.stderr  # stderr is no terminal: no spinner
    quiet = _cli(api_server, "submit", "Hello", "--max-new-tokens", "6", "--wait", "--quiet")
    assert quiet.returncode == 0 and quiet.stderr == ""


def test_cli_prints_each_detail_of_an_api_error(api_server: str, client: Client) -> None:
    out = _cli(api_server, "submit", "x", "--temperature", "-1", "--top-k", "-5")
    assert out.returncode == 1, out.stderr
    assert out.stdout == ""
    lines = out.stderr.splitlines()
    assert lines[0].startswith("genq: 422 validation_error: "), out.stderr
    # The same request through the client: the command shows every field and reason the API named.
    with pytest.raises(GenqError) as caught:
        client.submit("x", temperature=-1, top_k=-5)
    details = caught.value.details
    assert {d["field"] for d in details} >= {"temperature", "top_k"}, details
    assert lines[1:] == [f"  {d['field']}: {d['message']}" for d in details]
    assert client.list_jobs()["data"] == []  # nothing was enqueued
