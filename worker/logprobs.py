"""Log-probabilities of chosen and prompt tokens: log-softmax of the raw logits, for the rows that ask."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

MAX_TOP_LOGPROBS = 20  # alternatives per token, as OpenAI allows
PROMPT_LOGPROB_CHUNK = 256  # prompt positions turned into [positions, vocab] logits at once (memory cap)


@dataclass(frozen=True)
class TokenLogprob:
    """One token's log-probability and its top alternatives (id, logprob), likeliest first."""

    token_id: int
    logprob: float | None  # None for the first prompt token: nothing precedes it
    top: tuple[tuple[int, float], ...] = ()


def _entries(logits: torch.Tensor, chosen: torch.Tensor, k: int) -> list[TokenLogprob]:
    """Return one entry per row of logits [rows, vocab] (raw, any dtype) for the chosen ids [rows]."""
    lp = torch.log_softmax(logits.float(), dim=-1)
    picked = lp.gather(1, chosen.unsqueeze(1)).squeeze(1).tolist()
    if k > 0:
        values, ids = lp.topk(min(k, lp.shape[-1]), dim=-1)
        tops = [tuple(zip(i, v, strict=True)) for i, v in zip(ids.tolist(), values.tolist(), strict=True)]
    else:
        tops = [()] * len(picked)
    return [
        TokenLogprob(int(t), float(p), top) for t, p, top in zip(chosen.tolist(), picked, tops, strict=True)
    ]


def sampled_logprobs(
    logits: torch.Tensor, tokens: torch.Tensor, asks: list[int | None]
) -> dict[int, TokenLogprob]:
    """Return {row: entry} for the rows whose ask is not None; logits are raw [rows, vocab]."""
    rows = [i for i, k in enumerate(asks) if k is not None]
    if not rows:
        return {}
    k = max(asks[i] or 0 for i in rows)  # one topk for all; each row is trimmed to its own k below
    idx = torch.tensor(rows, device=logits.device)
    found = _entries(logits[idx], tokens[idx], k)
    return {
        i: TokenLogprob(e.token_id, e.logprob, e.top[: asks[i] or 0])
        for i, e in zip(rows, found, strict=True)
    }


def prompt_logprobs(
    rows: list[tuple[torch.Tensor, list[int], int]], head: torch.nn.Module, chunk: int = PROMPT_LOGPROB_CHUNK
) -> list[list[TokenLogprob]]:
    """Return, for each row (hidden states [len(ids), hidden], prompt ids, k), its prompt's entries.

    Each prompt token's entry is its log-probability given the tokens before it (the first has
    none). All rows' positions go through the vocabulary projection together, at most chunk at a
    time: one large product instead of one small one a row (16 scoring rows of ~17 tokens: 0.82 s
    row by row on this CPU), and a long prompt needs bounded memory.
    """
    hidden = torch.cat([h[: len(ids) - 1] for h, ids, _ in rows])  # position j predicts token j + 1
    targets = torch.tensor([t for _, ids, _ in rows for t in ids[1:]], dtype=torch.long, device=hidden.device)
    k = max(own for _, _, own in rows)  # one topk for all; each row is trimmed to its own k below
    found: list[TokenLogprob] = []
    for start in range(0, len(targets), chunk):
        found.extend(_entries(head(hidden[start : start + chunk]), targets[start : start + chunk], k))
    out, at = [], 0
    for _, ids, own in rows:
        mine = found[at : at + len(ids) - 1]
        at += len(ids) - 1
        out.append(
            [TokenLogprob(ids[0], None), *(TokenLogprob(e.token_id, e.logprob, e.top[:own]) for e in mine)]
        )
    return out


def describe(entries: list[TokenLogprob], token_text: Any) -> list[dict[str, Any]]:
    """Return JSON-ready entries; token_text(id) gives a token's text."""
    return [
        {
            "token": token_text(e.token_id),
            "id": e.token_id,
            "logprob": e.logprob,
            "top_logprobs": [{"token": token_text(i), "id": i, "logprob": v} for i, v in e.top],
        }
        for e in entries
    ]
