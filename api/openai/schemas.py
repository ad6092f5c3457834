"""OpenAI's wire shapes for /v1/chat/completions and /v1/completions, as genq accepts and answers them.

Requests allow unknown fields (OpenAI clients send many); those genq cannot honour without changing
the answer (penalties, logit_bias, suffix, ...) are refused by `unsupported()` rather than ignored.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from shared.schemas import (
    MAX_REPETITION_PENALTY,
    MAX_STOP_STRINGS,
    MAX_STORED_STOPS,
    MAX_TOP_K,
    MAX_TOP_LOGPROBS,
    MIN_REPETITION_PENALTY,
    MIN_TEMPERATURE,
    MIN_TOP_P,
    zero_or,
    zero_or_schema,
)

MAX_N = 8  # choices per request; each choice is its own genq job
MAX_TEMPERATURE = 2.0  # OpenAI's range is 0 to 2 (genq's own API allows up to 5)
MAX_SEED = 2**63 - 1 - MAX_N  # choice i runs with seed + i, which must fit genq's 63-bit seeds
MAX_USER_CHARS = 256  # the `user` string, stored in the jobs' metadata
TokenId = Annotated[int, Field(ge=0)]
TopLogprobs = Annotated[int, Field(ge=0, le=MAX_TOP_LOGPROBS)]
MAX_PENALTY = 2.0  # OpenAI's range of frequency_penalty and presence_penalty is -2 to 2
Temperature = Annotated[
    float,
    Field(allow_inf_nan=False),
    zero_or("temperature", MIN_TEMPERATURE, MAX_TEMPERATURE),
    zero_or_schema(MIN_TEMPERATURE, MAX_TEMPERATURE),
]
TopP = Annotated[
    float, Field(allow_inf_nan=False), zero_or("top_p", MIN_TOP_P, 1.0), zero_or_schema(MIN_TOP_P, 1.0)
]
Penalty = Annotated[float, Field(ge=-MAX_PENALTY, le=MAX_PENALTY, allow_inf_nan=False)]

FinishReason = Literal["stop", "length", "tool_calls"]


# --- requests -----------------------------------------------------------------
class StreamOptions(BaseModel):
    """Options that apply only when stream is true."""

    model_config = ConfigDict(extra="allow")

    include_usage: bool = False  # a last chunk carries usage (choices empty); others carry usage null


class ContentPart(BaseModel):
    """One part of a message's content; only type "text" is supported."""

    model_config = ConfigDict(extra="allow")

    type: str
    text: str | None = None


class ChatMessage(BaseModel):
    """One chat message as OpenAI clients send it (content as a string or a list of text parts)."""

    model_config = ConfigDict(extra="allow")

    role: str  # system, developer (= system), user or assistant
    content: str | list[ContentPart] | None = None
    name: str | None = None  # accepted, not used by chat templates


