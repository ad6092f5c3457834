"""GET /metrics: Prometheus text, read from Redis at each scrape so that every API process agrees."""

from __future__ import annotations

from flask import Blueprint, Response, current_app
from flask.blueprints import BlueprintSetupState
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from api.context import Context
from api.waitslots import WaiterCollector
from shared.metrics import GenqCollector

metrics_bp = Blueprint("metrics", __name__)


@metrics_bp.record_once
def _install(state: BlueprintSetupState) -> None:
    """Give each app its own registry (never the global default), reading that app's store."""
    ctx = Context.of(state.app)
    registry = CollectorRegistry(auto_describe=False)  # no Redis call at start-up
    registry.register(GenqCollector(ctx.store, ctx.settings))
    registry.register(WaiterCollector(ctx.waiters))
    state.app.extensions["genq_metrics"] = registry


@metrics_bp.get("/metrics")
def metrics() -> Response:
    """Answer a scrape; with Redis down, the app's store error handler answers 503."""
    return Response(generate_latest(current_app.extensions["genq_metrics"]), content_type=CONTENT_TYPE_LATEST)
