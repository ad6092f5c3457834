"""The `genq` command: submit/get/cancel jobs, and start a worker, the API, or the whole stack."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from shared.client import DEFAULT_URL, Client, GenqError

BATCH_POLL_S = 1  # seconds each progress update of `genq batch` waits server-side
SPINNER_HZ = 8  # redraws a second of `genq submit --wait`'s spinner
RATE_AFTER_S = 0.5  # seconds of tokens before the spinner shows a tokens/s figure
JOBS_PAGE = 100  # most jobs one GET /v1/jobs returns; `genq jobs` pages beyond it
STATUS_STYLES = {
    "queued": "dim",
    "running": "cyan",
    "succeeded": "green",
    "failed": "red",
    "cancelled": "yellow",
}


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
            with _spinner(_Watch("waiting"), args.quiet):
                job = client.wait(job["id"])
            _print_job(job, True)
            return 0 if job["status"] == "succeeded" else 1
        final = _stream_text(client, job["id"], args.quiet)
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


class _Watch:
    """The spinner's line: the job's state, elapsed time, tokens and tokens/s, drawn anew on each refresh."""

    def __init__(self, state: str) -> None:
        from rich.spinner import Spinner

        self.state = state
        self.t0 = time.monotonic()
        self.first: float | None = None  # when the first token came
        self.tokens = 0  # token events so far; each carries about one token
        self.spinner = Spinner("dots")

    def token(self) -> None:
        """Count one more token event."""
        self.tokens += 1
        if self.first is None:
            self.first = time.monotonic()

    def restart(self) -> None:
        """Forget the tokens: the job runs again from the start."""
        self.tokens, self.first = 0, None

    def rate(self) -> float | None:
        """Return tokens a second since the first token, once there is enough to tell."""
        if self.first is None or time.monotonic() - self.first < RATE_AFTER_S:
            return None
        return self.tokens / (time.monotonic() - self.first)

    def __rich__(self) -> Any:
        line = f"{self.state} · {time.monotonic() - self.t0:.1f} s"
        if self.tokens:
            rate = self.rate()
            line += f" · {self.tokens} tokens" + (f", {rate:.1f} tok/s" if rate is not None else "")
        self.spinner.update(text=line)
        return self.spinner


def _spinner(watch: _Watch, quiet: bool) -> Any:
    """Return a live spinner on stderr for watch, or a no-op when quiet or stderr is no terminal."""
    import contextlib

    from rich.console import Console
    from rich.live import Live

    console = Console(stderr=True)
    if quiet or not console.is_interactive:
        return contextlib.nullcontext()
    # Our own prints to stdout must not be captured into the spinner's console.
    return Live(
        watch,
        console=console,
        refresh_per_second=SPINNER_HZ,
        transient=True,
        redirect_stdout=False,
        redirect_stderr=False,
    )


def _stream_text(client: Client, job_id: str, quiet: bool) -> dict[str, Any]:
    """Print a job's text to stdout as it streams, with a spinner on stderr; return the final job."""
    watch = _Watch("queued")
    live = _spinner(watch, quiet)
    # A spinner redrawn on the terminal that also shows the text would garble it: there it stops
    # at the first token. With stdout redirected it keeps going, showing tokens/s to the end.
    stop_at_first_token = sys.stdout.isatty()
    final: dict[str, Any] = {}
    shown: list[str] = []  # the text printed since the job last (re)started
    with live:
        for event, data in client.stream(job_id):
            if event == "token":
                shown.append(data["text"])
                watch.token()
                if stop_at_first_token and hasattr(live, "stop"):
                    live.stop()  # idempotent; the with block's exit stops it again
                print(data["text"], end="", flush=True)
            elif event == "status":
                watch.state = data.get("status") or watch.state
            elif event == "reset":
                shown.clear()
                watch.restart()
                # Through the spinner's console, if it runs, so that the line lands above it.
                out = getattr(live, "console", None)
                msg = "\n[genq: the worker was lost; the job restarts]"
                if out is not None:
                    out.print(msg, markup=False, highlight=False)
                else:
                    print(msg, file=sys.stderr, flush=True)
            elif event == "done":
                final = data
    # The stream may miss text (a worker's Redis blip costs stream events, never the result):
    # when what was shown is a prefix of the result, print the rest.
    text, printed = (final.get("output") or {}).get("text") or "", "".join(shown)
    if len(text) > len(printed) and text.startswith(printed):
        print(text[len(printed) :], end="")
    print()
    if not quiet and final.get("status") == "succeeded":
        print(f"genq: {_summary(final, watch)}", file=sys.stderr)
    return final


