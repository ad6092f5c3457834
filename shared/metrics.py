"""Service metrics kept in Redis, so that every API process reports the same figures.

Workers add to counters and histograms as each job ends (`record_job`); the API's `/metrics`
reads them, with queue depths and the worker registry, at each scrape (`GenqCollector`).
"""

from __future__ import annotations

from bisect import bisect_left
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import redis
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from shared import keys, usage
from shared.schemas import TERMINAL

if TYPE_CHECKING:
    from shared.jobstore import JobStore
    from shared.settings import Settings

MODELS = keys.METRICS_MODELS  # set: every model that has recorded a job
TOKENS = keys.METRICS_TOKENS  # hash: model → completion tokens generated
jobs_key = keys.metrics_jobs  # hash per model: final status → count


@dataclass(frozen=True)
class Histogram:
    """A Prometheus histogram kept in Redis as one hash per model: bucket → count, and sum.

    Each observation adds 1 to the one bucket it falls in (one HINCRBY); a scrape cumulates them.
    A stored bucket that is no longer a bound is folded into the next bound above it, so that
    changing the bounds never loses observations (their buckets only get coarser).
    """

    name: str  # Prometheus name, with its unit
    doc: str
    bounds: tuple[float, ...]  # bucket upper bounds, ascending; +Inf is implied

    def key(self, model: str) -> str:
        """Return the Redis hash that holds this histogram for one model."""
        return keys.metrics_histogram(self.name, model)

    def observe(self, pipe: redis.client.Pipeline | _Ops, model: str, value: float) -> None:
        """Queue the commands that add one observation."""
        value = max(0.0, value)  # clocks of different hosts may disagree by a little
        index = bisect_left(self.bounds, value)
        bucket = floatToGoString(self.bounds[index]) if index < len(self.bounds) else "+Inf"
        pipe.hincrby(self.key(model), bucket, 1)
        pipe.hincrbyfloat(self.key(model), "sum", value)

    def buckets(self, stored: dict[str, str]) -> tuple[list[tuple[str, float]], float]:
        """Return the cumulative Prometheus buckets and the sum from a stored hash."""
        counts = [0] * (len(self.bounds) + 1)  # the last one is +Inf
        for field, n in stored.items():
            if field != "sum":
                counts[bisect_left(self.bounds, float(field))] += int(n)
        bounds = [*map(floatToGoString, self.bounds), "+Inf"]
        total, out = 0, list[tuple[str, float]]()
        for bound, count in zip(bounds, counts, strict=True):
            total += count
            out.append((bound, total))
        return out, float(stored.get("sum", 0.0))


LATENCY = Histogram(
    "genq_job_latency_seconds",
    "Seconds from a job's creation to its end, for jobs a worker ran.",
    (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300, 600, 1800, 3600),
)
QUEUE_WAIT = Histogram(
    "genq_queue_wait_seconds",
    "Seconds a job waited between its creation and a worker starting it.",
    (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600),
)
TTFT = Histogram(
    "genq_time_to_first_token_seconds",
    "Seconds from a job's creation to its first generated token (queue wait included).",
    (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600),
)
TOKENS_PER_S = Histogram(
    "genq_tokens_per_second",
    "Completion tokens per second of generation, per job.",
    (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000),
)
HISTOGRAMS = (LATENCY, QUEUE_WAIT, TTFT, TOKENS_PER_S)


def record_job(r: redis.Redis, model: str, **figures: Any) -> None:
    """Observe the timings and tokens of one job (job_ops' figures; None = not observed).

    One round trip, inside MULTI/EXEC, so that a scrape never sees half a job. (A worker adds
    them in the fenced step that stores the job's result instead: JobStore.finish.)
    """
    pipe = r.pipeline(transaction=True)
    # The final-status count is kept by the job store's Lua transitions (shared/transitions.py), which
    # also see jobs no worker finished: cancelled while queued, expired, worker_lost.
    pipe.sadd(MODELS, model)
    for op, key, field, amount in job_ops(model, **figures):
        pipe.execute_command(op, key, field, amount)
    pipe.execute()


