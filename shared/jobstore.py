"""Job records, their event streams and the worker registry, kept in Redis.

JobStore owns the Redis connection of the job side: callers get JobRecord/JobPublic objects and
store methods, never the connection (a test keeps `store.r` out of api/). The state transitions run
as Lua (shared/transitions.py); a job's fields are read and written by JobRecord (shared/records.py).
"""

from __future__ import annotations

import hashlib
import json
import logging
import secrets
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import redis

from shared import keys, tokenizer_info, transitions
from shared.groupcommit import GroupCommit
from shared.records import DEFAULT_TENANT, JobRecord
from shared.schemas import TERMINAL, ErrorCode, JobCreate, JobPublic, Status

log = logging.getLogger(__name__)

EVENT_TOKEN = "token"  # new text produced
EVENT_STATUS = "status"  # the job changed state
EVENT_RESET = "reset"  # the job's worker died: drop the text streamed so far, it runs again
EVENT_DONE = "done"  # the job reached a terminal state; always the last event
# Fields a token event has beside its text when its job asked: JSON lists of entries (shared/schemas.py
# TokenLogprob) of the tokens whose text it carries, and of the prompt's tokens (echo, first event).
EVENT_LOGPROBS, EVENT_PROMPT_LOGPROBS = "logprobs", "prompt_logprobs"
_TERMINAL = [s.value for s in TERMINAL]
BLOCK_SLICE_MS = 2000  # longest single XREAD BLOCK, in milliseconds
# Seconds after which an Idempotency-Key bound to nothing that exists passes to a retry: longer
# than any request can take (gunicorn ends one after GENQ_MAX_WAIT + 30 s).
ABANDONED_KEY_S = 120
_EXPIRED_ERROR = json.dumps(
    {"code": ErrorCode.EXPIRED.value, "message": "the job's deadline passed before a worker could start it"}
)

__all__ = ["DEFAULT_TENANT", "Claim", "JobStore", "QueueFull", "TenantQueueFull", "new_job_id"]


class QueueFull(Exception):
    """The model already has as many queued jobs as allowed."""


class TenantQueueFull(QueueFull):
    """The tenant already has as many queued jobs as allowed."""


def new_job_id() -> str:
    """Return a fresh random 128-bit job id."""
    return "job_" + secrets.token_hex(16)


@dataclass(frozen=True)
class Claim:
    """What claiming a job gave: the running job's record, or why it was not claimed."""

    outcome: str | None  # 'claimed', 'expired' (past its deadline), else the status that forbids it
    record: JobRecord | None = None  # the job as claimed (status running); None unless claimed
    attempt: int = 0  # the attempt this claim made: its fencing token, carried by the worker's writes


@dataclass(frozen=True)
class Entries:
    """Log-probability entries published with a job's text, one JSON object per token."""

    entries: list[str]
    offset: int | None = None  # entries of this attempt on its stream before these (None = all there are)
    field: str = EVENT_LOGPROBS  # EVENT_LOGPROBS, or EVENT_PROMPT_LOGPROBS for the prompt's (echo)


