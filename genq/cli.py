"""The `genq` command: submit, follow and list jobs and batches; start a worker, the API, or all."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from api.cli import add_commands as add_api_commands
from genq.client import DEFAULT_URL, Client, GenqError
from genq.display import STATUS_STYLES, Watch, follow_batch, jobs_table, spinner, stream_text
from worker.cli import add_commands as add_worker_commands

JOBS_PAGE = 100  # most jobs one GET /v1/jobs returns; `genq jobs` pages beyond it


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
    try:
        if args.json:
            with spinner(Watch("waiting"), args.quiet):
                job = client.wait(job["id"])
            _print_job(job, True)
            return 0 if job["status"] == "succeeded" else 1
        final = stream_text(client, job["id"], args.quiet)
    except KeyboardInterrupt:
        print(f"\ngenq: stopped watching; job {job['id']} keeps running", file=sys.stderr)
        return 130
    if final.get("status") != "succeeded":
        err = final.get("error") or {}
        print(
            f"genq: job {final.get('status')}: {err.get('code', '')} {err.get('message', '')}".rstrip(),
            file=sys.stderr,
        )
        return 1
    return 0


def _positive_int(value: str) -> int:
    number = int(value)
    if number < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {number}")
    return number


def _json_object(value: str) -> dict[str, Any]:
    try:
        parsed = json.loads(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not JSON: {exc}") from None
    if not isinstance(parsed, dict):
        raise argparse.ArgumentTypeError("must be a JSON object")
    return parsed


def _jobs(args: argparse.Namespace) -> int:
    """List the caller's recent jobs, newest first, as a table (or the raw list with --json)."""
    client = Client(args.url, api_key=args.api_key)
    jobs: list[dict[str, Any]] = []
    cursor = args.cursor
    while len(jobs) < args.limit:  # the API returns at most JOBS_PAGE jobs a page
        page = client.list_jobs(args.status, min(JOBS_PAGE, args.limit - len(jobs)), cursor)
        jobs += page["data"]
        cursor = page.get("next_cursor")
        if cursor is None:
            break
    if args.json:
        print(json.dumps({"object": "list", "data": jobs, "next_cursor": cursor}, indent=2))
        return 0
    if not jobs:
        print("genq: no jobs", file=sys.stderr)
        return 0
    jobs_table(jobs)
    if cursor is not None:
        print(f"genq: more jobs: --cursor {cursor!r}", file=sys.stderr)
    return 0


def _batch(args: argparse.Namespace) -> int:
    client = Client(args.url, api_key=args.api_key)
    webhook = {"url": args.webhook, "events": args.webhook_events.split(",")} if args.webhook else None
    batch = client.create_batch(jsonl=args.file, metadata=args.metadata, webhook=webhook)
    print(f"genq: batch {batch['id']} submitted: {batch['counts']['total']} jobs", file=sys.stderr)
    try:
        batch = follow_batch(client, batch)
    except KeyboardInterrupt:
        print(f"\ngenq: stopped watching; batch {batch['id']} keeps running", file=sys.stderr)
        return 130
    lines = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in client.batch_results(batch["id"]))
    if args.out:
        Path(args.out).write_text(lines)
    else:
        sys.stdout.write(lines)
    counts = batch["counts"]
    summary = ", ".join(f"{counts[k]} {k}" for k in ("succeeded", "failed", "cancelled"))
    print(f"genq: batch {batch['id']} {batch['status']}: {summary}", file=sys.stderr)
    return 0 if counts["succeeded"] == counts["total"] else 1


def _up(args: argparse.Namespace) -> int:
    from genq.launcher import run_stack

    return run_stack(device=args.device)


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
    p.add_argument("--quiet", action="store_true", help="no spinner and no summary on stderr")
    p.set_defaults(func=_submit)

    p = sub.add_parser("get", help="show a job")
    p.add_argument("job_id")
    p.add_argument("--wait", type=float, default=0, help="seconds to wait for it to end")
    p.set_defaults(func=lambda a: _print_job(Client(a.url, api_key=a.api_key).get(a.job_id, a.wait), True))

    p = sub.add_parser("cancel", help="cancel a job")
    p.add_argument("job_id")
    p.set_defaults(func=lambda a: _print_job(Client(a.url, api_key=a.api_key).cancel(a.job_id), True))

    p = sub.add_parser("jobs", help="list your recent jobs, newest first, as a table")
    p.add_argument("--status", choices=list(STATUS_STYLES), help="only jobs in this state")
    p.add_argument("--limit", type=_positive_int, default=20, help="most jobs to list (default 20)")
    p.add_argument("--cursor", type=float, help="list jobs older than this (printed after a full page)")
    p.add_argument("--json", action="store_true", help="print the API's list as JSON")
    p.set_defaults(func=_jobs)

    p = sub.add_parser("models", help="list models and their ready workers")
    p.set_defaults(func=lambda a: print(json.dumps(Client(a.url, api_key=a.api_key).models(), indent=2)))

    p = sub.add_parser("batch", help="submit a JSONL file of jobs as a batch; write the results as JSONL")
    p.add_argument("file", help="one job a line, each with a custom_id (JSON objects)")
    p.add_argument("--out", help="results file (default: stdout); one line per job, in file order")
    p.add_argument("--metadata", type=_json_object, help="the batch's metadata, a JSON object")
    p.add_argument("--webhook", metavar="URL", help="POST the batch here when it starts and/or completes")
    p.add_argument(
        "--webhook-events",
        default="completed",
        help="comma-separated: started, completed (default: completed)",
    )
    p.set_defaults(func=_batch)

    add_worker_commands(sub)
    add_api_commands(sub)

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
        for detail in exc.details:  # which field, and why: the summary alone rarely says
            print(f"  {detail.get('field', '-')}: {detail.get('message', '')}", file=sys.stderr)
        return 1
    except (ConnectionError, OSError) as exc:
        print(f"genq: cannot reach the API at {args.url}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
