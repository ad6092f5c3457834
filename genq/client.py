"""A small Python client for the genq HTTP API (standard library only)."""

from __future__ import annotations

import json
import secrets
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

DEFAULT_URL = "http://127.0.0.1:8000"
LONG_POLL_S = 30  # seconds each ?wait= request blocks while waiting for a job
STREAM_IDLE_S = 60  # seconds a stream may stay silent (the server sends keepalives every 15 s)
BATCH_SUBMIT_S = 300  # seconds a batch upload may take (the API stores and enqueues every job first)


class GenqError(Exception):
    """An error answer from the API, with its HTTP status and error code."""

    def __init__(self, status: int, code: str, message: str, body: dict[str, Any] | None = None) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status, self.code, self.message, self.body = status, code, message, body or {}

    @property
    def details(self) -> list[dict[str, Any]]:
        """Return the API's per-field problems ({"field", "message"} each); empty when it named none."""
        err = self.body.get("error")
        details = err.get("details") if isinstance(err, dict) else None
        return [d for d in details if isinstance(d, dict)] if isinstance(details, list) else []


def _error(exc: urllib.error.HTTPError) -> GenqError:
    try:
        payload = json.loads(exc.read())
    except ValueError:
        payload = {}
    err = payload.get("error", {})
    return GenqError(exc.code, err.get("code", "http_error"), err.get("message", str(exc.reason)), payload)


def _idempotency(key: str | None) -> dict[str, str]:
    return {"Idempotency-Key": key} if key is not None else {}


def _multipart(filename: str, content: bytes, fields: dict[str, Any]) -> tuple[bytes, str]:
    """Encode a file and JSON fields as multipart/form-data; return the body and its content type."""
    boundary = "genq-" + secrets.token_hex(16)
    parts = []
    for name, value in fields.items():
        parts.append(
            f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n'
            f"Content-Type: application/json\r\n\r\n{json.dumps(value)}\r\n".encode()
        )
    safe = filename.replace('"', "_").replace("\r", "_").replace("\n", "_")
    parts.append(
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{safe}"\r\n'
        "Content-Type: application/x-ndjson\r\n\r\n".encode()
        + content
        + f"\r\n--{boundary}--\r\n".encode()
    )
    return b"".join(parts), f"multipart/form-data; boundary={boundary}"


