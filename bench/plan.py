"""What the benchmark measures: the model, the prompts, and how much work each part does."""

from __future__ import annotations

from dataclasses import dataclass

MODEL = "smollm2-135m-instruct"  # the bundled default model
BATCHED_MAX = 16  # GENQ_MAX_BATCH of the batching-on worker (the default)

PROMPTS = [
    "The capital of France is",
    "Once upon a time in a small village by the sea, there lived",
    "Explain in simple words how a rainbow forms:",
    "Write a short poem about the autumn wind.",
    "The three most important inventions of the twentieth century are",
    "A good recipe for a quick weeknight dinner is",
    "In computer science, a hash table is",
    "Dear diary, today I finally",
    "The main differences between cats and dogs as pets are",
    "Here is a list of tips for learning a new language:",
    "The history of the Roman Empire began",
    "To fix a flat bicycle tire, first",
    "My favourite book is",
    "Photosynthesis is the process by which plants",
    "The weather forecast for tomorrow says",
    "Write a friendly email inviting a colleague to lunch.",
]


@dataclass(frozen=True)
class Plan:
    """How much work each part of the benchmark does."""

    prompts: int = 16  # distinct prompts: the static batch, and the clients of the batching-off run
    new_tokens: int = 64  # tokens per job in the throughput parts
    levels: tuple[int, ...] = (1, 4, 16, 32)  # concurrent clients with batching on
    rounds: int = 3  # jobs each client runs one after another at each level
    static_reps: int = 2  # timed runs of the in-process static batch (median kept)
    solo_reps: int = 5  # one-job-alone runs, each way (median kept)
    long_jobs: int = 8  # mixed load: long jobs running together
    long_tokens: int = 256
    short_tokens: int = 8
    idle_short_reps: int = 5  # short jobs on an idle worker, the mixed load's reference
    max_short_jobs: int = 80  # most short jobs sent during the mixed load
    warmup_tokens: int = 8


QUICK = Plan(
    new_tokens=16, rounds=1, static_reps=1, solo_reps=2, long_jobs=4, long_tokens=64, idle_short_reps=3
)
