"""Shape genq jobs as OpenAI answers: completion bodies, streamed chunks, and what a failed job means."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import redis
from pydantic import BaseModel

from api.errors import OpenAIHTTPError
from api.events import KEEPALIVE, OPENED, data_event, merged_events
from api.openai.logprobs import (
    chat_entries,
    chat_logprobs,
    completion_entries,
    completion_logprobs,
    echoed_text,
    parse_entries,
    spelled,
)
from api.openai.schemas import (
    AssistantMessage,
    ChatChoice,
    ChatChunkChoice,
    ChatCompletion,
    ChatCompletionChunk,
    Completion,
    CompletionChoice,
    CompletionChunk,
    CompletionUsage,
)
from api.openai.toolcalls import tool_calls_of
from api.waiters import Hub
from shared.constraints import ToolCalls
from shared.jobstore import (
    EVENT_DONE,
    EVENT_LOGPROBS,
    EVENT_PROMPT_LOGPROBS,
    EVENT_RESET,
    EVENT_TOKEN,
    JobStore,
)
from shared.schemas import ErrorCode, FinishReason, JobPublic, Status, TokenLogprob

DONE = "data: [DONE]\n\n"  # OpenAI's end of stream

# OpenAI knows only stop and length: a cancelled job stopped early, a timed-out one was cut by a limit.
FINISH = {
    FinishReason.EOS: "stop",
    FinishReason.STOP: "stop",
    FinishReason.LENGTH: "length",
    FinishReason.CANCELLED: "stop",
    FinishReason.TIMEOUT: "length",
}
REQUEST_ERRORS = {ErrorCode.CONTEXT_LENGTH_EXCEEDED, ErrorCode.NO_CHAT_TEMPLATE}  # the request's fault: 400


class Diverged(Exception):
    """A lost worker's rerun produced other text than was already streamed."""


def failure(job: JobPublic | None, prompt_param: str) -> OpenAIHTTPError | None:
    """Return the error a finished job means for the request, or None when it has an answer."""
    if job is None:
        return OpenAIHTTPError(500, "the job's record expired before it was read", "server_error")
    if job.status is not Status.FAILED:
        return None
    code = job.error.code if job.error else ErrorCode.INTERNAL
    message = job.error.message if job.error else "the job failed"
    if code == ErrorCode.TIMEOUT and job.output is not None:
        return None  # the deadline cut it short; its text is the answer, finish_reason length
    if code in REQUEST_ERRORS:
        return OpenAIHTTPError(400, message, "invalid_request_error", prompt_param, str(code))
    if code == ErrorCode.EXPIRED:
        return OpenAIHTTPError(503, message, "server_error", None, str(code))
    return OpenAIHTTPError(500, message, "server_error", None, str(code))


def usage(jobs: list[JobPublic], n: int = 1) -> CompletionUsage:
    """Count each prompt once (its n choices share it) and the completions of every choice."""
    prompt = sum(
        max((j.usage.prompt_tokens for j in jobs[g : g + n] if j.usage), default=0)
        for g in range(0, len(jobs), n)
    )
    completion = sum(j.usage.completion_tokens for j in jobs if j.usage)
    return CompletionUsage(
        prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion
    )


def _finish(job: JobPublic, calls: list | None = None) -> str:
    if calls:
        return "tool_calls"
    return FINISH[job.output.finish_reason] if job.output else "stop"


