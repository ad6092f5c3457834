"""Read everything back after the soak and count violations, as Jepsen's total-queue checker does."""

from __future__ import annotations

import json
import time
from collections import Counter
from dataclasses import dataclass, field

import redis

from chaos.load import TERMINAL, History
from chaos.receiver import Receiver
from shared import keys
from shared.metrics import jobs_key

SETTLE_S = 300  # how long every job gets to end once the nemesis has stopped, in seconds
WEBHOOK_SETTLE_S = 120  # and then every due webhook to be sent, in seconds
VIOLATIONS = (
    "lost",  # answered 202 (or stored) but never terminal
    "duplicated",  # ended more than once, counted twice, or a batch whose counts don't add up
    "stream_mismatches",  # its stream, read with the reset rule, differs from its final text
    "idempotency_violations",  # one Idempotency-Key answered with different ids
    "webhooks_missing",  # a completed delivery never received
    "webhook_id_conflicts",  # one job's completed event received under different delivery ids
    "bad_signatures",  # a received delivery whose signature does not hold
    "server_errors",  # any 5xx other than 503 while Redis was down
)


@dataclass
class Report:
    """The checker's counts; ok when every violation count is zero."""

    violations: Counter = field(default_factory=Counter)
    examples: dict[str, list[str]] = field(default_factory=dict)
    statuses: Counter = field(default_factory=Counter)
    jobs: int = 0
    batches: int = 0

    def add(self, kind: str, example: str) -> None:
        """Count one violation, keeping a few examples."""
        self.violations[kind] += 1
        shown = self.examples.setdefault(kind, [])
        if len(shown) < 5:
            shown.append(example)

    @property
    def ok(self) -> bool:
        """Return True when nothing was violated."""
        return not any(self.violations[k] for k in VIOLATIONS)


def reset_rule_text(r: redis.Redis, job_id: str) -> str:
    """Read a job's stream as clients are told to: append tokens, drop the text on a reset."""
    text = ""
    for _, event in r.xrange(keys.events(job_id)):
        if event.get("type") == "token":
            text += event.get("data", "")
        elif event.get("type") == "reset":
            text = ""
    return text


def _all_jobs(r: redis.Redis) -> set[str]:
    return {k.split(":")[2] for k in r.scan_iter("genq:job:job_*", count=1000) if k.count(":") == 2}


def settle(r: redis.Redis, history: History) -> None:
    """Wait until every known job has ended and every due webhook has been sent (or time is up)."""
    deadline = time.monotonic() + SETTLE_S
    while time.monotonic() < deadline:
        ids = _all_jobs(r) | set(history.jobs)
        pipe = r.pipeline(transaction=False)
        for job_id in ids:
            pipe.hget(keys.job(job_id), "status")
        if all(s in TERMINAL for s in pipe.execute()):
            break
        time.sleep(1)
    deadline = time.monotonic() + WEBHOOK_SETTLE_S
    while time.monotonic() < deadline and r.zcard(keys.WEBHOOKS_DUE):
        time.sleep(1)


def check(r: redis.Redis, history: History, receiver: Receiver, model: str) -> Report:
    """Count every violation of the guarantees in what Redis, the clients and the receiver saw."""
    report = Report(jobs=len(history.jobs), batches=len(history.batches))
    stored = _all_jobs(r)
    for job_id in sorted(stored | set(history.jobs)):
        rec = r.hgetall(keys.job(job_id))
        status = rec.get("status")
        report.statuses[status or "missing"] += 1
        if status not in TERMINAL:
            report.add("lost", f"{job_id}: {status}")
            continue
        done = sum(1 for _, e in r.xrange(keys.events(job_id)) if e.get("type") == "done")
        if done != 1 or r.xlen(keys.ended(job_id)) != 1:
            report.add("duplicated", f"{job_id}: {done} done events")
        output = json.loads(rec["output"]) if rec.get("output") else None
        if output is not None and reset_rule_text(r, job_id) != output["text"]:
            report.add("stream_mismatches", job_id)
    for job_id in history.stream_mismatches:
        report.add("stream_mismatches", f"{job_id} (read live)")
    # Every job ended once, so the per-status counters add up to the jobs stored (none counted twice).
    counted = sum(int(n) for n in r.hgetall(jobs_key(model)).values())
    if counted != len(stored):
        report.add("duplicated", f"metrics count {counted} jobs ended, {len(stored)} stored")
    for batch_id, total in sorted(history.batches.items()):
        _check_batch(r, batch_id, total, report)
    for key, ids in sorted(history.keys.items()):
        if len(ids) > 1:
            report.add("idempotency_violations", f"{key}: {sorted(ids)}")
    _check_webhooks(history, receiver, report)
    for what, n in history.server_errors.items():
        report.violations["server_errors"] += n
        report.examples.setdefault("server_errors", []).append(what)
    return report


def _check_batch(r: redis.Redis, batch_id: str, total: int, report: Report) -> None:
    items = [json.loads(x) for x in r.lrange(keys.batch_items(batch_id), 0, -1)]
    statuses = Counter(r.hget(keys.job(job_id), "status") for _, job_id in items)
    ended = int(r.hget(keys.batch(batch_id), "ended") or 0)
    if len(items) != total or ended != total or sum(statuses[s] for s in TERMINAL) != total:
        report.add("duplicated", f"batch {batch_id}: {total} jobs, {ended} ended, {dict(statuses)}")


def _check_webhooks(history: History, receiver: Receiver, report: Report) -> None:
    completed: dict[str, set[str]] = {}
    for d in receiver.received:
        if not d.signed:
            report.add("bad_signatures", f"{d.event} {d.target} {d.delivery_id}")
        if d.event == "completed":
            completed.setdefault(d.target, set()).add(d.delivery_id)
    for job_id in sorted(history.webhook_jobs):
        ids = completed.get(job_id, set())
        if not ids:
            report.add("webhooks_missing", job_id)
        elif len(ids) > 1:
            report.add("webhook_id_conflicts", f"{job_id}: {sorted(ids)}")


def summary(report: Report, seed: int, seconds: float, nemesis: Counter, history: History) -> str:
    """Return the soak's one summary line."""
    counts = " ".join(f"{k}={report.violations[k]}" for k in VIOLATIONS)
    return (
        f"chaos: seed={seed} seconds={seconds:g} jobs={sum(report.statuses.values())} "
        f"(answered={report.jobs}, batches={report.batches}) ops={dict(sorted(history.ops.items()))} "
        f"statuses={dict(sorted(report.statuses.items()))} nemesis={dict(sorted(nemesis.items()))} "
        f"refused={sum(history.refused.values())} {counts} -> {'OK' if report.ok else 'VIOLATIONS'}"
    )
