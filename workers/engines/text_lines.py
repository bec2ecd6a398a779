"""The lines of a born-digital page, as the text engine's other modules use them.

One MuPDF text page gives both the lines (font size, weight, writing direction)
and their words; a line is split into *segments* where a gap between two words
is wider than a column gap could be inside a sentence (the cells of an unruled
table row, or two text columns, come apart there).
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import pymupdf

Box = tuple[float, float, float, float]
TEXT_FLAGS = pymupdf.TEXT_PRESERVE_LIGATURES | pymupdf.TEXT_PRESERVE_WHITESPACE | pymupdf.TEXT_MEDIABOX_CLIP
"""No image blocks: the block numbers of ``words`` then match the ``dict`` blocks."""

LEADER = re.compile(r"[.\u00b7\u2024\u2026]+")
"""A word of dots only: four or more of them together, or a word of four dots or more, are a
dot leader ("Trade receivables . . . . . 2,317"), which guides the eye and says nothing."""

SEGMENT_GAP = 0.9
"""Words further apart than this many font sizes are in different segments."""


@dataclass(slots=True)
class Word:
    x0: float
    y0: float
    x1: float
    y1: float
    text: str


@dataclass(slots=True)
class Segment:
    """Words of one line with no column-sized gap between them."""

    x0: float
    y0: float
    x1: float
    y1: float
    words: list[Word]
    bold: bool = False

    @property
    def text(self) -> str:
        return " ".join(w.text for w in self.words)


@dataclass(slots=True)
class Line:
    x0: float
    y0: float
    x1: float
    y1: float
    size: float
    bold: bool
    horizontal: bool
    words: list[Word] = field(default_factory=list)
    segments: list[Segment] = field(default_factory=list)

    @property
    def text(self) -> str:
        return " ".join(w.text for w in self.words)

    @property
    def bbox(self) -> Box:
        return (self.x0, self.y0, self.x1, self.y1)


def _segments(words: Sequence[Word], size: float, bold: bool) -> list[Segment]:
    segments: list[Segment] = []
    gap = max(SEGMENT_GAP * size, 4.0)
    for w in words:
        if segments and w.x0 - segments[-1].x1 <= gap:
            s = segments[-1]
            s.words.append(w)
            s.x1, s.y0, s.y1 = max(s.x1, w.x1), min(s.y0, w.y0), max(s.y1, w.y1)
        else:
            segments.append(Segment(w.x0, w.y0, w.x1, w.y1, [w], bold))
    return segments


def drop_leaders(words: Sequence[Word]) -> list[Word]:
    """The words less their dot leaders (an ellipsis, "...", is kept)."""
    out: list[Word] = []
    run: list[Word] = []
    for w in [*words, None]:
        if w is not None and LEADER.fullmatch(w.text):
            run.append(w)
            continue
        if run and len(run) < 4 and all(len(r.text) < 4 for r in run):
            out.extend(run)
        run = []
        if w is not None:
            out.append(w)
    return out


def page_lines(page: Any, textpage: Any = None) -> list[Line]:
    """Every line of text on the page with its words and segments, in MuPDF's order."""
    textpage = textpage or page.get_textpage(flags=TEXT_FLAGS)
    raw = page.get_text("words", textpage=textpage)
    by_line: dict[tuple[int, int], list[Word]] = {}
    for x0, y0, x1, y1, text, b, ln, _ in raw:
        by_line.setdefault((b, ln), []).append(Word(x0, y0, x1, y1, text))
    if any("\ufffd" in w.text for words in by_line.values() for w in words):
        _raw_characters(page, textpage, by_line)
    lines = []
    for b, block in enumerate(page.get_text("dict", textpage=textpage)["blocks"]):
        for ln, line in enumerate(block.get("lines", ())):
            words = by_line.get((b, ln))
            if words:
                words = drop_leaders(words)
            if not words:
                continue
            spans = [s for s in line["spans"] if s["text"].strip()]
            weight: Counter[tuple[float, bool]] = Counter()
            for s in spans:
                weight[(round(s["size"], 1), bool(s["flags"] & 16) or "bold" in s["font"].lower())] += len(s["text"])
            size, bold = weight.most_common(1)[0][0] if weight else (10.0, False)
            dx, dy = line["dir"]
            horizontal = abs(dy) < 0.05 and dx > 0
            x0, y0, x1, y1 = line["bbox"]
            if len(words) < len(by_line[(b, ln)]):  # leaders dropped: the line is as wide as its words
                x0, x1 = min(w.x0 for w in words), max(w.x1 for w in words)
            lines.append(Line(x0, y0, x1, y1, size, bold, horizontal, words,
                              _segments(words, size, bold) if horizontal else []))
    return lines


def _raw_characters(page: Any, textpage: Any, by_line: dict[tuple[int, int], list[Word]]) -> None:
    """Words with U+FFFD read again from MuPDF's raw characters: ``words`` gives U+FFFD for
    each half of a surrogate pair a font's ToUnicode map splits, the raw characters keep the
    halves (:mod:`docproc.jobs.clean_text` joins them into their character at the engine's edge)."""
    for b, block in enumerate(page.get_text("rawdict", textpage=textpage)["blocks"]):
        for ln, line in enumerate(block.get("lines", ())):
            words = [w for w in by_line.get((b, ln), ()) if "\ufffd" in w.text]
            chars = [c for span in line["spans"] for c in span["chars"]]
            for w in words:
                inside = [c["c"] for c in chars if w.x0 <= (c["bbox"][0] + c["bbox"][2]) / 2 <= w.x1]
                if inside:
                    w.text = "".join(inside).strip()


@contextmanager
def unrotated(page: Any) -> Iterator[Any]:
    """The page with its /Rotate set aside while it is read: MuPDF gives text in the
    unrotated page's coordinates but drawings, images and pixmaps in the rotated one's."""
    rotation = page.rotation
    if rotation:
        try:
            page.set_rotation(0)
        except Exception:  # noqa: BLE001 - a page that cannot be changed is read as it is
            rotation = 0
    try:
        yield page
    finally:
        if rotation:
            page.set_rotation(rotation)


def body_size(lines: Iterable[Line]) -> float:
    """The font size most of the page's characters are set in."""
    sizes: Counter[float] = Counter()
    for line in lines:
        sizes[round(line.size, 1)] += sum(len(w.text) for w in line.words)
    return sizes.most_common(1)[0][0] if sizes else 10.0


def union(boxes: Iterable[Box]) -> Box:
    xs0, ys0, xs1, ys1 = zip(*boxes)
    return (min(xs0), min(ys0), max(xs1), max(ys1))


def centre_in(x0: float, y0: float, x1: float, y1: float, box: Box, pad: float = 0.0) -> bool:
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    return box[0] - pad <= cx <= box[2] + pad and box[1] - pad <= cy <= box[3] + pad
