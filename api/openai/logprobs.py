"""OpenAI's log-probability shapes, built from a finished job's output (shared/schemas.py Output)."""

from __future__ import annotations

from pydantic import TypeAdapter

from api.openai.schemas import ChatLogprobs, ChatTokenLogprob, ChatTopLogprob, CompletionLogprobs
from shared.schemas import JobPublic, TokenLogprob

_ENTRIES = TypeAdapter(list[TokenLogprob])


def chat_logprobs(job: JobPublic) -> ChatLogprobs | None:
    """Return choices[i].logprobs of a chat choice, or None when the job did not ask."""
    if job.output is None or job.output.logprobs is None:
        return None
    return chat_entries(job.output.logprobs)


def chat_entries(entries: list[TokenLogprob]) -> ChatLogprobs:
    """Return a chat choice's (or stream chunk's) logprobs for these tokens."""
    content = [
        ChatTokenLogprob(
            token=e.token,
            logprob=e.logprob or 0.0,
            bytes=list(e.token.encode()),
            top_logprobs=[
                ChatTopLogprob(token=t.token, logprob=t.logprob, bytes=list(t.token.encode()))
                for t in e.top_logprobs
            ],
        )
        for e in entries
    ]
    return ChatLogprobs(content=content)


def echoed_text(job: JobPublic) -> str:
    """Return the prompt's text as its tokens spell it (what echo puts before the completion)."""
    entries = job.output.prompt_logprobs if job.output else None
    return spelled(entries or [])


def spelled(entries: list[TokenLogprob]) -> str:
    """Return the text these tokens spell, each as it decodes alone."""
    return "".join(e.token for e in entries)


def completion_logprobs(job: JobPublic, echo: bool) -> CompletionLogprobs | None:
    """Return a text choice's logprobs: the prompt's tokens first with echo, then the generated ones."""
    out = job.output
    if out is None or out.logprobs is None:
        return None
    return completion_entries([*(out.prompt_logprobs or [] if echo else []), *out.logprobs])


def completion_entries(entries: list[TokenLogprob], start: int = 0) -> CompletionLogprobs:
    """Return a text choice's (or stream chunk's) logprobs; start is the first token's text_offset."""
    offsets, at = [], start
    for e in entries:
        offsets.append(at)
        at += len(e.token)
    return CompletionLogprobs(
        tokens=[e.token for e in entries],
        token_logprobs=[e.logprob for e in entries],
        top_logprobs=[_top(e) for e in entries],
        text_offset=offsets,
    )


def parse_entries(raw: str | None) -> list[TokenLogprob]:
    """Return the entries a token event carries (a JSON list; none when absent)."""
    return _ENTRIES.validate_json(raw) if raw else []


def _top(e: TokenLogprob) -> dict[str, float] | None:
    """Return {token: logprob} of the alternatives and the chosen token (None where it has no logprob)."""
    if e.logprob is None:
        return None
    top = {t.token: t.logprob for t in e.top_logprobs}
    top[e.token] = e.logprob  # the chosen token's own value, even where an alternative spells the same
    return top
