"""Put back the jobs a dead worker held, re-send lost messages, and expire overdue queued jobs."""

from __future__ import annotations

import logging
import re
import secrets
import threading
import time
from collections import Counter

import redis
from celery import Celery
from kombu.exceptions import OperationalError

from shared import keys
from shared.celery_app import enqueue, queue_lists
from shared.jobstore import JobStore
from shared.schemas import Status
from shared.settings import Settings

log = logging.getLogger(__name__)

JOB_ID = re.compile(r"job_[0-9a-f]{32}")


def resend(store: JobStore, app: Celery, job_id: str) -> None:
    """Enqueue a new message for a queued job, at its priority (a rerun, or a lost message)."""
    rec = store.record(job_id)
    if rec is not None:  # else its record expired meanwhile: nothing is left to run
        enqueue(app, keys.queue(rec.model), job_id, rec.priority, rec.attempts)


class Reconciler:
    """Runs in every API process and every worker; a Redis lock lets one sweep at a time."""

    def __init__(self, store: JobStore, app: Celery, settings: Settings) -> None:
        self.store = store
        self.r = store.r
        self.app = app
        self.settings = settings
        self.interval_s = settings.lease_seconds / 3  # so a lapsed lease is seen within lease_seconds

    def run(self, stop: threading.Event) -> None:
        """Sweep every interval until stop is set; Redis outages are logged and waited out."""
        while not stop.wait(self.interval_s):
            try:
                counts = self.sweep()
                if counts:
                    log.info("reconciler: %s", dict(counts))
            except (redis.RedisError, OperationalError) as exc:  # kombu wraps Redis errors of a send
                log.warning("reconciler sweep failed: %s", exc)

    def sweep(self) -> Counter:
        """Do one pass if no other worker is doing one; return what it changed."""
        token = secrets.token_hex(8)
        # The lock's TTL (two intervals) frees it if its holder dies mid-sweep.
        if not self.r.set(keys.RECONCILER_LOCK, token, nx=True, px=int(self.interval_s * 2000)):
            return Counter()
        try:
            counts = self._lapsed_leases()
            counts.update(self._stale_queued())
            return counts
        finally:
            self.store.unlock(keys.RECONCILER_LOCK, token)

    def _send(self, job_id: str) -> None:
        resend(self.store, self.app, job_id)

    def _lapsed_leases(self) -> Counter:
        counts: Counter = Counter()
        seconds, micros = self.r.time()  # leases are timed by Redis's clock (shared/transitions.py)
        for job_id in self.r.zrangebyscore(keys.RUNNING, "-inf", seconds + micros / 1e6):
            outcome = self.store.requeue(job_id, self.settings.max_attempts)
            if outcome == "requeued":
                self._send(job_id)
            counts[f"lease_{outcome}"] += 1
        return counts

    def _in_broker(self) -> set[str]:
        """Return the job ids that have a message waiting in a queue, or delivered to a worker
        within the last lease and not yet acked."""
        pipe = self.r.pipeline(transaction=False)
        for spec in self.settings.models:
            for name in queue_lists(spec.queue):
                pipe.lrange(name, 0, -1)
        # A worker claims a job as soon as its message arrives; a message delivered a lease ago
        # whose job is still queued was lost with its worker's connection (a dead worker, a
        # Redis failover) and waits for kombu's one-hour visibility timeout. Re-send it instead:
        # whichever copy arrives second is refused by the job store.
        pipe.zrangebyscore(keys.UNACKED_INDEX, time.time() - self.settings.lease_seconds, "+inf")
        *lists, recent = pipe.execute()
        if recent:
            lists.append([m for m in self.r.hmget(keys.UNACKED, recent) if m])
        found: set[str] = set()
        for messages in lists:
            for message in messages:
                found.update(JOB_ID.findall(message))
        return found

    def _stale_queued(self) -> Counter:
        """Jobs queued longer than a lease: expire them past their deadline, else make sure a
        message for them exists (one lost between BRPOP and the unacked set, say)."""
        counts: Counter = Counter()
        now = time.time()
        present: set[str] | None = None
        for spec in self.settings.models:
            zset = keys.queued(spec.name)
            for job_id in self.r.zrangebyscore(zset, "-inf", now - self.settings.lease_seconds):
                rec = self.store.record(job_id)
                if rec is None or rec.status is not Status.QUEUED:
                    self.r.zrem(zset, job_id)  # ended, or its record expired
                    continue
                if rec.deadline is not None and now > rec.deadline:
                    counts[self.store.expire(job_id) or "gone"] += 1  # atomic: a claim may have won
                    continue
                if present is None:
                    present = self._in_broker()
                if job_id not in present:
                    self._send(job_id)
                    counts["resent"] += 1
                self.r.zadd(zset, {job_id: now}, xx=True)  # look again one lease from now
        return counts
