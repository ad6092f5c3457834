"""A worker process: one model on one device, its engine thread, heartbeat, and the job lifecycle."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import random
import signal
import socket
import threading
import time
from typing import Any

import redis
from celery import Celery

from shared.jobstore import JobStore, connect
from shared.schemas import ErrorCode, FinishReason, JobCreate, Status
from shared.settings import CRASH_MARKER, ModelSpec, Settings
from worker.engine import Engine, GenerationError, Hooks, Request
from worker.reconciler import Reconciler
from worker.sampling import RowParams

log = logging.getLogger(__name__)

FINISH_RETRY_S = 60  # how long a finished job's result waits for Redis to come back


class StoreHooks(Hooks):
    """Engine hooks backed by the job store; a Redis blip costs a stream event, never the batch."""

    def __init__(self, store: JobStore) -> None:
        self.store = store

    def on_text(self, deltas: dict[str, str]) -> None:
        """Append new text to each job's event stream."""
        try:
            self.store.publish_tokens(deltas)
        except redis.RedisError as exc:
            log.warning("could not publish tokens: %s", exc)

    def cancelled(self, ids: list[str]) -> set[str]:
        """Return the running jobs whose cancellation a client asked for."""
        try:
            return self.store.cancel_requested(ids)
        except redis.RedisError as exc:
            log.warning("could not read cancel flags: %s", exc)
            return set()


