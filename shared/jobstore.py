"""Job records, their event streams and the worker registry, kept in Redis."""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Iterator
from typing import Any

import redis

from shared.schemas import TERMINAL, JobCreate, JobPublic, Status

PREFIX = "genq"
EVENT_TOKEN = "token"  # new text produced
EVENT_STATUS = "status"  # the job changed state
EVENT_DONE = "done"  # the job reached a terminal state; always the last event


def job_key(job_id: str) -> str:
    """Return the key of a job's record (a hash)."""
    return f"{PREFIX}:job:{job_id}"


def events_key(job_id: str) -> str:
    """Return the key of a job's event stream (tokens and state changes)."""
    return f"{PREFIX}:job:{job_id}:events"


def worker_key(worker_id: str) -> str:
    """Return the key of a worker's heartbeat record."""
    return f"{PREFIX}:worker:{worker_id}"


WORKERS_KEY = f"{PREFIX}:workers"  # set of worker ids that have registered
_TERMINAL = [s.value for s in TERMINAL]

# queued → running, only from queued: a cancelled or finished job is never started.
_CLAIM = """
local st = redis.call('HGET', KEYS[1], 'status')
if st ~= 'queued' then return st or false end
redis.call('HSET', KEYS[1], 'status', 'running', 'started_at', ARGV[1],
           'worker', ARGV[2], 'device', ARGV[3])
redis.call('HINCRBY', KEYS[1], 'attempts', 1)
redis.call('XADD', KEYS[2], '*', 'type', 'status', 'data', 'running')
redis.call('EXPIRE', KEYS[2], redis.call('TTL', KEYS[1]))
return 'claimed'
"""

# Any non-terminal state → a terminal one, written once (compare-and-set), then the done event.
_FINISH = """
local st = redis.call('HGET', KEYS[1], 'status')
if not st then return false end
for i = 2, #ARGV do if st == ARGV[i] then return st end end
local fields = cjson.decode(ARGV[1])
for k, v in pairs(fields) do redis.call('HSET', KEYS[1], k, v) end
redis.call('XADD', KEYS[2], '*', 'type', 'done', 'data', fields['status'])
redis.call('EXPIRE', KEYS[2], redis.call('TTL', KEYS[1]))
return 'ok'
"""

# A queued job is cancelled at once; a running one is flagged for its worker to stop.
_CANCEL = """
local st = redis.call('HGET', KEYS[1], 'status')
if not st then return false end
if st == 'queued' then
  redis.call('HSET', KEYS[1], 'status', 'cancelled', 'finished_at', ARGV[1])
  redis.call('XADD', KEYS[2], '*', 'type', 'done', 'data', 'cancelled')
  redis.call('EXPIRE', KEYS[2], redis.call('TTL', KEYS[1]))
  return 'cancelled'
end
if st == 'running' then redis.call('HSET', KEYS[1], 'cancel', '1') end
return st
"""


def new_job_id() -> str:
    """Return a fresh random 128-bit job id."""
    return "job_" + secrets.token_hex(16)


def connect(url: str) -> redis.Redis:
    """Return a Redis client that decodes replies to str."""
    return redis.Redis.from_url(url, decode_responses=True, health_check_interval=30)


