"""JSON-schema-constrained decoding for ``extract`` with xgrammar, always complete.

:class:`JsonSchemaConstraint` compiles a schema once per worker (cached by its
JSON text) against the model's tokenizer: compact JSON (``,``/``:``, no free
whitespace, properties in schema order). :meth:`JsonSchemaConstraint.logits_processor`
gives a fresh per-``generate`` logits processor with one grammar per batch row
(``None``: that row is not constrained). Unlike ``xgrammar.contrib.hf``'s
processor it tolerates rows that another stopping criterion ended (they are fed
padding, which their grammar rejects): such a row is simply no longer masked.

Completion is guaranteed: a grammar alone lets a model wander in a string until
the token budget cuts the JSON. Each row gets a *closing point* (its budget minus
the schema's closing reserve, :func:`workers.engines.schema_bounds.closing_reserve`);
from there on the processor picks the token itself: a stop token when the JSON
is complete, else the first allowed single byte of
:data:`~workers.engines.schema_bounds.CLOSING_ORDER`, else the shortest allowed
token. The grammar still decides what is allowed, so the output stays valid.
A budget below the reserve is raised to it (:meth:`JsonSchemaConstraint.row_budget`).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from transformers import LogitsProcessor

from workers.engines.schema_bounds import CLOSING_ORDER, MAX_CHAR_BYTES, closing_reserve, grammar_schema

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class SchemaGrammar:
    """A compiled schema grammar and its closing reserve (tokens, stop token included)."""

    grammar: Any
    reserve: int


class Closer:
    """The closing order in token ids of one tokenizer, and every token's length in bytes."""

    def __init__(self, decoded_vocab: Sequence[bytes], vocab_size: int, stop_token_ids: Sequence[int]) -> None:
        by_bytes: dict[bytes, int] = {}
        lengths = np.full(vocab_size, 1 << 20, dtype=np.int64)  # ids past the tokenizer: never chosen
        for tid, piece in enumerate(decoded_vocab[:vocab_size]):
            lengths[tid] = len(piece) if piece else 1 << 20
            if len(piece) == 1 and piece not in by_bytes:
                by_bytes[piece] = tid
        backslash = by_bytes.get(b"\\")
        if backslash is not None:  # an escape costs up to 6 bytes: never the "shortest" choice
            lengths[backslash] = MAX_CHAR_BYTES
        self.stop_ids = [t for t in stop_token_ids if 0 <= t < vocab_size]
        self.order = [by_bytes[b] for b in CLOSING_ORDER if b in by_bytes]
        self.lengths = lengths
        self._shortest_first = np.argsort(lengths, kind="stable")  # ties: the lower id
        self._head = self._shortest_first[:512]  # the single bytes and then some: checked first
        missing = [b.decode() for b in CLOSING_ORDER if b not in by_bytes]
        if missing:
            logger.warning("json constraint: the tokenizer has no single-byte token for %s; the closing "
                           "reserve may not hold", " ".join(missing))

    def choose(self, bitmask_row: torch.Tensor) -> int:
        """The closing token among those a row's bitmask allows."""
        words = bitmask_row.numpy().view(np.uint32)

        def allowed(tid: int) -> bool:
            return bool((int(words[tid >> 5]) >> (tid & 31)) & 1)

        for tid in (*self.stop_ids, *self.order):
            if allowed(tid):
                return tid
        head = self._head
        hits = np.flatnonzero((words[head >> 5] >> (head & 31).astype(np.uint32)) & 1)
        if hits.size:  # the shortest allowed token is among the shortest tokens (usually)
            return int(head[hits[0]])
        bits = np.unpackbits(words.view(np.uint8), bitorder="little")[: len(self.lengths)]
        ids = np.flatnonzero(bits)
        if ids.size == 0:
            raise RuntimeError("the grammar allows no token")
        return int(ids[np.argmin(self.lengths[ids])])