class _Ops:
    """Collects hash increments as [op, key, field, amount], in place of a pipeline."""

    def __init__(self) -> None:
        self.ops: list[list] = []

    def hincrby(self, key: str, field: str, amount: int) -> None:
        self.ops.append(["HINCRBY", key, field, amount])

    def hincrbyfloat(self, key: str, field: str, amount: float) -> None:
        self.ops.append(["HINCRBYFLOAT", key, field, repr(float(amount))])


def job_ops(
    model: str,
    queue_wait_s: float | None = None,
    latency_s: float | None = None,
    ttft_s: float | None = None,
    tokens_per_s: float | None = None,
    completion_tokens: int = 0,
) -> list[list]:
    """Return the hash increments that observe one job a worker ran (None = not observed), as
    data: JobStore.finish adds them in the fenced step that stores the job's result."""
    ops = _Ops()
    if completion_tokens:
        ops.hincrby(TOKENS, model, completion_tokens)
    observed = (latency_s, queue_wait_s, ttft_s, tokens_per_s)
    for hist, value in zip(HISTOGRAMS, observed, strict=True):
        if value is not None:
            hist.observe(ops, model, value)
    return ops.ops


class GenqCollector(Collector):
    """Reads genq's figures from Redis at each scrape; a Redis error propagates to the caller."""

    def __init__(self, store: JobStore, settings: Settings) -> None:
        self.store = store
        self.settings = settings

    def collect(self) -> Iterator:
        """Yield queue depths, running jobs, job counts, histograms and ready workers."""
        r = self.store.r
        catalog = self.settings.model_names
        models = catalog + sorted(set(r.smembers(MODELS)) - set(catalog))
        pipe = r.pipeline(transaction=True)  # one consistent snapshot
        for model in catalog:
            pipe.zcard(keys.queued(model))
        pipe.zcard(keys.RUNNING)
        pipe.hgetall(TOKENS)
        for model in models:
            pipe.hgetall(jobs_key(model))
            for hist in HISTOGRAMS:
                pipe.hgetall(hist.key(model))
        replies = iter(pipe.execute())

        depth = GaugeMetricFamily("genq_queue_depth", "Jobs queued and not yet started.", labels=["model"])
        for model in catalog:
            depth.add_metric([model], next(replies))
        yield depth
        yield GaugeMetricFamily("genq_jobs_running", "Jobs running on some worker.", value=next(replies))

        tokens_by_model = next(replies)
        jobs = CounterMetricFamily(
            "genq_jobs", "Jobs that reached a final status, by status.", labels=["model", "status"]
        )
        tokens = CounterMetricFamily(
            "genq_tokens_generated", "Completion tokens generated.", labels=["model"]
        )
        families = {h.name: HistogramMetricFamily(h.name, h.doc, labels=["model"]) for h in HISTOGRAMS}
        for model in models:
            # Every final status of a catalog model is shown from zero, so that rate() sees the first one.
            counts = Counter(dict.fromkeys([s.value for s in TERMINAL] if model in catalog else [], 0))
            counts.update({status: int(n) for status, n in next(replies).items()})
            for status, n in sorted(counts.items()):
                jobs.add_metric([model, status], n)
            tokens.add_metric([model], int(tokens_by_model.get(model, 0)))
            for hist in HISTOGRAMS:
                buckets, total = hist.buckets(next(replies))
                families[hist.name].add_metric([model], buckets, total)
        yield jobs
        yield tokens
        yield from families.values()

        ready = GaugeMetricFamily(
            "genq_ready_workers",
            "Workers heartbeating and ready, by model and device.",
            labels=["model", "device"],
        )
        for (model, device), n in sorted(
            Counter((w.get("model", ""), w.get("device", "")) for w in self.store.workers()).items()
        ):
            ready.add_metric([model, device], n)
        yield ready
        yield from usage.tenant_metrics(r, self.settings.metrics_max_tenants)
