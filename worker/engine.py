"""Continuous-batching generation engine: many jobs share each decode step; testable without Celery."""

from __future__ import annotations

import bisect
import logging
import threading
import time
from collections import deque
from concurrent.futures import Future
from dataclasses import dataclass, field

import torch
from transformers import DynamicCache, PreTrainedModel, PreTrainedTokenizerBase

from shared.constraints import ConstraintFields
from shared.schemas import ErrorCode, FinishReason
from worker.grammar import Constraint, GrammarBook, GrammarError, mask_logits
from worker.logprobs import TokenLogprob, describe, prompt_logprobs, sampled_logprobs
from worker.prefill import PrefixCache, pad_left, prefill_shared, shared_prefixes
from worker.rowsafe import sample_rows
from worker.sampling import RowParams

log = logging.getLogger(__name__)

IDLE_WAIT_S = 0.05  # how long an idle engine sleeps before looking for work again
# Longest an engine with no running batch waits, once work is pending, for the jobs its worker is
# still claiming: jobs that arrive together then share one prefill instead of one starting a long
# step alone while the others wait for its end (seconds).
GATHER_S = 0.05


class GenerationError(Exception):
    """A job that cannot run, with the error code its record gets."""

    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(message)
        self.code = code


class RowLost(Exception):
    """The job's row was dropped: its worker no longer holds the job (requeued, or ended)."""


class StepFailed(GenerationError):
    """A batch step (a forward pass) raised: the job's own fault only if it ran alone."""

    def __init__(self, exc: BaseException, solo: bool) -> None:
        super().__init__(ErrorCode.FORWARD_FAILED, f"the model step failed: {type(exc).__name__}: {exc}")
        self.solo = solo  # it ran alone (or was the only job admitted), so it cannot blame the others


@dataclass
class Request:
    """One job's tokens and resolved decoding parameters."""

    id: str
    input_ids: list[int]
    max_new_tokens: int
    params: RowParams
    seed: int
    stop: list[str] = field(default_factory=list)
    ignore_eos: bool = False
    deadline: float | None = None  # Unix seconds; past it the job stops with finish reason TIMEOUT
    solo: bool = False  # run with no other job in the batch (a job whose last worker died)
    logprobs: int | None = None  # None = none; k = each new token's logprob and its top k alternatives
    prompt_logprobs: int | None = None  # echo: None = none; k = each prompt token's logprob and top k
    constraint: Constraint | None = None  # grammar the output must follow (from Engine.grammars)


@dataclass
class Result:
    """What a finished job produced."""

    text: str
    finish_reason: FinishReason
    prompt_tokens: int
    completion_tokens: int
    generate_s: float  # admission → last token
    decode_s: float  # final detokenization
    first_token_s: float | None = None  # admission → first token; None when no token was made
    logprobs: list[dict] | None = None  # per new token (worker/logprobs.describe), when asked
    prompt_logprobs: list[dict] | None = None  # per prompt token, the first with logprob None, when asked


