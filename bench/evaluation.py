"""lm-evaluation-harness throughput through genq against in-process `hf`: `python -m bench.evaluation`.

One multiple-choice task of MC_DOCS x 4 choices loglikelihood requests, scored in this run: through
a real genq (API + Redis + one worker, local-completions, num_concurrent 16) with one prompt per
POST (the harness's default batch_size) and with 4 (64 requests in flight, as many as `hf` scores
in one batch of 16 questions), and with the harness's in-process `hf` model (batch size 16) on the
same weights, with its logits cache on (its default) and off. Prints requests/s and the ratios
(target: genq >= 0.5x the default `hf`). The harness's task index, built the same way for every
run, is built once before the timing.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

from bench.processes import start_api, start_redis, start_worker, supervisor
from shared.jobstore import JobStore
from shared.redisconn import connect
from shared.settings import Settings, default_catalog
from worker.loader import converted_dir

MC_DOCS = 100  # questions; 4 choices each, so 400 loglikelihood requests
CONCURRENT = 16  # genq: POSTs in flight (the harness's num_concurrent)
# Prompts per POST (the harness's batch_size): 1 (its default), and 4, so that 64 requests are in
# flight, as many as hf scores in one batch of 16 questions.
PROMPTS_PER_POST = (1, 4)
MAX_ROWS = 64  # the worker's GENQ_MAX_BATCH: room for all 64
HF_BATCH = 16  # in-process: the harness's batch size
TARGET_RATIO = 0.5  # genq requests/s over in-process requests/s
STORE_TTL_S = 3600  # how long finished jobs stay readable, in seconds
SUBJECTS = ["cat", "river", "mountain", "teacher", "engine", "garden", "planet", "violin", "bridge", "forest"]
PLACES = [
    "kitchen",
    "library",
    "harbor",
    "desert",
    "village",
    "station",
    "museum",
    "island",
    "castle",
    "farm",
]


def write_task(root: Path) -> str:
    """Write the multiple-choice task (synthetic, varied prompt lengths); return its name."""
    docs = []
    for i in range(MC_DOCS):
        subject, place = SUBJECTS[i % 10], PLACES[(i * 3) % 10]
        filler = " It was a quiet day." * (i % 5)
        # Numbered, so that no two questions are the same: the harness's hf model scores identical
        # requests once, and 10 distinct questions x 10 would measure its cache, not the model.
        question = (
            f"Report {i}: the {subject} was found near the {place}.{filler} Where was the {subject} found?"
        )
        choices = [f"In the {PLACES[(i * 3 + k) % 10]}" for k in range(4)]
        docs.append({"question": question, "choices": choices, "answer": 0})
    (root / "mc.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs))
    (root / "genq_bench_mc.yaml").write_text(
        "task: genq_bench_mc\ndataset_path: json\ntest_split: test\n"
        f"dataset_kwargs:\n  data_files:\n    test: {root / 'mc.jsonl'}\n"
        "output_type: multiple_choice\n"
        'doc_to_text: "Question: {{question}}\\nAnswer:"\n'
        'doc_to_choice: "{{choices}}"\ndoc_to_target: "{{answer}}"\n'
        "metric_list:\n  - metric: acc\n"
    )
    return "genq_bench_mc"


def task_index(include: Path) -> object:
    """Build the harness's task index (it reads every task YAML it ships: seconds, the same for all)."""
    from lm_eval.tasks import TaskManager

    t0 = time.perf_counter()
    manager = TaskManager(include_path=str(include))
    print(f"the harness's task index: built in {time.perf_counter() - t0:.1f} s (not in the timings)")
    return manager


def timed(lm: object, task: str, manager: object) -> tuple[float, float]:
    """Run the task on a harness model object; return (seconds, accuracy)."""
    import lm_eval

    t0 = time.perf_counter()
    out = lm_eval.simple_evaluate(model=lm, tasks=[task], task_manager=manager)
    seconds = time.perf_counter() - t0
    assert out is not None
    return seconds, out["results"][task]["acc,none"]


def main() -> None:
    """Start genq, score the task through it, then in process, and print the figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    os.environ.update({"HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"})
    spec = default_catalog()[0]
    cache = Settings().cache_dir
    weights = converted_dir(spec, cache)
    requests = MC_DOCS * 4
    with tempfile.TemporaryDirectory(prefix="genq-eval-") as tmp:
        root = Path(tmp)
        task = write_task(root)
        manager = task_index(root)
        genq_rps, genq_acc = {}, {}
        children = supervisor(root)
        try:
            redis_url = start_redis(children, root)
            base = start_api(children, redis_url, cache)
            store = JobStore(connect(redis_url), STORE_TTL_S)
            start_worker(children, store, redis_url, cache, args.device, MAX_ROWS)
            from lm_eval.models.openai_completions import LocalCompletionsAPI

            for per_post in PROMPTS_PER_POST:
                genq_lm = LocalCompletionsAPI(
                    model=spec.name,
                    base_url=f"{base}/v1/completions",
                    num_concurrent=CONCURRENT,
                    batch_size=per_post,
                    tokenizer_backend="remote",
                    max_retries=1,
                )
                genq_s, genq_acc[per_post] = timed(genq_lm, task, manager)
                genq_rps[per_post] = requests / genq_s
        finally:
            children.stop_all()
        from lm_eval.models.huggingface import HFLM

        # The harness's hf model groups requests whose context plus all but the last continuation
        # token match, and scores each group with one forward (its logits cache): here the 4
        # choices of a question differ only in their last token, so it runs 100 forwards for 400
        # requests, 16 questions (64 requests) a batch. hf without that cache runs a forward per
        # request, reported beside the target's.
        hf_rps, hf_acc = {}, {}
        for cache_on in (True, False):
            hf_lm = HFLM(
                pretrained=str(weights),
                dtype="float32",
                batch_size=HF_BATCH,
                device=args.device,
                logits_cache=cache_on,
            )
            hf_s, hf_acc[cache_on] = timed(hf_lm, task, manager)
            hf_rps[cache_on] = requests / hf_s
            del hf_lm
    print(f"loglikelihood requests: {requests} ({MC_DOCS} questions x 4 choices)")
    for per_post in PROMPTS_PER_POST:
        print(
            f"genq (local-completions, num_concurrent {CONCURRENT}, batch_size {per_post}): "
            f"{genq_rps[per_post]:.1f} req/s, acc {genq_acc[per_post]:.3f}, "
            f"{genq_rps[per_post] / hf_rps[True]:.2f}x hf, "
            f"{genq_rps[per_post] / hf_rps[False]:.2f}x hf without its logits cache"
        )
    print(f"in-process hf (batch {HF_BATCH}): {hf_rps[True]:.1f} req/s, acc {hf_acc[True]:.3f}")
    print(
        f"in-process hf (batch {HF_BATCH}, logits_cache off, a forward per request): "
        f"{hf_rps[False]:.1f} req/s, acc {hf_acc[False]:.3f}"
    )
    for per_post in PROMPTS_PER_POST:
        ratio = genq_rps[per_post] / hf_rps[True]
        verdict = "PASS" if ratio >= TARGET_RATIO else "MISS"
        print(
            f"ratio genq (batch_size {per_post}) / in-process: {ratio:.2f}x "
            f"(target >= {TARGET_RATIO}x) {verdict}"
        )


if __name__ == "__main__":
    main()
