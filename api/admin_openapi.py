"""The OpenAPI entries of the admin and usage routes (api/admin.py), merged into api/openapi.py's document."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, TypeAdapter
from pydantic.json_schema import JsonSchemaMode

from api.admin_schemas import (
    KeyCreate,
    KeyCreated,
    KeyList,
    KeyListQuery,
    KeyPublic,
    LimitsUpdate,
    Tenant,
    TenantLimitsPublic,
    UsageQuery,
    UsageReport,
)

OPENAPI_MODELS: list[tuple[type[BaseModel], JsonSchemaMode]] = [
    (KeyCreate, "validation"),
    (LimitsUpdate, "validation"),
    (KeyCreated, "serialization"),
    (KeyPublic, "serialization"),
    (KeyList, "serialization"),
    (TenantLimitsPublic, "serialization"),
    (UsageReport, "serialization"),
]  # add these to the models_json_schema call in api/openapi.py

ERRORS = {
    400: "Malformed JSON",
    401: "Missing or invalid API key; key_expired or key_revoked to the key's holder",
    403: "The key is not an admin key (genq keys create --admin)",
    404: "No such key",
    413: "Body too large",
    422: "Invalid request (each bad field named)",
    429: "The tenant's rate limit reached (see Retry-After)",
    503: "Redis unavailable (see Retry-After)",
}
ADMIN_TAG = ["Admin"]


def _query_params(model: type[BaseModel]) -> list[dict[str, Any]]:
    """Return the query parameters of a query model, one per field, with the schema it validates."""
    params = []
    for name, schema in model.model_json_schema()["properties"].items():
        # A query string cannot carry null: absent is how an optional parameter is left out.
        kinds = [s for s in schema.get("anyOf", [schema]) if s.get("type") != "null"]
        params.append({"name": name, "in": "query", "required": False, "schema": kinds[0]})
    return params


def openapi_paths(ref: str = "#/components/schemas/{model}") -> dict[str, Any]:
    """Return the OpenAPI path items of /v1/admin/* and /v1/usage (their schemas: OPENAPI_MODELS)."""

    def reply(description: str, model: str) -> dict[str, Any]:
        return {
            "description": description,
            "content": {"application/json": {"schema": {"$ref": ref.format(model=model)}}},
        }

    def errors(*statuses: int) -> dict[str, Any]:
        return {str(s): reply(ERRORS[s], "ErrorResponse") for s in statuses}

    def body(model: str) -> dict[str, Any]:
        return {
            "required": True,
            "content": {"application/json": {"schema": {"$ref": ref.format(model=model)}}},
        }

    tenant = {"name": "tenant", "in": "path", "required": True, "schema": TypeAdapter(Tenant).json_schema()}
    key_id = {"name": "key_id", "in": "path", "required": True, "schema": {"type": "string"}}
    dates = _query_params(UsageQuery)
    # Every admin route is refused (403) to a key without admin rights before anything else is read.
    admin = (401, 403, 429, 503)
    return {
        "/v1/admin/keys": {
            "post": {
                "summary": "Create an API key (shown in this answer only)",
                "operationId": "createKey",
                "tags": ADMIN_TAG,
                "requestBody": body("KeyCreate"),
                "responses": {
                    "201": reply("The key and its record", "KeyCreated"),
                    **errors(400, *admin, 413, 422),
                },
            },
            "get": {
                "summary": "List API keys, oldest first (never a key or its hash)",
                "operationId": "listKeys",
                "tags": ADMIN_TAG,
                "parameters": _query_params(KeyListQuery),
                "responses": {"200": reply("The keys", "KeyList"), **errors(*admin, 422)},
            },
        },
        "/v1/admin/keys/{key_id}": {
            "delete": {
                "summary": "Revoke an API key: refused everywhere within GENQ_KEY_CACHE_S (at most 2 s)",
                "operationId": "revokeKey",
                "tags": ADMIN_TAG,
                "parameters": [key_id],
                "responses": {"200": reply("The revoked key", "KeyPublic"), **errors(*admin, 404)},
            }
        },
        "/v1/admin/tenants/{tenant}/limits": {
            "get": {
                "summary": "Show a tenant's own limits and those in force",
                "operationId": "getTenantLimits",
                "tags": ADMIN_TAG,
                "parameters": [tenant],
                "responses": {
                    "200": reply("The tenant's limits", "TenantLimitsPublic"),
                    **errors(*admin, 422),
                },
            },
            "patch": {
                "summary": "Set the limits named in the body (null = back to the default); the rest stay",
                "operationId": "setTenantLimits",
                "tags": ADMIN_TAG,
                "parameters": [tenant],
                "requestBody": body("LimitsUpdate"),
                "responses": {
                    "200": reply("The tenant's limits", "TenantLimitsPublic"),
                    **errors(400, *admin, 413, 422),
                },
            },
        },
        "/v1/admin/tenants/{tenant}/usage": {
            "get": {
                "summary": "Any tenant's usage, per UTC day and per key",
                "operationId": "getTenantUsage",
                "tags": ADMIN_TAG,
                "parameters": [tenant, *dates],
                "responses": {"200": reply("The tenant's usage", "UsageReport"), **errors(*admin, 422)},
            }
        },
        "/v1/usage": {
            "get": {
                "summary": "The caller's tenant's usage from start to end (UTC dates, inclusive)",
                "operationId": "getUsage",
                "parameters": dates,
                "responses": {
                    "200": reply("The tenant's usage", "UsageReport"),
                    **errors(401, 422, 429, 503),
                },
            }
        },
    }
