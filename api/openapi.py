"""The OpenAPI document, built from the wire schemas so that docs and validation cannot drift."""

from __future__ import annotations

from functools import cache
from typing import Any

from pydantic.json_schema import models_json_schema

from api.openai_openapi import OPENAPI_MODELS, openapi_paths
from shared.schemas import ErrorResponse, Health, JobCreate, JobList, JobPublic, ModelList

REF = "#/components/schemas/{model}"


def _ref(name: str) -> dict[str, Any]:
    return {"$ref": REF.format(model=name)}


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
            *OPENAPI_MODELS,
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
                        "content": {"text/event-stream": {"schema": {"type": "string"}}},
                    },
                    **_errors(401, 404, 429),
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
    paths |= openapi_paths(REF)
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
