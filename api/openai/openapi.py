"""The OpenAPI entries of the OpenAI-compatible routes, to merge into api/openapi.py's document."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import JsonSchemaMode

from api.openai.schemas import (
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionRequest,
    Completion,
    CompletionChunk,
    CompletionRequest,
    OpenAIErrorResponse,
)

OPENAPI_MODELS: list[tuple[type[BaseModel], JsonSchemaMode]] = [
    (ChatCompletionRequest, "validation"),
    (CompletionRequest, "validation"),
    (ChatCompletion, "serialization"),
    (ChatCompletionChunk, "serialization"),
    (Completion, "serialization"),
    (CompletionChunk, "serialization"),
    (OpenAIErrorResponse, "serialization"),
]  # add these to the models_json_schema call in api/openapi.py


def openapi_paths(ref: str = "#/components/schemas/{model}") -> dict[str, Any]:
    """Return the OpenAPI path items of the two completion routes (their schemas: OPENAPI_MODELS)."""

    def schema(name: str) -> dict[str, Any]:
        return {"$ref": ref.format(model=name)}

    def event(chunk: str) -> dict[str, Any]:
        """One SSE event: a JSON chunk or error, or the final [DONE]."""
        json_data = {
            "type": "string",
            "contentMediaType": "application/json",
            "contentSchema": {"anyOf": [schema(chunk), schema("OpenAIErrorResponse")]},
        }
        return {
            "type": "object",
            "required": ["data"],
            "properties": {"data": {"anyOf": [{"const": "[DONE]"}, json_data]}},
        }

    def errors(*statuses: int) -> dict[str, Any]:
        return {
            str(s): {
                "description": d,
                "content": {"application/json": {"schema": schema("OpenAIErrorResponse")}},
            }
            for s, d in {
                400: "Invalid or unsupported parameter, malformed JSON, or the prompt exceeds the context",
                404: "Unknown model (code model_not_found)",
                413: "Body too large",
                429: "The model's queue is full (Retry-After)",
                500: "The job failed in its worker",
                503: "Redis unavailable (Retry-After)",
            }.items()
            if s in statuses
        }

    def route(op: str, summary: str, request: str, answer: str, chunk: str) -> dict[str, Any]:
        events = f"With stream: data: {{{chunk}}} events, then data: [DONE]; errors as data: {{error}}"
        return {
            "post": {
                "summary": summary,
                "operationId": op,
                "tags": ["OpenAI-compatible"],
                "requestBody": {
                    "required": True,
                    "content": {"application/json": {"schema": schema(request)}},
                },
                "responses": {
                    "200": {
                        "description": f"{answer}, or a stream of {chunk}. {events}",
                        "headers": {"X-Genq-Job-Ids": {"schema": {"type": "string"}}},
                        "content": {
                            "application/json": {"schema": schema(answer)},
                            "text/event-stream": {"schema": event(chunk)},
                        },
                    },
                    **errors(400, 404, 413, 429, 500, 503),
                },
            }
        }

    return {
        "/v1/chat/completions": route(
            "createChatCompletion",
            "OpenAI-compatible chat",
            "ChatCompletionRequest",
            "ChatCompletion",
            "ChatCompletionChunk",
        ),
        "/v1/completions": route(
            "createCompletion",
            "OpenAI-compatible text completion",
            "CompletionRequest",
            "Completion",
            "CompletionChunk",
        ),
    }
