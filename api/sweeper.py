"""The reconciler's sweep, run in API processes so that it goes on while no worker runs.

The sweep is the workers' own (shared/reconciler.py); a Redis lock with
a TTL lets one process sweep at a time, whichever API process or worker takes it first.
"""

from __future__ import annotations

import threading

from celery import Celery

from shared.jobstore import JobStore
from shared.reconciler import Reconciler
from shared.settings import Settings


def start_sweeper(settings: Settings, store: JobStore, celery: Celery) -> threading.Event:
    """Start the sweep on a daemon thread of this process; set the returned event to stop it."""
    stop = threading.Event()
    reconciler = Reconciler(store, celery, settings)
    threading.Thread(target=reconciler.run, args=(stop,), name="genq-reconciler", daemon=True).start()
    return stop
