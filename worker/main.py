"""Start one worker: load the model first, then consume its model's queue with Celery."""

from __future__ import annotations

import logging

from celery import signals

from shared.celery_app import make_celery
from shared.logs import setup_logging
from shared.settings import Settings
from worker.runtime import Runtime
from worker.tasks import register_tasks

log = logging.getLogger(__name__)


class StartupError(SystemExit):
    """The worker cannot start; the message says why, in one line."""


def run_worker(settings: Settings, model: str | None, device: str, loglevel: str = "INFO") -> None:
    """Load the model, then consume its queue until a shutdown signal; blocks."""
    setup_logging(settings, loglevel)  # before the model loads, so that its lines are JSON too
    if settings.log_format == "json":
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # its \r-redrawn bars would break the stream of JSON lines
        hf_logging.disable_default_handler()  # transformers' warnings reach our handler instead
        hf_logging.enable_propagation()
    spec = settings.model(model)
    if spec is None:
        raise StartupError(f"genq worker: unknown model {model!r}; the catalog has {settings.model_names}")
    runtime = Runtime(settings, spec, device)
    from worker.loader import ModelLoadError

    try:
        runtime.load()  # before Celery starts: no message is taken until the model is ready
    except ModelLoadError as exc:
        raise StartupError(f"genq worker: {exc}") from exc
    app = make_celery(settings)
    register_tasks(app, runtime)

    # A receiver on setup_logging tells Celery to leave logging alone: its own lines ("Task ...
    # received") then reach the root handler above, and stdout is not redirected into a logger.
    signals.setup_logging.connect(lambda **_: None, weak=False)
    # Ready means consuming: register only once Celery has connected and declared its queue.
    signals.worker_ready.connect(lambda **_: runtime.start_heartbeat(app), weak=False)
    # On shutdown, leave the registry at once, but keep the engine until the jobs in hand finish.
    signals.worker_shutting_down.connect(lambda **_: runtime.leave(), weak=False)
    # The thread pool never forks, so a CUDA context made by the loader stays valid; each
    # thread holds one job and waits on the shared engine, which batches them all. Threads
    # beyond max_batch (prefetch_jobs) hold claimed jobs that join the batch as rows end.
    argv = [
        *(["--quiet"] if settings.log_format == "json" else []),  # no banner: stdout is JSON only
        "worker",
        "--pool",
        "threads",
        "--concurrency",
        str(settings.max_batch + settings.prefetch_jobs),
        "--queues",
        spec.queue,
        "--hostname",
        f"{runtime.worker_id.replace(':', '-')}",
        "--loglevel",
        loglevel,
        "--without-gossip",
        "--without-mingle",
    ]
    try:
        app.worker_main(argv=argv)
    finally:
        runtime.stop()
