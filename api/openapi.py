"""The OpenAPI document, built from the wire schemas so that docs and validation cannot drift."""

from __future__ import annotations

from functools import cache
from typing import Any

from pydantic.json_schema import models_json_schema

from api import admin_openapi
from api.openai.openapi import OPENAPI_MODELS, openapi_paths
from shared.schemas import (
    BatchCreate,
    BatchPublic,
    ErrorResponse,
    Health,
    JobCreate,
    JobList,
    JobPublic,
    ModelList,
)

REF = "#/components/schemas/{model}"


def _ref(name: str) -> dict[str, Any]:
    return {"$ref": REF.format(model=name)}


def _json_data(schema: dict[str, Any]) -> dict[str, Any]:
    """An event's data line holding JSON that matches schema."""
    return {"type": "string", "contentMediaType": "application/json", "contentSchema": schema}


def _event(name: str, data: dict[str, Any]) -> dict[str, Any]:
    return {
        "type": "object",
        "required": ["event", "data"],
        "properties": {"event": {"const": name}, "data": _json_data(data)},
    }


def _fields(**props: dict[str, Any]) -> dict[str, Any]:
    return {"type": "object", "required": list(props), "properties": props}


# Before OpenAPI 3.2's itemSchema, a text/event-stream `schema` describes one event {event, data, id, retry}.
JOB_EVENT = {
    "oneOf": [
        _event("token", _fields(text={"type": "string"})),
        _event("status", _fields(status=_ref("Status"))),
        _event("reset", _fields(status=_ref("Status"))),
        _event("error", _fields(code={"type": "string"}, message={"type": "string"})),
        _event("done", _ref("JobPublic")),
    ]
}
IDEMPOTENCY_KEY = {
    "name": "Idempotency-Key",
    "in": "header",
    "required": False,
    "description": "Same key and body within GENQ_IDEMPOTENCY_TTL (24 h): the same job or batch; "
    "another body: 409",
    "schema": {"type": "string", "minLength": 1, "maxLength": 255},
}


