"""What every request needs (settings, the job and batch stores, the Celery app, the tenant), typed.

The factory builds one `Context` per app and keeps it in `app.extensions`; routes take it with
`current()` rather than reaching into the extensions dict themselves.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from celery import Celery
from flask import Flask, current_app, g
from flask.sansio.app import App

from shared.batchstore import BatchStore
from shared.celery_app import make_celery
from shared.jobstore import JobStore
from shared.redisconn import connect
from shared.settings import Settings

EXTENSION = "genq"  # the app.extensions key the context lives under


@dataclass
class Context:
    """One app's settings and connections; mutable so a test can swap the settings of a running app."""

    settings: Settings
    store: JobStore
    celery: Celery
    batches: BatchStore = field(init=False)

    def __post_init__(self) -> None:
        self.batches = BatchStore(self.store)

    @classmethod
    def build(cls, settings: Settings) -> Context:
        """Connect to the job store and the broker these settings name (lazily: nothing is dialled yet)."""
        store = JobStore(connect(settings.redis_url, settings.redis_sentinel_master), settings.result_ttl)
        return cls(settings, store, make_celery(settings))

    def install(self, app: Flask) -> None:
        """Make this the context of app's requests."""
        app.extensions[EXTENSION] = self

    @staticmethod
    def of(app: App) -> Context:
        """Return app's context."""
        return app.extensions[EXTENSION]

    @property
    def tenant(self) -> str:
        """Return the caller's tenant (set by api/auth.py before every /v1 route)."""
        return g.tenant


def current() -> Context:
    """Return the context of the app handling the current request."""
    return Context.of(current_app)
