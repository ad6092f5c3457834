"""GET /tokenizer_info, POST /tokenize, POST /detokenize: a model's tokenizer, as its worker published it.

The API holds no model files: it loads the `tokenizers` serialization a worker stored in Redis
(shared/tokenizer_info.py) and keeps it while the published digest stays the same.
"""

from __future__ import annotations

import threading
from typing import Annotated

from flask import Blueprint, Response, jsonify, request
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from tokenizers import Tokenizer

from api.context import current
from api.errors import ApiError, invalid, validation_details
from api.wire import read_json_object
from shared.schemas import ErrorCode
from shared.tokenizer_info import TokenizerInfo

tokenizer_bp = Blueprint("tokenizer", __name__)
PATHS = ("/tokenizer_info", "/tokenize", "/detokenize")  # at the root, behind the same auth as /v1

_cache: dict[str, tuple[str, TokenizerInfo, Tokenizer]] = {}  # model → (digest, info, loaded tokenizer)
_lock = threading.Lock()


class TokenizeRequest(BaseModel):
    """POST /tokenize."""

    model_config = ConfigDict(extra="forbid")

    prompt: str
    add_special_tokens: bool = True
    model: str | None = None


class DetokenizeRequest(BaseModel):
    """POST /detokenize."""

    model_config = ConfigDict(extra="forbid")

    tokens: list[Annotated[int, Field(ge=0)]]
    model: str | None = None


def loaded(model: str | None) -> tuple[TokenizerInfo, Tokenizer]:
    """Return a catalog model's published tokenizer (422 unknown model, 503 none published yet)."""
    ctx = current()
    spec = ctx.settings.model(model)
    if spec is None:
        raise invalid(ErrorCode.UNKNOWN_MODEL, f"unknown model {model!r}", "model")
    digest = ctx.store.tokenizer_digest(spec.name)
    if digest is None:
        raise ApiError(
            503,
            ErrorCode.TOKENIZER_UNAVAILABLE,
            f"no worker of model {spec.name!r} has published its tokenizer yet; start one",
        )
    with _lock:
        hit = _cache.get(spec.name)
        if hit is not None and hit[0] == digest:
            return hit[1], hit[2]
    info = ctx.store.tokenizer(spec.name)
    if info is None:  # dropped between the two reads
        raise ApiError(503, ErrorCode.TOKENIZER_UNAVAILABLE, f"model {spec.name!r} has no tokenizer")
    tok = Tokenizer.from_str(info.tokenizer_json)
    with _lock:
        _cache[spec.name] = (digest, info, tok)
    return info, tok


def _parse(cls: type[BaseModel]) -> BaseModel:
    try:
        return cls.model_validate(read_json_object())
    except ValidationError as exc:
        details = validation_details(exc)
        raise ApiError(422, ErrorCode.VALIDATION_ERROR, "invalid request body", details) from None


@tokenizer_bp.get("/tokenizer_info")
def tokenizer_info() -> Response:
    """Return the model's special tokens and chat template."""
    info, _ = loaded(request.args.get("model"))
    return jsonify(info.model_dump(include={"model", "eos_token", "bos_token", "pad_token", "chat_template"}))


@tokenizer_bp.post("/tokenize")
def tokenize() -> Response:
    """Return the prompt's token ids."""
    body = _parse(TokenizeRequest)
    assert isinstance(body, TokenizeRequest)
    _, tok = loaded(body.model)
    return jsonify({"tokens": tok.encode(body.prompt, add_special_tokens=body.add_special_tokens).ids})


@tokenizer_bp.post("/detokenize")
def detokenize() -> Response:
    """Return the text of token ids."""
    body = _parse(DetokenizeRequest)
    assert isinstance(body, DetokenizeRequest)
    info, tok = loaded(body.model)
    bad = [t for t in body.tokens if t >= info.vocab_size]
    if bad:
        raise invalid(ErrorCode.VALIDATION_ERROR, f"token ids must be below {info.vocab_size}", "tokens")
    return jsonify({"prompt": tok.decode(body.tokens, skip_special_tokens=False)})


def vocab_size(model: str | None) -> int | None:
    """Return the model's vocabulary size when its tokenizer is published, else None (no check possible)."""
    try:
        return loaded(model)[0].vocab_size
    except ApiError:
        return None
