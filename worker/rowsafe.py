"""Sample a batch so that one row's bad numbers fail that row only, never its neighbours."""

from __future__ import annotations

import torch

from worker.sampling import RowParams, next_tokens

PLACEHOLDER_TOKEN = 0  # fed back for a failed row until the engine drops it; never reported


def broken_rows(logits: torch.Tensor) -> list[int]:
    """Return the rows of logits [rows, vocab] that no token can be sampled from: NaN or +inf
    anywhere, or every token masked to -inf."""
    bad = torch.isnan(logits).any(-1) | torch.isposinf(logits).any(-1) | torch.isneginf(logits).all(-1)
    return bad.nonzero().flatten().tolist()


def sample_rows(
    logits: torch.Tensor,
    params: list[RowParams],
    generators: list[torch.Generator | None],
    seen: torch.Tensor | None,
) -> tuple[torch.Tensor, dict[int, str]]:
    """Return one token per row and, for rows that could not be sampled, row index → why."""
    bad = {i: "the model's logits for this job were not finite" for i in broken_rows(logits)}
    rows = [i for i in range(len(params)) if i not in bad]
    tokens = torch.full((len(params),), PLACEHOLDER_TOKEN, dtype=torch.long, device=logits.device)
    if not rows:
        return tokens, bad
    # Generator states first: a batch call that raises part-way has drawn for some rows already,
    # and redoing those rows alone must draw the same numbers (a seed gives the same text).
    states = {i: g.get_state() for i in rows if (g := generators[i]) is not None}
    index = torch.tensor(rows, device=logits.device)
    try:
        tokens[index] = _sample(
            logits[index], [params[i] for i in rows], [generators[i] for i in rows], seen, index
        )
        chosen = dict(zip(rows, tokens[index].tolist(), strict=True))
    except (RuntimeError, ValueError):  # e.g. multinomial on inf/NaN probabilities: find the rows
        chosen = {}
        for i in rows:
            gen = generators[i]
            if gen is not None:
                gen.set_state(states[i])
            one = torch.tensor([i], device=logits.device)
            try:
                tokens[i] = _sample(logits[one], [params[i]], [generators[i]], seen, one)[0]
                chosen[i] = int(tokens[i])
            except (RuntimeError, ValueError) as exc:
                bad[i] = f"sampling raised {type(exc).__name__}: {exc}"
    vocab = logits.shape[-1]
    for i, token in chosen.items():
        if not 0 <= token < vocab:  # a NaN row's argmax can land anywhere
            bad[i] = f"sampling chose token {token}, outside the vocabulary"
            tokens[i] = PLACEHOLDER_TOKEN
    return tokens, bad


def _sample(
    logits: torch.Tensor,
    params: list[RowParams],
    generators: list[torch.Generator | None],
    seen: torch.Tensor | None,
    index: torch.Tensor,
) -> torch.Tensor:
    return next_tokens(logits, params, generators, None if seen is None else seen[index])


def fail_forward_on(model: torch.nn.Module, marker: list[int]) -> None:
    """Fault injection (tests only): make every prefill whose batch holds the marker's tokens raise,
    as an out-of-memory in the model step would."""
    pattern = torch.tensor(marker)

    def explode(module: torch.nn.Module, args: tuple, kwargs: dict) -> None:
        ids = kwargs.get("input_ids")
        if ids is None or ids.shape[1] < len(marker):
            return
        windows = ids.unfold(1, len(marker), 1)  # [rows, positions, len(marker)]
        if bool((windows == pattern.to(ids.device)).all(-1).any()):
            raise RuntimeError("forward pass failed on purpose (fault injection)")

    model.register_forward_pre_hook(explode, with_kwargs=True)
