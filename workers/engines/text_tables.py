"""Tables on a born-digital page: ruled ones from PyMuPDF's line finder, unruled ones
from aligned text, with their header rows, whole multi-line cells and currency
signs kept with their numbers.

Every cell is read from the page's words once (a word belongs to the cell its
centre lies in), not with a per-cell text extraction; the words a table takes are
reported so that the page text does not repeat them, and words it does not take
stay in the text.
"""

from __future__ import annotations

import re
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from workers.engines.text_layout import make_blocks
from workers.engines.text_lines import Box, Line, Segment, Word, centre_in, union

CURRENCY_BEFORE = {"$", "€", "£", "¥", "US$", "C$", "A$", "CHF", "R$"}
CURRENCY_AFTER = {"%", "EUR", "USD", "GBP", "JPY", "CHF", "€", "kr", "Kč", "zł"}
_NUMBER = re.compile(r"[-+(]?\s*\d[\d.,' ]*\)?%?")
PROSE_LINES = 3
PROSE_CHARS = 25
"""A block of at least PROSE_LINES lines whose median length is PROSE_CHARS characters is a paragraph."""
LEADING = 1.6
"""A cell's next line is at most this many font sizes below the line before (baseline to baseline)."""
MIN_GUTTER = 5.0
"""Narrower x-gaps between aligned text are not column gutters (points)."""


@dataclass(slots=True)
class Found:
    """A table before it becomes a result: its box, its rows of cells, the words it took."""

    bbox: Box
    rows: list[list[str]]
    words: set[int] = field(default_factory=set)  # id() of every Word inside a cell


@dataclass(slots=True)
class TextRow:
    """Horizontal lines side by side on one row of the page."""

    y0: float
    y1: float
    size: float
    segments: list[Segment]

    @property
    def cy(self) -> float:
        return (self.y0 + self.y1) / 2


def is_numeric(cell: str) -> bool:
    parts = [p for p in cell.split() if p not in CURRENCY_BEFORE | CURRENCY_AFTER]
    return bool(parts) and bool(_NUMBER.fullmatch(" ".join(parts).replace("$", "").replace("€", "")))


_DATE = re.compile(r"\d{1,2}([./-])\d{1,2}\1(\d{2}|\d{4})?")


def is_body_number(cell: str) -> bool:
    """A number that marks a body row (a year such as "2025" heads columns as often; a
    date such as "01.04." is no amount)."""
    return is_numeric(cell) and not re.fullmatch(r"(19|20)\d\d", cell.strip()) and not _DATE.fullmatch(cell.strip())


def text_rows(lines: Sequence[Line]) -> list[TextRow]:
    rows: list[TextRow] = []
    for line in sorted((ln for ln in lines if ln.horizontal and ln.segments), key=lambda ln: (ln.y0 + ln.y1) / 2):
        cy = (line.y0 + line.y1) / 2
        if rows and abs(cy - rows[-1].cy) <= 0.35 * max(line.size, rows[-1].size):
            row = rows[-1]
            row.segments.extend(line.segments)
            row.y0, row.y1, row.size = min(row.y0, line.y0), max(row.y1, line.y1), max(row.size, line.size)
        else:
            rows.append(TextRow(line.y0, line.y1, line.size, list(line.segments)))
    for row in rows:
        row.segments.sort(key=lambda s: s.x0)
    return rows


# ------------------------------------------------------------------ columns


def gutters_columns(spans: Sequence[tuple[float, float]], min_gutter: float = MIN_GUTTER) -> list[tuple[float, float]]:
    """The x-intervals the ``spans`` cover, merged across gaps narrower than ``min_gutter``."""
    columns: list[list[float]] = []
    for x0, x1 in sorted(spans):
        if columns and x0 - columns[-1][1] < min_gutter:
            columns[-1][1] = max(columns[-1][1], x1)
        else:
            columns.append([x0, x1])
    return [(a, b) for a, b in columns]


def _overlap(a0: float, a1: float, b0: float, b1: float) -> float:
    return max(0.0, min(a1, b1) - max(a0, b0))


