"""A worker process: one model on one device, its engine thread, heartbeat, and stopping.

The process side only: what happens to one job (record → engine request, result → stored outcome)
is in worker/jobflow.py as plain functions; run_job here claims, calls them, and stores the result.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import socket
import threading
import time
from concurrent.futures import Future
from typing import Any

import redis
from celery import Celery

from shared import kombufix, tokenizer_info
from shared.jobstore import JobStore
from shared.metrics import job_ops
from shared.reconciler import Reconciler, resend
from shared.records import JobRecord
from shared.redisconn import connect
from shared.schemas import ErrorCode, Status
from shared.settings import CRASH_MARKER, FORWARD_FAULT_MARKER, ModelSpec, Settings
from worker import jobflow
from worker.engine import Arrival, Engine, GenerationError, Request, RowLost, StepFailed
from worker.fencing import Leases, StoreHooks
from worker.rowsafe import fail_forward_on
from worker.sampling import RowParams
from worker.webhooks import SENDERS as WEBHOOK_SENDERS
from worker.webhooks import WebhookSender

log = logging.getLogger(__name__)

FINISH_RETRY_S = 60  # how long a finished job's result waits for Redis to come back
# How long it waits while Redis is up but full (maxmemory, noeviction): the result is kept here
# until an operator frees memory, as no write of anyone's can land meanwhile.
FULL_RETRY_S = 3600
GREEDY = RowParams(sampling=False, temperature=1.0, top_k=0, top_p=1.0, repetition_penalty=1.0)


class Runtime:
    """Everything one worker process holds: settings, store, the loaded engine and its threads."""

    def __init__(self, settings: Settings, spec: ModelSpec, device: str) -> None:
        self.settings = settings
        self.spec = spec
        self.device = device
        skew_s = settings.test_clock_skew_s  # tests only: a host whose clock is off
        self.store = JobStore(
            connect(settings.redis_url, settings.redis_sentinel_master),
            settings.result_ttl,
            clock=(lambda: time.time() + skew_s) if skew_s else time.time,
        )
        self.host = socket.gethostname()
        self.worker_id = f"{spec.name}@{self.host}:{os.getpid()}"
        self.engine: Engine | None = None
        self.leases = Leases(self.store, settings.lease_seconds)  # the jobs claimed and not finished
        self.hooks = StoreHooks(self.store, self.leases.attempts)  # the engine's, once it is loaded
        self.app: Celery | None = None  # set by start_heartbeat; sends the messages of handed-back jobs
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
            engine = Engine(
                model,
                tokenizer,
                self.settings.max_batch,
                self.spec.context_length,
                prefix_cache_tokens=self.settings.prefix_cache_tokens,
            )
            if self.settings.fault_injection:
                fail_forward_on(model, engine.encode(prompt=FORWARD_FAULT_MARKER)[-4:])
            # One tiny generation before announcing readiness: it pages the (lazily mapped) weights
            # in and warms the kernels, so the first real job does not pay for them. No hooks yet:
            # the warm-up is no job, and nothing of it goes to Redis.
            engine.generate([Request("warm-up", engine.encode(prompt="Hello"), 2, GREEDY, 0)])
            engine.hooks = self.hooks
            # The API tokenizes and checks token ids with it, without model files of its own.
            self.store.publish_tokenizer(tokenizer_info.from_hf(self.spec.name, tokenizer, engine.vocab))
            self.engine = engine
            log.info("model %s loaded on %s in %.1f s", self.spec.name, self.device, time.perf_counter() - t0)
        except BaseException as exc:  # handed to load(), which raises it on its own thread
            ready.set_exception(exc)
            return
        ready.set_result(None)
        engine.run(self._stop)

    def start_heartbeat(self, app: Celery) -> None:
        """Announce this worker as ready and keep announcing it; start the fleet's reconciler."""
        self.app = app
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
        grouped = self.store.grouped  # how far claims and finishes shared round trips
        log.info("claims and finishes: %d calls in %d round trips", grouped.calls, grouped.batches)
        acks = kombufix.sent
        log.info("acks on the event loop: %d in %d round trips", acks["acks"], acks["round_trips"])
        if self.engine is not None:
            log.info("prefix cache: %d hits", self.engine.prefixes.hits)

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
            lost: set[str] = set()
            try:
                lost = self.leases.renew()  # fenced: the jobs another attempt took or that ended
                if not self._leaving.is_set():
                    self._beat()
            except redis.RedisError as exc:
                log.warning("heartbeat failed: %s", exc)
            lost |= self.leases.lapsed()  # not renewed for a whole lease: may run elsewhere
            if lost and self.engine is not None:
                self.engine.forget(lost)  # dropped from the batch at its next step

    # --- one job ------------------------------------------------------------
    def run_job(self, job_id: str) -> None:
        """Claim a queued job under a lease, generate, and store its one terminal result."""
        assert self.engine is not None  # Celery starts after load()
        arrival = self.engine.arriving()  # an idle engine waits briefly for it: one prefill for all
        try:
            self._run_claimed(job_id, arrival)
        finally:
            arrival.done()

    def _run_claimed(self, job_id: str, arrival: Arrival) -> None:
        asked = time.monotonic()
        claim = self.store.claim(job_id, self.worker_id, self.device, self.settings.lease_seconds)
        rec = claim.record
        if rec is None:
            reason = claim.outcome or "unknown or expired record"
            log.info(
                "job %s not run: %s", job_id, reason, extra=self._fields("job not run", job_id, reason=reason)
            )
            return
        attempt = claim.attempt  # the fencing token every write for this job carries
        self.leases.hold(job_id, attempt, asked)  # the heartbeat renews its lease from now on
        try:
            log.info("job %s started", job_id, extra=self._fields("job started", job_id, attempt=attempt))
            try:
                self._generate(rec, arrival)
            except RowLost:
                # Fenced: nothing of this attempt is stored; the attempt that holds the job does that.
                log.warning(
                    "job %s dropped: no longer ours",
                    job_id,
                    extra=self._fields("job dropped", job_id, attempt=attempt),
                )
            except StepFailed as exc:
                if exc.solo or not self._hand_back(job_id, exc):
                    self._failed(job_id, exc)
            except GenerationError as exc:
                self._failed(job_id, exc)
            except Exception as exc:  # the worker must outlive any one job
                code = ErrorCode.INTERNAL.value
                log.exception(
                    "job %s failed: %s", job_id, code, extra=self._fields("job failed", job_id, code=code)
                )
                error = jobflow.failure(ErrorCode.INTERNAL, f"{type(exc).__name__}: {exc}")
                self._finish(job_id, Status.FAILED, error=error)
        finally:
            self.leases.release(job_id)
            self.hooks.forget(job_id)

    def _hand_back(self, job_id: str, exc: StepFailed) -> bool:
        """Requeue a job whose batch step failed, to run alone (once); False if it could not be."""
        error = {"code": exc.code.value, "message": str(exc)}
        try:
            outcome = self.store.requeue(job_id, self.settings.max_attempts, self.worker_id, error)
            if outcome == "requeued" and self.app is not None:
                resend(self.store, self.app, job_id)
        except redis.RedisError as exc2:  # the reconciler re-sends it once its lease lapses
            log.warning("job %s: could not hand back (%s)", job_id, exc2)
            return True
        log.warning("job %s handed back to run alone after a failed batch step: %s", job_id, outcome)
        return outcome is not None

    def _failed(self, job_id: str, exc: GenerationError) -> None:
        error = jobflow.failure(exc.code, str(exc))
        log.warning(
            "job %s failed: %s",
            job_id,
            exc.code.value,
            extra=self._fields("job failed", job_id, code=exc.code.value),
        )
        self._finish(job_id, Status.FAILED, error=error)

    def _finish(self, job_id: str, status: Status, **fields: Any) -> bool:
        """Store the result, waiting out a Redis outage (the lease keeps the job ours meanwhile);
        return False when the job had ended or moved on, so the result was not stored."""
        started = time.monotonic()
        while True:
            try:
                self.hooks.flush({job_id})  # the stream holds all the text before the done event
                attempt = self.leases.attempt(job_id)
                stored = self.store.finish(job_id, status, holder=self.worker_id, attempt=attempt, **fields)
                if not stored:
                    log.warning("job %s: result not stored, the job ended or moved on", job_id)
                return stored
            except redis.RedisError as exc:
                full = isinstance(exc, redis.exceptions.OutOfMemoryError)
                if time.monotonic() - started > (FULL_RETRY_S if full else FINISH_RETRY_S):
                    raise  # the lease lapses and the reconciler runs the job again
                log.warning("job %s: cannot store the result yet (%s); retrying", job_id, exc)
                time.sleep(1)

    def _fields(self, event: str, job_id: str, **more: Any) -> dict[str, Any]:
        """Return the extra fields of a job event's log line (JSON logs show them as keys)."""
        return {"event": event, "job_id": job_id, "model": self.spec.name, "worker": self.worker_id, **more}

    def _generate(self, rec: JobRecord, arrival: Arrival) -> None:
        """Run a claimed job on the engine and store its outcome (worker/jobflow.py shapes both)."""
        assert self.engine is not None
        try:  # the API checked it; a record written past the API (or by an older one) is checked again
            job = rec.job
        except ValueError as exc:
            raise GenerationError(
                ErrorCode.VALIDATION_ERROR, f"the stored request is not valid: {exc}"
            ) from None
        started = time.time()
        t0 = time.perf_counter()
        messages = [m.model_dump(mode="json") for m in job.messages] if job.messages else None
        input_ids = job.prompt_ids or self.engine.encode(prompt=job.prompt, messages=messages)
        if (
            job.prompt_ids and max(job.prompt_ids) >= self.engine.vocab
        ):  # the API checks once it knows the vocab
            raise GenerationError(
                ErrorCode.VALIDATION_ERROR, f"prompt token ids must be below {self.engine.vocab}"
            )
        tokenize_s = time.perf_counter() - t0
        if self.settings.fault_injection and CRASH_MARKER in (job.prompt or json.dumps(messages)):
            os.kill(os.getpid(), signal.SIGKILL)  # a poison job, for the fault-injection tests
        req = jobflow.engine_request(rec, input_ids)
        req.constraint = self.engine.constraint(job)  # compiled here, on the job's thread
        future = self.engine.submit(req)
        arrival.done()
        result = future.result()
        finished = time.time()
        out = jobflow.outcome(rec, req, result, started, finished, tokenize_s)
        metrics = job_ops(  # added in the fenced step that stores the result
            self.spec.name,
            queue_wait_s=started - rec.created_at,
            latency_s=finished - rec.created_at,
            ttft_s=out.ttft_s,
            tokens_per_s=out.tokens_per_s if result.completion_tokens else None,
            completion_tokens=result.completion_tokens,
        )
        stored = self._finish(rec.id, out.status, metrics=metrics, **out.fields())
        # Ids, counts and timings only: prompts and outputs stay out of logs unless GENQ_LOG_TEXT=1.
        log.info(
            "job %s %s: %d prompt + %d completion tokens, %s, %.0f ms",
            rec.id,
            out.status.value,
            result.prompt_tokens,
            result.completion_tokens,
            result.finish_reason.value,
            (finished - rec.created_at) * 1000,
            extra=self._fields(
                "job finished",
                rec.id,
                status=out.status.value,
                finish_reason=result.finish_reason.value,
                prompt_tokens=result.prompt_tokens,
                completion_tokens=result.completion_tokens,
                timings=out.timings,  # ms, as stored on the job
                stored=stored,  # False: the job had ended or moved on, so this result was dropped
            ),
        )
        if self.settings.log_text:
            log.info(
                "job %s text: prompt=%r output=%r",
                rec.id,
                job.prompt or messages,
                result.text,
                extra=self._fields("job text", rec.id),
            )