class JobStore:
    """Reads and writes job records, their events, and the worker registry."""

    def __init__(self, client: redis.Redis, ttl_s: int) -> None:
        self.r = client
        self.ttl_s = ttl_s
        self._claim = client.register_script(_CLAIM)
        self._finish = client.register_script(_FINISH)
        self._cancel = client.register_script(_CANCEL)

    # --- jobs ---------------------------------------------------------------
    def create(self, job_id: str, model: str, request: JobCreate) -> JobPublic:
        """Store a new queued job; the caller enqueues it only after this returns."""
        now = time.time()
        body = request.model_dump(mode="json", exclude={"metadata"})
        body["model"] = model
        record = {
            "status": Status.QUEUED.value,
            "model": model,
            "created_at": repr(now),
            "request": json.dumps(body),
            "attempts": 0,
        }
        if request.metadata is not None:
            record["metadata"] = json.dumps(request.metadata)
        pipe = self.r.pipeline(transaction=True)
        pipe.hset(job_key(job_id), mapping=record)
        pipe.expire(job_key(job_id), self.ttl_s)
        pipe.execute()
        return JobPublic(
            id=job_id, status=Status.QUEUED, model=model, created_at=now, metadata=request.metadata
        )

    def raw(self, job_id: str) -> dict[str, str]:
        """Return a job's record as stored (empty when unknown or expired)."""
        return self.r.hgetall(job_key(job_id))

    def get(self, job_id: str) -> JobPublic | None:
        """Return a job as clients see it, or None when unknown or expired."""
        rec = self.raw(job_id)
        return to_public(job_id, rec) if rec else None

    def delete(self, job_id: str) -> None:
        """Remove a job whose enqueue failed, so that no record claims it exists."""
        self.r.delete(job_key(job_id), events_key(job_id))

    def claim(self, job_id: str, worker: str, device: str) -> str | None:
        """Move a queued job to running: 'claimed', else the status that forbids it (None if unknown)."""
        return self._claim(
            keys=[job_key(job_id), events_key(job_id)], args=[repr(time.time()), worker, device]
        )

    def finish(self, job_id: str, status: Status, **fields: Any) -> bool:
        """Write a terminal state once; return False if the job had already ended."""
        assert status.is_terminal
        values = {"status": status.value, "finished_at": repr(time.time())}
        for name, value in fields.items():
            if value is not None:
                values[name] = value if isinstance(value, str) else json.dumps(value)
        done = self._finish(
            keys=[job_key(job_id), events_key(job_id)], args=[json.dumps(values), *_TERMINAL]
        )
        return done == "ok"

    def cancel(self, job_id: str) -> str | None:
        """Cancel a queued job, or ask a running one's worker to stop; return the status seen."""
        return self._cancel(keys=[job_key(job_id), events_key(job_id)], args=[repr(time.time())])

    def cancel_requested(self, job_ids: list[str]) -> set[str]:
        """Return which of these running jobs a client asked to cancel (one round trip)."""
        if not job_ids:
            return set()
        pipe = self.r.pipeline(transaction=False)
        for job_id in job_ids:
            pipe.hget(job_key(job_id), "cancel")
        return {j for j, flag in zip(job_ids, pipe.execute()) if flag}

    # --- events -------------------------------------------------------------
    def publish_tokens(self, deltas: dict[str, str]) -> None:
        """Append new text of several jobs to their event streams in one round trip."""
        pipe = self.r.pipeline(transaction=False)
        for job_id, text in deltas.items():
            pipe.xadd(events_key(job_id), {"type": EVENT_TOKEN, "data": text})
            pipe.expire(events_key(job_id), self.ttl_s)
        pipe.execute()

    def events(self, job_id: str, after: str = "0-0", timeout_s: float = 0) -> Iterator[dict]:
        """Yield a job's events after the given id, blocking up to timeout_s for each new batch."""
        deadline = time.monotonic() + timeout_s
        last = after
        while True:
            left_ms = int((deadline - time.monotonic()) * 1000)
            block = max(left_ms, 1) if timeout_s > 0 else None
            reply = self.r.xread({events_key(job_id): last}, count=512, block=block)
            if not reply:
                if timeout_s <= 0 or left_ms <= 0:
                    return
                continue
            for entry_id, fields in reply[0][1]:
                last = entry_id
                yield {"id": entry_id, **fields}
                if fields.get("type") == EVENT_DONE:
                    return

    def wait(self, job_id: str, timeout_s: float) -> JobPublic | None:
        """Return the job once it has ended or timeout_s has passed, blocking in Redis, not polling."""
        job = self.get(job_id)
        if job is None or job.status.is_terminal or timeout_s <= 0:
            return job
        for event in self.events(job_id, timeout_s=timeout_s):
            if event.get("type") == EVENT_DONE:
                break
        return self.get(job_id)

    # --- workers ------------------------------------------------------------
    def heartbeat(self, worker_id: str, info: dict[str, Any], ttl_s: float) -> None:
        """Record that a worker is alive and ready; the record lapses after ttl_s."""
        pipe = self.r.pipeline(transaction=False)
        pipe.set(worker_key(worker_id), json.dumps({**info, "last_seen": time.time()}),
                 px=int(ttl_s * 1000))
        pipe.sadd(WORKERS_KEY, worker_id)
        pipe.execute()

    def unregister(self, worker_id: str) -> None:
        """Remove a worker from the registry as it stops."""
        pipe = self.r.pipeline(transaction=False)
        pipe.delete(worker_key(worker_id))
        pipe.srem(WORKERS_KEY, worker_id)
        pipe.execute()

    def workers(self) -> list[dict[str, Any]]:
        """Return the live workers; ids whose heartbeat lapsed are dropped from the registry."""
        ids = sorted(self.r.smembers(WORKERS_KEY))
        if not ids:
            return []
        values = self.r.mget([worker_key(w) for w in ids])
        dead = [w for w, v in zip(ids, values) if v is None]
        if dead:
            self.r.srem(WORKERS_KEY, *dead)
        return [{"id": w, **json.loads(v)} for w, v in zip(ids, values) if v is not None]


def _loads(value: str | None) -> Any:
    return json.loads(value) if value else None


def _float(value: str | None) -> float | None:
    return float(value) if value else None


def to_public(job_id: str, rec: dict[str, str]) -> JobPublic:
    """Shape a stored record as the public job."""
    return JobPublic(
        id=job_id,
        status=Status(rec["status"]),
        model=rec.get("model", ""),
        created_at=float(rec["created_at"]),
        started_at=_float(rec.get("started_at")),
        finished_at=_float(rec.get("finished_at")),
        output=_loads(rec.get("output")),
        usage=_loads(rec.get("usage")),
        timings=_loads(rec.get("timings")),
        worker=rec.get("worker"),
        device=rec.get("device"),
        seed=int(rec["seed"]) if rec.get("seed") else None,
        error=_loads(rec.get("error")),
        metadata=_loads(rec.get("metadata")),
    )