class Runtime:
    """Everything one worker process holds: settings, store, the loaded engine and its threads."""

    def __init__(self, settings: Settings, spec: ModelSpec, device: str) -> None:
        self.settings = settings
        self.spec = spec
        self.device = device
        self.store = JobStore(connect(settings.redis_url), settings.result_ttl)
        self.host = socket.gethostname()
        self.worker_id = f"{spec.name}@{self.host}:{os.getpid()}"
        self.engine: Engine | None = None
        self.inflight: set[str] = set()  # jobs this worker has claimed and not yet finished
        self._stop = threading.Event()  # stops the engine
        self._leaving = threading.Event()  # stops the heartbeat
        self._threads: list[threading.Thread] = []

    def load(self) -> None:
        """Load the model (converting and caching it if need be) and start the engine thread."""
        from worker.loader import load_model

        t0 = time.perf_counter()
        model, tokenizer = load_model(self.spec, self.device, self.settings.cache_dir)
        self.engine = Engine(
            model, tokenizer, self.settings.max_batch, self.spec.context_length, StoreHooks(self.store)
        )
        log.info("model %s loaded on %s in %.1f s", self.spec.name, self.device, time.perf_counter() - t0)
        self._spawn("genq-engine", self.engine.run, self._stop)

    def start_heartbeat(self, app: Celery) -> None:
        """Announce this worker as ready and keep announcing it; start the fleet's reconciler."""
        self._beat()
        self._spawn("genq-heartbeat", self._heartbeat_loop)
        self._spawn("genq-reconciler", Reconciler(self.store, app, self.settings).run, self._leaving)

    def leave(self) -> None:
        """Stop the heartbeat and leave the registry, so that readiness checks stop counting us."""
        self._leaving.set()
        with contextlib.suppress(redis.RedisError):  # else the record lapses after worker_ttl
            self.store.unregister(self.worker_id)

    def stop(self) -> None:
        """Leave the registry and stop the engine; call after the jobs in hand have finished."""
        self.leave()
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=5)

    def _spawn(self, name: str, target: Any, *args: Any) -> None:
        thread = threading.Thread(target=target, args=args, name=name, daemon=True)
        thread.start()
        self._threads.append(thread)

    def _beat(self) -> None:
        info = {
            "model": self.spec.name,
            "device": self.device,
            "host": self.host,
            "pid": os.getpid(),
            "queue": self.spec.queue,
            "max_batch": self.settings.max_batch,
            "active": self.engine.active if self.engine else 0,
        }
        self.store.heartbeat(self.worker_id, info, self.settings.worker_ttl)

    def _heartbeat_loop(self) -> None:
        # Leases renew until the engine stops: a draining worker still holds its jobs.
        while not self._stop.wait(self.settings.heartbeat_interval):
            try:
                self.store.renew(list(self.inflight), self.settings.lease_seconds)
                if not self._leaving.is_set():
                    self._beat()
            except redis.RedisError as exc:
                log.warning("heartbeat failed: %s", exc)

    # --- one job ------------------------------------------------------------
    def run_job(self, job_id: str) -> None:
        """Claim a queued job under a lease, generate, and store its one terminal result."""
        claimed = self.store.claim(job_id, self.worker_id, self.device, self.settings.lease_seconds)
        if claimed != "claimed":
            log.info("job %s not run: %s", job_id, claimed or "unknown or expired record")
            return
        self.inflight.add(job_id)  # the heartbeat renews its lease from now on
        try:
            rec = self.store.raw(job_id)
            try:
                self._generate(job_id, rec)
            except GenerationError as exc:
                self._finish(job_id, Status.FAILED, error={"code": exc.code.value, "message": str(exc)})
            except Exception as exc:  # the worker must outlive any one job
                log.exception("job %s failed", job_id)
                self._finish(
                    job_id,
                    Status.FAILED,
                    error={"code": ErrorCode.INTERNAL.value, "message": f"{type(exc).__name__}: {exc}"},
                )
        finally:
            self.inflight.discard(job_id)

    def _finish(self, job_id: str, status: Status, **fields: Any) -> None:
        """Store the result, waiting out a Redis outage (the lease keeps the job ours meanwhile)."""
        deadline = time.monotonic() + FINISH_RETRY_S
        while True:
            try:
                if not self.store.finish(job_id, status, holder=self.worker_id, **fields):
                    log.warning("job %s: result not stored, the job ended or moved on", job_id)
                return
            except redis.RedisError as exc:
                if time.monotonic() > deadline:
                    raise  # the lease lapses and the reconciler runs the job again
                log.warning("job %s: cannot store the result yet (%s); retrying", job_id, exc)
                time.sleep(1)

    def _generate(self, job_id: str, rec: dict[str, str]) -> None:
        assert self.engine is not None
        job = JobCreate.model_validate(json.loads(rec["request"]))
        created_at = float(rec["created_at"])
        started = time.time()
        t0 = time.perf_counter()
        messages = [m.model_dump(mode="json") for m in job.messages] if job.messages else None
        input_ids = self.engine.encode(prompt=job.prompt, messages=messages)
        tokenize_s = time.perf_counter() - t0
        if self.settings.fault_injection and CRASH_MARKER in (job.prompt or json.dumps(messages)):
            os.kill(os.getpid(), signal.SIGKILL)  # a poison job, for the fault-injection tests
        seed = job.seed if job.seed is not None else random.getrandbits(63)
        params = RowParams(
            sampling=job.sampling,
            temperature=job.temperature or 1.0,
            top_k=job.top_k,
            top_p=job.top_p,
            repetition_penalty=job.repetition_penalty,
        )
        max_new = job.max_new_tokens or self.spec.default_max_new_tokens
        req = Request(
            job_id,
            input_ids,
            max_new,
            params,
            seed,
            list(job.stop),
            job.ignore_eos,
            deadline=float(rec["deadline"]) if rec.get("deadline") else None,
            solo=rec.get("isolate") == "1",
        )
        result = self.engine.submit(req).result()
        finished = time.time()
        status, error = Status.SUCCEEDED, None
        if result.finish_reason is FinishReason.CANCELLED:
            status = Status.CANCELLED
        elif result.finish_reason is FinishReason.TIMEOUT:
            status = Status.FAILED
            error = {
                "code": ErrorCode.TIMEOUT.value,
                "message": "the job's deadline passed while it ran; output holds the text made so far",
            }
        self._finish(
            job_id,
            status,
            error=error,
            output={"text": result.text, "finish_reason": result.finish_reason.value},
            usage={"prompt_tokens": result.prompt_tokens, "completion_tokens": result.completion_tokens},
            timings={
                "queued": round((started - created_at) * 1000, 2),
                "tokenize": round(tokenize_s * 1000, 2),
                "generate": round(result.generate_s * 1000, 2),
                "decode": round(result.decode_s * 1000, 2),
                "total": round((finished - created_at) * 1000, 2),
                "tokens_per_second": round(result.completion_tokens / result.generate_s, 2)
                if result.generate_s > 0
                else None,
            },
            seed=str(seed) if job.sampling else None,
        )
        # Ids, counts and timings only: prompts and outputs stay out of logs unless GENQ_LOG_TEXT=1.
        log.info(
            "job %s %s: %d prompt + %d completion tokens, %s, %.0f ms",
            job_id,
            status.value,
            result.prompt_tokens,
            result.completion_tokens,
            result.finish_reason.value,
            (finished - created_at) * 1000,
        )
        if self.settings.log_text:
            log.info("job %s text: prompt=%r output=%r", job_id, job.prompt or messages, result.text)