@dataclass(frozen=True)
class Reply:
    """What every body and chunk of one request shares."""

    chat: bool
    id: str
    created: int
    model: str
    include_usage: bool = False
    n: int = 1  # choices per prompt: choice i answers prompt i // n
    echo: bool = False  # a text choice starts with its prompt
    logprobs: bool = False  # the choices carry log-probabilities (chunks: those of their tokens)
    tool_calls: ToolCalls | None = None  # read outputs as tool calls (api/openai/toolcalls.py)

    @property
    def prompt_param(self) -> str:
        """Return the request field that holds the input."""
        return "messages" if self.chat else "prompt"

    def complete(self, jobs: list[JobPublic]) -> ChatCompletion | Completion:
        """Return the whole answer for finished jobs, choice i from job i."""
        head = {"id": self.id, "created": self.created, "model": self.model, "usage": usage(jobs, self.n)}
        if self.chat:
            choices = []
            for i, j in enumerate(jobs):
                calls = tool_calls_of(j, self.tool_calls)
                message = AssistantMessage(content=None if calls else (j.output.text if j.output else ""))
                message.tool_calls = calls
                choices.append(
                    ChatChoice(
                        index=i, message=message, finish_reason=_finish(j, calls), logprobs=chat_logprobs(j)
                    )
                )
            return ChatCompletion(**head, choices=choices)
        texts = [
            CompletionChoice(
                index=i,
                text=(echoed_text(j) if self.echo else "") + (j.output.text if j.output else ""),
                finish_reason=_finish(j),
                logprobs=completion_logprobs(j, self.echo),
            )
            for i, j in enumerate(jobs)
        ]
        return Completion(**head, choices=texts)

    def chunk(
        self,
        index: int,
        text: str | None = None,
        finish: str | None = None,
        calls: list | None = None,
        entries: list[TokenLogprob] | None = None,
        offset: int = 0,
    ) -> str:
        """Return one chunk: the role (chat, text None), new text, tool calls, or a choice's finish_reason.

        entries are the log-probabilities of the chunk's tokens (only when the request asked);
        offset is the first one's text_offset in the choice's text (text completions).
        """
        head = {"id": self.id, "created": self.created, "model": self.model}
        if self.chat:
            delta: dict = {"role": "assistant", "content": ""} if text is calls is finish is None else {}
            if text is not None:
                delta["content"] = text
            if calls:  # whole calls in one delta: OpenAI clients join argument pieces, one piece included
                delta["tool_calls"] = [{"index": k, **c} for k, c in enumerate(calls)]
            lp = chat_entries(entries) if entries is not None else None
            choice = ChatChunkChoice(index=index, delta=delta, finish_reason=finish, logprobs=lp)
            body: BaseModel = ChatCompletionChunk(**head, choices=[choice])
        else:
            text_lp = completion_entries(entries, offset) if entries is not None else None
            choice_t = CompletionChoice(index=index, text=text or "", finish_reason=finish, logprobs=text_lp)
            body = CompletionChunk(**head, choices=[choice_t])
        return self._event(body)

    def usage_chunk(self, jobs: list[JobPublic]) -> str:
        """Return the last chunk of an include_usage stream: no choices, the request's usage."""
        cls = ChatCompletionChunk if self.chat else CompletionChunk
        return self._event(
            cls(id=self.id, created=self.created, model=self.model, choices=[], usage=usage(jobs, self.n))
        )

    def _event(self, body: BaseModel) -> str:
        data = body.model_dump(mode="json")
        if not self.include_usage:
            data.pop("usage")
        return data_event(data)


class _Sent:
    """What was already streamed for one choice, so that a rerun after a lost worker repeats nothing."""

    def __init__(self) -> None:
        self.text = ""
        self.redo: str | None = None  # the rerun's text so far, until it passes what was sent
        self.count = 0  # log-probability entries sent (with the text of their tokens)
        self.redo_count: int | None = None  # the rerun's entries so far, until they pass count
        self.echoed = False  # the prompt (echo) went out
        self.at = 0  # text_offset of the next entry: the length of the tokens sent, echo included

    def reset(self) -> None:
        """The job runs again from the start."""
        self.redo, self.redo_count = "", 0

    def feed(self, text: str) -> str:
        """Take a token event's text; return what is new to the client."""
        if self.redo is None:
            self.text += text
            return text
        self.redo += text
        if not (self.redo.startswith(self.text) or self.text.startswith(self.redo)):
            raise Diverged
        if len(self.redo) <= len(self.text):
            return ""
        return self.final(self.redo)

    def take(self, entries: list[TokenLogprob]) -> list[TokenLogprob]:
        """Take a token event's log-probability entries; return those not sent yet."""
        if self.redo_count is None:
            self.count += len(entries)
            return entries
        new = entries[max(0, self.count - self.redo_count) :]  # a rerun's tokens are the same ones
        self.redo_count += len(entries)
        self.count += len(new)
        if self.redo_count >= self.count:
            self.redo_count = None
        return new

    def final(self, text: str) -> str:
        """Take the job's final text; return what of it was not streamed yet."""
        if not text.startswith(self.text):
            raise Diverged
        delta, self.text, self.redo = text[len(self.text) :], text, None
        return delta

    def rest(self, job: JobPublic) -> list[TokenLogprob]:
        """Return the job's entries not streamed yet (those of its last tokens, or of a whole answer)."""
        entries = (job.output.logprobs if job.output else None) or []
        new, self.count = entries[self.count :], max(self.count, len(entries))
        return new

    def offset(self, entries: list[TokenLogprob]) -> int:
        """Return the first entry's text_offset, counting these as sent."""
        at = self.at
        self.at += len(spelled(entries))
        return at