def columns_of(segment: Segment, columns: Sequence[tuple[float, float]]) -> list[int]:
    """The columns a segment overlaps, the one it overlaps most first."""
    hits = [(_overlap(segment.x0, segment.x1, c0, c1), i) for i, (c0, c1) in enumerate(columns)]
    return [i for ov, i in sorted(hits, reverse=True) if ov > 0]


# ------------------------------------------------------------ finishing rows


def join_header(rows: list[list[str]], header_rows: int) -> list[list[str]]:
    """Rows ``0..header_rows-1`` joined into one header row, column by column."""
    if header_rows <= 1:
        return rows
    width = len(rows[0])
    header = []
    for c in range(width):
        parts = [rows[r][c] for r in range(header_rows) if rows[r][c]]
        header.append(" ".join(dict.fromkeys(parts)))
    return [header, *rows[header_rows:]]


def header_depth(rows: Sequence[Sequence[str]], spanned: Sequence[Sequence[bool]], least: int = 1) -> int:
    """How many leading rows make the header: ``least`` (the first, or the first two when a
    header line was found above the table's first row), and the next ones while the header
    so far has a merged cell over several columns or rows ("Revenue" over 2024 and 2025)
    and the next row holds no number and has text past its first column."""
    depth = least
    while depth < len(rows) - 1:
        merged = any(spanned[r][c] for r in range(depth) for c in range(len(rows[0])))
        nxt = rows[depth]
        # a row with text only in the first column is a section label ("Assets"), not more header
        if not merged or any(is_body_number(c) for c in nxt if c) or not any(nxt[1:]):
            break
        depth += 1
    return depth


def merge_currency_columns(rows: list[list[str]]) -> list[list[str]]:
    """A column holding only currency signs or units joins the number column beside it."""
    c = 0
    while rows and c < len(rows[0]):
        body = [r[c] for r in rows[1:] if r[c]]
        if body and all(v in CURRENCY_BEFORE | CURRENCY_AFTER for v in body) and len(rows[0]) > 1:
            after = all(v in CURRENCY_AFTER for v in body) and c > 0 and (
                c == len(rows[0]) - 1 or any(is_numeric(r[c - 1]) for r in rows[1:] if r[c - 1]))
            to = c - 1 if after or c == len(rows[0]) - 1 else c + 1
            for r in rows:
                sign, r[c] = r[c], ""
                if sign and r[to] and sign in r[to]:
                    continue  # a heading over both columns is said once
                if sign and r[to]:
                    r[to] = f"{r[to]} {sign}" if to < c else f"{sign} {r[to]}"
                elif sign:
                    r[to] = r[to] or sign
            for r in rows:
                del r[c]
        else:
            c += 1
    return rows


def finish(rows: list[list[str]], spanned: list[list[bool]], least: int = 1) -> list[list[str]]:
    """Header rows joined, merged cells kept only in the header, currency columns joined."""
    depth = header_depth(rows, spanned, min(least, len(rows)))
    rows = [[("" if r >= depth and spanned[r][c] else v) for c, v in enumerate(row)] for r, row in enumerate(rows)]
    rows = merge_currency_columns(join_header(rows, depth))
    return [r for r in rows if any(r)]


# ------------------------------------------------------------ ruled tables


def _words_text(words: Sequence[Word]) -> str:
    """Words in reading order: by line (top within half a line), then left to right."""
    ordered = sorted(words, key=lambda w: (w.y0 + w.y1) / 2)
    lines: list[list[Word]] = []
    for w in ordered:
        if lines and abs((w.y0 + w.y1) / 2 - (lines[-1][0].y0 + lines[-1][0].y1) / 2) < 0.5 * (w.y1 - w.y0):
            lines[-1].append(w)
        else:
            lines.append([w])
    return " ".join(" ".join(w.text for w in sorted(ln, key=lambda w: w.x0)) for ln in lines)