def _summary(job: dict[str, Any], watch: _Watch) -> str:
    """Return "N tokens, X tok/s, finish_reason (T s)" from the job's figures (the stream's if absent)."""
    usage, timings = job.get("usage") or {}, job.get("timings") or {}
    tokens = usage.get("completion_tokens", watch.tokens)
    rate = timings.get("tokens_per_second") or watch.rate()
    parts = [f"{tokens} tokens", f"{rate:.1f} tok/s" if rate is not None else "- tok/s"]
    parts.append((job.get("output") or {}).get("finish_reason") or "-")
    total = timings.get("total")
    return ", ".join(parts) + (f" ({total / 1000:.1f} s)" if total is not None else "")


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
    from rich.console import Console
    from rich.table import Table

    # Ids, states, times and numbers are never shortened; a narrow terminal shortens the rest.
    table = Table(box=None, header_style="bold")
    table.add_column("id", no_wrap=True, min_width=max(len(j["id"]) for j in jobs))
    table.add_column("status", no_wrap=True, min_width=max(len(j["status"]) for j in jobs))
    table.add_column("model", no_wrap=True, overflow="ellipsis")
    table.add_column("created", no_wrap=True, min_width=19)
    table.add_column("tokens", justify="right", no_wrap=True, min_width=6)
    table.add_column("total ms", justify="right", no_wrap=True, min_width=8)
    table.add_column("finish reason", no_wrap=True, overflow="ellipsis")
    for job in jobs:
        usage, timings = job.get("usage") or {}, job.get("timings") or {}
        total = timings.get("total")
        table.add_row(
            job["id"],
            f"[{STATUS_STYLES.get(job['status'], '')}]{job['status']}",
            job["model"],
            datetime.fromtimestamp(job["created_at"]).strftime("%Y-%m-%d %H:%M:%S"),  # local time
            str(usage.get("completion_tokens", "")),
            f"{total:.0f}" if total is not None else "",
            (job.get("output") or {}).get("finish_reason") or (job.get("error") or {}).get("code", ""),
        )
    console = Console()
    if not console.is_terminal:  # piped: whole rows, not cropped to a guessed width of 80
        natural = console.measure(table, options=console.options.update_width(10_000)).maximum
        console = Console(width=max(console.width, natural))
    console.print(table)
    if cursor is not None:
        print(f"genq: more jobs: --cursor {cursor!r}", file=sys.stderr)
    return 0


def _batch(args: argparse.Namespace) -> int:
    client = Client(args.url, api_key=args.api_key)
    webhook = {"url": args.webhook, "events": args.webhook_events.split(",")} if args.webhook else None
    batch = client.create_batch(jsonl=args.file, metadata=args.metadata, webhook=webhook)
    print(f"genq: batch {batch['id']} submitted: {batch['counts']['total']} jobs", file=sys.stderr)
    try:
        batch = _follow_batch(client, batch)
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


def _follow_batch(client: Client, batch: dict[str, Any]) -> dict[str, Any]:
    """Show a progress bar on stderr until every job of the batch has ended; return the batch."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    columns = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn()]
    with Progress(*columns, console=Console(stderr=True)) as progress:
        task = progress.add_task("batch", total=batch["counts"]["total"])
        while True:
            c = batch["counts"]
            progress.update(
                task,
                completed=c["succeeded"] + c["failed"] + c["cancelled"],
                description=f"{c['running']} running, {c['queued']} queued, {c['failed']} failed",
            )
            if batch["status"] != "in_progress":
                return batch
            batch = client.get_batch(batch["id"], wait_s=BATCH_POLL_S)


def _worker(args: argparse.Namespace) -> int:
    from shared.settings import Settings
    from worker.main import run_worker

    run_worker(Settings(), args.model, args.device, args.loglevel)
    return 0


def _api(args: argparse.Namespace) -> int:
    from api.serving import raise_open_files, worker_args
    from shared.settings import Settings

    settings = Settings()
    raise_open_files()  # each open stream or long poll is a socket
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
        *worker_args(settings),
        "--timeout",
        str(settings.max_wait + 30),  # a long poll must not look like a hung worker
        "--graceful-timeout",
        "10",
        "--access-logfile",
        "-",
        *(["--logger-class", "api.gunicorn_logger.JsonLogger"] if settings.log_format == "json" else []),
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
    p.add_argument("--quiet", action="store_true", help="no spinner and no summary on stderr")
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

    p = sub.add_parser("jobs", help="list your recent jobs, newest first, as a table")
    p.add_argument("--status", choices=list(STATUS_STYLES), help="only jobs in this state")
    p.add_argument("--limit", type=_positive_int, default=20, help="most jobs to list (default 20)")
    p.add_argument("--cursor", type=float, help="list jobs older than this (printed after a full page)")
    p.add_argument("--json", action="store_true", help="print the API's list as JSON")
    p.set_defaults(func=_jobs)

    p = sub.add_parser("models", help="list models and their ready workers")
    p.set_defaults(func=lambda a: print(json.dumps(Client(a.url, api_key=a.api_key).models(), indent=2)) or 0)

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
