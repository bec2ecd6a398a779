"""Reading order that follows the page's layout: blocks, columns, full-width elements.

Lines become blocks (paragraphs); blocks and tables are then ordered by a
recursive XY cut: a region whose items leave a vertical gutter free from top to
bottom is read column by column, left to right; otherwise it is cut into
horizontal bands, and consecutive bands that share a gutter (the runs of a
column layout) are read together, so a full-width title, figure or table stays
in place between the column runs above and below it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from workers.engines.text_lines import Box, Line, union

GUTTER = 8.0
"""Narrowest gap between columns (points)."""
RUN_GAP = 48.0
"""A band further below the column run above it than this starts a new part of the page
(a footnote under the columns is read after them, not at the foot of one column)."""
ENDED_GAP = 18.0
"""A band under one column of a run whose other columns ended more than RUN_GAP above it
goes on that column only when it is this close under it (points); further down it is a
note under the whole run, read after it (a disclaimer under two side-by-side tables)."""


@dataclass(slots=True)
class Block:
    lines: list[Line] = field(default_factory=list)

    @property
    def bbox(self) -> Box:
        return union(ln.bbox for ln in self.lines)


@dataclass(slots=True)
class Item:
    """One thing to place in reading order: a block's or a table's Markdown and its box."""

    bbox: Box
    markdown: str


def make_blocks(lines: Sequence[Line]) -> list[Block]:
    """Lines joined into blocks: a line continues a block when it sits right under the
    block's last line, overlaps it across, and has its size and weight."""
    blocks: list[Block] = []
    for line in sorted(lines, key=lambda ln: (ln.y0, ln.x0)):
        best = None
        for block in blocks:
            last = block.lines[-1]
            gap = line.y0 - last.y1
            overlap = min(line.x1, last.x1) - max(line.x0, last.x0)
            if (-0.3 * line.size <= gap <= 0.5 * line.size and overlap > 0.5 * min(line.x1 - line.x0, last.x1 - last.x0)
                    and abs(line.size - last.size) < 0.6 and line.bold == last.bold):
                best = block
        if best is None:
            blocks.append(Block([line]))
        else:
            best.lines.append(line)
    return blocks


def _gaps(items: Sequence[Item], x0: float, x1: float) -> list[tuple[float, float]]:
    """Free x-intervals of a band within [x0, x1], the strips at the edges included."""
    spans = sorted((i.bbox[0], i.bbox[2]) for i in items)
    out, at = [], x0
    for a, b in spans:
        if a - at >= GUTTER:
            out.append((at, a))
        at = max(at, b)
    if x1 - at >= GUTTER:
        out.append((at, x1))
    return out


def _intersect(a: Sequence[tuple[float, float]], b: Sequence[tuple[float, float]]) -> list[tuple[float, float]]:
    out = []
    for p0, p1 in a:
        for q0, q1 in b:
            lo, hi = max(p0, q0), min(p1, q1)
            if hi - lo >= GUTTER:
                out.append((lo, hi))
    return out


def _gutters(items: Sequence[Item], gaps: Sequence[tuple[float, float]]) -> list[tuple[float, float]]:
    """The gaps with items on both sides: column gutters, not the empty strips at the edges."""
    return [(a, b) for a, b in gaps
            if any(i.bbox[2] <= a + 0.5 for i in items) and any(i.bbox[0] >= b - 0.5 for i in items)]


def _columns(items: Sequence[Item]) -> list[list[Item]]:
    x0 = min(i.bbox[0] for i in items)
    x1 = max(i.bbox[2] for i in items)
    cuts = _gutters(items, _gaps(items, x0, x1))
    if not cuts:
        return [list(items)]
    columns: list[list[Item]] = [[] for _ in range(len(cuts) + 1)]
    for item in items:
        k = sum(item.bbox[0] >= c[1] - 0.5 for c in cuts)
        columns[k].append(item)
    return [c for c in columns if c]


def _bands(items: Sequence[Item]) -> list[list[Item]]:
    bands: list[list[Item]] = []
    bottom = None
    for item in sorted(items, key=lambda i: (i.bbox[1], i.bbox[0])):
        if bands and item.bbox[1] < bottom:
            bands[-1].append(item)
            bottom = max(bottom, item.bbox[3])
        else:
            bands.append([item])
            bottom = item.bbox[3]
    return bands


def _continues(group: Sequence[Item], band: Sequence[Item]) -> bool:
    """Whether ``band`` goes on the column run ``group``: the columns beside it are still
    running at its height, or it sits close under the column it is in."""
    top = min(i.bbox[1] for i in band)
    x0, x1 = min(i.bbox[0] for i in band), max(i.bbox[2] for i in band)
    beside = [i.bbox[3] for i in group if i.bbox[2] <= x0 or i.bbox[0] >= x1]
    under = [i.bbox[3] for i in group if not (i.bbox[2] <= x0 or i.bbox[0] >= x1)]
    if not beside or not under or top - max(beside) <= RUN_GAP:
        return True
    return top - max(under) <= ENDED_GAP


def reading_order(items: Sequence[Item], depth: int = 0) -> list[Item]:
    """Items in reading order: bands top to bottom, the runs of a column layout column by column."""
    if len(items) <= 1 or depth > 40:
        return sorted(items, key=lambda i: (i.bbox[1], i.bbox[0]))
    bands = _bands(items)
    if len(bands) > 1:
        x0 = min(i.bbox[0] for i in items)
        x1 = max(i.bbox[2] for i in items)
        # a band joins the group above when the group has column gutters and the band
        # leaves one of them free: the runs of one column layout are read together
        groups: list[tuple[list[Item], list[tuple[float, float]]]] = []
        for band in bands:
            gaps = _gaps(band, x0, x1)
            if groups and band[0].bbox[1] - max(i.bbox[3] for i in groups[-1][0]) <= RUN_GAP:
                shared = _intersect(groups[-1][1], gaps)
                if shared and _continues(groups[-1][0], band):
                    merged = groups[-1][0] + band
                    groups[-1] = (merged, _gutters(merged, shared))
                    continue
            groups.append((list(band), _gutters(band, gaps)))
        if len(groups) > 1:
            return [i for group, _ in groups for i in reading_order(group, depth + 1)]
    columns = _columns(items)
    if len(columns) > 1:
        return [i for col in columns for i in reading_order(col, depth + 1)]
    return sorted(items, key=lambda i: (i.bbox[1], i.bbox[0]))