def _header_row_above(grid_rows: list[list[Box | None]], bbox: Box, rows: Sequence[TextRow]) -> TextRow | None:
    """A text row just above a ruled table whose segments each sit in one of its columns:
    the header the finder left out (a header above the table's first rule)."""
    above = [r for r in rows if r.y1 <= bbox[1] + 1 and bbox[1] - r.y1 <= 1.5 * r.size]
    if not above:
        return None
    row = above[-1]
    edges = sorted({round(c[0], 1) for r in grid_rows for c in r if c} | {round(bbox[2], 1)})
    columns = list(zip(edges, edges[1:]))
    inside = [s for s in row.segments if s.x0 >= bbox[0] - 2 and s.x1 <= bbox[2] + 2]
    if len(inside) < 2 or len(inside) != len(row.segments):
        return None
    if any(len(columns_of(s, columns)) != 1 for s in inside):
        return None
    return row


def _merged_source(grid: Sequence[Sequence[Box | None]], r: int, c: int) -> tuple[int, int] | None:
    """The cell that covers the merged grid position (r, c): one to its left that reaches
    over it, else one above that reaches down to it."""
    top = next((cell[1] for cell in grid[r] if cell), None)  # row r's top edge
    left = next((row[c][0] for row in grid if row[c]), None)  # column c's left edge
    for k in range(c - 1, -1, -1):
        cell = grid[r][k]
        if cell is not None:
            if left is None or cell[2] > left + 1:
                return (r, k)
            break
    for k in range(r - 1, -1, -1):
        cell = grid[k][c]
        if cell is not None:
            if top is None or cell[3] > top + 1:
                return (k, c)
            break
    return None


def ruling_box(page: Any) -> Box | None:
    """The box around the page's horizontal and vertical rules, or None when there are not
    two of each (then PyMuPDF's line finder can find no table, and is not asked: it reads
    every character of the page first, the most of a page's time)."""
    across, down = [], []
    for path in page.get_cdrawings():
        for item in path["items"]:
            if item[0] == "re":
                x0, y0, x1, y1 = item[1]
                across += [(x0, y0, x1, y0), (x0, y1, x1, y1)]
                down += [(x0, y0, x0, y1), (x1, y0, x1, y1)]
            elif item[0] == "l":
                (x0, y0), (x1, y1) = item[1], item[2]
                if abs(y1 - y0) < 1 and abs(x1 - x0) >= 5:
                    across.append((min(x0, x1), y0, max(x0, x1), y1))
                elif abs(x1 - x0) < 1 and abs(y1 - y0) >= 5:
                    down.append((x0, min(y0, y1), x1, max(y0, y1)))
    if len(across) < 2 or len(down) < 2:
        return None
    x0, y0, x1, y1 = union(across + down)
    return (x0 - 2, y0 - 2, x1 + 2, y1 + 2)


def ruled_tables(page: Any, words: Sequence[Word], rows: Sequence[TextRow]) -> list[Found]:
    box = ruling_box(page)
    if box is None:
        return []
    found = []
    for table in page.find_tables(clip=box, use_layout=False).tables:
        grid = [list(r.cells) for r in table.rows]
        bbox = tuple(table.bbox)
        width = max(len(r) for r in grid)
        grid = [r + [None] * (width - len(r)) for r in grid]
        header = _header_row_above(grid, bbox, rows)
        inside = [w for w in words if centre_in(w.x0, w.y0, w.x1, w.y1, bbox)]
        taken: set[int] = set()
        cells: list[list[str]] = []
        spanned: list[list[bool]] = []
        for r, row in enumerate(grid):
            out, span = [], []
            for c, cell in enumerate(row):
                if cell is None:
                    src = _merged_source(grid, r, c)
                    out.append(cells[src[0]][src[1]] if src and src[0] < r else out[src[1]] if src else "")
                    span.append(src is not None)
                    continue
                mine = [w for w in inside if centre_in(w.x0, w.y0, w.x1, w.y1, cell)]
                taken.update(id(w) for w in mine)
                out.append(_words_text(mine))
                span.append(False)
            cells.append(out)
            spanned.append(span)
        for w in inside:  # a word on a rule: in the table's box, so the table keeps it
            if id(w) not in taken:
                best = min(((abs((w.y0 + w.y1) / 2 - (c[1] + c[3]) / 2) + abs((w.x0 + w.x1) / 2 - (c[0] + c[2]) / 2),
                             r, k) for r, row in enumerate(grid) for k, c in enumerate(row) if c), default=None)
                if best:
                    _, r, k = best
                    cells[r][k] = f"{cells[r][k]} {w.text}".strip()
                    taken.add(id(w))
        if header is not None:
            edges = sorted({round(c[0], 1) for r in grid for c in r if c} | {round(bbox[2], 1)})
            columns = list(zip(edges, edges[1:]))
            head = [""] * len(columns)
            for s in header.segments:
                k = columns_of(s, columns)[0]
                head[k] = f"{head[k]} {s.text}".strip()
                taken.update(id(w) for w in s.words)
            if len(head) == width:
                cells.insert(0, head)
                spanned.insert(0, [False] * width)
                bbox = (bbox[0], header.y0, bbox[2], bbox[3])
        rows_out = finish(cells, spanned)
        if rows_out:
            found.append(Found(bbox, rows_out, taken))
    return found


