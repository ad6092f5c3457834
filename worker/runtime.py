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
from concurrent.futures import Future
from typing import Any

import redis
from celery import Celery

from shared.jobstore import JobStore
from shared.metrics import job_ops
from shared.redisconn import connect
from shared.schemas import ErrorCode, FinishReason, JobCreate, Status
from shared.settings import CRASH_MARKER, ModelSpec, Settings
from worker.engine import Engine, GenerationError, Hooks, Request, RowLost
from worker.reconciler import Reconciler
from worker.sampling import RowParams
from worker.webhooks import SENDERS as WEBHOOK_SENDERS
from worker.webhooks import WebhookSender

log = logging.getLogger(__name__)

FINISH_RETRY_S = 60  # how long a finished job's result waits for Redis to come back
GREEDY = RowParams(sampling=False, temperature=1.0, top_k=0, top_p=1.0, repetition_penalty=1.0)


class StoreHooks(Hooks):
    """Engine hooks backed by the job store; a Redis blip delays stream events, never loses them."""

    def __init__(self, store: JobStore, attempts: dict[str, int]) -> None:
        self.store = store
        self.attempts = attempts  # job id → the attempt this worker holds it at (its fencing token)
        self.pending: dict[str, str] = {}  # text not on its stream yet (Redis was unreachable)
        self.sent: dict[str, int] = {}  # bytes of each attempt's text already on its stream
        self._lock = threading.Lock()  # the engine thread publishes, job threads flush
        self._failing = False  # one log line per outage, not one per step

    def on_text(self, deltas: dict[str, str]) -> set[str] | None:
        """Append new text to each job's event stream, fenced; return the jobs no longer ours."""
        with self._lock:
            for job_id, text in deltas.items():
                if job_id in self.attempts:  # a row no claim started (a test's) writes nothing
                    self.pending[job_id] = self.pending.get(job_id, "") + text
        try:
            return self.flush()
        except redis.RedisError as exc:
            if not self._failing:
                log.warning("could not publish tokens (kept, sent when Redis answers): %s", exc)
            self._failing = True
            return None

    def flush(self, job_ids: set[str] | None = None) -> set[str]:
        """Publish the text kept back for these jobs (all: None); raise RedisError if Redis is away."""
        with self._lock:
            batch = {j: t for j, t in self.pending.items() if job_ids is None or j in job_ids}
            if not batch:
                return set()
            offsets = {j: self.sent.get(j, 0) for j in batch}
            lost = self.store.publish_tokens(batch, dict(self.attempts), offsets)
            self._failing = False
            for job_id, text in batch.items():
                del self.pending[job_id]
                self.sent[job_id] = offsets[job_id] + len(text.encode())
            return lost

    def cancelled(self, ids: list[str]) -> set[str]:
        """Return the running jobs whose cancellation a client asked for."""
        try:
            return self.store.cancel_requested(ids)
        except redis.RedisError as exc:
            log.warning("could not read cancel flags: %s", exc)
            return set()

    def forget(self, job_id: str) -> None:
        """Drop what is kept for a job this worker is done with."""
        with self._lock:
            self.pending.pop(job_id, None)
            self.sent.pop(job_id, None)