def _echo(reply: Reply, i: int, sent: _Sent, entries: list[TokenLogprob]) -> Iterator[str]:
    """Yield a text choice's first chunk with echo: its prompt, and the prompt's logprobs when asked."""
    if reply.echo and not sent.echoed:
        sent.echoed = True
        asked = entries if reply.logprobs else None
        yield reply.chunk(i, spelled(entries), entries=asked, offset=sent.offset(entries))


def _text(reply: Reply, i: int, sent: _Sent, text: str, entries: list[TokenLogprob]) -> Iterator[str]:
    """Yield a chunk of new text with its tokens' entries (when asked), if there is either."""
    if reply.logprobs and (text or entries):
        yield reply.chunk(i, text, entries=entries, offset=sent.offset(entries))
    elif text:
        yield reply.chunk(i, text)


def stream(store: JobStore, hub: Hub, reply: Reply, job_ids: list[str], sock: Any = None) -> Iterator[str]:
    """Yield a request's chunks, choice i from job i, then usage (if asked) and [DONE].

    Whatever ends the stream early (an error, the client going away) cancels the jobs still running.
    """
    sent = [_Sent() for _ in job_ids]
    ended: dict[int, JobPublic] = {}
    try:
        if reply.chat:  # the first chunk of each choice names its role; it also sends the headers
            for i in range(len(job_ids)):
                yield reply.chunk(i)
        else:
            yield OPENED  # the headers at once, not with the first token
        for item in merged_events(store, hub, job_ids, sock):
            if item is None:
                yield KEEPALIVE
                continue
            i, event, record = item
            kind = event.get("type")
            if kind == EVENT_TOKEN and reply.tool_calls is None:
                if EVENT_PROMPT_LOGPROBS in event:
                    yield from _echo(reply, i, sent[i], parse_entries(event[EVENT_PROMPT_LOGPROBS]))
                text = sent[i].feed(event.get("data", ""))
                entries = sent[i].take(parse_entries(event.get(EVENT_LOGPROBS)))
                yield from _text(reply, i, sent[i], text, entries)
            elif kind == EVENT_RESET:
                sent[i].reset()
            elif kind == EVENT_DONE:
                job = store.get(job_ids[i], raw=record)  # no round trip when its reader read it
                error = failure(job, reply.prompt_param)
                if error is not None:
                    yield error.chunk()
                    yield DONE
                    return
                assert job is not None  # failure() answers a missing record
                ended[i] = job
                # Tool-call answers are only known to be calls once whole: sent at the end, as calls or text.
                prompt = job.output.prompt_logprobs if job.output else None
                yield from _echo(reply, i, sent[i], prompt or [])  # a scoring job ends at its prefill
                calls = tool_calls_of(job, reply.tool_calls)
                if calls:
                    yield reply.chunk(i, calls=calls, entries=sent[i].rest(job) if reply.logprobs else None)
                else:
                    delta = sent[i].final(job.output.text if job.output else "")
                    yield from _text(reply, i, sent[i], delta, sent[i].rest(job))
                yield reply.chunk(i, finish=_finish(job, calls))
        if reply.include_usage:
            yield reply.usage_chunk([ended[i] for i in sorted(ended)])  # in choice order: usage groups by n
        yield DONE
    except Diverged:
        message = "the job's worker was lost and its rerun produced different text; retry the request"
        yield OpenAIHTTPError(500, message, "server_error", None, ErrorCode.WORKER_LOST.value).chunk()
        yield DONE
    except redis.RedisError as exc:
        message = f"the job store (Redis) is unavailable: {exc}"
        yield OpenAIHTTPError(503, message, "server_error", None, ErrorCode.SERVICE_UNAVAILABLE.value).chunk()
        yield DONE
    finally:
        cancel(store, [j for i, j in enumerate(job_ids) if i not in ended])


def cancel(store: JobStore, job_ids: list[str]) -> None:
    """Cancel jobs nobody will read any more (best effort: they may have ended, or Redis be away)."""
    for job_id in job_ids:
        with contextlib.suppress(Exception):
            store.cancel(job_id)
