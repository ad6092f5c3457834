"""A model's tokenizer as its worker publishes it to Redis, so that an API host needs no model files."""

from __future__ import annotations

import hashlib
from typing import Any

import redis
from pydantic import BaseModel

from shared import keys


class TokenizerInfo(BaseModel):
    """What /tokenizer_info, /tokenize and /detokenize need: the tokenizer and its special tokens."""

    model: str
    tokenizer_json: str  # the `tokenizers` serialization (tokenizer.json)
    eos_token: str | None = None
    bos_token: str | None = None
    pad_token: str | None = None
    chat_template: str | None = None
    vocab_size: int  # rows of the model's output layer: valid token ids are 0 .. vocab_size - 1


def from_hf(model: str, tokenizer: Any, vocab_size: int) -> TokenizerInfo:
    """Describe a transformers fast tokenizer (duck-typed: shared/ imports no transformers)."""
    template = getattr(tokenizer, "chat_template", None)
    return TokenizerInfo(
        model=model,
        tokenizer_json=tokenizer.backend_tokenizer.to_str(),
        eos_token=tokenizer.eos_token,
        bos_token=tokenizer.bos_token,
        pad_token=tokenizer.pad_token,
        chat_template=template if isinstance(template, str) else None,
        vocab_size=vocab_size,
    )


def publish(r: redis.Redis, info: TokenizerInfo) -> None:
    """Store a model's tokenizer (every worker of the model writes the same one)."""
    body = info.model_dump_json()
    digest = hashlib.sha256(body.encode()).hexdigest()
    r.hset(keys.tokenizer(info.model), mapping={"digest": digest, "info": body})


def digest(r: redis.Redis, model: str) -> str | None:
    """Return the published tokenizer's digest (cheap: readers reload only when it changes)."""
    value = r.hget(keys.tokenizer(model), "digest")
    return value.decode() if isinstance(value, bytes) else value


def read(r: redis.Redis, model: str) -> TokenizerInfo | None:
    """Return the published tokenizer of a model, or None when no worker has published one."""
    body = r.hget(keys.tokenizer(model), "info")
    return None if body is None else TokenizerInfo.model_validate_json(body)
