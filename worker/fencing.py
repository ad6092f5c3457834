"""The worker's side of fencing: the attempts it holds, their leases, and fenced token events.

A claim's attempt number is its fencing token: every write for a job carries it, and Redis drops
the write once the job has moved to another attempt or ended (shared/transitions.py).
"""

from __future__ import annotations

import json
import logging
import threading
import time

import redis

from shared.jobstore import EVENT_PROMPT_LOGPROBS, Entries, JobStore
from worker.engine import Hooks

log = logging.getLogger(__name__)


class Leases:
    """The jobs this worker holds, at which attempt, and when each lease was last known good."""

    def __init__(self, store: JobStore, lease_s: float) -> None:
        self.store = store
        self.lease_s = lease_s
        self.attempts: dict[str, int] = {}  # job id → the attempt held (its fencing token)
        self.confirmed: dict[str, float] = {}  # job id → monotonic time its lease was last good

    def hold(self, job_id: str, attempt: int, since: float) -> None:
        """Hold a job just claimed (since: monotonic time the claim was sent)."""
        self.attempts[job_id] = attempt
        self.confirmed[job_id] = since

    def release(self, job_id: str) -> None:
        """Stop holding a job this worker is done with."""
        self.attempts.pop(job_id, None)
        self.confirmed.pop(job_id, None)

    def attempt(self, job_id: str) -> int:
        """Return the attempt at which this worker holds the job (-1: not held, fences out all)."""
        return self.attempts.get(job_id, -1)

    def renew(self) -> set[str]:
        """Renew every lease by one lease from Redis's now (one round trip); return the jobs that
        another attempt took or that ended."""
        held = dict(self.attempts)
        asked = time.monotonic()  # the lease runs from Redis's now, which is later than this
        lost = self.store.renew(held, self.lease_s)
        for job_id in held.keys() - lost:
            if job_id in self.confirmed:
                self.confirmed[job_id] = asked
        if lost:
            log.warning("leases lost (the jobs moved on): %s", sorted(lost))
        return lost

    def lapsed(self) -> set[str]:
        """Return the jobs whose lease could not be renewed for a whole lease period (Redis away, or
        this process paused): they may already run elsewhere, so they count as lost."""
        limit = time.monotonic() - self.lease_s
        stale = {job_id for job_id, at in list(self.confirmed.items()) if at < limit}
        if stale:
            log.warning("no lease renewal for %.1f s: dropping jobs %s", self.lease_s, sorted(stale))
            for job_id in stale:
                self.confirmed.pop(job_id, None)
        return stale


class StoreHooks(Hooks):
    """Engine hooks backed by the job store; a Redis blip delays stream events, never loses them."""

    def __init__(self, store: JobStore, attempts: dict[str, int]) -> None:
        self.store = store
        self.attempts = attempts  # job id → the attempt this worker holds it at (Leases.attempts)
        self.pending: dict[str, str] = {}  # text not on its stream yet (Redis was unreachable)
        self.sent: dict[str, int] = {}  # bytes of each attempt's text already on its stream
        # Only for the jobs that asked: entries (JSON) not on the stream yet, and how many are.
        self.pending_lp: dict[str, list[str]] = {}
        self.pending_prompt: dict[str, list[str]] = {}
        self.sent_lp: dict[str, int] = {}
        self._lock = threading.Lock()  # the engine thread publishes, job threads flush
        self._failing = False  # one log line per outage, not one per step

    def on_text(
        self,
        deltas: dict[str, str],
        logprobs: dict[str, list[dict]] | None = None,
        prompt_logprobs: dict[str, list[dict]] | None = None,
    ) -> set[str] | None:
        """Append new text to each job's event stream, fenced; return the jobs no longer ours."""
        with self._lock:
            for job_id, text in deltas.items():
                if job_id in self.attempts:  # a row no claim started (a test's) writes nothing
                    self.pending[job_id] = self.pending.get(job_id, "") + text
            for kept, new in ((self.pending_lp, logprobs), (self.pending_prompt, prompt_logprobs)):
                for job_id, entries in (new or {}).items():
                    if job_id in self.attempts:
                        kept.setdefault(job_id, []).extend(_lines(entries))
        try:
            return self.flush()
        except redis.RedisError as exc:
            if not self._failing:
                log.warning("could not publish tokens (kept, sent when Redis answers): %s", exc)
            self._failing = True
            return None

    def flush(self, job_ids: set[str] | None = None) -> set[str]:
        """Publish the text kept back for these jobs (all: None); raise RedisError if Redis is away.

        Each row carries the byte offset of its text in the attempt's (and of its entries, when
        it has some), so a retry after a lost reply appends nothing twice. A prompt's entries go
        first, in an event of their own.
        """
        with self._lock:
            lost = set()
            prompts = {j: e for j, e in self.pending_prompt.items() if job_ids is None or j in job_ids}
            if prompts:
                lost |= self.store.publish_tokens(
                    dict.fromkeys(prompts, ""),
                    dict(self.attempts),
                    {j: self.sent.get(j, 0) for j in prompts},
                    {j: Entries(e, 0, EVENT_PROMPT_LOGPROBS) for j, e in prompts.items()},
                )
                for job_id, entries in prompts.items():
                    del self.pending_prompt[job_id]
                    self.sent_lp[job_id] = len(entries)  # generated entries count on from there
            batch = {j: t for j, t in self.pending.items() if job_ids is None or j in job_ids}
            if not batch:
                return lost
            offsets = {j: self.sent.get(j, 0) for j in batch}
            lps = {
                j: Entries(self.pending_lp[j], self.sent_lp.get(j, 0)) for j in batch if j in self.pending_lp
            }
            lost |= self.store.publish_tokens(batch, dict(self.attempts), offsets, lps)
            self._failing = False
            for job_id, text in batch.items():
                del self.pending[job_id]
                self.sent[job_id] = offsets[job_id] + len(text.encode())
                if job_id in lps:
                    del self.pending_lp[job_id]
                    self.sent_lp[job_id] = self.sent_lp.get(job_id, 0) + len(lps[job_id].entries)
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
            for kept in (self.pending, self.sent, self.pending_lp, self.pending_prompt, self.sent_lp):
                kept.pop(job_id, None)


def _lines(entries: list[dict]) -> list[str]:
    """Return each entry as one line of compact JSON (JSON escapes newlines inside strings)."""
    return [json.dumps(e, separators=(",", ":"), ensure_ascii=False) for e in entries]
