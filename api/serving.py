"""How `genq api` runs gunicorn: the worker class and the limits that let one host hold many waiters."""

from __future__ import annotations

import resource

from shared.settings import Settings

GRACEFUL_TIMEOUT_S = 10  # a stopping worker's requests in flight get this long to finish
HEADER_TIMEOUT_S = 10  # gevent: a request's headers must all arrive within this (also keep-alive idle)


def worker_args(settings: Settings) -> list[str]:
    """Return gunicorn's worker options for GENQ_API_WORKER_CLASS.

    gevent (the default): one greenlet per connection, so an open stream or long poll costs a socket
    and a little memory. gthread: the previous model, where each one holds one of GENQ_API_THREADS.
    """
    if settings.api_worker_class == "gthread":
        return ["--worker-class", "gthread", "--threads", str(settings.api_threads)]
    return [
        "--worker-class",
        "api.gworker.Worker",
        "--worker-connections",
        str(settings.api_worker_connections),
        "--keep-alive",
        str(HEADER_TIMEOUT_S),
    ]


def raise_open_files() -> int:
    """Raise this process's soft open-files limit to its hard limit (children inherit it); return it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):  # some containers refuse; the deployment docs name the limit
            pass
    return soft