class Arrival:
    """A job the worker has taken and not yet submitted; an idle engine waits briefly for it."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._open = True

    def done(self) -> None:
        """Stop counting this job as arriving (it was submitted, or will not be); idempotent."""
        if self._open:
            self._open = False
            self._engine._arrived()


class Hooks:
    """Where the engine reports progress; the worker sends it to Redis, tests may record it."""

    def on_text(
        self,
        deltas: dict[str, str],
        logprobs: dict[str, list[dict]] | None = None,
        prompt_logprobs: dict[str, list[dict]] | None = None,
    ) -> set[str] | None:
        """Receive the new text of each job that produced some in this step; return the ids of
        jobs no longer ours, whose rows the next step drops.

        For the jobs that asked, logprobs holds the entries (worker/logprobs.describe) of exactly
        the tokens whose text the delta carries (its text may be "" then: tokens without text,
        such as EOS, at the end), and prompt_logprobs the prompt's entries (echo), once, first.
        """
        return None

    def cancelled(self, ids: list[str]) -> set[str]:
        """Return the ids among these running jobs whose cancellation was asked for."""
        return set()


@dataclass
class _Row:
    req: Request
    future: Future
    generator: torch.Generator | None
    started: float
    ids: list[int] = field(default_factory=list)
    text: str = ""
    emitted: int = 0  # characters of text already handed to on_text
    prefix_offset: int = 0  # incremental detokenization window, as in TGI
    read_offset: int = 0
    first_token: float | None = None  # perf_counter() when the first token was appended
    logprobs: list[TokenLogprob] = field(default_factory=list)  # one per appended token, when asked
    described: list[dict] = field(default_factory=list)  # logprobs turned to JSON so far (describe)
    bounds: list[int] = field(default_factory=list)  # per token whose text is decoded: len(text) after it
    lp_emitted: int = 0  # logprob entries already handed to on_text, with the text they spell
    prompt_logprobs: list[TokenLogprob] | None = None
    prompt_described: list[dict] | None = None  # prompt_logprobs turned to JSON, once
    cut: bool = False  # a stop string matched and text was cut before it


class Engine:
    """Up to max_batch jobs share one padded KV cache; each step admits jobs and decodes one token."""

    def __init__(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        max_batch: int = 16,
        context_length: int | None = None,
        hooks: Hooks | None = None,
        prefix_cache_tokens: int = 0,
    ) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.max_batch = max_batch
        self.context_length = context_length or int(getattr(model.config, "max_position_embeddings", 2048))
        self.hooks = hooks or Hooks()
        self.device = model.device
        self.vocab = int(model.get_output_embeddings().weight.shape[0])
        self.eos_ids = _eos_ids(model, tokenizer)
        self._pending: deque[tuple[Request, Future]] = deque()  # appended by any thread, taken by the loop
        self._rows: list[_Row] = []
        self._cache: DynamicCache | None = None
        self._mask: torch.Tensor | None = None  # [rows, cached tokens], 0 = left padding
        self._last: torch.Tensor | None = None  # [rows] token each row feeds next
        self._seen: torch.Tensor | None = None  # [rows, vocab] tokens each row has seen (repetition penalty)
        self._wake = threading.Event()
        self._arriving = 0  # jobs taken by the worker and not yet submitted (Arrival)
        self._arriving_lock = threading.Lock()
        self._lost: set[str] = set()  # ids to drop at the next step (added by any thread)
        self.threads: set[str] = set()  # names of the threads that have run steps (a worker: one)
        self._picked: dict[int, TokenLogprob] = {}  # last sampled step's logprobs, by row offset
        self._echoed: dict[str, list[dict]] = {}  # prompt logprobs of rows just admitted, for on_text
        self._grammars: GrammarBook | None = None
        self.prefixes = PrefixCache(prefix_cache_tokens)  # prefixes prefilled lately (engine thread only)
        self._grammars_lock = threading.Lock()

    @property
    def grammars(self) -> GrammarBook:
        """Return this model's grammar compiler and cache, built on first use (~0.5 s)."""
        with self._grammars_lock:
            if self._grammars is None:
                self._grammars = GrammarBook(self.tokenizer, self.vocab, self.eos_ids)
            return self._grammars

    def constraint(self, fields: ConstraintFields) -> Constraint | None:
        """Compile a job's constraint on the calling thread (never the engine's); GenerationError if bad."""
        try:
            return self.grammars.constraint(fields)
        except GrammarError as exc:
            raise GenerationError(exc.code, str(exc)) from None

    # --- inputs -------------------------------------------------------------
    def encode(self, prompt: str | None = None, messages: list[dict] | None = None) -> list[int]:
        """Turn a prompt, or chat messages rendered by the model's template, into token ids."""
        if messages is not None:
            if not getattr(self.tokenizer, "chat_template", None):
                raise GenerationError(
                    ErrorCode.NO_CHAT_TEMPLATE, "this model has no chat template; send 'prompt'"
                )
            prompt = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
            return self.tokenizer(prompt, add_special_tokens=False)["input_ids"]
        return self.tokenizer(prompt)["input_ids"]

    def token_text(self, token_id: int) -> str:
        """Return one token's text as the tokenizer decodes it alone."""
        return self.tokenizer.decode([token_id])

    def submit(self, req: Request) -> Future:
        """Queue a request for the next step; the future resolves to its Result."""
        budget = len(req.input_ids) + req.max_new_tokens
        if budget > self.context_length:
            raise GenerationError(
                ErrorCode.CONTEXT_LENGTH_EXCEEDED,
                f"prompt has {len(req.input_ids)} tokens and max_new_tokens is {req.max_new_tokens}: "
                f"{budget} exceeds the model's context length of {self.context_length}",
            )
        future: Future = Future()
        self._pending.append((req, future))
        self._wake.set()
        return future

    def arriving(self) -> Arrival:
        """Count a job this worker has taken (before claiming it); call done() once it is submitted."""
        with self._arriving_lock:
            self._arriving += 1
        return Arrival(self)

    def _arrived(self) -> None:
        with self._arriving_lock:
            self._arriving -= 1
        self._wake.set()

    def _gather(self) -> None:
        """With no batch running, wait up to GATHER_S for arriving jobs, so they share the prefill."""
        deadline = time.monotonic() + GATHER_S
        while not self._rows and len(self._pending) < self.max_batch:
            self._wake.clear()
            left = deadline - time.monotonic()
            if self._arriving <= 0 or left <= 0:
                return
            self._wake.wait(left)  # set by each submit and each arrival's done()

    def generate(self, reqs: list[Request]) -> list[Result]:
        """Run requests to completion on the calling thread (tests and benchmarks)."""
        futures = [self.submit(r) for r in reqs]
        while not all(f.done() for f in futures):
            self.step()
        return [f.result() for f in futures]

    # --- the loop -----------------------------------------------------------
    def run(self, stop: threading.Event) -> None:
        """Step until stop is set, sleeping while there is nothing to do."""
        while not stop.is_set():
            if not self._rows and not self._pending:
                self._wake.wait(IDLE_WAIT_S)
                self._wake.clear()
                continue
            self._gather()
            self.step()

    def forget(self, ids: set[str]) -> None:
        """Drop these jobs at the next step, running or waiting: their futures raise RowLost."""
        self._lost.update(ids)
        self._wake.set()

    @property
    def active(self) -> int:
        """Return how many jobs are in the running batch."""
        return len(self._rows)

    def step(self) -> None:
        """Admit waiting jobs, then decode one token for every running job."""
        self.threads.add(threading.current_thread().name)
        try:
            with torch.inference_mode():
                if self._lost:
                    self._drop_lost()
                self._admit()
                if self._rows:
                    self._decode()
        except Exception as exc:  # a failed forward fails its batch, never the engine
            log.exception("generation step failed; handing back %d jobs", len(self._rows))
            solo = len(self._rows) == 1
            for row in self._rows:
                if not row.future.done():
                    row.future.set_exception(_step_failed(exc, solo or row.req.solo))
            self._reset()

    def _drop_lost(self) -> None:
        """Remove the rows and waiting requests of jobs no longer ours, with one log line."""
        lost, self._lost = self._lost, set()
        gone = [i for i, row in enumerate(self._rows) if row.req.id in lost]
        dropped = [(self._rows[i].req.id, self._rows[i].future) for i in gone]
        for req, future in list(self._pending):  # a copy: other threads append meanwhile
            if req.id in lost:
                self._pending.remove((req, future))
                dropped.append((req.id, future))
        if gone:
            self._drop(gone)
        if dropped:
            ids = sorted(job_id for job_id, _ in dropped)
            log.warning(
                "dropped %d jobs no longer ours (moved to another attempt or ended): %s", len(ids), ids
            )
        for _, future in dropped:
            if not future.done():
                future.set_exception(RowLost("the job moved to another attempt or ended"))

    def _reset(self) -> None:
        self._rows, self._cache, self._mask, self._last, self._seen = [], None, None, None, None
        self._echoed = {}

    def _admit(self) -> None:
        new: list[tuple[Request, Future]] = []
        # A solo job waits for the batch to drain, then runs alone; nothing joins it.
        while self._pending and len(self._rows) + len(new) < self.max_batch:
            if any(r.req.solo for r in self._rows) or (self._pending[0][0].solo and (self._rows or new)):
                break
            new.append(self._pending.popleft())
            if new[-1][0].solo:
                break
        new = [(r, f) for r, f in new if f.set_running_or_notify_cancel()]
        if not new:
            return
        now = time.perf_counter()
        width = max(len(r.input_ids) for r, _ in new)
        pad = self.tokenizer.pad_token_id or 0
        ids = torch.tensor(
            [[pad] * (width - len(r.input_ids)) + r.input_ids for r, _ in new], device=self.device
        )
        mask = torch.tensor(
            [[0] * (width - len(r.input_ids)) + [1] * len(r.input_ids) for r, _ in new], device=self.device
        )
        cache = DynamicCache(config=self.model.config)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        echo: dict[int, list[TokenLogprob]] = {}
        reps = shared_prefixes([r.input_ids for r, _ in new], self.prefixes.__contains__)
        try:
            if reps is not None:
                logits, echo, cache, mask = self._prefill_shared(new, reps)
            elif any(r.prompt_logprobs is not None for r, _ in new):
                logits, echo = self._prefill_echo(new, ids, mask, positions, cache)
            else:
                out = self.model(
                    input_ids=ids, attention_mask=mask, position_ids=positions, cache=cache, logits_to_keep=1
                )
                logits = out.logits[:, -1, :]
        except Exception as exc:  # fail only the jobs being admitted; the running batch goes on
            log.exception("prefill of %d jobs failed", len(new))
            for req, future in new:
                future.set_exception(_step_failed(exc, len(new) == 1 or req.solo))
            return
        seen = torch.zeros(len(new), self.vocab, dtype=torch.bool, device=self.device)
        for i, (r, _) in enumerate(new):
            seen[i, r.input_ids] = True
        rows = [_Row(req=r, future=f, generator=_generator(r, self.device), started=now) for r, f in new]
        for i, entries in echo.items():
            rows[i].prompt_logprobs = entries
            if rows[i].req.max_new_tokens > 0:  # a scoring job's entries are in its result only
                self._echoed[rows[i].req.id] = self._prompt_described(rows[i])
        # Scoring jobs (max_new_tokens 0) end at prefill: they never join the decoding batch.
        going = [i for i, r in enumerate(rows) if r.req.max_new_tokens > 0]
        for row in rows:
            if row.req.max_new_tokens == 0:
                row.future.set_result(self._finish(row, FinishReason.LENGTH)[1])
        if not going:
            return
        if len(going) < len(rows):
            keep = torch.tensor(going, device=self.device)
            rows, mask, seen, logits = [rows[i] for i in going], mask[keep], seen[keep], logits[keep]
            for layer in cache.layers:
                layer.keys, layer.values = layer.keys[keep], layer.values[keep]
        self._merge(rows, cache, mask, seen, logits.float())

    def _prefill_echo(
        self,
        new: list[tuple[Request, Future]],
        ids: torch.Tensor,
        mask: torch.Tensor,
        positions: torch.Tensor,
        cache: DynamicCache,
    ) -> tuple[torch.Tensor, dict[int, list[TokenLogprob]]]:
        """Prefill keeping hidden states, so echo rows get prompt logprobs; return last logits and those."""
        hidden = self.model.get_decoder()(
            input_ids=ids, attention_mask=mask, position_ids=positions, cache=cache, use_cache=True
        ).last_hidden_state
        head = self.model.get_output_embeddings()
        asking = [i for i, (r, _) in enumerate(new) if r.prompt_logprobs is not None]
        # Each row's prompt sits at the right end of the padded batch.
        rows = [
            (
                hidden[i, hidden.shape[1] - len(new[i][0].input_ids) :],
                new[i][0].input_ids,
                new[i][0].prompt_logprobs or 0,
            )
            for i in asking
        ]
        echo = dict(zip(asking, prompt_logprobs(rows, head), strict=True)) if rows else {}
        return head(hidden[:, -1, :]), echo

    def _prefill_shared(
        self, new: list[tuple[Request, Future]], reps: list[int]
    ) -> tuple[torch.Tensor, dict[int, list[TokenLogprob]], DynamicCache, torch.Tensor]:
        """Prefill rows that share prompts but for the last token (worker/prefill.py)."""
        prompts = [r.input_ids for r, _ in new]
        asks = [r.prompt_logprobs for r, _ in new]
        pad = self.tokenizer.pad_token_id or 0
        return prefill_shared(self.model, pad, prompts, asks, reps, self.prefixes)

    def _merge(
        self,
        rows: list[_Row],
        cache: DynamicCache,
        mask: torch.Tensor,
        seen: torch.Tensor,
        logits: torch.Tensor,
    ) -> None:
        """Join freshly prefilled rows to the running batch, left-padding the shorter cache."""
        if self._cache is None:
            self._cache, self._mask, self._seen = cache, mask, seen
        else:
            assert self._mask is not None and self._seen is not None  # set together with the cache
            old_len, new_len = self._mask.shape[1], mask.shape[1]
            width = max(old_len, new_len)
            for old, fresh in zip(self._cache.layers, cache.layers, strict=True):
                old.keys = torch.cat([pad_left(old.keys, width, 2), pad_left(fresh.keys, width, 2)])
                old.values = torch.cat([pad_left(old.values, width, 2), pad_left(fresh.values, width, 2)])
            self._mask = torch.cat([pad_left(self._mask, width, 1), pad_left(mask, width, 1)])
            self._seen = torch.cat([self._seen, seen])
        first = len(self._rows)
        self._rows.extend(rows)
        tokens, failed = self._sample(logits, first)
        self._last = tokens if self._last is None else torch.cat([self._last, tokens])
        self._advance(tokens, first, failed)

    def _decode(self) -> None:
        assert self._mask is not None and self._last is not None  # a batch is running
        ones = torch.ones(len(self._rows), 1, dtype=self._mask.dtype, device=self.device)
        self._mask = torch.cat([self._mask, ones], dim=1)
        positions = self._mask.sum(-1, keepdim=True) - 1
        out = self.model(
            input_ids=self._last.unsqueeze(1),
            attention_mask=self._mask,
            position_ids=positions,
            cache=self._cache,
            logits_to_keep=1,
        )
        tokens, failed = self._sample(out.logits[:, -1, :].float(), 0)
        self._last = tokens
        self._advance(tokens, 0, failed)

    def _sample(self, logits: torch.Tensor, first: int) -> tuple[torch.Tensor, dict[int, GenerationError]]:
        """Pick each row's token; a row that cannot be sampled fails alone (its index → its error)."""
        rows = self._rows[first:]
        asks = [r.req.logprobs for r in rows]
        grammars = [(i, r.req.constraint) for i, r in enumerate(rows) if r.req.constraint is not None]
        # Logprobs come from the raw logits: keep them when a grammar masks in place.
        raw = logits.clone() if grammars and any(k is not None for k in asks) else logits
        if grammars:  # rows without a grammar keep their logits untouched
            mask_logits(logits, [i for i, _ in grammars], [c for _, c in grammars])
        assert self._seen is not None  # set before the first row is sampled
        seen = self._seen[first:] if any(r.req.params.repetition_penalty != 1.0 for r in rows) else None
        tokens, bad = sample_rows(logits, [r.req.params for r in rows], [r.generator for r in rows], seen)
        failed = {first + j: GenerationError(ErrorCode.SAMPLING_FAILED, why) for j, why in bad.items()}
        self._seen[torch.arange(first, first + len(rows), device=self.device), tokens] = True
        # Raw logits (before grammar masks, penalties, temperature and filters), as vLLM reports by default.
        self._picked = sampled_logprobs(raw, tokens, asks)
        return tokens, failed

    def _advance(self, tokens: torch.Tensor, first: int, failed: dict[int, GenerationError]) -> None:
        """Append each row's new token, report new text, and retire rows that finished or failed."""
        finished: dict[int, FinishReason] = {}
        deltas: dict[str, str] = {}
        lps: dict[str, list[dict]] = {}  # entries of the tokens whose text deltas carry (rows that ask)
        values = tokens.tolist()  # waits for the device, so made_at is when the tokens exist
        made_at = time.perf_counter()
        for offset, token in enumerate(values):
            i = first + offset
            row = self._rows[i]
            if i in failed:
                continue
            if row.req.constraint is not None and row.req.constraint.error is not None:
                failed[i] = _grammar_failed(row, row.req.constraint.error)  # its mask step failed
                continue
            if token in self.eos_ids and not row.req.ignore_eos:
                # A grammar lets EOS through only once the output is whole: that is a stop.
                finished[i] = FinishReason.EOS if row.req.constraint is None else FinishReason.STOP
                if offset in self._picked:  # its logprob is reported, as vLLM does, though not its text
                    row.logprobs.append(self._picked[offset])
                continue
            row.ids.append(token)
            if offset in self._picked:
                row.logprobs.append(self._picked[offset])
            if row.req.constraint is not None:
                row.req.constraint.take(token)
                if row.req.constraint.error is not None:  # e.g. a step out of fuel: this row alone fails
                    failed[i] = _grammar_failed(row, row.req.constraint.error)
                    continue
            grammar_done = row.req.constraint is not None and row.req.constraint.complete
            if row.first_token is None:
                row.first_token = made_at
            try:
                reason = self._extend_text(row)
                if reason is None and grammar_done:
                    reason = FinishReason.STOP
                if reason is None and len(row.ids) >= row.req.max_new_tokens:
                    reason = FinishReason.LENGTH
                if reason is not None:
                    finished[i] = reason
                elif row.req.logprobs is not None:
                    self._emit_with_logprobs(row, deltas, lps)
                elif len(row.text) > row.emitted + _holdback(row):
                    upto = len(row.text) - _holdback(row)
                    deltas[row.req.id] = row.text[row.emitted : upto]
                    row.emitted = upto
            except Exception as exc:  # this row's text or stop strings only: the others go on
                failed[i] = _decode_failed(row, exc)
        if first == 0:
            running = [r.req.id for i, r in enumerate(self._rows) if i not in finished and i not in failed]
            stopped = self.hooks.cancelled(running) if running else set()
            now = time.time()
            for i, r in enumerate(self._rows):
                if i in finished or i in failed:
                    continue
                if r.req.id in stopped:
                    finished[i] = FinishReason.CANCELLED
                elif r.req.deadline is not None and now > r.req.deadline:
                    finished[i] = FinishReason.TIMEOUT
        results = []
        for i, reason in finished.items():
            try:
                delta, result = self._finish(self._rows[i], reason)
            except Exception as exc:  # this row's final text only
                failed[i] = _decode_failed(self._rows[i], exc)
                continue
            results.append((self._rows[i].future, result))
            row = self._rows[i]
            if delta:
                deltas[row.req.id] = deltas.get(row.req.id, "") + delta
            if result.logprobs is not None and len(result.logprobs) > row.lp_emitted:
                # The rest: tokens whose text came only now, was cut at a stop, or that have none (EOS).
                lps[row.req.id] = lps.get(row.req.id, []) + result.logprobs[row.lp_emitted :]
                deltas.setdefault(row.req.id, "")
        echoed, self._echoed = self._echoed, {}
        if deltas or echoed:
            lost = self.hooks.on_text(deltas, lps, echoed) if lps or echoed else self.hooks.on_text(deltas)
            if lost:
                self._lost.update(lost)
        # Resolve only now: the job's thread then stores the result, whose done event ends the
        # stream, so the last text must be on the stream first.
        for future, result in results:
            future.set_result(result)
        for i, error in failed.items():
            log.warning("job %s failed alone (%s): %s", self._rows[i].req.id, error.code.value, error)
            self._rows[i].future.set_exception(error)
        if finished or failed:
            self._drop(sorted(set(finished) | set(failed)))

    def _emit_with_logprobs(self, row: _Row, deltas: dict[str, str], lps: dict[str, list[dict]]) -> None:
        """Hand on the text of whole tokens only, with their entries, so text and entries stay aligned."""
        while len(row.bounds) < row.read_offset:  # tokens before read_offset are decoded
            row.bounds.append(len(row.text))
        count = bisect.bisect_right(row.bounds, len(row.text) - _holdback(row))
        upto = row.bounds[count - 1] if count else 0
        if upto > row.emitted:  # tokens without text (yet) ride with the next text, or the last delta
            deltas[row.req.id] = row.text[row.emitted : upto]
            lps[row.req.id] = self._described(row, count)[row.lp_emitted : count]
            row.emitted, row.lp_emitted = upto, count

    def _described(self, row: _Row, upto: int) -> list[dict]:
        """Return the row's logprob entries as JSON, describing only those not described before."""
        if len(row.described) < upto:
            row.described += describe(row.logprobs[len(row.described) : upto], self.token_text)
        return row.described

    def _prompt_described(self, row: _Row) -> list[dict]:
        """Return the row's prompt logprob entries as JSON, described once."""
        if row.prompt_described is None:
            row.prompt_described = describe(row.prompt_logprobs or [], self.token_text)
        return row.prompt_described

    def _extend_text(self, row: _Row) -> FinishReason | None:
        """Detokenize incrementally; return STOP (and cut the text) when a stop string appears."""
        prefix = self.tokenizer.decode(row.ids[row.prefix_offset : row.read_offset], skip_special_tokens=True)
        full = self.tokenizer.decode(row.ids[row.prefix_offset :], skip_special_tokens=True)
        if len(full) > len(prefix) and not full.endswith("\ufffd"):
            start = len(row.text)
            row.text += full[len(prefix) :]
            row.prefix_offset, row.read_offset = row.read_offset, len(row.ids)
            if row.req.stop:
                cut = _find_stop(row.text, row.req.stop, max(0, start - max(map(len, row.req.stop))))
                if cut is not None:
                    row.text, row.cut = row.text[:cut], True
                    return FinishReason.STOP
        return None

    def _finish(self, row: _Row, reason: FinishReason) -> tuple[str, Result]:
        """Return the text not yet reported and the row's result (its future is resolved by the caller)."""
        t0 = time.perf_counter()
        # Flush what incremental detokenization held back (an incomplete character at the end);
        # the final text extends the streamed text, so a stream always adds up to the result.
        prefix = self.tokenizer.decode(row.ids[row.prefix_offset : row.read_offset], skip_special_tokens=True)
        tail = self.tokenizer.decode(row.ids[row.prefix_offset :], skip_special_tokens=True)
        text = row.text if row.cut else row.text + tail[len(prefix) :]
        if row.req.stop and not row.cut:
            cut = _find_stop(text, row.req.stop, max(0, len(row.text) - max(map(len, row.req.stop))))
            if cut is not None:
                text, reason = text[:cut], FinishReason.STOP
        decode_s = time.perf_counter() - t0
        result = Result(
            text=text,
            finish_reason=reason,
            prompt_tokens=len(row.req.input_ids),
            completion_tokens=len(row.ids),
            generate_s=t0 - row.started,
            decode_s=decode_s,
            first_token_s=None if row.first_token is None else row.first_token - row.started,
            logprobs=None if row.req.logprobs is None else list(self._described(row, len(row.logprobs))),
            prompt_logprobs=None if row.prompt_logprobs is None else self._prompt_described(row),
        )
        return text[row.emitted :], result

    def _drop(self, indices: list[int]) -> None:
        """Remove finished rows from the batch and trim padding no row needs any more."""
        keep = [i for i in range(len(self._rows)) if i not in set(indices)]
        if not keep:
            self._reset()
            return
        idx = torch.tensor(keep, device=self.device)
        assert self._mask is not None and self._last is not None and self._seen is not None
        assert self._cache is not None  # rows are running, so their batch state is set
        self._rows = [self._rows[i] for i in keep]
        self._mask, self._last, self._seen = self._mask[idx], self._last[idx], self._seen[idx]
        start = int(self._mask.any(dim=0).nonzero()[0])  # first column some row still uses
        self._mask = self._mask[:, start:]
        for layer in self._cache.layers:
            layer.keys = layer.keys[idx, :, start:]
            layer.values = layer.values[idx, :, start:]