class Client:
    """Submit, get, wait for and cancel genq jobs."""

    def __init__(
        self, base_url: str = DEFAULT_URL, timeout_s: float = 10.0, api_key: str | None = None
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout_s = timeout_s
        self.headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}

    def _call(
        self,
        method: str,
        path: str,
        body: dict[str, Any] | None = None,
        timeout_s: float | None = None,
        headers: dict[str, str] | None = None,
    ) -> dict[str, Any]:
        data = json.dumps(body).encode() if body is not None else None
        content_type = {"Content-Type": "application/json"} if data else {}
        req = urllib.request.Request(
            self.base_url + path,
            data=data,
            method=method,
            headers={**self.headers, **content_type, **(headers or {})},
        )
        try:
            with urllib.request.urlopen(req, timeout=timeout_s or self.timeout_s) as resp:
                return json.loads(resp.read() or b"{}")
        except urllib.error.HTTPError as exc:
            raise _error(exc) from None

    def submit(
        self,
        prompt: str | None = None,
        *,
        messages: list[dict[str, str]] | None = None,
        idempotency_key: str | None = None,
        **params: Any,
    ) -> dict[str, Any]:
        """Submit a job (prompt or messages, plus any generation parameters); return it queued.

        With an idempotency_key, a retry of the same submission returns the first one's job.
        """
        body = {k: v for k, v in {"prompt": prompt, "messages": messages, **params}.items() if v is not None}
        return self._call("POST", "/v1/jobs", body, headers=_idempotency(idempotency_key))

    def get(self, job_id: str, wait_s: float = 0) -> dict[str, Any]:
        """Return a job, blocking server-side up to wait_s seconds for it to end."""
        suffix = f"?wait={wait_s:g}" if wait_s else ""
        return self._call("GET", f"/v1/jobs/{job_id}{suffix}", timeout_s=self.timeout_s + wait_s)

    def wait(self, job_id: str, timeout_s: float | None = None) -> dict[str, Any]:
        """Long-poll until the job ends (or timeout_s passes) and return it."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while True:
            left = LONG_POLL_S if deadline is None else min(LONG_POLL_S, deadline - time.monotonic())
            job = self.get(job_id, wait_s=max(0, left))
            if job["status"] in ("succeeded", "failed", "cancelled"):
                return job
            if deadline is not None and time.monotonic() >= deadline:
                return job

    def stream(self, job_id: str) -> Iterator[tuple[str, Any]]:
        """Yield (event, data) pairs of a job's server-sent events until its done event."""
        req = urllib.request.Request(
            f"{self.base_url}/v1/jobs/{job_id}/stream",
            headers={**self.headers, "Accept": "text/event-stream"},
        )
        try:
            resp = urllib.request.urlopen(req, timeout=STREAM_IDLE_S)
        except urllib.error.HTTPError as exc:
            raise _error(exc) from None
        with resp:
            event, data = "message", []
            for raw in resp:
                line = raw.decode().rstrip("\r\n")
                if line.startswith("event:"):
                    event = line[6:].strip()
                elif line.startswith("data:"):
                    data.append(line[5:].strip())
                elif not line and data:
                    yield event, json.loads("\n".join(data))
                    if event == "done":
                        return
                    event, data = "message", []

    def list_jobs(
        self, status: str | None = None, limit: int | None = None, cursor: float | None = None
    ) -> dict[str, Any]:
        """Return one page of the caller's jobs, newest first: {"object": "list", "data", "next_cursor"}."""
        query = {"status": status, "limit": limit, "cursor": cursor}
        qs = urllib.parse.urlencode({k: v for k, v in query.items() if v is not None})
        return self._call("GET", "/v1/jobs" + (f"?{qs}" if qs else ""))

    def cancel(self, job_id: str) -> dict[str, Any]:
        """Cancel a job; return it as the API saw it."""
        return self._call("POST", f"/v1/jobs/{job_id}/cancel")

    def models(self) -> dict[str, Any]:
        """Return the model catalog with ready workers per model."""
        return self._call("GET", "/v1/models")

    # --- batches ------------------------------------------------------------
    def _send(
        self,
        method: str,
        path: str,
        data: bytes | None,
        content_type: str,
        timeout_s: float,
        headers: dict[str, str] | None = None,
    ) -> bytes:
        req = urllib.request.Request(
            self.base_url + path,
            data=data,
            method=method,
            headers={**self.headers, "Content-Type": content_type, **(headers or {})},
        )
        try:
            with urllib.request.urlopen(req, timeout=timeout_s) as resp:
                return resp.read()
        except urllib.error.HTTPError as exc:
            raise _error(exc) from None

    def create_batch(
        self,
        requests: list[dict[str, Any]] | None = None,
        *,
        jsonl: str | Path | None = None,
        metadata: dict[str, Any] | None = None,
        webhook: dict[str, Any] | None = None,
        idempotency_key: str | None = None,
    ) -> dict[str, Any]:
        """Submit a batch: job requests that each carry a custom_id, or a JSONL file of them.

        webhook ({"url": ..., "events": [...]}) is POSTed the batch when its first job starts and
        when its last one ends. With an idempotency_key, a retry returns the first one's batch.
        """
        if (requests is None) == (jsonl is None):
            raise ValueError("give exactly one of requests or jsonl")
        headers = _idempotency(idempotency_key)
        options = {k: v for k, v in {"metadata": metadata, "webhook": webhook}.items() if v is not None}
        if jsonl is not None:
            data, content_type = Path(jsonl).read_bytes(), "application/x-ndjson"
            if options:  # a JSONL body has no room for them: send a form, the file beside them
                data, content_type = _multipart(Path(jsonl).name, data, options)
            raw = self._send("POST", "/v1/batches", data, content_type, BATCH_SUBMIT_S, headers)
            return json.loads(raw)
        return self._call("POST", "/v1/batches", {"requests": requests, **options}, BATCH_SUBMIT_S, headers)

    def get_batch(self, batch_id: str, wait_s: float = 0) -> dict[str, Any]:
        """Return a batch (counts; results once done), blocking server-side up to wait_s for it to end."""
        suffix = f"?wait={wait_s:g}" if wait_s else ""
        return self._call("GET", f"/v1/batches/{batch_id}{suffix}", timeout_s=self.timeout_s + wait_s)

    def wait_batch(self, batch_id: str, timeout_s: float | None = None) -> dict[str, Any]:
        """Long-poll until every job of the batch has ended (or timeout_s passes) and return it."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while True:
            left = LONG_POLL_S if deadline is None else min(LONG_POLL_S, deadline - time.monotonic())
            batch = self.get_batch(batch_id, wait_s=max(0, left))
            if batch["status"] != "in_progress" or (deadline is not None and time.monotonic() >= deadline):
                return batch

    def batch_results(self, batch_id: str) -> list[dict[str, Any]]:
        """Return a finished batch's results from its JSONL download, in submission order."""
        raw = self._send("GET", f"/v1/batches/{batch_id}/results", None, "application/json", self.timeout_s)
        return [json.loads(line) for line in raw.splitlines() if line.strip()]

    def cancel_batch(self, batch_id: str) -> dict[str, Any]:
        """Cancel every job of a batch that has not ended; return the batch."""
        return self._call("POST", f"/v1/batches/{batch_id}/cancel")
