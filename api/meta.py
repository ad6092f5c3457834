"""Routes about the service, not its jobs: liveness, readiness, the model catalog, the OpenAPI document."""

from __future__ import annotations

from flask import Blueprint, Response, jsonify

from api.context import current
from api.openapi import openapi_spec
from api.wire import json_response
from shared.schemas import Health, ModelList, ModelPublic

meta_bp = Blueprint("meta", __name__)


@meta_bp.get("/v1/models")
def list_models() -> Response:
    """List the catalog with how many ready workers serve each model."""
    ctx = current()
    workers = ctx.store.workers()
    data = [
        ModelPublic(
            id=m.name,
            name=m.name,
            context_length=m.context_length,
            max_new_tokens_cap=m.max_new_tokens_cap,
            ready_workers=sum(w.get("model") == m.name for w in workers),
        )
        for m in ctx.settings.models
    ]
    return json_response(ModelList(data=data))


@meta_bp.get("/healthz")
def healthz() -> Response:
    """The process is up (no dependency is checked)."""
    return json_response(Health(status="ok"))


@meta_bp.get("/readyz")
def readyz() -> Response:
    """Ready when Redis answers and at least one worker is serving."""
    store = current().store
    try:
        store.ping()
        ready = len(store.workers())
    except Exception as exc:  # any Redis failure means not ready, never a 500
        return json_response(Health(status="unavailable", reason=f"redis unreachable: {exc}"), 503)
    if ready == 0:
        return json_response(Health(status="unavailable", reason="no ready worker", ready_workers=0), 503)
    return json_response(Health(status="ok", ready_workers=ready))


@meta_bp.get("/openapi.json")
def openapi() -> Response:
    """The OpenAPI 3.1 document, generated from the same pydantic models that validate requests."""
    return jsonify(openapi_spec())
