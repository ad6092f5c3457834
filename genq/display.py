"""What the `genq` command draws: a job's streamed text and spinner, the jobs table, a batch's progress."""

from __future__ import annotations

import sys
import time
from datetime import datetime
from typing import Any

from genq.client import Client

SPINNER_HZ = 8  # redraws a second of `genq submit --wait`'s spinner
RATE_AFTER_S = 0.5  # seconds of tokens before the spinner shows a tokens/s figure
BATCH_POLL_S = 1  # seconds each progress update of `genq batch` waits server-side
STATUS_STYLES = {
    "queued": "dim",
    "running": "cyan",
    "succeeded": "green",
    "failed": "red",
    "cancelled": "yellow",
}


class Watch:
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


def spinner(watch: Watch, quiet: bool) -> Any:
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


def stream_text(client: Client, job_id: str, quiet: bool) -> dict[str, Any]:
    """Print a job's text to stdout as it streams, with a spinner on stderr; return the final job."""
    watch = Watch("queued")
    live = spinner(watch, quiet)
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
        print(f"genq: {summary(final, watch)}", file=sys.stderr)
    return final


def summary(job: dict[str, Any], watch: Watch) -> str:
    """Return "N tokens, X tok/s, finish_reason (T s)" from the job's figures (the stream's if absent)."""
    usage, timings = job.get("usage") or {}, job.get("timings") or {}
    tokens = usage.get("completion_tokens", watch.tokens)
    rate = timings.get("tokens_per_second") or watch.rate()
    parts = [f"{tokens} tokens", f"{rate:.1f} tok/s" if rate is not None else "- tok/s"]
    parts.append((job.get("output") or {}).get("finish_reason") or "-")
    total = timings.get("total")
    return ", ".join(parts) + (f" ({total / 1000:.1f} s)" if total is not None else "")


def jobs_table(jobs: list[dict[str, Any]]) -> None:
    """Print jobs as a table on stdout; piped, rows are whole rather than cropped."""
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


def follow_batch(client: Client, batch: dict[str, Any]) -> dict[str, Any]:
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
