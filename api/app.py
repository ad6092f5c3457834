"""The Flask application factory."""

from __future__ import annotations

from flask import Flask
from flask.json.provider import DefaultJSONProvider
from flask_swagger_ui import get_swaggerui_blueprint

from api.admin import admin_bp, usage_bp
from api.auth import install_auth
from api.batches import batches_bp
from api.context import Context
from api.errors import register_error_handlers
from api.jobs import jobs_bp
from api.meta import meta_bp
from api.metrics import metrics_bp
from api.openai.routes import openai_bp
from api.sweeper import start_sweeper
from api.tokenizer import tokenizer_bp
from shared.logs import setup_logging
from shared.settings import Settings


def create_app(settings: Settings | None = None, sweep: bool | None = None) -> Flask:
    """Build the API for these settings (read from GENQ_* when omitted).

    A served app (settings from the environment, as gunicorn builds it) also runs the
    reconciler's sweep in the background; an app a test builds with its own settings does not,
    unless sweep is set.
    """
    sweep = settings is None if sweep is None else sweep
    settings = settings or Settings()
    setup_logging(settings)  # JSON lines on stdout; calling create_app again adds no handler
    app = Flask("genq")
    app.config["MAX_CONTENT_LENGTH"] = settings.max_body_bytes
    assert isinstance(app.json, DefaultJSONProvider)  # Flask's default; keep our field order
    app.json.sort_keys = False
    context = Context.build(settings)
    context.install(app)
    register_error_handlers(app)  # genq's envelope; the OpenAI routes answer in OpenAI's
    install_auth(app, settings)  # before the blueprints: every /v1 route is behind it
    app.register_blueprint(jobs_bp)
    app.register_blueprint(meta_bp)
    app.register_blueprint(openai_bp)
    app.register_blueprint(batches_bp)
    app.register_blueprint(tokenizer_bp)  # /tokenizer_info, /tokenize, /detokenize: behind the same auth
    app.register_blueprint(admin_bp)  # /v1/admin: keys, tenants' limits and usage (admin keys only)
    app.register_blueprint(usage_bp)  # GET /v1/usage: the caller's own
    app.register_blueprint(metrics_bp)  # GET /metrics: no key, no rate limit (not under /v1)
    # An interactive API page from the same /openapi.json; its assets ship in the package (no CDN).
    app.register_blueprint(get_swaggerui_blueprint("/docs", "/openapi.json", config={"app_name": "genq API"}))
    if sweep and settings.api_reconciler:
        context.sweeper = start_sweeper(settings, context.store, context.celery)
    return app