# ----------------------------------------------------------- unruled tables


def _prose(cells: Sequence[str]) -> bool:
    """A column of running text: most of its cells are long lines of words."""
    counts = [len(c) for c in cells if c]
    return bool(counts) and statistics.median(counts) >= 20


def interleaved(a: TextRow, b: TextRow) -> bool:
    """Whether two rows overlap by much of their height: a cell's text centred beside a
    neighbour's two lines ("3" halfway down "WP1 Requirements and / stakeholder interviews")
    sits between them, and belongs to the same table row (lines one under the other overlap
    a little at most)."""
    return min(a.y1, b.y1) - max(a.y0, b.y0) > 0.4 * min(a.y1 - a.y0, b.y1 - b.y0)


def _join_interleaved(placed: list[tuple[TextRow, list[str], list[bool]]], start: int
                      ) -> list[tuple[TextRow, list[str], list[bool]]]:
    """Rows from ``start`` on that are interleaved with the one above join it, cell by cell."""
    out = placed[:start]
    prev: TextRow | None = None
    for row, cells, span in placed[start:]:
        if prev is not None and len(out) > start and interleaved(prev, row):
            top, top_cells, top_span = out[-1]
            joined = TextRow(min(top.y0, row.y0), max(top.y1, row.y1), max(top.size, row.size),
                             top.segments + row.segments)
            out[-1] = (joined, [join_lines(a, b) for a, b in zip(top_cells, cells)],
                       [a or b for a, b in zip(top_span, span)])
        else:
            out.append((row, cells, span))
        prev = row
    return out


def _runs(rows: Sequence[TextRow]) -> list[list[TextRow]]:
    """Stretches of close rows where most rows have two or more segments."""
    runs: list[list[TextRow]] = []
    current: list[TextRow] = []
    for i, row in enumerate(rows):
        multi = len(row.segments) >= 2
        if current:
            close = row.y0 - current[-1].y1 <= 1.6 * row.size
            nxt = rows[i + 1] if i + 1 < len(rows) else None
            sandwiched = nxt is not None and len(nxt.segments) >= 2 and nxt.y0 - row.y1 <= 1.6 * row.size
            left = min(s.x0 for r in current for s in r.segments)
            indented = row.segments[0].x0 > left + 10
            if close and (multi or sandwiched or indented or interleaved(current[-1], row)):
                current.append(row)
                continue
            runs.append(current)
            current = []
        if multi:
            current = [row]
    if current:
        runs.append(current)
    return runs


def merge_header_only_columns(rows: list[list[str]], spanned: list[list[bool]], columns: list[tuple[float, float]],
                              head: int) -> None:
    """A column with text only in the header rows (a left-aligned heading over right-aligned
    numbers the gutter split off) joins the nearer neighbour that has a body and no heading."""
    c = 0
    while c < len(columns) and len(columns) > 2:
        if any(r[c] for r in rows[:head]) and not any(r[c] for r in rows[head:]):
            near = []
            for n in (c - 1, c + 1):
                if 0 <= n < len(columns) and not any(r[n] for r in rows[:head]) and any(r[n] for r in rows[head:]):
                    near.append((columns[n][0] - columns[c][1] if n > c else columns[c][0] - columns[n][1], n))
            if near:
                n = min(near)[1]
                for r in range(head):
                    rows[r][n] = rows[r][c]
                for grid in (rows, spanned):
                    for r in grid:
                        del r[c]
                del columns[c]
                continue
        c += 1