class _CreateRequest(BaseModel):
    """The fields both endpoints share."""

    model_config = ConfigDict(extra="allow")

    model: str | None = None  # None = the catalog's first model
    max_tokens: Annotated[int, Field(ge=1)] | None = None  # None = the model's default
    temperature: Temperature | None = None  # None = 1.0; 0 = greedy
    top_p: TopP | None = None  # None = 1.0; 0 = greedy
    n: Annotated[int, Field(ge=1, le=MAX_N)] | None = None  # None = 1; each choice is one job
    stop: str | list[str] | None = None  # up to 4; genq's job schema checks their sizes
    seed: Annotated[int, Field(ge=0, le=MAX_SEED)] | None = None  # choice i uses seed + i
    user: Annotated[str, Field(max_length=MAX_USER_CHARS)] | None = None  # kept in the jobs' metadata
    metadata: dict[str, str] | None = None  # kept in the jobs' metadata
    stream: bool | None = None
    stream_options: StreamOptions | None = None
    frequency_penalty: Penalty | None = None  # only 0 (OpenAI's default) is supported
    presence_penalty: Penalty | None = None  # only 0 is supported
    logit_bias: dict[str, Annotated[float, Field(allow_inf_nan=False)]] | None = (
        None  # only empty is supported
    )
    # genq's own knobs, under the names vLLM also accepts (send them with extra_body)
    top_k: Annotated[int, Field(ge=0, le=MAX_TOP_K)] | None = None  # keep the k likeliest tokens; 0 = all
    repetition_penalty: (
        Annotated[float, Field(ge=MIN_REPETITION_PENALTY, le=MAX_REPETITION_PENALTY, allow_inf_nan=False)]
        | None
    ) = None  # > 1 discourages repeats
    ignore_eos: bool | None = None  # keep generating to max_tokens
    # Structured output (docs/structured-output.md): OpenAI's response_format, or one of genq's own
    response_format: dict[str, Any] | None = None  # {"type": "text" | "json_object" | "json_schema", ...}
    json_schema: dict[str, Any] | None = None  # the output is JSON valid against this schema
    regex: str | None = None  # the output matches this regex
    choice: list[str] | None = None  # the output is exactly one of these strings

    def unsupported(self) -> tuple[str, str] | None:
        """Return (param, reason) for the first parameter genq cannot honour, or None."""
        for name in ("frequency_penalty", "presence_penalty"):
            if getattr(self, name):
                return name, f"'{name}' other than 0 is not supported"
        if self.logit_bias:
            return "logit_bias", "'logit_bias' is not supported"
        if self.stream_options is not None and not self.stream:
            return "stream_options", "'stream_options' is only allowed when 'stream' is true"
        return None


class ChatCompletionRequest(_CreateRequest):
    """POST /v1/chat/completions."""

    messages: Annotated[list[ChatMessage], Field(min_length=1)]
    max_completion_tokens: Annotated[int, Field(ge=1)] | None = None  # wins over max_tokens
    stop: str | Annotated[list[str], Field(max_length=MAX_STOP_STRINGS)] | None = None
    logprobs: bool | None = None  # each new token's log-probability (raw logits), in choices[i].logprobs
    top_logprobs: TopLogprobs | None = None  # alternatives per token; needs logprobs true
    tools: list[Any] | None = None  # functions the model may call (api/openai/tools.py)
    functions: list[Any] | None = None  # only empty is supported (the deprecated form of tools)
    tool_choice: Any = None  # none, auto (the default with tools), required, or {"type": "function", ...}

    def unsupported(self) -> tuple[str, str] | None:
        """Return (param, reason) for the first parameter genq cannot honour, or None."""
        if self.top_logprobs is not None and not self.logprobs:
            return "top_logprobs", "'top_logprobs' needs 'logprobs': true"
        if self.functions:
            return "functions", "'functions' is not supported; send 'tools'"
        return super().unsupported()


class CompletionRequest(_CreateRequest):
    """POST /v1/completions."""

    # A string, a list of strings, a list of token ids, or a list of lists of token ids (one choice
    # group per prompt; token ids are used as sent, no BOS added).
    prompt: str | list[str] | list[TokenId] | list[list[TokenId]]
    max_tokens: Annotated[int, Field(ge=0)] | None = None  # 0 = score the prompt (needs echo)
    stop: str | Annotated[list[str], Field(max_length=MAX_STORED_STOPS)] | None = None
    logprobs: TopLogprobs | None = None  # k: each token's logprob and its k likeliest alternatives
    echo: bool | None = None  # the answer starts with the prompt (and its logprobs, when asked)
    suffix: str | None = None  # only null is supported
    best_of: int | None = None  # only equal to n is supported

    def unsupported(self) -> tuple[str, str] | None:
        """Return (param, reason) for the first parameter genq cannot honour, or None."""
        if self.suffix is not None:
            return "suffix", "'suffix' (insertion) is not supported"
        if self.best_of is not None and self.best_of != (self.n or 1):
            return "best_of", "'best_of' other than n is not supported"
        return super().unsupported()

    @property
    def prompts(self) -> list[str | list[int]]:
        """Return the prompts, each a string or a list of token ids."""
        if isinstance(self.prompt, str):
            return [self.prompt]
        if self.prompt and isinstance(self.prompt[0], int):
            return [self.prompt]  # one prompt of token ids
        return list(self.prompt)  # type: ignore[arg-type]


