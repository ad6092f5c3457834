"""What every request needs (settings, the job and batch stores, the Celery app, the tenant), typed.

The factory builds one `Context` per app and keeps it in `app.extensions`; routes take it with
`current()` rather than reaching into the extensions dict themselves.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

from celery import Celery
from flask import Flask, current_app, g
from flask.sansio.app import App

from api.waiters import Hub
from api.waitreaders import CONNECTIONS
from shared.batchstore import BatchStore
from shared.celery_app import make_celery
from shared.jobstore import JobStore
from shared.keystore import KeyStore
from shared.redisconn import connect
from shared.settings import Settings
from shared.waitstore import WaitStore

KEYSTORE_CONNECTIONS = 4  # Redis connections of the key store per API process (plain redis:// URLs)
EXTENSION = "genq"  # the app.extensions key the context lives under


@dataclass
class Context:
    """One app's settings and connections; mutable so a test can swap the settings of a running app."""

    settings: Settings
    store: JobStore
    celery: Celery
    waiters: Hub  # open streams and long polls share its Redis readers (api/waiters.py)
    batches: BatchStore = field(init=False)
    keys: KeyStore = field(init=False)  # runtime API keys, tenants' limits and usage
    sweeper: threading.Event | None = None  # set it to stop this app's reconciler sweep (api/sweeper.py)

    def __post_init__(self) -> None:
        self.batches = BatchStore(self.store)
        # Its own connection (lazy): the store's is the store's alone (tests/test_store_boundary.py).
        # A few connections, however many requests wait at once (api/waiters.py).
        client = connect(
            self.settings.redis_url, self.settings.redis_sentinel_master, max_connections=KEYSTORE_CONNECTIONS
        )
        self.keys = KeyStore(client, self.settings.key_cache_s)

    @classmethod
    def build(cls, settings: Settings) -> Context:
        """Connect to the job store and the broker these settings name (lazily: nothing is dialled yet)."""
        # A bounded pool: however many clients wait, a process holds tens of connections (api/waiters.py).
        client = connect(
            settings.redis_url, settings.redis_sentinel_master, max_connections=settings.api_redis_connections
        )
        store = JobStore(client, settings.result_ttl)
        # The waiter readers' own connections (one each, and the waker's): a reader blocked in XREAD
        # never holds one that a request handler waits for.
        readers = connect(settings.redis_url, settings.redis_sentinel_master, max_connections=CONNECTIONS)
        waits = WaitStore(client, readers)
        hub = Hub(waits, settings.max_waiters_per_process, settings.max_waiters_per_tenant)
        store.ended_waiter = hub.wait_ended  # long polls (jobs, batches, OpenAI) wait through the hub
        return cls(settings, store, make_celery(settings), hub)

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