def _grid_of_run(run: Sequence[TextRow], above: TextRow | None) -> tuple[list[list[str]], list[list[bool]],
                                                                          list[tuple[float, float]]] | None:
    columns = gutters_columns([(s.x0, s.x1) for r in run for s in r.segments])
    if len(columns) < 2:
        return None
    physical = ([above] if above else []) + list(run)
    placed = []
    for k, row in enumerate(physical):
        cells = [""] * len(columns)
        span = [False] * len(columns)
        header = k == 0 and above is not None
        groups = group_spans(row.segments, columns) if header else {}
        for seg in row.segments:
            hits = groups.get(id(seg)) or columns_of(seg, columns) or [0]
            for c in hits if header else hits[:1]:
                cells[c] = f"{cells[c]} {seg.text}".strip()
                span[c] = len(hits) > 1
        placed.append((row, cells, span))
    placed = _join_interleaved(placed, 1 if above else 0)
    # a row closer to the one above than the table's row pitch, with fewer cells than a
    # full row, continues the row above (its cells wrapped)
    most = statistics.median_high([sum(bool(c) for c in cells) for _, cells, _ in placed])
    full = [row for row, cells, _ in placed if sum(bool(c) for c in cells) >= most]
    pitches = [b.cy - a.cy for a, b in zip(full, full[1:])]
    pitch = statistics.median(pitches) if pitches else 0.0
    rows: list[list[str]] = []
    spanned: list[list[bool]] = []
    prev: TextRow | None = None
    for k, (row, cells, span) in enumerate(placed):
        filled = sum(bool(c) for c in cells)
        if prev is None:
            tight = False
        elif pitch:
            # closer than the rows are apart, and no further than a line's leading: a row
            # after a tall one (a cell of several lines) is further below its last line
            tight = row.cy - prev.cy < min(pitch - 1.0, LEADING * row.size)
        else:
            tight = filled == 1 and row.y0 - prev.y1 < 0.5 * row.size
        nxt = placed[k + 1][1] if k + 1 < len(placed) else None
        leads_on = nxt is not None and cells[0] and not any(cells[1:]) and nxt[0][:1].islower() and any(nxt[1:])
        # the header's lower line: set closer under the first row than the rows are apart,
        # neither line holding a number ("Item / code", "Quantity / ordered")
        header_line = (tight and len(rows) == 1 and not above
                       and not any(is_body_number(c) for c in rows[0] + cells if c))
        # an entry's last line, bringing its numbers: the row above is a body row that has
        # its first cell (a date) and no number yet, this one has no first cell, and where
        # both have text it is text ("SEPA Direct Debit / ... / Mandate ID SWM-22871  -84.00")
        completes = (tight and len(rows) > (2 if above else 1) and not cells[0] and rows[-1][0]
                     and not any(is_body_number(c) for c in rows[-1] if c)
                     and any(is_body_number(c) for c in cells if c)
                     and not any(is_body_number(a) or is_body_number(b) for a, b in zip(rows[-1], cells) if a and b))
        if (tight and (filled < most or header_line or completes) and rows and k > (1 if above else 0)
                and not leads_on):
            rows[-1] = [join_lines(a, b) for a, b in zip(rows[-1], cells)]
        else:
            rows.append(cells)
            spanned.append(span)
        prev = row
    merge_header_only_columns(rows, spanned, columns, 2 if above else 1)
    join_wrapped_labels(rows, spanned, 2 if above else 1)
    return rows, spanned, columns


def join_lines(upper: str, lower: str) -> str:
    """A cell's text set on two lines, joined; a word hyphenated at the line end ("Back-" over
    "ordered") is joined without a space."""
    if upper.endswith("-") and lower[:1].islower():
        return upper + lower
    return f"{upper} {lower}".strip()


