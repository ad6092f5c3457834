"""Prefill once for rows whose prompts differ only in their last token (a question's answers)."""

from __future__ import annotations

import torch
from transformers import DynamicCache, PreTrainedModel

from worker.logprobs import TokenLogprob, prompt_logprobs


def shared_prefixes(prompts: list[list[int]]) -> list[int] | None:
    """Return, per prompt, the first prompt with the same tokens but the last; None if not worth it.

    Sharing costs one more forward, of one token a row: it pays when the prefix tokens it saves
    outnumber the rows.
    """
    if len(prompts) < 2 or any(len(p) < 2 for p in prompts):
        return None
    first: dict[tuple[int, ...], int] = {}
    reps = [first.setdefault(tuple(p[:-1]), i) for i, p in enumerate(prompts)]
    saved = sum(len(prompts[i]) - 1 for i, rep in enumerate(reps) if rep != i)
    return reps if saved > len(prompts) else None


def prefill_shared(
    model: PreTrainedModel, pad: int, prompts: list[list[int]], asks: list[int | None], reps: list[int]
) -> tuple[torch.Tensor, dict[int, list[TokenLogprob]], DynamicCache, torch.Tensor]:
    """Prefill each distinct prompt-but-its-last-token once, then every row's last token.

    Rows whose prompts differ only in their last token (a multiple-choice question's one-token
    answers, or the same prompt twice) share one forward over the prefix. Each row's last token
    then takes one step on a copy of that prefix's cache, as a decode step would. asks[i] is row
    i's echo k (None: no prompt logprobs). Return the rows' last logits [rows, vocab], echo
    entries by row, and the cache and mask [rows, tokens] the batch goes on with.
    """
    device = model.device
    firsts = sorted(set(reps))  # the row whose prefix stands for its group's
    slot = {first: j for j, first in enumerate(firsts)}  # a group's first row -> its prefix's index
    prefixes = [prompts[f][:-1] for f in firsts]
    width = max(len(p) for p in prefixes)
    ids = torch.tensor([[pad] * (width - len(p)) + p for p in prefixes], device=device)
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prefixes], device=device)
    cache = DynamicCache(config=model.config)
    hidden = model.get_decoder()(
        input_ids=ids,
        attention_mask=mask,
        position_ids=(mask.cumsum(-1) - 1).clamp(min=0),
        cache=cache,
        use_cache=True,
    ).last_hidden_state
    group = torch.tensor([slot[r] for r in reps], device=device)
    for layer in cache.layers:
        layer.keys, layer.values = layer.keys[group], layer.values[group]
    mask = torch.cat([mask[group], torch.ones(len(prompts), 1, dtype=mask.dtype, device=device)], dim=1)
    out = model(
        input_ids=torch.tensor([[p[-1]] for p in prompts], device=device),
        attention_mask=mask,
        position_ids=torch.tensor([[len(p) - 1] for p in prompts], device=device),
        cache=cache,
        logits_to_keep=1,
    )
    echo = _shared_echo(model, prompts, asks, reps, hidden, slot)
    return out.logits[:, -1, :], echo, cache, mask


def _shared_echo(
    model: PreTrainedModel,
    prompts: list[list[int]],
    asks: list[int | None],
    reps: list[int],
    hidden: torch.Tensor,
    slot: dict[int, int],
) -> dict[int, list[TokenLogprob]]:
    """Return the echo rows' prompt entries, projecting each shared prefix once.

    A prompt's entries come from the positions before its last token, all in the prefix: rows of
    one group share them, but for the last token's own log-probability. hidden holds the
    prefixes' states [groups, width, hidden]; slot maps a group's first row to its index there.
    """
    asking: dict[int, list[int]] = {}  # group's first row -> its rows that ask
    for i, k in enumerate(asks):
        if k is not None:
            asking.setdefault(reps[i], []).append(i)
    if not asking:
        return {}
    head = model.get_output_embeddings()
    leads = list(asking)
    rows = []
    for g in leads:
        n = len(prompts[g]) - 1  # the prefix's length: its hidden states sit right-aligned
        k = max(asks[i] or 0 for i in asking[g])
        rows.append((hidden[slot[g], hidden.shape[1] - n :], prompts[g], k))
    echo: dict[int, list[TokenLogprob]] = {}
    for g, entries in zip(leads, prompt_logprobs(rows, head), strict=True):
        members = asking[g]
        last = torch.log_softmax(head(hidden[slot[g], -1:]).float(), dim=-1)[0]
        own = last[[prompts[i][-1] for i in members]].tolist()
        for i, logprob in zip(members, own, strict=True):
            tail = TokenLogprob(prompts[i][-1], float(logprob), entries[-1].top)
            k = asks[i] or 0
            echo[i] = [TokenLogprob(e.token_id, e.logprob, e.top[:k]) for e in [*entries[:-1], tail]]
    return echo