class Runtime:
    """Everything one worker process holds: settings, store, the loaded engine and its threads."""

    def __init__(self, settings: Settings, spec: ModelSpec, device: str) -> None:
        self.settings = settings
        self.spec = spec
        self.device = device
        skew_s = settings.test_clock_skew_s
        self.store = JobStore(
            connect(settings.redis_url, settings.redis_sentinel_master),
            settings.result_ttl,
            clock=(lambda: time.time() + skew_s) if skew_s else time.time,
        )
        self.host = socket.gethostname()
        self.worker_id = f"{spec.name}@{self.host}:{os.getpid()}"
        self.engine: Engine | None = None
        self.inflight: dict[str, int] = {}  # jobs claimed and not yet finished → attempt held
        self.hooks = StoreHooks(self.store, self.inflight)  # the engine's, once it is loaded
        self.confirmed: dict[str, float] = {}  # job → monotonic time its lease was last known good
        self._stop = threading.Event()  # stops the engine
        self._leaving = threading.Event()  # stops the heartbeat
        self._threads: list[threading.Thread] = []

    def load(self) -> None:
        """Load the model and start the engine on its own thread; return once it has warmed up."""
        ready: Future = Future()
        self._spawn("genq-engine", self._engine_thread, ready)
        ready.result()  # a load failure is raised here, on the caller's thread

    def _engine_thread(self, ready: Future) -> None:
        """Load, warm up, then run the engine, all on this one thread."""
        from worker.loader import load_model

        # Every torch computation of the process runs on this thread. With OpenMP, each thread
        # that computes keeps its own team of threads; a warm-up on the main thread leaves a team
        # that then competes with the engine's for the cores (measured on 2 cores: 52 ms a token
        # for one sequence, against 31 ms with one computing thread).
        try:
            t0 = time.perf_counter()
            model, tokenizer = load_model(self.spec, self.device, self.settings.cache_dir)
            engine = Engine(model, tokenizer, self.settings.max_batch, self.spec.context_length)
            # One tiny generation before announcing readiness: it pages the (lazily mapped) weights
            # in and warms the kernels, so the first real job does not pay for them. No hooks yet:
            # the warm-up is no job, and nothing of it goes to Redis.
            engine.generate([Request("warm-up", engine.encode(prompt="Hello"), 2, GREEDY, 0)])
            engine.hooks = self.hooks
            self.engine = engine
            log.info("model %s loaded on %s in %.1f s", self.spec.name, self.device, time.perf_counter() - t0)
        except BaseException as exc:  # handed to load(), which raises it on its own thread
            ready.set_exception(exc)
            return
        ready.set_result(None)
        engine.run(self._stop)

    def start_heartbeat(self, app: Celery) -> None:
        """Announce this worker as ready and keep announcing it; start the fleet's reconciler."""
        self._beat()
        self._spawn("genq-heartbeat", self._heartbeat_loop)
        self._spawn("genq-reconciler", Reconciler(self.store, app, self.settings).run, self._leaving)
        # Webhook senders stop with the engine, not on leaving: a draining worker still sends the
        # completions of the jobs it finishes (and a dead one's deliveries fall to the others).
        sender = WebhookSender(self.store, self.settings)
        for n in range(WEBHOOK_SENDERS):
            self._spawn(f"genq-webhooks-{n}", sender.run, self._stop)

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
                self._renew()
                if not self._leaving.is_set():
                    self._beat()
            except redis.RedisError as exc:
                log.warning("heartbeat failed: %s", exc)
            finally:
                self._drop_unconfirmed()

    def _renew(self) -> None:
        """Renew the leases of the jobs in hand; drop those another attempt took or that ended."""
        held = dict(self.inflight)
        asked = time.monotonic()  # the lease runs from Redis's now, which is later than this
        lost = self.store.renew(held, self.settings.lease_seconds)
        for job_id in held.keys() - lost:
            if job_id in self.confirmed:
                self.confirmed[job_id] = asked
        if lost and self.engine is not None:
            log.warning("leases lost (the jobs moved on): %s", sorted(lost))
            self.engine.forget(lost)

    def _drop_unconfirmed(self) -> None:
        """Treat as lost the jobs whose lease could not be renewed for a whole lease period (Redis
        unreachable, or this process paused): they may already run elsewhere."""
        limit = time.monotonic() - self.settings.lease_seconds
        stale = {job_id for job_id, at in list(self.confirmed.items()) if at < limit}
        if stale and self.engine is not None:
            log.warning(
                "no lease renewal for %.1f s: dropping jobs %s", self.settings.lease_seconds, sorted(stale)
            )
            for job_id in stale:
                self.confirmed.pop(job_id, None)
            self.engine.forget(stale)

    # --- one job ------------------------------------------------------------
    def run_job(self, job_id: str) -> None:
        """Claim a queued job under a lease, generate, and store its one terminal result."""
        asked = time.monotonic()
        claimed, attempt = self.store.claim_attempt(
            job_id, self.worker_id, self.device, self.settings.lease_seconds
        )
        if claimed != "claimed":
            reason = claimed or "unknown or expired record"
            log.info(
                "job %s not run: %s", job_id, reason, extra=self._fields("job not run", job_id, reason=reason)
            )
            return
        self.inflight[job_id] = attempt  # the heartbeat renews its lease from now on
        self.confirmed[job_id] = asked
        try:
            rec = self.store.raw(job_id)
            log.info("job %s started", job_id, extra=self._fields("job started", job_id, attempt=attempt))
            try:
                self._generate(job_id, rec)
            except RowLost:
                # Fenced: nothing of this attempt is stored; the attempt that holds the job does that.
                log.warning(
                    "job %s dropped: no longer ours",
                    job_id,
                    extra=self._fields("job dropped", job_id, attempt=attempt),
                )
            except GenerationError as exc:
                error = {"code": exc.code.value, "message": str(exc)}
                log.warning(
                    "job %s failed: %s",
                    job_id,
                    exc.code.value,
                    extra=self._fields("job failed", job_id, code=exc.code.value),
                )
                self._finish(job_id, Status.FAILED, error=error)
            except Exception as exc:  # the worker must outlive any one job
                code = ErrorCode.INTERNAL.value
                log.exception(
                    "job %s failed: %s", job_id, code, extra=self._fields("job failed", job_id, code=code)
                )
                error = {"code": code, "message": f"{type(exc).__name__}: {exc}"}
                self._finish(job_id, Status.FAILED, error=error)
        finally:
            self.inflight.pop(job_id, None)
            self.confirmed.pop(job_id, None)
            self.hooks.forget(job_id)

    def _finish(self, job_id: str, status: Status, **fields: Any) -> bool:
        """Store the result, waiting out a Redis outage (the lease keeps the job ours meanwhile);
        return False when the job had ended or moved on, so the result was not stored."""
        deadline = time.monotonic() + FINISH_RETRY_S
        while True:
            try:
                self.hooks.flush({job_id})  # the stream holds all the text before the done event
                stored = self.store.finish(
                    job_id, status, holder=self.worker_id, attempt=self.inflight.get(job_id, -1), **fields
                )
                if not stored:
                    log.warning("job %s: result not stored, the job ended or moved on", job_id)
                return stored
            except redis.RedisError as exc:
                if time.monotonic() > deadline:
                    raise  # the lease lapses and the reconciler runs the job again
                log.warning("job %s: cannot store the result yet (%s); retrying", job_id, exc)
                time.sleep(1)

    def _fields(self, event: str, job_id: str, **more: Any) -> dict[str, Any]:
        """Return the extra fields of a job event's log line (JSON logs show them as keys)."""
        return {"event": event, "job_id": job_id, "model": self.spec.name, "worker": self.worker_id, **more}

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
        # The engine times from admission: its first token came (generate - first_token) + decode
        # seconds before the result did.
        ttft_s = (
            None
            if result.first_token_s is None
            else finished - result.decode_s - (result.generate_s - result.first_token_s) - created_at
        )
        tokens_per_s = result.completion_tokens / result.generate_s if result.generate_s > 0 else None
        timings = {
            "queued": round((started - created_at) * 1000, 2),
            "tokenize": round(tokenize_s * 1000, 2),
            "generate": round(result.generate_s * 1000, 2),
            "decode": round(result.decode_s * 1000, 2),
            "total": round((finished - created_at) * 1000, 2),
            "time_to_first_token": round(ttft_s * 1000, 2) if ttft_s is not None else None,
            "tokens_per_second": round(tokens_per_s, 2) if tokens_per_s is not None else None,
        }
        metrics = job_ops(
            self.spec.name,
            queue_wait_s=started - created_at,
            latency_s=finished - created_at,
            ttft_s=ttft_s,
            tokens_per_s=tokens_per_s if result.completion_tokens else None,
            completion_tokens=result.completion_tokens,
        )
        stored = self._finish(
            job_id,
            status,
            metrics=metrics,  # added in the fenced step that stores the result
            error=error,
            output={"text": result.text, "finish_reason": result.finish_reason.value},
            usage={"prompt_tokens": result.prompt_tokens, "completion_tokens": result.completion_tokens},
            timings=timings,
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
            extra=self._fields(
                "job finished",
                job_id,
                status=status.value,
                finish_reason=result.finish_reason.value,
                prompt_tokens=result.prompt_tokens,
                completion_tokens=result.completion_tokens,
                timings=timings,  # ms, as stored on the job
                stored=stored,  # False: the job had ended or moved on, so this result was dropped
            ),
        )
        if self.settings.log_text:
            log.info(
                "job %s text: prompt=%r output=%r",
                job_id,
                job.prompt or messages,
                result.text,
                extra=self._fields("job text", job_id),
            )
