"""OpenAI's batch file format: its input lines become genq batch items, its output lines are offered.

An input line is {"custom_id", "method": "POST", "url": "/v1/chat/completions" or "/v1/completions",
"body"}, the body as that endpoint takes it (one choice, no streaming), checked by the same rules.
An output line is {"id", "custom_id", "response": {"status_code", "request_id", "body"}, "error"},
as in the output file of OpenAI's Batch API.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from api.errors import OpenAIHTTPError, invalid
from api.openai.replies import Reply, failure
from api.openai.routes import request_jobs
from shared.batchstore import MISSING, BatchRecord
from shared.constraints import ToolCalls
from shared.jobstore import JobStore
from shared.records import JobRecord
from shared.schemas import MAX_CUSTOM_ID_CHARS, BatchItem, ErrorCode, Status
from shared.settings import Settings


class OpenAIBatchLine(BaseModel):
    """One line of an OpenAI batch input file."""

    model_config = ConfigDict(extra="forbid")

    custom_id: Annotated[str, Field(min_length=1, max_length=MAX_CUSTOM_ID_CHARS)]
    method: Literal["POST"]
    url: Literal["/v1/chat/completions", "/v1/completions"]
    body: dict[str, Any]


def is_openai_line(data: Any) -> bool:
    """Return True when a parsed JSONL line is in OpenAI's batch format rather than genq's."""
    return isinstance(data, dict) and "body" in data and "url" in data


def to_item(settings: Settings, line: OpenAIBatchLine) -> BatchItem:
    """Build the genq batch item an OpenAI line asks for; ApiError (422, the body's field named) if not."""
    try:
        req, jobs = request_jobs(settings, line.url, line.body)
    except OpenAIHTTPError as exc:
        field = f"body.{exc.error.param}" if exc.error.param else "body"
        raise invalid(ErrorCode.VALIDATION_ERROR, exc.error.message, field) from None
    if req.stream:
        raise invalid(ErrorCode.VALIDATION_ERROR, "streaming is not available in a batch", "body.stream")
    if len(jobs) != 1:
        message = "a batch line makes one choice (n = 1); repeat the line for more"
        raise invalid(ErrorCode.VALIDATION_ERROR, message, "body.n")
    return BatchItem.model_validate(jobs[0].model_dump(mode="json") | {"custom_id": line.custom_id})


def result_lines(store: JobStore, batch: BatchRecord) -> Iterator[str]:
    """Yield a finished batch's results as OpenAI batch output lines, in submission order."""
    for (custom_id, job_id), rec in zip(batch.items, store.records(batch.job_ids), strict=True):
        line = {"id": "batch_req_" + job_id.removeprefix("job_"), "custom_id": custom_id}
        yield json.dumps(line | _outcome(job_id, rec), ensure_ascii=False) + "\n"


def _outcome(job_id: str, rec: JobRecord | None) -> dict[str, Any]:
    """Return a line's response and error: an answer, an error answer, or why the request never ran."""
    if rec is None:
        return {"response": None, "error": {"code": str(MISSING.code), "message": MISSING.message}}
    job = rec.public()
    chat = rec.chat
    if job.status is Status.CANCELLED and job.output is None:
        return {"response": None, "error": {"code": "cancelled", "message": "cancelled before it ran"}}
    reply = Reply(
        chat=chat,
        id=("chatcmpl-" if chat else "cmpl-") + job_id.removeprefix("job_"),
        created=int(job.finished_at or job.created_at),
        model=job.model,
        include_usage=True,
        tool_calls=ToolCalls(rec.request["tool_calls"]) if rec.request.get("tool_calls") else None,
    )
    error = failure(job, reply.prompt_param)
    if error is not None:
        body: dict[str, Any] = {"error": error.error.model_dump(mode="json")}
        return {"response": {"status_code": error.status, "request_id": job_id, "body": body}, "error": None}
    body = reply.complete([job]).model_dump(mode="json")
    return {"response": {"status_code": 200, "request_id": job_id, "body": body}, "error": None}
