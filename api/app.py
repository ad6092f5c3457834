"""The Flask application factory."""

from __future__ import annotations

from flask import Flask
from flask_swagger_ui import get_swaggerui_blueprint

from api.auth import install_auth
from api.batches import batches_bp
from api.errors import register_error_handlers
from api.metrics import metrics_bp
from api.openai_compat import openai_bp
from api.routes import bp
from api.waiters import Hub
from shared.celery_app import make_celery
from shared.jobstore import JobStore
from shared.logs import setup_logging
from shared.redisconn import connect
from shared.settings import Settings
from shared.waitstore import WaitStore


def create_app(settings: Settings | None = None) -> Flask:
    """Build the API for these settings (read from GENQ_* when omitted)."""
    settings = settings or Settings()
    setup_logging(settings)  # JSON lines on stdout; calling create_app again adds no handler
    app = Flask("genq")
    app.config["MAX_CONTENT_LENGTH"] = settings.max_body_bytes
    app.json.sort_keys = False
    client = connect(
        settings.redis_url, settings.redis_sentinel_master, max_connections=settings.api_redis_connections
    )
    store = JobStore(client, settings.result_ttl)
    hub = Hub(WaitStore(client), settings.max_waiters_per_process, settings.max_waiters_per_tenant)
    store.ended_waiter = hub.wait_ended  # long polls share the process's readers (api/waiters.py)
    celery = make_celery(settings)
    app.extensions["genq"] = {"settings": settings, "store": store, "celery": celery, "waiters": hub}
    register_error_handlers(app)
    install_auth(app, settings)  # before the blueprints: every /v1 route is behind it
    app.register_blueprint(bp)
    app.register_blueprint(openai_bp)
    app.register_blueprint(batches_bp)
    app.register_blueprint(metrics_bp)  # GET /metrics: no key, no rate limit (not under /v1)
    # An interactive API page from the same /openapi.json; its assets ship in the package (no CDN).
    app.register_blueprint(get_swaggerui_blueprint("/docs", "/openapi.json", config={"app_name": "genq API"}))
    return app
