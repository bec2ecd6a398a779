"""Page furniture: running headers, footers, page numbers and margin text.

Told apart from the body two ways:

- across pages: a line in the top or bottom band of the page whose text (digits
  ignored) is also in the same band of a neighbouring page, at about the same
  height, is a running header or footer;
- on the page alone: small lines at the very top or bottom, set apart from the
  body by a gap and no larger than the body text, page numbers ("7", "Page 2 of
  3", "- 4 -") in those bands, vertical text (a margin stamp such as "Downloaded
  from ... at 6:51") and text in the side strips outside the body.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from workers.engines.text_lines import Line, body_size

BAND = 0.12
"""Top and bottom share of the page searched for running headers and footers."""
EDGE = 0.07
"""A line set apart from the body within this share of the top or bottom is furniture."""
SIDE = 0.07
"""Horizontal text entirely within this share of the page's left or right edge is margin text."""
GAP = 0.8
"""Furniture is parted from the body by a gap of at least this many body font sizes."""
SMALL = 0.9
"""On a page alone, a header or footer is set smaller than this share of the body size."""
LINE_NUMBERS = 3
"""This many number-only lines beside the text block (a manuscript's line numbers) are margin text."""
NEIGHBOURS = 2
"""Pages on each side compared for running headers and footers."""
_PAGE_NUMBER = re.compile(r"(page\s*)?[-–]?\s*\d{1,4}\s*[-–]?(\s*(of|/)\s*\d{1,4})?", re.IGNORECASE)


@dataclass(slots=True)
class Furniture:
    headers: list[Line] = field(default_factory=list)
    footers: list[Line] = field(default_factory=list)
    margin: list[Line] = field(default_factory=list)


def normalise(text: str) -> str:
    return re.sub(r"\d+", "#", " ".join(text.lower().split()))


def band_lines(page: Any) -> list[tuple[str, float, str]]:
    """(band, y, normalised text) for every line in the top and bottom bands of ``page``."""
    height = page.rect.height
    out = []
    for band, clip in (("top", (0, 0, page.rect.width, BAND * height)),
                       ("bottom", (0, (1 - BAND) * height, page.rect.width, height))):
        lines: dict[tuple[int, int], list] = {}
        for w in page.get_text("words", clip=clip):
            lines.setdefault((w[5], w[6]), []).append(w)
        for words in lines.values():
            out.append((band, words[0][1], normalise(" ".join(w[4] for w in words))))
    return out


def neighbour_bands(page: Any) -> list[tuple[str, float, str]]:
    """The band lines of the pages around ``page`` in its document (none for a lone page)."""
    doc = page.parent
    if doc is None or len(doc) < 2:
        return []
    n = page.number
    out = []
    for k in range(max(0, n - NEIGHBOURS), min(len(doc), n + NEIGHBOURS + 1)):
        if k != n:
            out += band_lines(doc[k])
    return out


def _edge_lines(lines: Sequence[Line], top: bool, candidate: Callable[[Line], bool], gap_min: float) -> list[Line]:
    """The furniture at the top (bottom) of the page: the candidate lines from the edge
    inwards, up to the last gap of at least ``gap_min`` that parts them from the body."""
    ordered = sorted(lines, key=lambda ln: ln.y0 if top else -ln.y1)
    taken: list[Line] = []
    found: list[Line] = []
    for i, line in enumerate(ordered):
        if not candidate(line):
            break
        taken.append(line)
        if i + 1 == len(ordered):
            break  # nothing but furniture candidates: leave the page its text
        nxt = ordered[i + 1]
        gap = nxt.y0 - max(t.y1 for t in taken) if top else min(t.y0 for t in taken) - nxt.y1
        if gap >= gap_min:
            found = list(taken)
    return found


def _line_numbers(lines: Sequence[Line]) -> set[int]:
    """Number-only lines left or right of all other text: a manuscript's line numbers."""
    numbers = [ln for ln in lines if ln.text.strip().isdigit() and len(ln.text.strip()) <= 4]
    text = [ln for ln in lines if not ln.text.strip().isdigit()]
    if len(numbers) < LINE_NUMBERS or not text:
        return set()
    left, right_edge = min(ln.x0 for ln in text), max(ln.x1 for ln in text)
    outside = sorted((ln for ln in numbers if ln.x1 < left - 4 or ln.x0 > right_edge + 4), key=lambda ln: ln.y0)
    values = [int(ln.text) for ln in outside]
    counting = sum(b == a + 1 for a, b in zip(values, values[1:])) >= 0.8 * (len(values) - 1)
    return {id(ln) for ln in outside} if len(outside) >= LINE_NUMBERS and counting else set()


def split_furniture(page: Any, lines: Sequence[Line], neighbours: Sequence[tuple[str, float, str]] | None = None
                    ) -> tuple[list[Line], Furniture]:
    """The page's body lines, and its furniture apart."""
    width, height = page.rect.width, page.rect.height
    neighbours = neighbour_bands(page) if neighbours is None else neighbours
    furniture = Furniture()
    chars = sum(len(ln.text) for ln in lines) or 1
    vertical = sum(len(ln.text) for ln in lines if not ln.horizontal)
    body = body_size(ln for ln in lines if ln.horizontal)
    horizontal = [ln for ln in lines if ln.horizontal]
    numbers = _line_numbers(horizontal)

    def candidate(line: Line) -> bool:
        top = line.y1 <= BAND * height
        if not top and line.y0 < (1 - BAND) * height:
            return False
        band = "top" if top else "bottom"
        key = normalise(line.text)
        if any(b == band and abs(y - line.y0) <= 10 and t == key for b, y, t in neighbours):
            return True  # the same line at the same place on a page nearby: running
        edge = line.y1 <= EDGE * height if top else line.y0 >= (1 - EDGE) * height
        return edge and (bool(_PAGE_NUMBER.fullmatch(line.text.strip())) or line.size <= SMALL * body)

    def side(line: Line) -> bool:
        return line.x1 <= SIDE * width or line.x0 >= (1 - SIDE) * width

    gap = max(GAP * body, 4.0)
    inner = [ln for ln in horizontal if id(ln) not in numbers and not side(ln)]
    top_ids = {id(ln) for ln in _edge_lines(inner, True, candidate, gap)}
    bottom_ids = {id(ln) for ln in _edge_lines(inner, False, candidate, gap)}
    kept = []
    for line in lines:
        if id(line) in numbers:
            furniture.margin.append(line)
            continue
        if not line.horizontal:
            if vertical < 0.5 * chars:
                furniture.margin.append(line)
                continue
            kept.append(line)
            continue
        if side(line):
            furniture.margin.append(line)
            continue
        if id(line) in top_ids:
            furniture.headers.append(line)
            continue
        if id(line) in bottom_ids:
            furniture.footers.append(line)
            continue
        kept.append(line)
    return kept, furniture