class JsonSchemaConstraint:
    """Compiled JSON-schema grammars for one tokenizer (``vocab_size``: the model's logits width)."""

    def __init__(self, tokenizer: Any, *, vocab_size: int, stop_token_ids: Sequence[int]) -> None:
        import xgrammar as xgr

        self._xgr = xgr
        info = xgr.TokenizerInfo.from_huggingface(
            tokenizer, vocab_size=vocab_size, stop_token_ids=list(stop_token_ids)
        )
        self.vocab_size = vocab_size
        self.tokenizer_info = info
        self._compiler = xgr.GrammarCompiler(info)
        self._cache: dict[str, SchemaGrammar] = {}
        self.closer = Closer(info.decoded_vocab, vocab_size, list(stop_token_ids))

    def compile(self, schema: dict[str, Any] | str) -> SchemaGrammar:
        """``schema``'s compiled grammar (compact JSON, no free whitespace, valid dates only) and
        closing reserve, cached."""
        text = schema if isinstance(schema, str) else json.dumps(schema, ensure_ascii=False)
        if text not in self._cache:
            variant = grammar_schema(json.loads(text))  # dates as a pattern of valid dates only
            reserve = closing_reserve(variant)
            grammar = self._compiler.compile_json_schema(json.dumps(variant, ensure_ascii=False),
                                                         any_whitespace=False, separators=(",", ":"))
            self._cache[text] = SchemaGrammar(grammar, reserve)
            logger.info("json constraint: compiled a schema grammar (closing reserve %d tokens)", reserve)
        return self._cache[text]

    @staticmethod
    def row_budget(budget: int, grammar: SchemaGrammar | None, min_free: int = 0) -> int:
        """A row's token budget: at least its grammar's closing reserve, so the JSON can always
        close, plus ``min_free`` tokens the model writes before the closing may start."""
        return budget if grammar is None else max(budget, grammar.reserve + min_free)

    def logits_processor(self, grammars: Sequence[SchemaGrammar | None],
                         budgets: Sequence[int] | None = None) -> "GrammarLogitsProcessor":
        """A processor for one ``generate``; ``budgets``: each row's token budget (None: never close early)."""
        close_at = [None if g is None or budgets is None else max(0, budgets[i] - g.reserve)
                    for i, g in enumerate(grammars)]
        return GrammarLogitsProcessor(self._xgr, [g.grammar if g is not None else None for g in grammars],
                                      self.vocab_size, closer=self.closer, close_at=close_at)


class GrammarLogitsProcessor(LogitsProcessor):
    """Masks each constrained row's logits to the tokens its grammar allows, and from the row's
    closing point on picks the closing token itself. One ``generate`` only."""

    def __init__(self, xgr: Any, grammars: list[Any | None], vocab_size: int, *,
                 closer: Closer | None = None, close_at: Sequence[int | None] | None = None) -> None:
        self._xgr = xgr
        self.matchers = [xgr.GrammarMatcher(g) if g is not None else None for g in grammars]
        self.bitmask = xgr.allocate_token_bitmask(len(grammars), vocab_size)
        self.vocab_size = vocab_size
        self.closer = closer
        self.close_at = list(close_at) if close_at is not None else [None] * len(grammars)
        self.closing_rows: set[int] = set()  # rows the closing order took over (their answer may be cut short)
        self._step = 0

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if input_ids.shape[0] != len(self.matchers):
            raise ValueError(f"grammar processor set up for {len(self.matchers)} rows, got {input_ids.shape[0]}")
        if self._step:
            last = input_ids[:, -1].tolist()
            for i, matcher in enumerate(self.matchers):
                if matcher is not None and not matcher.is_terminated():
                    if not matcher.accept_token(last[i]):
                        # The row was ended by another criterion and is being padded.
                        self.matchers[i] = None
        rows, closing = [], []
        for i, matcher in enumerate(self.matchers):
            if matcher is not None and not matcher.is_terminated():
                matcher.fill_next_token_bitmask(self.bitmask, i)
                rows.append(i)
                at = self.close_at[i]
                if self.closer is not None and at is not None and self._step >= at:
                    closing.append(i)
        self._step += 1
        if rows:
            device = scores.device
            work = scores if device.type in ("cuda", "cpu") else scores.to("cpu")
            masked = [i for i in rows if i not in closing]  # a closing row gets one token, below
            if masked:
                self._xgr.apply_token_bitmask_inplace(
                    work, self.bitmask.to(work.device, non_blocking=True), vocab_size=self.vocab_size,
                    indices=masked)
            for i in closing:
                chosen = self.closer.choose(self.bitmask[i])
                if i not in self.closing_rows and chosen not in self.closer.stop_ids:
                    self.closing_rows.add(i)
                    logger.info("json constraint: row %d reached its token budget's closing point; "
                                "closing the JSON (its values may be cut short)", i)
                work[i].fill_(float("-inf"))
                work[i, chosen] = 0.0
            scores = work.to(device) if work is not scores else scores
        return scores