def _step_failed(exc: BaseException, solo: bool) -> StepFailed:
    failure = StepFailed(exc, solo)
    failure.__cause__ = exc
    return failure


def _decode_failed(row: _Row, exc: Exception) -> GenerationError:
    log.exception("job %s: detokenization failed", row.req.id)
    return GenerationError(
        ErrorCode.DECODE_FAILED, f"turning its tokens into text failed: {type(exc).__name__}"
    )


def _grammar_failed(row: _Row, error: str) -> GenerationError:
    # llguidance bounds each mask step's work (fuel); a grammar that needs more mid-output is too
    # complex for this job, which fails alone with a code rather than end as if its text were whole.
    return GenerationError(
        ErrorCode.GRAMMAR_TOO_COMPLEX, f"the constraint's matcher failed after {len(row.ids)} tokens: {error}"
    )


def _generator(req: Request, device: torch.device) -> torch.Generator | None:
    if not req.params.sampling:
        return None
    gen = torch.Generator(device=device)
    gen.manual_seed(req.seed)
    return gen


def _holdback(row: _Row) -> int:
    """Characters kept back from streaming because they might begin a stop string."""
    return max(map(len, row.req.stop)) - 1 if row.req.stop else 0


def _find_stop(text: str, stops: list[str], start: int) -> int | None:
    hits = [i for s in stops if (i := text.find(s, start)) != -1]
    return min(hits) if hits else None


def _eos_ids(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> set[int]:
    ids: set[int] = set()
    for value in (getattr(model.generation_config, "eos_token_id", None), tokenizer.eos_token_id):
        if isinstance(value, int):
            ids.add(value)
        elif value:
            ids.update(value)
    return ids
