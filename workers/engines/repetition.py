"""Runaway-output guard: stop a batch row that loops, or that has used its token budget.

Vision-language models sometimes fall into a loop (the same line over and over,
endless dots, a repeated table row) and would otherwise burn the whole
``max_new_tokens``. :class:`RunawayGuard` is a transformers ``StoppingCriteria``
that, at every decoding step, returns one bool per batch row (transformers 5
ANDs it into the rows still running), so one looping page stops while the other
pages of its batch go on. It also enforces a per-row token budget (a batch runs
with the largest budget of its rows) and records, per row, how many tokens were
generated and why the row stopped.

A loop is a tail of the generated tokens that is periodic: for a period ``p``
(1 <= p <= max_period) the last ``max(min_span, min_repeats * p)`` tokens each
equal the token ``p`` places before (so a unit is seen at least
``min_repeats + 1`` times). Dots or spaces are period 1, a repeated line of k
tokens is period k. The thresholds are generous on purpose: a real
page may repeat a short row a few times; a loop repeats until it is stopped.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
import torch
from transformers import StoppingCriteria

EOS = "eos"
REPETITION = "repetition"
LENGTH = "length"


def loop_period(
    tokens: Sequence[int] | np.ndarray,
    *,
    min_span: int = 200,
    max_period: int = 128,
    min_repeats: int = 4,
) -> int | None:
    """The shortest period ``p`` whose repetition fills the tail of ``tokens``, else None.

    The tail counts as a loop when its last ``max(min_span, min_repeats * p)``
    tokens each equal the token ``p`` positions earlier.
    """
    found = find_loops(np.asarray(tokens, dtype=np.int64)[None, :], min_span=min_span,
                       max_period=max_period, min_repeats=min_repeats)
    return int(found[0]) if found[0] else None


def find_loops(
    tails: np.ndarray, *, min_span: int, max_period: int, min_repeats: int
) -> np.ndarray:
    """Per row of ``tails`` (int array (rows, n), all rows equally long): the
    shortest looping period, 0 where the row does not loop."""
    rows, n = tails.shape
    found = np.zeros(rows, dtype=np.int64)
    if min_span <= 0 or n == 0:
        return found
    for p in range(1, max_period + 1):
        span = max(min_span, min_repeats * p)
        if span + p > n:
            break  # spans only grow with p
        same = (tails[:, n - span:] == tails[:, n - span - p: n - p]).all(axis=1)
        found[(found == 0) & same] = p
        if found.all():
            break
    return found


class RunawayGuard(StoppingCriteria):
    """Per-row stop on a repetition loop or an exhausted token budget; records lengths.

    ``prompt_length``: the (left-padded) prompt width, so generated tokens start there.
    ``max_new_tokens``: one budget per row. After ``generate``: ``lengths[i]`` is the
    number of real tokens row i generated (EOS included), ``reasons[i]`` one of
    ``"eos"``, ``"repetition"``, ``"length"`` (or None if it never stopped), and
    ``loop_periods[i]`` the detected period (0 when none).
    """

    def __init__(
        self,
        prompt_length: int,
        max_new_tokens: Sequence[int],
        *,
        eos_token_ids: Iterable[int],
        min_span: int = 200,
        max_period: int = 128,
        min_repeats: int = 4,
        check_every: int = 1,
    ) -> None:
        self.prompt_length = prompt_length
        self.budgets = np.asarray(list(max_new_tokens), dtype=np.int64)
        self.eos_token_ids = np.asarray(sorted(set(eos_token_ids)), dtype=np.int64)
        self.min_span = min_span
        self.max_period = max_period
        self.min_repeats = min_repeats
        self.check_every = max(1, check_every)
        rows = len(self.budgets)
        self.done = np.zeros(rows, dtype=bool)
        self.lengths = np.zeros(rows, dtype=np.int64)
        self.loop_periods = np.zeros(rows, dtype=np.int64)
        self.reasons: list[str | None] = [None] * rows
        self._window = max(min_span, min_repeats * max_period) + max_period if min_span > 0 else 1

    @property
    def looped(self) -> list[bool]:
        return [r == REPETITION for r in self.reasons]

    def __call__(self, input_ids: torch.LongTensor, scores=None, **kwargs) -> torch.BoolTensor:
        rows = input_ids.shape[0]
        if rows != len(self.budgets):
            raise ValueError(f"RunawayGuard set up for {len(self.budgets)} rows, got {rows}")
        generated = input_ids.shape[1] - self.prompt_length
        stop = np.zeros(rows, dtype=bool)
        if generated <= 0:
            return torch.zeros(rows, dtype=torch.bool, device=input_ids.device)
        active = ~self.done
        width = min(generated, self._window)
        tail = input_ids[:, -width:].detach().to("cpu").numpy()

        ended = active & np.isin(tail[:, -1], self.eos_token_ids)
        self._finish(ended, generated, EOS)
        active &= ~ended

        if self.min_span > 0 and active.any() and generated % self.check_every == 0:
            periods = np.zeros(rows, dtype=np.int64)
            idx = np.flatnonzero(active)
            periods[idx] = find_loops(tail[idx], min_span=self.min_span,
                                      max_period=self.max_period, min_repeats=self.min_repeats)
            looping = periods > 0
            self.loop_periods[looping] = periods[looping]
            self._finish(looping, generated, REPETITION)
            stop |= looping
            active &= ~looping

        spent = active & (generated >= self.budgets)
        self._finish(spent, generated, LENGTH)
        stop |= spent
        return torch.as_tensor(stop, device=input_ids.device)

    def _finish(self, rows: np.ndarray, generated: int, reason: str) -> None:
        for i in np.flatnonzero(rows):
            self.done[i] = True
            self.lengths[i] = generated
            self.reasons[i] = reason

    def finalize(self, generated: int) -> None:
        """Close rows still open when ``generate`` returned (the call-wide max length)."""
        self._finish(~self.done, generated, LENGTH)
