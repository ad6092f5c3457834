"""A worker process: one model on one device, its engine thread, heartbeat, and the job lifecycle."""

from __future__ import annotations

import json
import logging
import os
import random
import socket
import threading
import time
from typing import Any

import redis

from shared.jobstore import JobStore, connect
from shared.schemas import ErrorCode, FinishReason, JobCreate, Status
from shared.settings import ModelSpec, Settings
from worker.engine import Engine, GenerationError, Hooks, Request
from worker.sampling import RowParams

log = logging.getLogger(__name__)


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
        self._stop = threading.Event()  # stops the engine
        self._leaving = threading.Event()  # stops the heartbeat
        self._threads: list[threading.Thread] = []

    def load(self) -> None:
        """Load the model (converting and caching it if need be) and start the engine thread."""
        from worker.loader import load_model

        t0 = time.perf_counter()
        model, tokenizer = load_model(self.spec, self.device, self.settings.cache_dir)
        self.engine = Engine(model, tokenizer, self.settings.max_batch, self.spec.context_length,
                             StoreHooks(self.store))
        log.info("model %s loaded on %s in %.1f s", self.spec.name, self.device, time.perf_counter() - t0)
        self._spawn("genq-engine", self.engine.run, self._stop)

    def start_heartbeat(self) -> None:
        """Announce this worker as ready, and keep announcing it until stop()."""
        self._beat()
        self._spawn("genq-heartbeat", self._heartbeat_loop)

    def leave(self) -> None:
        """Stop the heartbeat and leave the registry, so that readiness checks stop counting us."""
        self._leaving.set()
        try:
            self.store.unregister(self.worker_id)
        except redis.RedisError:
            pass  # the record lapses by itself after worker_ttl

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
            "model": self.spec.name, "device": self.device, "host": self.host, "pid": os.getpid(),
            "queue": self.spec.queue, "max_batch": self.settings.max_batch,
            "active": self.engine.active if self.engine else 0,
        }
        self.store.heartbeat(self.worker_id, info, self.settings.worker_ttl)

    def _heartbeat_loop(self) -> None:
        while not self._leaving.wait(self.settings.heartbeat_interval):
            try:
                self._beat()
            except redis.RedisError as exc:
                log.warning("heartbeat failed: %s", exc)

    # --- one job ------------------------------------------------------------
    def run_job(self, job_id: str) -> None:
        """Claim a queued job, generate, and store its one terminal result."""
        claimed = self.store.claim(job_id, self.worker_id, self.device)
        if claimed != "claimed":
            log.info("job %s not run: status is %s", job_id, claimed or "unknown (expired)")
            return
        rec = self.store.raw(job_id)
        try:
            self._generate(job_id, JobCreate.model_validate(json.loads(rec["request"])),
                           float(rec["created_at"]))
        except GenerationError as exc:
            self.store.finish(job_id, Status.FAILED, error={"code": exc.code.value, "message": str(exc)})
        except Exception as exc:  # the worker must outlive any one job
            log.exception("job %s failed", job_id)
            self.store.finish(job_id, Status.FAILED, error={
                "code": ErrorCode.INTERNAL.value, "message": f"{type(exc).__name__}: {exc}"})

    def _generate(self, job_id: str, job: JobCreate, created_at: float) -> None:
        assert self.engine is not None
        started = time.time()
        t0 = time.perf_counter()
        messages = [m.model_dump(mode="json") for m in job.messages] if job.messages else None
        input_ids = self.engine.encode(prompt=job.prompt, messages=messages)
        tokenize_s = time.perf_counter() - t0
        seed = job.seed if job.seed is not None else random.getrandbits(63)
        params = RowParams(
            sampling=job.sampling, temperature=job.temperature or 1.0, top_k=job.top_k,
            top_p=job.top_p, repetition_penalty=job.repetition_penalty,
        )
        max_new = job.max_new_tokens or self.spec.default_max_new_tokens
        req = Request(job_id, input_ids, max_new, params, seed, list(job.stop), job.ignore_eos)
        result = self.engine.submit(req).result()
        finished = time.time()
        status = Status.CANCELLED if result.finish_reason is FinishReason.CANCELLED else Status.SUCCEEDED
        self.store.finish(
            job_id, status,
            output={"text": result.text, "finish_reason": result.finish_reason.value},
            usage={"prompt_tokens": result.prompt_tokens, "completion_tokens": result.completion_tokens},
            timings={
                "queued": round((started - created_at) * 1000, 2),
                "tokenize": round(tokenize_s * 1000, 2),
                "generate": round(result.generate_s * 1000, 2),
                "decode": round(result.decode_s * 1000, 2),
                "total": round((finished - created_at) * 1000, 2),
                "tokens_per_second": round(result.completion_tokens / result.generate_s, 2)
                if result.generate_s > 0 else None,
            },
            seed=str(seed) if job.sampling else None,
        )