def group_spans(segments: Sequence[Segment], columns: Sequence[tuple[float, float]]) -> dict[int, list[int]]:
    """The columns each group heading of a header line covers ("Budget" centred over its H1
    and H2, "Actual" over its own): a heading centred over a gutter, not over a column, with
    other headings on its line, covers the columns whose centres lie as far either side of
    its centre as halfway to the nearest other heading. Keyed by id() of the segment."""
    if len(segments) < 2:
        return {}
    centres = [(s.x0 + s.x1) / 2 for s in segments]
    out: dict[int, list[int]] = {}
    for i, (seg, cx) in enumerate(zip(segments, centres)):
        if any(c0 <= cx <= c1 for c0, c1 in columns):
            continue  # over one column: that column's heading
        reach = min(abs(cx - o) for j, o in enumerate(centres) if j != i) / 2
        covered = [k for k, (c0, c1) in enumerate(columns) if k and abs((c0 + c1) / 2 - cx) <= reach]
        if len(covered) >= 2:
            out[id(seg)] = covered
    return out


def _group_line(run: Sequence[TextRow]) -> bool:
    """Whether the run's first row is a line of group headings over the header row below it:
    no text over the first column, headings centred over several columns each, fewer cells
    than that row, which has a label in its first column and no number, and close above it."""
    columns = gutters_columns([(s.x0, s.x1) for r in run[1:] for s in r.segments])  # the headings' own aside
    if len(run) < 4 or len(columns) < 3:
        return False
    top, head = run[0], run[1]
    return (all(s.x0 >= columns[1][0] - 2 for s in top.segments) and len(top.segments) < len(head.segments)
            and not any(is_body_number(s.text) for r in (top, head) for s in r.segments)
            and head.segments[0].x0 < columns[1][0] - 2 and head.y0 - top.y1 <= 1.2 * head.size
            and bool(group_spans(top.segments, columns)))


def _header_line_above(first: TextRow, rows: Sequence[TextRow], columns: Sequence[tuple[float, float]]
                       ) -> TextRow | None:
    """The row right above a run when it is the upper line of the table's header: its text
    sits over the columns after the first ("Unit" over "price", "Year Ended" over the years)."""
    if len(columns) < 2:
        return None
    index = rows.index(first)
    if not index or first.y0 - rows[index - 1].y1 > 1.2 * first.size:
        return None
    cand = rows[index - 1]
    if not all(s.x0 >= columns[1][0] - 2 for s in cand.segments):
        return None
    first_has_label = any(columns_of(s, columns)[:1] == [0] for s in first.segments)
    if first_has_label and any(len(columns_of(s, columns)) != 1 for s in cand.segments):
        return None
    return cand


def join_wrapped_labels(rows: list[list[str]], spanned: list[list[bool]], head: int) -> None:
    """A body row with only its first cell, followed by a row whose first cell goes on in
    lower case, is the upper line of that row's label (numbers set on a label's last line)."""
    r = head
    while r < len(rows) - 1:
        row, nxt = rows[r], rows[r + 1]
        if row[0] and not any(row[1:]) and not row[0].endswith(":") and nxt[0][:1].islower() and any(nxt[1:]):
            nxt[0] = f"{row[0]} {nxt[0]}"
            del rows[r], spanned[r]
            continue
        r += 1


def side_by_side(run: Sequence[TextRow], columns: Sequence[tuple[float, float]]) -> float | None:
    """The x between two tables set side by side (a factsheet's "Top holdings" and "Sector
    allocation" in the page's two columns), or None when the run is one table.

    A column of labels (text) right of a column of numbers starts a second table when
    nothing crosses the gap between them and either each side has its own title (a top
    row with text in just the two sides' first columns), or both sides have a column of
    the same heading in a top row (a payslip's payments and deductions, each with its
    "Amount"), or one side ends two or more rows before the other (their rows only line
    up by chance)."""
    if len(columns) < 4:
        return None
    grid = []
    for row in run:
        cells = [""] * len(columns)
        for seg in row.segments:
            k = (columns_of(seg, columns) or [0])[0]
            cells[k] = f"{cells[k]} {seg.text}".strip()
        grid.append(cells)
    for c in range(2, len(columns) - 1):
        x = (columns[c - 1][1] + columns[c][0]) / 2
        if any(s.x0 < x < s.x1 for r in run for s in r.segments):
            continue
        numbers = [g[c - 1] for g in grid[1:] if g[c - 1]]
        labels = [g[c] for g in grid[1:] if g[c]]
        if len(labels) < 3 or sum(is_numeric(v) for v in numbers) < 0.8 * len(numbers):
            continue
        if sum(not is_numeric(v) and any(ch.isalpha() for ch in v) for v in labels) < 0.8 * len(labels):
            continue
        titles = {k for k, v in enumerate(grid[0]) if v} == {0, c}
        same_heading = any({v.casefold() for v in g[:c] if v} & {v.casefold() for v in g[c:] if v}
                           for g in grid[:2])
        sides = [(any(g[:c]), any(g[c:])) for g in grid]
        tail = 0
        for left, right in reversed(sides):
            if left == right:
                break
            tail += 1
        if titles or same_heading or tail >= 2:
            return x
    return None


