"""A bounded, seeded mix of clients: streamed, long-polled, batched, cancelled, retried and webhooked jobs.

Every submission carries an Idempotency-Key and is retried with it through either API process
until it is answered, so a job is counted as accepted exactly when some answer named it.
"""

from __future__ import annotations

import json
import random
import threading
import time
import urllib.error
from collections import Counter
from dataclasses import dataclass, field
from http.client import HTTPException
from typing import Any

from genq.client import Client, GenqError

RETRY_FOR_S = (
    180  # how long one call is retried through outages (past ABANDONED_KEY_S) before it counts as refused
)
RETRY_GAP_S = (0.2, 1.0)  # seconds between retries
KINDS = ("stream", "poll", "batch", "cancel", "idempotent", "webhook")
TERMINAL = ("succeeded", "failed", "cancelled")


class Refused(Exception):
    """A call that no API process answered (or that kept failing) within RETRY_FOR_S."""


@dataclass
class History:
    """What the clients saw, for the checker."""

    jobs: dict[str, str] = field(default_factory=dict)  # accepted job id → kind
    batches: dict[str, int] = field(default_factory=dict)  # accepted batch id → its job count
    keys: dict[str, set[str]] = field(default_factory=dict)  # Idempotency-Key → ids answered
    webhook_jobs: set[str] = field(default_factory=set)
    stream_mismatches: list[str] = field(default_factory=list)  # read live over SSE
    ops: Counter = field(default_factory=Counter)
    refused: Counter = field(default_factory=Counter)  # calls never answered (reported, not violations)
    server_errors: Counter = field(default_factory=Counter)  # 500s: a violation (no request may cause one)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def answered(self, key: str, target_id: str) -> None:
        """Note an id that a submission with this key was answered with."""
        with self.lock:
            self.keys.setdefault(key, set()).add(target_id)


