"""lm-evaluation-harness (pinned) against a live genq: the same scores as its in-process `hf` model."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from shared.settings import Settings, default_catalog
from worker.loader import converted_dir

MODEL = default_catalog()[0].name  # SmolLM2, converted once into the model cache
LL_TOL = 1e-3  # per-choice loglikelihood agreement with the in-process harness
RUN_TIMEOUT_S = 900  # one lm_eval CLI run on two busy cores

MC_DOCS = [
    {
        "question": "What is the capital of France?",
        "choices": ["Paris", "Berlin", "Madrid", "Rome"],
        "answer": 0,
    },
    {
        "question": "How many legs does a spider have?",
        "choices": ["Six", "Eight", "Ten", "Four"],
        "answer": 1,
    },
    {
        "question": "Which planet is known as the red planet?",
        "choices": ["Venus", "Jupiter", "Mars"],
        "answer": 2,
    },
    {"question": "What do bees make?", "choices": ["Milk", "Silk", "Honey", "Wax"], "answer": 2},
    {"question": "What color is the sky on a clear day?", "choices": ["Green", "Blue", "Red"], "answer": 1},
    {"question": "Which animal barks?", "choices": ["Cat", "Cow", "Dog", "Fish"], "answer": 2},
]
GEN_DOCS = [
    {"question": "The capital of France is", "answer": "Paris"},
    {"question": "Two plus two equals", "answer": "four"},
    {"question": "The opposite of hot is", "answer": "cold"},
]


def write_tasks(root: Path) -> Path:
    """Write a multiple-choice (loglikelihood) task and a generate_until task; return the include path."""
    for name, docs in (("mc", MC_DOCS), ("gen", GEN_DOCS)):
        (root / f"{name}.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs))
    common = "dataset_path: json\ntest_split: test\n"
    (root / "genq_mc.yaml").write_text(
        "task: genq_mc\n"
        + common
        + f"dataset_kwargs:\n  data_files:\n    test: {root / 'mc.jsonl'}\n"
        + "output_type: multiple_choice\n"
        + 'doc_to_text: "Question: {{question}}\\nAnswer:"\n'
        + 'doc_to_choice: "{{choices}}"\ndoc_to_target: "{{answer}}"\n'
        + "metric_list:\n  - metric: acc\n"
    )
    (root / "genq_gen.yaml").write_text(
        "task: genq_gen\n"
        + common
        + f"dataset_kwargs:\n  data_files:\n    test: {root / 'gen.jsonl'}\n"
        + "output_type: generate_until\n"
        + 'doc_to_text: "{{question}}"\ndoc_to_target: " {{answer}}"\n'
        + 'generation_kwargs:\n  until: ["\\n", "."]\n  max_gen_toks: 12\n'
        + "  do_sample: false\n  temperature: 0\n"
        + "metric_list:\n  - metric: exact_match\n"
    )
    return root


def offline_env() -> dict[str, str]:
    import os

    return {
        **os.environ,
        "HF_DATASETS_OFFLINE": "1",
        "HF_HUB_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
    }


def samples(out: Path, task: str) -> dict[int, Any]:
    """Return doc_id → filtered_resps from the harness's --log_samples output."""
    [path] = out.rglob(f"samples_{task}_*.jsonl")
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    return {r["doc_id"]: r["filtered_resps"] for r in rows}


def accuracy(out: Path, task: str, metric: str) -> float:
    [path] = [p for p in out.rglob("results_*.json")]
    return json.loads(path.read_text())["results"][task][f"{metric},none"]


def run_lm_eval(out: Path, include: Path, model: str, model_args: str, batch_size: int) -> None:
    cmd = [
        sys.executable, "-m", "lm_eval", "--model", model, "--model_args", model_args,
        "--tasks", "genq_mc,genq_gen", "--include_path", str(include), "--batch_size", str(batch_size),
        "--log_samples", "--output_path", str(out), "--device", "cpu",
    ]  # fmt: skip
    done = subprocess.run(cmd, env=offline_env(), capture_output=True, text=True, timeout=RUN_TIMEOUT_S)
    assert done.returncode == 0, done.stderr[-4000:]


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """SmolLM2 first: the harness's tokenizer calls name no model, so they get the default one."""
    return settings.model_copy(update={"models": [*default_catalog(), *settings.models[:1]]})


@pytest.fixture(scope="module")
def in_process(cache_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The harness's own `hf` model on genq's converted SmolLM2 weights; return (include, output)."""
    weights = converted_dir(default_catalog()[0], cache_dir)
    assert weights is not None and (weights / "config.json").exists(), "run `make model` first"
    root = tmp_path_factory.mktemp("lm-eval")
    include = write_tasks(root)
    out = root / "hf"
    run_lm_eval(out, include, "hf", f"pretrained={weights},dtype=float32", 4)
    return include, out


@pytest.mark.slow
@pytest.mark.parametrize(
    ("batch_size", "concurrent", "tokenizer"),
    [(1, 1, "local"), (4, 4, "remote")],
)
def test_local_completions_scores_equal_in_process_hf(
    start_worker, api_server: str, in_process, cache_dir: Path, tmp_path: Path,
    batch_size: int, concurrent: int, tokenizer: str,
) -> None:  # fmt: skip
    include, hf_out = in_process
    start_worker(model=MODEL)
    weights = converted_dir(default_catalog()[0], cache_dir)
    backend = (
        "tokenizer_backend=remote"
        if tokenizer == "remote"
        else f"tokenizer_backend=huggingface,tokenizer={weights}"
    )
    url = f"{api_server}/v1/completions"
    args = f"model={MODEL},base_url={url},num_concurrent={concurrent},max_retries=1,{backend}"
    out = tmp_path / "genq"
    run_lm_eval(out, include, "local-completions", args, batch_size)
    assert accuracy(out, "genq_mc", "acc") == accuracy(hf_out, "genq_mc", "acc")
    assert accuracy(out, "genq_gen", "exact_match") == accuracy(hf_out, "genq_gen", "exact_match")
    ours, theirs = samples(out, "genq_mc"), samples(hf_out, "genq_mc")
    assert ours.keys() == theirs.keys() == set(range(len(MC_DOCS)))
    for doc_id, choices in theirs.items():
        got = [float(c[0]) for c in ours[doc_id]]
        want = [float(c[0]) for c in choices]
        assert len(got) == len(want) and all(
            math.isclose(g, w, abs_tol=LL_TOL) for g, w in zip(got, want, strict=True)
        ), (doc_id, got, want)
    assert samples(out, "genq_gen") == samples(hf_out, "genq_gen")
