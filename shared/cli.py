"""The `genq` command: submit/get/cancel jobs, and start a worker, the API, or the whole stack."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from shared.client import DEFAULT_URL, Client, GenqError


def _print_job(job: dict[str, Any], as_json: bool) -> None:
    if as_json:
        print(json.dumps(job, indent=2))
    elif job.get("status") == "succeeded" or job.get("output"):
        print(job["output"]["text"])
    elif job.get("error"):
        print(f"{job['status']}: {job['error']['code']}: {job['error']['message']}", file=sys.stderr)
    else:
        print(f"{job['id']} {job['status']}")


def _submit(args: argparse.Namespace) -> int:
    client = Client(args.url, api_key=args.api_key)
    params = {
        "model": args.model,
        "max_new_tokens": args.max_new_tokens,
        "temperature": args.temperature,
        "top_p": args.top_p,
        "top_k": args.top_k,
        "repetition_penalty": args.repetition_penalty,
        "seed": args.seed,
        "stop": args.stop or None,
        "do_sample": args.do_sample,
    }
    if args.chat:
        job = client.submit(messages=[{"role": "user", "content": args.prompt}], **params)
    else:
        job = client.submit(args.prompt, **params)
    if not args.wait:
        print(job["id"])
        return 0
    if args.json:
        job = client.wait(job["id"])
        _print_job(job, True)
        return 0 if job["status"] == "succeeded" else 1
    final: dict[str, Any] = {}
    for event, data in client.stream(job["id"]):  # print the text as it is generated
        if event == "token":
            print(data["text"], end="", flush=True)
        elif event == "reset":
            print("\n[genq: the worker was lost; the job restarts]", file=sys.stderr, flush=True)
        elif event == "done":
            final = data
    print()
    if final.get("status") != "succeeded":
        err = final.get("error") or {}
        print(
            f"genq: job {final.get('status')}: {err.get('code', '')} {err.get('message', '')}".rstrip(),
            file=sys.stderr,
        )
        return 1
    return 0


def _worker(args: argparse.Namespace) -> int:
    from shared.settings import Settings
    from worker.main import run_worker

    run_worker(Settings(), args.model, args.device, args.loglevel)
    return 0


def _api(args: argparse.Namespace) -> int:
    from shared.settings import Settings

    settings = Settings()
    host = args.host or settings.host
    port = args.port or settings.port
    argv = [
        sys.executable,
        "-m",
        "gunicorn",
        "--bind",
        f"{host}:{port}",
        "--workers",
        str(settings.api_workers),
        "--worker-class",
        "gthread",
        "--threads",
        str(settings.api_threads),
        "--timeout",
        str(settings.max_wait + 30),  # a long poll must not look like a hung worker
        "--graceful-timeout",
        "10",
        "--access-logfile",
        "-",
        "api.app:create_app()",
    ]
    os.execv(sys.executable, argv)
    return 0  # not reached


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


def _up(args: argparse.Namespace) -> int:
    from shared.stack import run_stack

    return run_stack(device=args.device)


def _keys_create(args: argparse.Namespace) -> int:
    import re

    from api.auth import add_key

    if not re.fullmatch(r"[A-Za-z0-9._-]{1,64}", args.tenant):
        print("genq: a tenant name is 1-64 letters, digits, '.', '_' or '-'", file=sys.stderr)
        return 2
    path = Path(args.file or os.environ.get("GENQ_API_KEYS_FILE") or ".genq/api-keys")
    key = add_key(path, args.tenant)
    print(key)
    print(
        f"genq: key for tenant {args.tenant!r} created; only its hash is stored in {path}. "
        f"Shown once: keep it now. The API reads the file when GENQ_API_KEYS_FILE={path} is set.",
        file=sys.stderr,
    )
    return 0


def build_parser() -> argparse.ArgumentParser:
    """Return the argument parser for every genq subcommand."""
    parser = argparse.ArgumentParser(prog="genq", description=__doc__)
    parser.add_argument(
        "--url", default=os.environ.get("GENQ_URL", DEFAULT_URL), help="API base URL (env GENQ_URL)"
    )
    parser.add_argument(
        "--api-key", default=os.environ.get("GENQ_API_KEY"), help="API key (env GENQ_API_KEY)"
    )
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("keys", help="manage API keys")
    keys_sub = p.add_subparsers(dest="keys_command", required=True)
    k = keys_sub.add_parser("create", help="create a key for a tenant; prints it once, stores only its hash")
    k.add_argument("--tenant", required=True)
    k.add_argument("--file", help="keys file (default: GENQ_API_KEYS_FILE, else .genq/api-keys)")
    k.set_defaults(func=_keys_create)

    p = sub.add_parser("submit", help="submit a generation job")
    p.add_argument("prompt")
    p.add_argument("--chat", action="store_true", help="send the prompt as one user chat message")
    p.add_argument("--model")
    p.add_argument("--max-new-tokens", type=int)
    p.add_argument("--temperature", type=float)
    p.add_argument("--top-p", type=float)
    p.add_argument("--top-k", type=int)
    p.add_argument("--repetition-penalty", type=float)
    p.add_argument("--seed", type=int)
    p.add_argument("--stop", action="append", help="stop string (repeatable)")
    p.add_argument("--do-sample", action=argparse.BooleanOptionalAction, default=None)
    p.add_argument("--wait", action="store_true", help="wait for the job and print its text")
    p.add_argument("--json", action="store_true", help="print the whole job as JSON")
    p.set_defaults(func=_submit)

    p = sub.add_parser("get", help="show a job")
    p.add_argument("job_id")
    p.add_argument("--wait", type=float, default=0, help="seconds to wait for it to end")
    p.set_defaults(
        func=lambda a: _print_job(Client(a.url, api_key=a.api_key).get(a.job_id, a.wait), True) or 0
    )

    p = sub.add_parser("cancel", help="cancel a job")
    p.add_argument("job_id")
    p.set_defaults(func=lambda a: _print_job(Client(a.url, api_key=a.api_key).cancel(a.job_id), True) or 0)

    p = sub.add_parser("models", help="list models and their ready workers")
    p.set_defaults(func=lambda a: print(json.dumps(Client(a.url, api_key=a.api_key).models(), indent=2)) or 0)

    p = sub.add_parser("worker", help="run a worker: one model on one device")
    p.add_argument("--model", help="catalog model name (default: the first)")
    p.add_argument("--device", default="cpu", help="cpu, cuda:N, or auto (spread over visible GPUs)")
    p.add_argument("--loglevel", default="INFO")
    p.set_defaults(func=_worker)

    p = sub.add_parser("api", help="run the HTTP API under gunicorn")
    p.add_argument("--host")
    p.add_argument("--port", type=int)
    p.set_defaults(func=_api)

    p = sub.add_parser("prepare", help="load a model once, caching its converted weights")
    p.add_argument("--model")
    p.set_defaults(func=_prepare)

    p = sub.add_parser("up", help="start Redis (unless GENQ_REDIS_URL is set), a worker and the API")
    p.add_argument("--device", default="cpu")
    p.set_defaults(func=_up)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the genq command line."""
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except GenqError as exc:
        print(f"genq: {exc}", file=sys.stderr)
        return 1
    except (ConnectionError, OSError) as exc:
        print(f"genq: cannot reach the API at {args.url}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
