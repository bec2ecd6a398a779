"""JSON-schema-constrained decoding for ``extract`` with xgrammar.

:class:`JsonSchemaConstraint` compiles a schema once (cached by its JSON text)
against the model's tokenizer; :meth:`JsonSchemaConstraint.logits_processor`
gives a fresh per-``generate`` logits processor with one grammar per batch row
(``None``: that row is not constrained). Unlike ``xgrammar.contrib.hf``'s
processor it tolerates rows that another stopping criterion ended (they are fed
padding, which their grammar rejects): such a row is simply no longer masked.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from typing import Any

import torch
from transformers import LogitsProcessor

logger = logging.getLogger(__name__)


class JsonSchemaConstraint:
    """Compiled JSON-schema grammars for one tokenizer (``vocab_size``: the model's logits width)."""

    def __init__(self, tokenizer: Any, *, vocab_size: int, stop_token_ids: Sequence[int]) -> None:
        import xgrammar as xgr

        self._xgr = xgr
        info = xgr.TokenizerInfo.from_huggingface(
            tokenizer, vocab_size=vocab_size, stop_token_ids=list(stop_token_ids)
        )
        self.vocab_size = vocab_size
        self._compiler = xgr.GrammarCompiler(info)
        self._cache: dict[str, Any] = {}

    def compile(self, schema: dict[str, Any] | str) -> Any:
        """The compiled grammar of ``schema`` (compact JSON, no free whitespace)."""
        text = schema if isinstance(schema, str) else json.dumps(schema, ensure_ascii=False)
        if text not in self._cache:
            self._cache[text] = self._compiler.compile_json_schema(text, any_whitespace=False)
        return self._cache[text]

    def logits_processor(self, grammars: Sequence[Any | None]) -> "GrammarLogitsProcessor":
        return GrammarLogitsProcessor(self._xgr, list(grammars), self.vocab_size)


class GrammarLogitsProcessor(LogitsProcessor):
    """Masks each constrained row's logits to the tokens its grammar allows. One ``generate`` only."""

    def __init__(self, xgr: Any, grammars: list[Any | None], vocab_size: int) -> None:
        self._xgr = xgr
        self.matchers = [xgr.GrammarMatcher(g) if g is not None else None for g in grammars]
        self.bitmask = xgr.allocate_token_bitmask(len(grammars), vocab_size)
        self.vocab_size = vocab_size
        self._started = False

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if input_ids.shape[0] != len(self.matchers):
            raise ValueError(f"grammar processor set up for {len(self.matchers)} rows, got {input_ids.shape[0]}")
        if self._started:
            last = input_ids[:, -1].tolist()
            for i, matcher in enumerate(self.matchers):
                if matcher is not None and not matcher.is_terminated():
                    if not matcher.accept_token(last[i]):
                        # The row was ended by another criterion and is being padded.
                        self.matchers[i] = None
        self._started = True
        rows = []
        for i, matcher in enumerate(self.matchers):
            if matcher is not None and not matcher.is_terminated():
                matcher.fill_next_token_bitmask(self.bitmask, i)
                rows.append(i)
        if rows:
            device = scores.device
            work = scores if device.type in ("cuda", "cpu") else scores.to("cpu")
            self._xgr.apply_token_bitmask_inplace(
                work, self.bitmask.to(work.device, non_blocking=True), vocab_size=self.vocab_size, indices=rows
            )
            scores = work.to(device) if work is not scores else scores
        return scores