class JobStore:
    """Reads and writes job records, their events, and the worker registry."""

    def __init__(self, client: redis.Redis, ttl_s: int, clock: Callable[[], float] = time.time) -> None:
        self.r = client
        self.ttl_s = ttl_s
        self.clock = clock  # for the timestamps this process writes; leases are timed by Redis
        self._create = client.register_script(transitions.CREATE)
        self._claim = client.register_script(transitions.CLAIM)
        self._finish = client.register_script(transitions.FINISH)
        self._cancel = client.register_script(transitions.CANCEL)
        self._requeue = client.register_script(transitions.REQUEUE)
        self._renew = client.register_script(transitions.RENEW)
        self._publish = client.register_script(transitions.PUBLISH)
        self._rebind = client.register_script(transitions.REBIND_IDEMPOTENCY)
        self._expire = client.register_script(transitions.EXPIRE)
        self._delete = client.register_script(transitions.DELETE_QUEUED)
        self._unlock = client.register_script(transitions.UNLOCK)
        # A worker's claims and finishes come in bursts (a batch's rows end at one step): the
        # calls made at the same moment share one pipeline (shared/groupcommit.py).
        self.grouped = GroupCommit(client)
        # The API sets this to its shared readers (api/waiters.py), so a long poll holds no connection;
        # it returns the job's hash as its reader read it at the end (None: read it here).
        self.ended_waiter: Callable[[str, float], dict[str, str] | None] | None = None

    # --- jobs ---------------------------------------------------------------
    def create(
        self,
        job_id: str,
        model: str,
        request: JobCreate,
        max_queued: int = 0,
        deadline: float | None = None,
        tenant: str = DEFAULT_TENANT,
        max_tenant_queued: int = 0,
        key_id: str | None = None,
    ) -> JobPublic:
        """Store a new queued job (QueueFull past either cap); the caller enqueues it after this."""
        now = self.clock()
        record = JobRecord.new(job_id, model, request, now, deadline, tenant, key_id=key_id)
        done = self._create(
            keys=[keys.job(job_id), keys.queued(model), keys.tenant_queued(tenant), keys.tenant_jobs(tenant)],
            args=[job_id, max_queued, repr(now), self.ttl_s, max_tenant_queued, *record.pairs()],
        )
        if done == "full":
            raise QueueFull(model)
        if done == "tenant_full":
            raise TenantQueueFull(tenant)
        return record.public()

    def list_jobs(
        self, tenant: str, status: Status | None = None, limit: int = 20, before: float | None = None
    ) -> list[JobPublic]:
        """Return a tenant's jobs, newest first, created strictly before `before` (a cursor)."""
        found: list[JobPublic] = []
        upper = f"({before!r}" if before is not None else "+inf"
        while len(found) < limit:
            ids = self.r.zrevrangebyscore(keys.tenant_jobs(tenant), upper, "-inf", start=0, num=limit * 2)
            if not ids:
                break
            pipe = self.r.pipeline(transaction=False)
            for job_id in ids:
                pipe.hgetall(keys.job(job_id))
            for job_id, h in zip(ids, pipe.execute(), strict=True):
                rec = JobRecord.from_hash(job_id, h)
                if rec is None:  # its record expired; dropping it keeps the next page moving
                    self.r.zrem(keys.tenant_jobs(tenant), job_id)
                    continue
                upper = f"({h['created_at']}"  # as stored: the cursor must not round
                if status is None or rec.status is status:
                    found.append(rec.public())
                    if len(found) == limit:
                        break
        return found

    def remember_idempotency(self, key: str, fingerprint: str, target_id: str, ttl_s: int) -> dict | None:
        """Bind an Idempotency-Key to a new job or batch; return the earlier binding if the key was used."""
        name = keys.idempotency(hashlib.sha256(key.encode()).hexdigest())
        value = json.dumps({"id": target_id, "fingerprint": fingerprint, "at": self.clock()})
        if self.r.set(name, value, nx=True, ex=ttl_s):
            return None
        raw = self.r.get(name)
        earlier = json.loads(raw) if raw else None
        if earlier and self._abandoned(earlier) and self._rebind(keys=[name], args=[raw, value, ttl_s]):
            return None  # its first request died before creating anything: this one takes the key
        return earlier

    def _abandoned(self, binding: dict) -> bool:
        """Return True for a binding older than any request whose job or batch does not exist."""
        target = str(binding.get("id", ""))
        record = keys.batch(target) if target.startswith("batch_") else keys.job(target)
        age_s = self.clock() - float(binding.get("at", self.clock()))
        return age_s > ABANDONED_KEY_S and not self.r.exists(record)

    def forget_idempotency(self, key: str) -> None:
        """Release a key whose job or batch could not be created."""
        self.r.delete(keys.idempotency(hashlib.sha256(key.encode()).hexdigest()))

    def raw(self, job_id: str) -> dict[str, str]:
        """Return a job's hash exactly as stored (empty when unknown): for tests and diagnostics only."""
        return self.r.hgetall(keys.job(job_id))

    def record(self, job_id: str) -> JobRecord | None:
        """Return a job's record; None when unknown or expired."""
        return JobRecord.from_hash(job_id, self.raw(job_id))

    def records(self, job_ids: list[str]) -> list[JobRecord | None]:
        """Return many jobs' records in order, in one round trip (None for each one gone)."""
        pipe = self.r.pipeline(transaction=False)
        for job_id in job_ids:
            pipe.hgetall(keys.job(job_id))
        return [JobRecord.from_hash(j, h) for j, h in zip(job_ids, pipe.execute(), strict=True)]

    def get(
        self, job_id: str, tenant: str | None = None, raw: dict[str, str] | None = None
    ) -> JobPublic | None:
        """Return a job as clients see it; None when unknown, expired, or another tenant's.

        raw: the job's hash when it was already read (the API's waiter readers read ended jobs').
        """
        rec = JobRecord.from_hash(job_id, raw) if raw else self.record(job_id)
        if rec is None or (tenant is not None and rec.tenant != tenant):
            return None
        overdue = rec.status is Status.QUEUED and time.time() > (rec.deadline or float("inf"))
        # Overdue: expire it now rather than answer 'queued' until a sweep or a worker comes.
        if overdue and self.expire(job_id) == "expired":
            rec = self.record(job_id) or rec
        return rec.public()

    def ping(self) -> None:
        """Raise unless Redis answers (readiness checks)."""
        self.r.ping()

    def publish_tokenizer(self, info: tokenizer_info.TokenizerInfo) -> None:
        """Store a model's tokenizer for the API (a worker does at start)."""
        tokenizer_info.publish(self.r, info)

    def tokenizer_digest(self, model: str) -> str | None:
        """Return the digest of a model's published tokenizer, None when none is published."""
        return tokenizer_info.digest(self.r, model)

    def tokenizer(self, model: str) -> tokenizer_info.TokenizerInfo | None:
        """Return a model's published tokenizer, None when no worker has published one."""
        return tokenizer_info.read(self.r, model)

    def expire(self, job_id: str) -> str | None:
        """Fail a queued job past its deadline as expired: 'expired', else the status that forbids it."""
        return self._expire(
            keys=[keys.job(job_id), keys.events(job_id)], args=[job_id, repr(time.time()), _EXPIRED_ERROR]
        )

    def unlock(self, key: str, token: str) -> None:
        """Release a lock taken with SET NX under this token, unless it lapsed and another took it."""
        self._unlock(keys=[key], args=[token])

    def owns(self, job_id: str, tenant: str) -> bool:
        """Return True when the job exists and belongs to the tenant."""
        return self.r.hget(keys.job(job_id), "tenant") == tenant

    def delete(self, job_id: str) -> str | None:
        """Remove a still-queued job whose enqueue failed (works with Redis full): 'deleted', else
        the status that keeps it (None if unknown)."""
        return self._delete(keys=[keys.job(job_id), keys.events(job_id), keys.ended(job_id)], args=[job_id])

    def claim(self, job_id: str, worker: str, device: str, lease_s: float = 30.0) -> Claim:
        """Move a queued job to running under a lease (timed by Redis's clock); the Claim holds its
        record and attempt once claimed."""
        outcome, attempt, *flat = self.grouped.run(
            self._claim,
            keys=[keys.job(job_id), keys.events(job_id), keys.RUNNING],
            args=[job_id, worker, device, lease_s, _EXPIRED_ERROR],
        )
        if outcome != "claimed":
            return Claim(outcome or None)
        pairs = flat[0]  # the record as the claim left it (HGETALL's field, value, ... list)
        record = JobRecord.from_hash(job_id, dict(zip(pairs[::2], pairs[1::2], strict=True)))
        return Claim(outcome, record, int(attempt))

    def renew(self, attempts: dict[str, int], lease_s: float) -> set[str]:
        """Extend by lease_s (Redis's clock) the leases of the jobs held at these attempts, in one
        round trip; return the ids no longer held (ended, or requeued and claimed again)."""
        if not attempts:
            return set()
        args = [x for job_id, n in attempts.items() for x in (job_id, n)]
        return set(self._renew(keys=[keys.RUNNING], args=[lease_s, *args]))

    def requeue(
        self, job_id: str, max_attempts: int, holder: str = "", error: dict | None = None
    ) -> str | None:
        """Put back a running job whose lease lapsed, or that its holder hands back: 'requeued',
        'alive', or its terminal status (failed with error, default worker_lost, past max_attempts)."""
        lost = error or {
            "code": ErrorCode.WORKER_LOST.value,
            "message": f"the job's worker died on each of its {max_attempts} attempts",
        }
        return self._requeue(
            keys=[keys.job(job_id), keys.events(job_id), keys.RUNNING],
            args=[job_id, max_attempts, json.dumps(lost), holder],
        )

    def finish(
        self,
        job_id: str,
        status: Status,
        holder: str = "",
        attempt: int | None = None,
        metrics: list[list] | None = None,
        **fields: Any,
    ) -> bool:
        """Write a terminal state once, with the job's metrics (shared/metrics.py job_ops); False if
        the job had ended, or holder no longer holds it at this attempt (its fencing token)."""
        assert status.is_terminal
        values = {"status": status.value, "finished_at": repr(self.clock())}
        for name, value in fields.items():
            if value is not None:
                values[name] = value if isinstance(value, str) else json.dumps(value)
        fence = "" if attempt is None else attempt
        done = self.grouped.run(
            self._finish,
            keys=[keys.job(job_id), keys.events(job_id), keys.RUNNING],
            args=[job_id, json.dumps(values), holder, fence, json.dumps(metrics or []), *_TERMINAL],
        )
        if done == "ok_without_metrics":
            log.warning("job %s: result stored, but could not record metrics (an increment failed)", job_id)
        return done in ("ok", "ok_without_metrics")

    def cancel(self, job_id: str) -> str | None:
        """Cancel a queued job, or ask a running one's worker to stop; return the status seen."""
        return self._cancel(keys=[keys.job(job_id), keys.events(job_id)], args=[job_id, repr(self.clock())])

    def cancel_requested(self, job_ids: list[str]) -> set[str]:
        """Return which of these running jobs a client asked to cancel (one round trip)."""
        if not job_ids:
            return set()
        pipe = self.r.pipeline(transaction=False)
        for job_id in job_ids:
            pipe.hget(keys.job(job_id), "cancel")
        return {j for j, flag in zip(job_ids, pipe.execute(), strict=True) if flag}

    # --- events -------------------------------------------------------------
    def publish_tokens(
        self,
        deltas: dict[str, str],
        attempts: dict[str, int],
        offsets: dict[str, int] | None = None,
        logprobs: dict[str, Entries] | None = None,
    ) -> set[str]:
        """Append new text of several jobs to their event streams in one fenced step; return the
        ids whose attempt no longer holds its job (their text was dropped).

        offsets: the byte of each attempt's text where its delta starts (UTF-8; default: at the
        end of what is there), so that a retry after a lost reply appends nothing twice.
        logprobs: the log-probability entries of the tokens whose text a delta carries (only for
        the jobs that asked: the others' events carry nothing more).
        """
        offsets, logprobs = offsets or {}, logprobs or {}
        names = [k for job_id in deltas for k in (keys.job(job_id), keys.events(job_id))]
        args = []
        for job_id, text in deltas.items():
            lp = logprobs.get(job_id)
            args += [job_id, attempts.get(job_id, 0), offsets.get(job_id, ""), text]
            if lp is None:
                args += ["", "", ""]
            else:
                args += ["" if lp.offset is None else lp.offset, lp.field, "\n".join(lp.entries)]
        return set(self._publish(keys=names, args=[self.ttl_s, *args]))

    def events(self, job_id: str, after: str = "0-0", timeout_s: float = 0) -> Iterator[dict]:
        """Yield a job's events after the given id, blocking up to timeout_s for each new batch."""
        deadline = time.monotonic() + timeout_s
        last = after
        while True:
            left_ms = int((deadline - time.monotonic()) * 1000)
            # Block in slices shorter than the client's socket timeout (redis-py's default is 5 s).
            block = min(max(left_ms, 1), BLOCK_SLICE_MS) if timeout_s > 0 else None
            reply = self.r.xread({keys.events(job_id): last}, count=512, block=block)
            if not reply:
                if timeout_s <= 0 or left_ms <= 0:
                    return
                continue
            for entry_id, fields in reply[0][1]:
                last = entry_id
                yield {"id": entry_id, **fields}
                if fields.get("type") == EVENT_DONE:
                    return

    def read_events(self, after: dict[str, str], block_ms: int) -> list[tuple[str, list[tuple[str, dict]]]]:
        """Read several jobs' events at once (job id → last id seen), blocking up to block_ms.

        Returns (job id, [(entry id, fields), ...]) for each job with new events; [] if none came.
        """
        reply = self.r.xread({keys.events(j): last for j, last in after.items()}, count=512, block=block_ms)
        prefix, suffix = len(keys.JOB), len(keys.EVENTS_SUFFIX)
        return [(key[prefix:-suffix], entries) for key, entries in reply or []]

    def wait(self, job_id: str, timeout_s: float, tenant: str | None = None) -> JobPublic | None:
        """Return the job once it has ended or timeout_s has passed, blocking in Redis, not polling.

        It blocks on the job's ended stream, written once by the step that ends the job, so a
        long poll wakes once, not at every token.
        """
        job = self.get(job_id, tenant)
        if job is None or job.status.is_terminal or timeout_s <= 0:
            return job
        if self.ended_waiter is not None:
            return self.get(job_id, tenant, self.ended_waiter(job_id, timeout_s))
        deadline = time.monotonic() + timeout_s
        while (left_ms := int((deadline - time.monotonic()) * 1000)) > 0:
            # From the start of the stream: an end written before this call is seen at once.
            if self.r.xread({keys.ended(job_id): "0-0"}, count=1, block=min(left_ms, BLOCK_SLICE_MS)):
                break
        return self.get(job_id, tenant)

    # --- workers ------------------------------------------------------------
    def heartbeat(self, worker_id: str, info: dict[str, Any], ttl_s: float) -> None:
        """Record that a worker is alive and ready; the record lapses after ttl_s."""
        pipe = self.r.pipeline(transaction=False)
        pipe.set(keys.worker(worker_id), json.dumps({**info, "last_seen": time.time()}), px=int(ttl_s * 1000))
        pipe.sadd(keys.WORKERS, worker_id)
        pipe.execute()

    def unregister(self, worker_id: str) -> None:
        """Remove a worker from the registry as it stops."""
        pipe = self.r.pipeline(transaction=False)
        pipe.delete(keys.worker(worker_id))
        pipe.srem(keys.WORKERS, worker_id)
        pipe.execute()

    def workers(self) -> list[dict[str, Any]]:
        """Return the live workers; ids whose heartbeat lapsed are dropped from the registry."""
        ids = sorted(self.r.smembers(keys.WORKERS))
        if not ids:
            return []
        values = self.r.mget([keys.worker(w) for w in ids])
        dead = [w for w, v in zip(ids, values, strict=True) if v is None]
        if dead:
            self.r.srem(keys.WORKERS, *dead)
        return [{"id": w, **json.loads(v)} for w, v in zip(ids, values, strict=True) if v is not None]
