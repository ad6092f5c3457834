"""Per-row token choice: greedy, temperature, top-k, top-p, repetition penalty and per-row generators."""

from __future__ import annotations

import pytest
import torch
from transformers import RepetitionPenaltyLogitsProcessor, TopKLogitsWarper, TopPLogitsWarper

from worker.sampling import RowParams, _filter_top_k_top_p, apply_repetition_penalty, next_tokens

VOCAB = 50
DRAWS = 2_000  # rows per call in the statistical tests


def params(
    sampling: bool = True,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    repetition_penalty: float = 1.0,
) -> RowParams:
    return RowParams(sampling, temperature, top_k, top_p, repetition_penalty)


def gen(seed: int) -> torch.Generator:
    g = torch.Generator()
    g.manual_seed(seed)
    return g


def random_logits(rows: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(rows, VOCAB, generator=gen(seed)) * 3


def draw(logits_row: torch.Tensor, p: RowParams, n: int = DRAWS, seed: int = 0) -> torch.Tensor:
    """Draw n tokens from one row of logits, as n rows sharing one generator."""
    logits = logits_row.unsqueeze(0).repeat(n, 1)
    g = gen(seed)
    return next_tokens(logits, [p] * n, [g] * n, None)


def test_greedy_is_argmax() -> None:
    logits = random_logits(6)
    chosen = next_tokens(logits, [params(sampling=False)] * 6, [None] * 6, None)
    assert torch.equal(chosen, logits.argmax(-1))


def test_greedy_rows_ignore_sampling_rows_beside_them() -> None:
    logits = random_logits(4)
    ps = [params(sampling=False), params(), params(sampling=False), params(temperature=5.0)]
    chosen = next_tokens(logits, ps, [None, gen(1), None, gen(2)], None)
    assert chosen[0] == logits[0].argmax() and chosen[2] == logits[2].argmax()


@pytest.mark.parametrize(
    "p",
    [params(top_k=1), params(top_p=1e-6), params(temperature=1e-4), params(temperature=3.0, top_k=1)],
    ids=["top_k=1", "tiny top_p", "tiny temperature", "hot but top_k=1"],
)
def test_degenerate_sampling_is_argmax(p: RowParams) -> None:
    logits = random_logits(1)[0]
    assert set(draw(logits, p, 500).tolist()) == {int(logits.argmax())}


def test_plain_sampling_really_samples() -> None:
    logits = random_logits(1)[0] / 3  # flatter, so many tokens have real mass
    assert len(set(draw(logits, params()).tolist())) > 10


def test_sampling_follows_softmax() -> None:
    logits = torch.full((VOCAB,), -1e9)
    logits[:3] = torch.tensor([1.0, 2.0, 4.0]).log()  # probabilities 1/7, 2/7, 4/7
    counts = torch.bincount(draw(logits, params(), 7_000), minlength=VOCAB)
    assert counts[3:].sum() == 0
    for token, share in enumerate([1 / 7, 2 / 7, 4 / 7]):
        assert abs(counts[token] / 7_000 - share) < 0.03


def test_temperature_flattens_and_sharpens() -> None:
    logits = random_logits(1)[0] / 3
    top = int(logits.argmax())

    def share_of_top(t: float) -> float:
        return float((draw(logits, params(temperature=t)) == top).float().mean())

    assert share_of_top(0.3) > share_of_top(1.0) > share_of_top(3.0)


@pytest.mark.parametrize("k", [2, 5, 17])
def test_top_k_keeps_only_the_k_best(k: int) -> None:
    logits = random_logits(1)[0] / 3
    allowed = set(logits.topk(k).indices.tolist())
    drawn = set(draw(logits, params(temperature=2.0, top_k=k)).tolist())
    assert drawn <= allowed
    assert len(drawn) == k  # all k get drawn at a high temperature


def test_top_p_keeps_only_the_nucleus() -> None:
    probs = torch.tensor([0.5, 0.3, 0.15, 0.05] + [0.0] * (VOCAB - 4))
    logits = (probs + 1e-12).log()
    # 0.5 + 0.3 = 0.8 < 0.9, so the third token is still needed; the fourth is not.
    assert set(draw(logits, params(top_p=0.9)).tolist()) == {0, 1, 2}
    assert set(draw(logits, params(top_p=0.8)).tolist()) == {0, 1}


@pytest.mark.parametrize(("top_k", "top_p"), [(0, 0.9), (10, 1.0), (10, 0.7), (3, 0.99), (0, 0.3)])
def test_filter_matches_transformers_warpers(top_k: int, top_p: float) -> None:
    logits = random_logits(5, seed=top_k)
    ours = _filter_top_k_top_p(logits, torch.full((5,), top_k), torch.full((5,), top_p))
    theirs = logits.clone()
    if top_k:
        theirs = TopKLogitsWarper(top_k)(None, theirs)
    if top_p < 1.0:
        theirs = TopPLogitsWarper(top_p)(None, theirs)
    assert torch.equal(torch.isinf(ours), torch.isinf(theirs))
    assert torch.equal(ours[~torch.isinf(ours)], logits[~torch.isinf(ours)])


def test_filter_applies_each_rows_own_settings() -> None:
    logits = random_logits(3) / 3
    out = _filter_top_k_top_p(logits, torch.tensor([1, 20, 7]), torch.tensor([1.0, 1.0, 1.0]))
    assert (~torch.isinf(out)).sum(-1).tolist() == [1, 20, 7]
    for row, k in enumerate([1, 20, 7]):
        assert set((~torch.isinf(out[row])).nonzero().flatten().tolist()) == set(
            logits[row].topk(k).indices.tolist()
        )


def test_filter_leaves_a_row_with_both_off_untouched() -> None:
    # top_k=0 and top_p=1.0 mean "off": no token may be masked, however small its probability,
    # or the row samples differently alone (no filter runs) than beside a row that filters.
    logits = torch.randn(2, 4096, generator=gen(3)) * 4
    out = _filter_top_k_top_p(logits, torch.tensor([0, 50]), torch.tensor([1.0, 1.0]))
    assert torch.equal(out[0], logits[0])


@pytest.mark.parametrize("penalty", [1.3, 2.0, 0.8])
def test_repetition_penalty_matches_transformers(penalty: float) -> None:
    logits = random_logits(3)  # positive and negative values
    history = torch.tensor([[1, 4, 4, 9, 30], [0, 2, 3, 5, 7], [49, 48, 1, 1, 1]])
    seen = torch.zeros(3, VOCAB, dtype=torch.bool).scatter(1, history, True)
    ours = apply_repetition_penalty(logits, seen, torch.full((3,), penalty))
    theirs = RepetitionPenaltyLogitsProcessor(penalty)(history, logits.clone())
    torch.testing.assert_close(ours, theirs, rtol=0, atol=0)
    assert not torch.equal(ours, logits)


def test_repetition_penalty_is_per_row() -> None:
    logits = random_logits(2)
    seen = torch.ones(2, VOCAB, dtype=torch.bool)
    out = apply_repetition_penalty(logits, seen, torch.tensor([1.0, 2.0]))
    assert torch.equal(out[0], logits[0])
    torch.testing.assert_close(out[1], torch.where(logits[1] > 0, logits[1] / 2, logits[1] * 2))


def test_repetition_penalty_can_change_the_greedy_choice() -> None:
    logits = torch.zeros(1, VOCAB)
    logits[0, 3], logits[0, 8] = 2.0, 1.5
    seen = torch.zeros(1, VOCAB, dtype=torch.bool)
    seen[0, 3] = True
    assert next_tokens(logits, [params(sampling=False, repetition_penalty=1.0)], [None], seen) == 3
    assert next_tokens(logits, [params(sampling=False, repetition_penalty=2.0)], [None], seen) == 8


def _sequence(
    row_params: RowParams, seed: int, position: int, others: list[tuple[RowParams, int]]
) -> list[int]:
    """Return 30 successive draws of one row placed at `position` among other rows."""
    logits = random_logits(1, seed=99)[0] / 3
    layout = [*others[:position], (row_params, seed), *others[position:]]
    gens = [gen(s) if p.sampling else None for p, s in layout]
    batch = logits.unsqueeze(0).repeat(len(layout), 1)
    return [int(next_tokens(batch, [p for p, _ in layout], gens, None)[position]) for _ in range(30)]


@pytest.mark.parametrize(
    "p", [params(), params(temperature=0.7, top_k=20, top_p=0.9)], ids=["plain", "filtered"]
)
def test_a_rows_draws_depend_only_on_its_own_generator(p: RowParams) -> None:
    alone = _sequence(p, 7, 0, [])
    crowd_a = [(params(), 1), (params(sampling=False), 0), (params(top_k=3), 2)]
    crowd_b = [(params(temperature=2.0), 5), (params(top_p=0.5), 6)]
    assert _sequence(p, 7, 2, crowd_a) == alone
    assert _sequence(p, 7, 1, crowd_b) == alone
    assert _sequence(p, 8, 0, []) != alone  # and the seed matters