class Load:
    """Client threads that run random operations until stopped."""

    def __init__(self, urls: list[str], seed: int, hook_url: str, model: str, threads: int = 6) -> None:
        self.urls = urls
        self.seed = seed
        self.hook_url = hook_url
        self.model = model
        self.threads = threads
        self.history = History()

    def run(self, stop: threading.Event) -> None:
        """Run the client threads until stop is set and each has finished its operation in hand."""
        workers = [
            threading.Thread(target=self._client, args=(n, stop), name=f"chaos-client-{n}")
            for n in range(self.threads)
        ]
        for t in workers:
            t.start()
        for t in workers:
            t.join()

    def _client(self, n: int, stop: threading.Event) -> None:
        rng = random.Random(f"{self.seed}:{n}")
        count = 0
        while not stop.is_set():
            kind = rng.choice(KINDS)
            count += 1
            try:
                getattr(self, f"_{kind}")(rng, f"{self.seed}-{n}-{count}")
                self.history.ops[kind] += 1
            except Refused as exc:
                self.history.refused[f"{kind}: {exc}"[:80]] += 1
            except GenqError as exc:
                counter = self.history.server_errors if exc.status >= 500 else self.history.refused
                counter[f"{kind}: {exc.status} {exc.code}"] += 1

    # --- calls through outages -------------------------------------------------
    def _retry(self, rng: random.Random, call: Any) -> Any:
        """Call call(client) through either API until answered; GenqErrors other than 503 propagate."""
        deadline = time.monotonic() + RETRY_FOR_S
        while True:
            client = Client(rng.choice(self.urls), timeout_s=15)
            try:
                return call(client)
            except GenqError as exc:
                # 409 "still being processed": the first request with this key has not finished.
                busy = exc.status == 409 and "still being processed" in str(exc)
                if exc.status not in (502, 503, 504) and not busy:
                    raise
                last = f"{exc.status} {exc.code}"
            except (OSError, HTTPException, urllib.error.URLError, json.JSONDecodeError) as exc:
                last = type(exc).__name__
            if time.monotonic() > deadline:
                raise Refused(last)
            time.sleep(rng.uniform(*RETRY_GAP_S))

    def _submit(self, rng: random.Random, key: str, kind: str, **params: Any) -> str:
        job = self._retry(rng, lambda c: c.submit(model=self.model, idempotency_key=key, **params))
        self.history.answered(key, job["id"])
        with self.history.lock:
            self.history.jobs[job["id"]] = kind
        return job["id"]

    def _wait(self, rng: random.Random, job_id: str) -> dict[str, Any]:
        return self._retry(rng, lambda c: c.get(job_id, wait_s=rng.choice([5, 20])))

    def _params(self, rng: random.Random) -> dict[str, Any]:
        params: dict[str, Any] = {"max_new_tokens": rng.randint(8, 160), "ignore_eos": rng.random() < 0.7}
        if rng.random() < 0.5:
            params.update(temperature=0)
        else:
            params.update(temperature=0.8, seed=rng.randint(0, 2**31))
        return params

    # --- operations ------------------------------------------------------------
    def _stream(self, rng: random.Random, key: str) -> None:
        """Read the job's SSE stream with the reset rule; reconnect from the start when cut off."""
        job_id = self._submit(rng, key, "stream", prompt=f"stream {key}", **self._params(rng))
        deadline = time.monotonic() + RETRY_FOR_S * 3
        while time.monotonic() < deadline:
            text = ""
            try:
                for event, data in Client(rng.choice(self.urls), timeout_s=15).stream(job_id):
                    if event == "token":
                        text += data["text"]
                    elif event == "reset":
                        text = ""
                    elif event == "done":
                        out = (data.get("output") or {}).get("text")
                        if out is not None and out != text:
                            with self.history.lock:
                                self.history.stream_mismatches.append(job_id)
                        return
            except (GenqError, OSError, HTTPException, ValueError):
                pass
            time.sleep(rng.uniform(*RETRY_GAP_S))
        raise Refused("stream never ended")

    def _poll(self, rng: random.Random, key: str) -> None:
        job_id = self._submit(rng, key, "poll", prompt=f"poll {key}", **self._params(rng))
        deadline = time.monotonic() + RETRY_FOR_S * 3
        while self._wait(rng, job_id)["status"] not in TERMINAL:
            if time.monotonic() > deadline:
                return  # the checker waits longer and counts it if it never ends

    def _batch(self, rng: random.Random, key: str) -> None:
        requests = [
            {
                "custom_id": f"r{i}",
                "prompt": f"batch {key} item {i}",
                "model": self.model,
                **self._params(rng),
            }
            for i in range(rng.randint(2, 6))
        ]
        batch = self._retry(rng, lambda c: c.create_batch(requests, idempotency_key=key))
        self.history.answered(key, batch["id"])
        with self.history.lock:
            self.history.batches[batch["id"]] = len(requests)
        if rng.random() < 0.2:
            time.sleep(rng.uniform(0, 1))
            self._retry(rng, lambda c: c.cancel_batch(batch["id"]))

    def _cancel(self, rng: random.Random, key: str) -> None:
        job_id = self._submit(
            rng, key, "cancel", prompt=f"cancel {key}", max_new_tokens=2000, ignore_eos=True
        )
        time.sleep(rng.uniform(0, 3))
        try:
            self._retry(rng, lambda c: c.cancel(job_id))
        except GenqError as exc:
            if exc.code != "not_cancellable":  # it ended first
                raise

    def _idempotent(self, rng: random.Random, key: str) -> None:
        """Send the same submission again with its key, through either API, now or a little later."""
        params = {"prompt": f"idempotent {key}", **self._params(rng)}
        self._submit(rng, key, "idempotent", **params)
        for _ in range(rng.randint(1, 3)):
            time.sleep(rng.uniform(0, 2))
            self._submit(rng, key, "idempotent", **params)

    def _webhook(self, rng: random.Random, key: str) -> None:
        hook = {"url": self.hook_url, "events": ["started", "completed"]}
        job_id = self._submit(rng, key, "webhook", prompt=f"webhook {key}", webhook=hook, **self._params(rng))
        with self.history.lock:
            self.history.webhook_jobs.add(job_id)
        if rng.random() < 0.5:
            self._wait(rng, job_id)
