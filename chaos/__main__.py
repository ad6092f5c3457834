"""`python -m chaos`: a Jepsen-style nemesis soak of the whole stack; exits 1 on any violation.

It starts Redis (AOF, appendfsync always), two API processes and the workers, runs a mixed client
load for --seconds while a seeded nemesis kills and pauses its parts, then checks what it got.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import threading
import time
from pathlib import Path

from chaos import checker
from chaos.cluster import WEBHOOK_SECRET, Cluster
from chaos.load import Load
from chaos.nemesis import KINDS, Nemesis
from chaos.receiver import Receiver
from shared.settings import ModelSpec, default_catalog


def _model(name: str, workdir: Path) -> ModelSpec:
    """Return the soak's model: the tiny random Llama of the tests (fast), or the bundled SmolLM2."""
    if name == "smollm2":
        return default_catalog()[0]
    from tests.tiny_model import build_tiny_model, tiny_spec

    return tiny_spec(build_tiny_model(workdir / "tiny-model"))


def main(argv: list[str] | None = None) -> int:
    """Run one soak and print its summary line; return 0 when no guarantee was violated."""
    parser = argparse.ArgumentParser(prog="python -m chaos", description=__doc__)
    parser.add_argument("--seconds", type=float, default=float(os.environ.get("CHAOS_SECONDS", 300)))
    parser.add_argument(
        "--seed", type=int, default=int(os.environ.get("CHAOS_SEED") or random.randrange(10**6))
    )
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--clients", type=int, default=6, help="client threads")
    parser.add_argument("--model", choices=["tiny", "smollm2"], default=os.environ.get("CHAOS_MODEL", "tiny"))
    parser.add_argument(
        "--nemesis", default=",".join(KINDS), help=f"actions to pick from (default: all of {KINDS})"
    )
    parser.add_argument("--dir", type=Path, help="work directory (default: a new temporary one)")
    args = parser.parse_args(argv)
    kinds = tuple(args.nemesis.split(","))
    if not set(kinds) <= set(KINDS):
        parser.error(f"--nemesis: unknown actions {sorted(set(kinds) - set(KINDS))}")
    workdir = args.dir or Path(tempfile.mkdtemp(prefix="genq-chaos-"))
    workdir.mkdir(parents=True, exist_ok=True)
    print(f"chaos: seed={args.seed} seconds={args.seconds:g} logs in {workdir}", flush=True)

    spec = _model(args.model, workdir)
    cluster = Cluster(workdir, spec, workers=args.workers)
    receiver = Receiver(WEBHOOK_SECRET)
    load = Load(cluster.api_urls, args.seed, receiver.url, spec.name, threads=args.clients)
    nemesis = Nemesis(cluster, args.seed, workdir / "nemesis.log", kinds)
    stop_load, stop_nemesis = threading.Event(), threading.Event()
    try:
        cluster.start()
        clients = threading.Thread(target=load.run, args=(stop_load,), name="chaos-load")
        chaos = threading.Thread(target=nemesis.run, args=(stop_nemesis,), name="chaos-nemesis")
        clients.start()
        chaos.start()
        time.sleep(args.seconds)
        stop_nemesis.set()
        chaos.join()
        cluster.heal()  # the clients' last operations and the settling run on a whole stack
        stop_load.set()
        clients.join()
        checker.settle(cluster.r, load.history)
        report = checker.check(cluster.r, load.history, receiver, spec.name)
    finally:
        stop_nemesis.set()
        stop_load.set()  # on an interrupt too: the client threads end with their operation in hand
        cluster.stop()
        receiver.close()
    (workdir / "report.json").write_text(
        json.dumps(
            {
                "seed": args.seed,
                "seconds": args.seconds,
                "violations": report.violations,
                "examples": report.examples,
                "statuses": report.statuses,
                "nemesis": nemesis.actions,
                "ops": load.history.ops,
                "refused": load.history.refused,
            },
            indent=2,
        )
    )
    print(checker.summary(report, args.seed, args.seconds, nemesis.actions, load.history), flush=True)
    if not report.ok:
        print(f"chaos: examples {json.dumps(report.examples)}", file=sys.stderr)
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