# --- responses ----------------------------------------------------------------
class CompletionUsage(BaseModel):
    """Token counts for the whole request: the prompt once, the completions of all choices."""

    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class AssistantMessage(BaseModel):
    """The generated message of one chat choice: text, or tool calls (content null)."""

    role: Literal["assistant"] = "assistant"
    content: str | None
    tool_calls: list[dict[str, Any]] | None = None  # [{"id", "type": "function", "function": {...}}]


class ChatTopLogprob(BaseModel):
    """One alternative token of a chat completion."""

    token: str
    logprob: float
    bytes: list[int]


class ChatTokenLogprob(ChatTopLogprob):
    """One generated token, its log-probability and its likeliest alternatives."""

    top_logprobs: list[ChatTopLogprob]


class ChatLogprobs(BaseModel):
    """The log-probabilities of a chat choice's tokens."""

    content: list[ChatTokenLogprob]


class CompletionLogprobs(BaseModel):
    """Per token of a text choice (the prompt's first, with echo): text, logprob, alternatives, offset."""

    tokens: list[str]
    token_logprobs: list[float | None]
    top_logprobs: list[dict[str, float] | None]  # each includes the chosen token
    text_offset: list[int]


class ChatChoice(BaseModel):
    """One choice of a chat completion."""

    index: int
    message: AssistantMessage
    logprobs: ChatLogprobs | None = None
    finish_reason: FinishReason


class ChatCompletion(BaseModel):
    """The answer to a non-streamed chat request."""

    id: str  # chatcmpl-<hex of the first job's id>
    object: Literal["chat.completion"] = "chat.completion"
    created: int  # Unix seconds
    model: str
    choices: list[ChatChoice]
    usage: CompletionUsage


class ChatChunkChoice(BaseModel):
    """One choice's increment in a streamed chat chunk."""

    index: int
    delta: dict[str, Any]  # {"role": "assistant", "content": ""} first, then {"content": ...}, {} last
    logprobs: ChatLogprobs | None = None  # with logprobs: those of the tokens whose text delta carries
    finish_reason: FinishReason | None = None


class ChatCompletionChunk(BaseModel):
    """One server-sent event of a streamed chat request."""

    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChatChunkChoice]
    usage: CompletionUsage | None = None  # present (null but on the last) only with include_usage


class CompletionChoice(BaseModel):
    """One choice of a text completion (or its increment, in a stream)."""

    index: int
    text: str
    logprobs: CompletionLogprobs | None = None
    finish_reason: FinishReason | None = None


class _CompletionFields(BaseModel):
    """What a completion and each of its streamed chunks carry."""

    id: str  # cmpl-<hex of the first job's id>
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]


class Completion(_CompletionFields):
    """The answer to a non-streamed completion request."""

    usage: CompletionUsage


class CompletionChunk(_CompletionFields):
    """One server-sent event of a streamed completion request (OpenAI keeps object text_completion)."""

    usage: CompletionUsage | None = None  # present (null but on the last) only with include_usage


class OpenAIError(BaseModel):
    """What went wrong, as OpenAI clients parse it."""

    message: str
    type: str  # invalid_request_error, requests (rate limit), server_error
    param: str | None = None  # the request field at fault
    code: str | None = None  # e.g. model_not_found, context_length_exceeded, rate_limit_exceeded


class OpenAIErrorResponse(BaseModel):
    """Every error of the OpenAI-compatible routes is {"error": {message, type, param, code}}."""

    error: OpenAIError
