"""A small Python client for the genq HTTP API (standard library only)."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

DEFAULT_URL = "http://127.0.0.1:8000"
LONG_POLL_S = 30  # seconds each ?wait= request blocks while waiting for a job
STREAM_IDLE_S = 60  # seconds a stream may stay silent (the server sends keepalives every 15 s)


class GenqError(Exception):
    """An error answer from the API, with its HTTP status and error code."""

    def __init__(self, status: int, code: str, message: str, body: dict[str, Any] | None = None) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status, self.code, self.message, self.body = status, code, message, body or {}


def _error(exc: urllib.error.HTTPError) -> GenqError:
    try:
        payload = json.loads(exc.read())
    except ValueError:
        payload = {}
    err = payload.get("error", {})
    return GenqError(exc.code, err.get("code", "http_error"), err.get("message", str(exc.reason)), payload)


class Client:
    """Submit, get, wait for and cancel genq jobs."""

    def __init__(
        self, base_url: str = DEFAULT_URL, timeout_s: float = 10.0, api_key: str | None = None
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout_s = timeout_s
        self.headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}

    def _call(
        self, method: str, path: str, body: dict[str, Any] | None = None, timeout_s: float | None = None
    ) -> dict[str, Any]:
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(
            self.base_url + path,
            data=data,
            method=method,
            headers={**self.headers, **({"Content-Type": "application/json"} if data else {})},
        )
        try:
            with urllib.request.urlopen(req, timeout=timeout_s or self.timeout_s) as resp:
                return json.loads(resp.read() or b"{}")
        except urllib.error.HTTPError as exc:
            raise _error(exc) from None

    def submit(
        self, prompt: str | None = None, *, messages: list[dict[str, str]] | None = None, **params: Any
    ) -> dict[str, Any]:
        """Submit a job (prompt or messages, plus any generation parameters); return it queued."""
        body = {k: v for k, v in {"prompt": prompt, "messages": messages, **params}.items() if v is not None}
        return self._call("POST", "/v1/jobs", body)

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

    def cancel(self, job_id: str) -> dict[str, Any]:
        """Cancel a job; return it as the API saw it."""
        return self._call("POST", f"/v1/jobs/{job_id}/cancel")

    def models(self) -> dict[str, Any]:
        """Return the model catalog with ready workers per model."""
        return self._call("GET", "/v1/models")
