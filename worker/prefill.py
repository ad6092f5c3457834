"""Prefill once for rows whose prompts differ only in their last token (a question's answers).

The prefixes so prefilled are kept for a while (PrefixCache): the answers of one question that
arrive in two admissions, as an evaluation harness's requests in flight often do, prefill their
prefix once.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

import torch
from transformers import DynamicCache, PreTrainedModel

from worker.logprobs import TokenLogprob, prompt_logprobs


@dataclass(frozen=True)
class Prefix:
    """One prefilled prefix: per layer its keys and values [kv heads, tokens, head dim], and its
    last layer's hidden states [tokens, hidden] (for prompt log-probabilities)."""

    keys: list[torch.Tensor]
    values: list[torch.Tensor]
    hidden: torch.Tensor

    @property
    def tokens(self) -> int:
        return int(self.hidden.shape[0])


class PrefixCache:
    """The most recently used prefixes, up to max_tokens tokens in all (0: none kept)."""

    def __init__(self, max_tokens: int) -> None:
        self.max_tokens = max_tokens
        self._entries: OrderedDict[tuple[int, ...], Prefix] = OrderedDict()
        self._tokens = 0
        self.hits = 0  # prefixes served from here (tests and the worker's log read them)

    def __contains__(self, prefix: tuple[int, ...]) -> bool:
        return prefix in self._entries

    def get(self, prefix: tuple[int, ...]) -> Prefix | None:
        """Return a kept prefix (now the most recently used), or None."""
        entry = self._entries.get(prefix)
        if entry is not None:
            self._entries.move_to_end(prefix)
            self.hits += 1
        return entry

    def put(self, prefix: tuple[int, ...], entry: Prefix) -> None:
        """Keep a copy of a prefix, dropping the least recently used ones beyond max_tokens."""
        if entry.tokens > self.max_tokens or prefix in self._entries:
            return
        # A copy: the entry's tensors are views of the padded batch it was computed in.
        self._entries[prefix] = Prefix(
            keys=[k.clone() for k in entry.keys],
            values=[v.clone() for v in entry.values],
            hidden=entry.hidden.clone(),
        )
        self._tokens += entry.tokens
        while self._tokens > self.max_tokens:
            _, dropped = self._entries.popitem(last=False)
            self._tokens -= dropped.tokens


def shared_prefixes(
    prompts: list[list[int]], cached: Callable[[tuple[int, ...]], bool] = lambda _: False
) -> list[int] | None:
    """Return, per prompt, the first prompt with the same tokens but the last; None if not worth it.

    Sharing costs one more forward, of one token a row: it pays when the prefix tokens it saves
    outnumber the rows. A prefix already cached saves its tokens for every row that has it.
    """
    if not prompts or any(len(p) < 2 for p in prompts):
        return None
    first: dict[tuple[int, ...], int] = {}
    reps = [first.setdefault(tuple(p[:-1]), i) for i, p in enumerate(prompts)]
    saved = sum(len(p) - 1 for i, p in enumerate(prompts) if reps[i] != i or cached(tuple(p[:-1])))
    return reps if saved > len(prompts) else None


def prefill_shared(
    model: PreTrainedModel,
    pad: int,
    prompts: list[list[int]],
    asks: list[int | None],
    reps: list[int],
    kept: PrefixCache | None = None,
) -> tuple[torch.Tensor, dict[int, list[TokenLogprob]], DynamicCache, torch.Tensor]:
    """Prefill each distinct prompt-but-its-last-token once, then every row's last token.

    Rows whose prompts differ only in their last token (a multiple-choice question's one-token
    answers, or the same prompt twice) share one forward over the prefix, or none when kept has
    it. Each row's last token then takes one step on a copy of that prefix's cache, as a decode
    step would. asks[i] is row i's echo k (None: no prompt logprobs). Return the rows' last logits
    [rows, vocab], echo entries by row, and the cache and mask [rows, tokens] the batch goes on with.
    """
    device = model.device
    firsts = sorted(set(reps))  # the row whose prefix stands for its group's
    slot = {first: j for j, first in enumerate(firsts)}  # a group's first row -> its prefix's index
    prefixes = [prompts[f][:-1] for f in firsts]
    found = [kept.get(tuple(p)) if kept is not None else None for p in prefixes]
    todo = [j for j, entry in enumerate(found) if entry is None]
    if todo:
        for j, entry in zip(todo, _prefill(model, pad, [prefixes[j] for j in todo]), strict=True):
            found[j] = entry
            if kept is not None:
                kept.put(tuple(prefixes[j]), entry)
    entries = [entry for entry in found if entry is not None]
    width = max(e.tokens for e in entries)
    group = [entries[slot[r]] for r in reps]  # each row's prefix
    cache = DynamicCache(config=model.config)
    for layer in range(len(entries[0].keys)):
        keys = [pad_left(e.keys[layer], width, dim=1) for e in entries]
        values = [pad_left(e.values[layer], width, dim=1) for e in entries]
        # One copy per row, straight into the batch (no stack of the groups first).
        cache.update(
            torch.stack([keys[slot[r]] for r in reps]), torch.stack([values[slot[r]] for r in reps]), layer
        )
    # Each row's prefix, left-padded, then its last token.
    mask = torch.tensor([[0] * (width - e.tokens) + [1] * (e.tokens + 1) for e in group], device=device)
    out = model(
        input_ids=torch.tensor([[p[-1]] for p in prompts], device=device),
        attention_mask=mask,
        position_ids=torch.tensor([[len(p) - 1] for p in prompts], device=device),
        cache=cache,
        logits_to_keep=1,
    )
    hidden = torch.stack([pad_left(e.hidden, width, dim=0) for e in entries])
    echo = _shared_echo(model, prompts, asks, reps, hidden, slot)
    return out.logits[:, -1, :], echo, cache, mask


def _prefill(model: PreTrainedModel, pad: int, prefixes: list[list[int]]) -> list[Prefix]:
    """Run one forward over these prefixes (left-padded together); return each one's states."""
    device = model.device
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
    # Each prefix's own tokens (views: PrefixCache.put copies the ones it keeps, without padding).
    return [
        Prefix(
            keys=[layer.keys[j, :, width - len(p) :] for layer in cache.layers],
            values=[layer.values[j, :, width - len(p) :] for layer in cache.layers],
            hidden=hidden[j, width - len(p) :],
        )
        for j, p in enumerate(prefixes)
    ]


def pad_left(t: torch.Tensor, width: int, dim: int) -> torch.Tensor:
    """Left-pad t with zeros along dim to width (what padding holds is masked out, or is a mask)."""
    missing = width - t.shape[dim]
    if missing == 0:
        return t
    shape = list(t.shape)
    shape[dim] = missing
    return torch.cat([t.new_zeros(shape), t], dim=dim)


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
