"""Pick each row's next token with that row's own decoding parameters and random generator."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class RowParams:
    """One row's decoding parameters, resolved (no None left)."""

    sampling: bool  # False = greedy
    temperature: float  # > 0 when sampling
    top_k: int  # 0 = off
    top_p: float  # 1.0 = off
    repetition_penalty: float  # 1.0 = off


def apply_repetition_penalty(logits: torch.Tensor, seen: torch.Tensor, penalty: torch.Tensor) -> torch.Tensor:
    """Scale seen tokens' logits per row as transformers does (divide if > 0, multiply if < 0)."""
    p = penalty.unsqueeze(1)
    penalized = torch.where(logits > 0, logits / p, logits * p)
    return torch.where(seen, penalized, logits)


def _filter_top_k_top_p(logits: torch.Tensor, top_k: torch.Tensor, top_p: torch.Tensor) -> torch.Tensor:
    """Mask each row's logits outside its top-k and its nucleus of mass top-p."""
    vocab = logits.shape[-1]
    sorted_logits, sorted_idx = torch.sort(logits, dim=-1, descending=True)
    ranks = torch.arange(vocab, device=logits.device).unsqueeze(0)
    k = torch.where(top_k > 0, top_k.clamp(max=vocab), torch.full_like(top_k, vocab)).unsqueeze(1)
    remove = ranks >= k
    probs = torch.softmax(sorted_logits.masked_fill(remove, float("-inf")), dim=-1)
    # Drop a token once the mass before it already reaches top_p; the first token always stays.
    before = torch.cumsum(probs, dim=-1) - probs
    # Rows with top_p = 1.0 filter nothing: float rounding can push the sum to 1 before the tail.
    remove |= (before >= top_p.unsqueeze(1)) & (top_p < 1.0).unsqueeze(1)
    remove[:, 0] = False
    mask = torch.zeros_like(remove).scatter(1, sorted_idx, remove)
    return logits.masked_fill(mask, float("-inf"))


def next_tokens(
    logits: torch.Tensor,
    params: list[RowParams],
    generators: list[torch.Generator | None],
    seen: torch.Tensor | None,
) -> torch.Tensor:
    """Return one token id per row of logits [rows, vocab] (float32)."""
    device = logits.device
    if seen is not None:
        penalty = torch.tensor([p.repetition_penalty for p in params], device=device)
        logits = apply_repetition_penalty(logits, seen, penalty)
    chosen = torch.argmax(logits, dim=-1)
    rows = [i for i, p in enumerate(params) if p.sampling]
    if not rows:
        return chosen
    sub = logits[rows]
    temp = torch.tensor([params[i].temperature for i in rows], device=device).unsqueeze(1)
    sub = sub / temp
    top_k = torch.tensor([params[i].top_k for i in rows], device=device)
    top_p = torch.tensor([params[i].top_p for i in rows], device=device)
    if bool((top_k > 0).any()) or bool((top_p < 1.0).any()):
        sub = _filter_top_k_top_p(sub, top_k, top_p)
    probs = torch.softmax(sub, dim=-1)
    for j, i in enumerate(rows):
        # One generator per row: its draws do not depend on which other rows share the batch.
        chosen[i] = torch.multinomial(probs[j], 1, generator=generators[i]).squeeze(0)
    return chosen
