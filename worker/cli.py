"""The worker's operator commands: `genq worker` and `genq prepare`."""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

# OpenMP's threads spin between parallel regions by default. The worker shares its host with the
# API, Redis and other workers, and a spinning thread takes the core the others need: measured on
# 2 busy cores, one-token jobs cost the worker 202 CPU ms each against 76 with passive waits (4.8
# vs 8.2 jobs/s end to end), and 16 rows decoded at 16 vs 85 tokens/s. Set before torch loads
# libgomp, which reads it once; an operator's own OMP_WAIT_POLICY wins.
OMP_WAIT_POLICY = "PASSIVE"


def _worker(args: argparse.Namespace) -> int:
    os.environ.setdefault("OMP_WAIT_POLICY", OMP_WAIT_POLICY)
    from shared.settings import Settings
    from worker.main import run_worker

    run_worker(Settings(), args.model, args.device, args.loglevel)
    return 0


def _prepare(args: argparse.Namespace) -> int:
    from shared.settings import Settings
    from worker.loader import ModelLoadError, load_model

    settings = Settings()
    spec = settings.model(args.model)
    if spec is None:
        print(f"genq: unknown model {args.model!r}; the catalog has {settings.model_names}", file=sys.stderr)
        return 2
    try:
        load_model(spec, "cpu", settings.cache_dir)
    except ModelLoadError as exc:
        print(f"genq: {exc}", file=sys.stderr)
        return 1
    print(f"model {spec.name} ready in {settings.cache_dir}")
    return 0


def add_commands(sub: Any) -> None:
    """Add `worker` and `prepare` to the genq command's subparsers (imports torch only when they run)."""
    p = sub.add_parser("worker", help="run a worker: one model on one device")
    p.add_argument("--model", help="catalog model name (default: the first)")
    p.add_argument("--device", default="cpu", help="cpu, cuda:N, or auto (spread over visible GPUs)")
    p.add_argument("--loglevel", default="INFO")
    p.set_defaults(func=_worker)

    p = sub.add_parser("prepare", help="load a model once, caching its converted weights")
    p.add_argument("--model")
    p.set_defaults(func=_prepare)