def _split(run: Sequence[TextRow], x: float) -> list[list[TextRow]]:
    """The run's rows cut at ``x`` into a left and a right set of rows (empty ones dropped)."""
    halves: list[list[TextRow]] = [[], []]
    for row in run:
        for half, segs in zip(halves, ([s for s in row.segments if s.x1 <= x], [s for s in row.segments if s.x0 >= x])):
            if segs:
                half.append(TextRow(min(s.y0 for s in segs), max(s.y1 for s in segs), row.size, segs))
    return halves


def unruled_tables(rows: Sequence[TextRow], taken: set[int]) -> list[Found]:
    """Tables of aligned text: at least three rows of two or more cells in shared columns."""
    free = [r for r in rows if not any(id(w) in taken for s in r.segments for w in s.words)]
    found = []
    todo = [(run, free) for run in _runs(free)]
    while todo:
        run, context = todo.pop(0)
        if sum(len(r.segments) >= 2 for r in run) < 3:
            continue
        columns = gutters_columns([(s.x0, s.x1) for r in run for s in r.segments])
        x = side_by_side(run, columns)
        if x is not None:  # two tables side by side: each is read on its own
            todo[:0] = [(sub, half) for half in _split(run, x) for sub in _runs(half)]
            continue
        above = _header_line_above(run[0], context, columns)
        if above is None and _group_line(run):  # group headings over the header row
            above, run = run[0], run[1:]
        grid = _grid_of_run(run, above)
        if grid is None:
            continue
        cells, spanned, columns = grid
        by_column = list(zip(*cells[1:])) if len(cells) > 1 else []
        if all(_prose(col) for col in by_column):  # columns of running text, not a table
            continue
        physical = ([above] if above else []) + list(run)
        words = {id(w) for r in physical for s in r.segments for w in s.words}
        bbox = (min(s.x0 for r in physical for s in r.segments), physical[0].y0,
                max(s.x1 for r in physical for s in r.segments), physical[-1].y1)
        rows_out = finish(cells, spanned, 2 if above else 1)
        if rows_out and any(is_body_number(c) for c in rows_out[0]):
            rows_out.insert(0, [""] * len(rows_out[0]))  # no header row (totals, key-value pairs)
        if len(rows_out) >= 2 and len(rows_out[0]) >= 2:
            found.append(Found(bbox, rows_out, words))
    return found


def prose_lines(lines: Sequence[Line]) -> set[int]:
    """id() of the lines of paragraphs (three or more long lines that, but for the last,
    end near the same right edge): never table cells, and beside a table (a paper's
    other column) they would look like one more column."""
    out: set[int] = set()
    for block in make_blocks(lines):
        if len(block.lines) < PROSE_LINES or statistics.median(len(ln.text) for ln in block.lines) < PROSE_CHARS:
            continue
        x0, _, x1, _ = block.bbox
        ends = [ln.x1 for ln in block.lines[:-1]]
        if max(ends) - min(ends) <= 0.25 * (x1 - x0):
            out.update(id(ln) for ln in block.lines)
    return out


def find_tables(page: Any, lines: Sequence[Line]) -> list[Found]:
    """Every table on the page, ruled ones first, top to bottom."""
    prose = prose_lines(lines)
    rows = text_rows([ln for ln in lines if id(ln) not in prose])
    words = [w for line in lines if line.horizontal for w in line.words]
    ruled = ruled_tables(page, words, rows)
    taken = set().union(*(t.words for t in ruled)) if ruled else set()
    return sorted(ruled + unruled_tables(rows, taken), key=lambda t: (t.bbox[1], t.bbox[0]))