def _reply(description: str, schema: str, headers: dict[str, Any] | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {
        "description": description,
        "content": {"application/json": {"schema": _ref(schema)}},
    }
    if headers:
        out["headers"] = headers
    return out


def _errors(*statuses: int) -> dict[str, Any]:
    text = {
        400: "Malformed JSON",
        401: "Missing or invalid API key (when keys are configured)",
        404: "Unknown or expired job",
        409: "Conflict: the job already ended, or the Idempotency-Key was used with another body",
        413: "Body too large",
        422: "Invalid request (each bad field named)",
        429: "Rate limit, or a model's or tenant's queued-jobs cap, reached (see Retry-After)",
        503: "Redis unavailable",
    }
    return {str(s): _reply(text[s], "ErrorResponse") for s in statuses}


JOB_ID_PARAM = {"name": "job_id", "in": "path", "required": True, "schema": {"type": "string"}}
BATCH_ID_PARAM = {"name": "batch_id", "in": "path", "required": True, "schema": {"type": "string"}}


@cache
def openapi_spec() -> dict[str, Any]:
    """Return the OpenAPI 3.1 document for the genq API."""
    _, defs = models_json_schema(
        [
            (JobCreate, "validation"),
            (JobPublic, "serialization"),
            (ModelList, "serialization"),
            (ErrorResponse, "serialization"),
            (Health, "serialization"),
            (JobList, "serialization"),
            (BatchCreate, "validation"),
            (BatchPublic, "serialization"),
            *OPENAPI_MODELS,
            *admin_openapi.OPENAPI_MODELS,
        ],
        ref_template=REF,
    )
    wait = {
        "name": "wait",
        "in": "query",
        "required": False,
        "description": "Seconds to block until the job ends (0 to 60).",
        "schema": {"type": "number", "minimum": 0, "maximum": 60},
    }
    paths = {
        "/v1/jobs": {
            "post": {
                "summary": "Submit a generation job",
                "operationId": "createJob",
                "parameters": [IDEMPOTENCY_KEY],
                "requestBody": {
                    "required": True,
                    "content": {"application/json": {"schema": _ref("JobCreate")}},
                },
                "responses": {
                    "202": _reply(
                        "Job stored and queued", "JobPublic", {"Location": {"schema": {"type": "string"}}}
                    ),
                    **_errors(400, 401, 409, 413, 422, 429, 503),
                },
            },
            "get": {
                "summary": "List the caller's recent jobs, newest first",
                "operationId": "listJobs",
                "parameters": [
                    {"name": "status", "in": "query", "required": False, "schema": _ref("Status")},
                    {
                        "name": "limit",
                        "in": "query",
                        "required": False,
                        "schema": {"type": "integer", "minimum": 1, "maximum": 100, "default": 20},
                    },
                    {
                        "name": "cursor",
                        "in": "query",
                        "required": False,
                        "schema": {"type": "number"},
                        "description": "next_cursor of the previous page",
                    },
                ],
                "responses": {"200": _reply("The caller's jobs", "JobList"), **_errors(401, 422, 429, 503)},
            },
        },
        "/v1/jobs/{job_id}": {
            "get": {
                "summary": "Get a job, optionally long-polling until it ends",
                "operationId": "getJob",
                "parameters": [JOB_ID_PARAM, wait],
                "responses": {"200": _reply("The job", "JobPublic"), **_errors(401, 404, 422, 429, 503)},
            }
        },
        "/v1/jobs/{job_id}/stream": {
            "get": {
                "summary": "Stream a job's text as server-sent events",
                "operationId": "streamJob",
                "parameters": [JOB_ID_PARAM],
                "responses": {
                    "200": {
                        "description": "Events: token {text}, status {status}, reset {status} (worker lost: "
                        "drop the text so far), error {code, message}, "
                        "done {job}; ': keepalive' comments while idle",
                        "content": {"text/event-stream": {"schema": JOB_EVENT}},
                    },
                    **_errors(401, 404, 429, 503),
                },
            }
        },
        "/v1/jobs/{job_id}/cancel": {
            "post": {
                "summary": "Cancel a job",
                "operationId": "cancelJob",
                "parameters": [JOB_ID_PARAM],
                "responses": {
                    "200": _reply("Cancelled", "JobPublic"),
                    "202": _reply("Running; its worker was asked to stop", "JobPublic"),
                    **_errors(401, 404, 409, 429, 503),
                },
            }
        },
        "/v1/batches": {
            "post": {
                "summary": "Submit many jobs at batch priority (JSON, or JSONL: one BatchItem or one "
                "OpenAI batch line a line)",
                "operationId": "createBatch",
                "parameters": [IDEMPOTENCY_KEY],
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/json": {"schema": _ref("BatchCreate")},
                        "application/x-ndjson": {"schema": {"type": "string"}},
                        "multipart/form-data": {
                            "schema": {
                                "type": "object",
                                "properties": {
                                    "file": {"type": "string", "format": "binary"},
                                    "metadata": {
                                        "type": "string",
                                        "description": "the batch's metadata, a JSON object",
                                    },
                                    "webhook": {
                                        "type": "string",
                                        "description": "the batch's webhook, a JSON Webhook object",
                                    },
                                },
                                "required": ["file"],
                            }
                        },
                    },
                },
                "responses": {
                    "202": _reply(
                        "Every item valid; the batch is stored and its jobs queued",
                        "BatchPublic",
                        {"Location": {"schema": {"type": "string"}}},
                    ),
                    **_errors(400, 401, 409, 413, 422, 429, 503),
                },
            }
        },
        "/v1/batches/{batch_id}": {
            "get": {
                "summary": "Get a batch's counts, and its results once every job has ended",
                "operationId": "getBatch",
                "parameters": [BATCH_ID_PARAM, wait],
                "responses": {"200": _reply("The batch", "BatchPublic"), **_errors(401, 404, 422, 429, 503)},
            }
        },
        "/v1/batches/{batch_id}/results": {
            "get": {
                "summary": "Download a finished batch's results as JSONL, one line per item",
                "operationId": "getBatchResults",
                "parameters": [
                    BATCH_ID_PARAM,
                    {
                        "name": "format",
                        "in": "query",
                        "required": False,
                        "schema": {"type": "string", "enum": ["genq", "openai"]},
                        "description": "genq: BatchResult lines; openai: OpenAI batch output lines. "
                        "Default: the format the batch's items came in",
                    },
                ],
                "responses": {
                    "200": {
                        "description": "One line per item, in submission order",
                        "content": {"application/x-ndjson": {"schema": {"type": "string"}}},
                    },
                    **_errors(401, 404, 409, 422, 429, 503),
                },
            }
        },
        "/v1/batches/{batch_id}/cancel": {
            "post": {
                "summary": "Cancel every job of a batch that has not ended",
                "operationId": "cancelBatch",
                "parameters": [BATCH_ID_PARAM],
                "responses": {
                    "200": _reply("Cancelled: every job has ended", "BatchPublic"),
                    "202": _reply("Running jobs were asked to stop", "BatchPublic"),
                    **_errors(401, 404, 409, 429, 503),
                },
            }
        },
        "/v1/models": {
            "get": {
                "summary": "List models with their ready workers",
                "operationId": "listModels",
                "responses": {"200": _reply("The catalog", "ModelList"), **_errors(401, 429, 503)},
            }
        },
        "/healthz": {
            "get": {
                "summary": "Liveness",
                "operationId": "healthz",
                "responses": {"200": _reply("Up", "Health")},
            }
        },
        "/readyz": {
            "get": {
                "summary": "Readiness: Redis reachable and a worker ready",
                "operationId": "readyz",
                "responses": {"200": _reply("Ready", "Health"), "503": _reply("Not ready", "Health")},
            }
        },
    }
    paths |= openapi_paths(REF) | admin_openapi.openapi_paths(REF)
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "genq",
            "version": "0.1.0",
            "description": "Asynchronous LLM text generation over Redis and Celery workers.",
        },
        "paths": paths,
        "components": {"schemas": defs["$defs"]},
    }
