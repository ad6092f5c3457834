"""Constrained decoding with llguidance: one matcher per job, its token mask applied to its batch row.

Why llguidance rather than xgrammar: see docs/structured-output.md (measured on this machine).
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass

import llguidance
import llguidance.hf
import numpy as np
import torch
from transformers import PreTrainedTokenizerBase

from shared.constraints import ConstraintFields, grammar_of, parser_limits
from shared.schemas import ErrorCode

COMPILE_LIMIT_S = 2.0  # a grammar that takes longer than this to build fails its job (fuel bounds it first)
CACHE_SIZE = 256  # compiled grammars kept per model, least recently used dropped first
BITS = 32  # tokens per word of llguidance's bitmask


class GrammarError(Exception):
    """A job's constraint cannot be compiled or followed; its job fails with this code."""

    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(message)
        self.code = code


class Constraint:
    """One job's grammar state: which tokens may come next, advanced by each token it takes."""

    def __init__(self, matcher: llguidance.LLMatcher) -> None:
        self.matcher = matcher

    def fill(self, row: torch.Tensor) -> None:
        """Write the allowed-token bitmask into row (a contiguous int32 CPU tensor)."""
        self.matcher.unsafe_compute_mask_ptr(row.data_ptr(), row.numel() * row.element_size())

    def take(self, token: int) -> None:
        """Advance past a generated token (the mask allowed it)."""
        self.matcher.consume_token(token)

    @property
    def complete(self) -> bool:
        """Return True once the grammar can take nothing more (the output is whole)."""
        return self.matcher.is_stopped()

    @property
    def accepting(self) -> bool:
        """Return True when the output so far is a whole sentence of the grammar."""
        return self.matcher.is_accepting()

    @property
    def error(self) -> str | None:
        """Return why the matcher failed (e.g. a step ran out of fuel), or None."""
        return self.matcher.get_error() if self.matcher.is_error() else None


@dataclass
class CompileStats:
    """How the grammar cache has done, for the benchmark."""

    compiled: int = 0
    hits: int = 0
    last_compile_s: float = 0.0


class GrammarBook:
    """One model's compiled grammars, cached by a hash of the constraint (thread-safe)."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase, vocab: int, eos_ids: set[int]) -> None:
        # Building the token trie takes ~0.5 s for SmolLM2's 49k tokens: once per model.
        self.tokenizer = llguidance.hf.from_tokenizer(tokenizer, n_vocab=vocab, eos_token=sorted(eos_ids))
        self.vocab = vocab
        self._cache: OrderedDict[str, llguidance.LLMatcher] = OrderedDict()
        self._lock = threading.Lock()
        self.stats = CompileStats()

    def constraint(self, fields: ConstraintFields) -> Constraint | None:
        """Return a fresh matcher for a job's constraint (None when it has none); GrammarError if bad."""
        try:
            grammar = grammar_of(fields)
        except ValueError as exc:  # checked at the door already; a record from an older API may not be
            raise GrammarError(ErrorCode.GRAMMAR_INVALID, str(exc)) from None
        if grammar is None:
            return None
        key = hashlib.sha256(grammar.encode()).hexdigest()
        with self._lock:
            template = self._cache.get(key)
            if template is not None:
                self._cache.move_to_end(key)
                self.stats.hits += 1
                return Constraint(template.deep_copy())
        t0 = time.perf_counter()
        # Compiled on the caller's (the job's) thread, never the engine's; it drops the GIL, and
        # llguidance's fuel limits bound its work, so a hostile schema fails rather than hangs.
        matcher = llguidance.LLMatcher(self.tokenizer, grammar, log_level=0, limits=parser_limits())
        # The first mask too: an unsatisfiable grammar (a schema that only refers to itself, a
        # regex matching nothing) shows here, on this thread, instead of as an empty row later.
        matcher.compute_bitmask()
        spent = time.perf_counter() - t0
        if matcher.is_error():
            raise GrammarError(
                ErrorCode.GRAMMAR_INVALID, f"the constraint cannot be used: {matcher.get_error()}"
            )
        if spent > COMPILE_LIMIT_S:
            raise GrammarError(
                ErrorCode.GRAMMAR_TOO_COMPLEX,
                f"the constraint took {spent:.1f} s to compile, above the limit of {COMPILE_LIMIT_S} s",
            )
        with self._lock:
            self.stats.compiled += 1
            self.stats.last_compile_s = spent
            self._cache[key] = matcher.deep_copy()
            while len(self._cache) > CACHE_SIZE:
                self._cache.popitem(last=False)
        return Constraint(matcher)


def mask_logits(logits: torch.Tensor, rows: list[int], constraints: list[Constraint]) -> None:
    """Set to -inf, in place, every token that row rows[i]'s constraint forbids; other rows untouched."""
    vocab = logits.shape[-1]
    bitmask = torch.empty(len(rows), (vocab + BITS - 1) // BITS, dtype=torch.int32)
    for i, c in enumerate(constraints):
        c.fill(bitmask[i])
    # Bit j of the little-endian mask is token j; numpy's unpackbits was ~3.5x faster here than
    # unpacking with torch shifts (measured for 16 rows of SmolLM2's 49k tokens on this CPU).
    allowed = np.unpackbits(bitmask.numpy().view(np.uint8), axis=1, bitorder="little")[:, :vocab]
    forbid = torch.from_numpy(allowed).to(logits.device) == 0
    if len(rows) == logits.shape[0]:
        logits.masked_fill_(forbid, float("-inf"))
        return
    index = torch.tensor(rows, device=logits.device)
    logits.index_copy_(0, index, logits.index_select(0, index).masked_fill_(forbid, float("-inf")))
