"""The text engine: no model, just the PDF text layer.

For born-digital pages this is exact and fast. A page is read in five steps, each
in its own module: its lines and words (``text_lines``), page furniture apart
(``text_furniture``: headers, footers, margin text), tables (``text_tables``:
ruled and unruled, header rows joined, wrapped cells whole, currency kept with
its numbers), blocks in the layout's reading order (``text_layout``), then
Markdown with each table in place. A page whose text layer is not to be trusted
(workers/text_routing.py: a scan, vector-drawn text, a bad OCR layer...) is
reported as ``needs_model`` with the reason, rather than as empty or wrong text.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from docproc.base.errors import PAGE_ERROR_CODES, InvalidRequest
from docproc.jobs.inputs import OpenedDocument
from docproc.jobs.results import ErrorInfo, PageResult, Table, Task
from workers.engines.text_furniture import split_furniture
from workers.engines.text_layout import Block, Item, make_blocks, reading_order
from workers.engines.text_lines import Line, body_size, page_lines, unrotated
from workers.engines.text_tables import find_tables
from workers.pages import RenderedPage

TEXT_TASKS = ("ocr", "tables")


def _cell(value: Any) -> str:
    return " ".join(str(value).split()).replace("|", "\\|") if value is not None else ""


def rows_to_markdown(rows: Sequence[Sequence[str | None]]) -> str:
    """GitHub-flavoured Markdown for a table whose first row is the header."""
    if not rows:
        return ""
    width = max(len(r) for r in rows)
    padded = [[_cell(c) for c in r] + [""] * (width - len(r)) for r in rows]
    lines = ["| " + " | ".join(padded[0]) + " |", "|" + "---|" * width]
    lines += ["| " + " | ".join(r) + " |" for r in padded[1:]]
    return "\n".join(lines)


@dataclass(slots=True)
class PageText:
    """What the text engine reads from one page."""

    text: str
    tables: list[Table]
    headers: list[str] = field(default_factory=list)
    footers: list[str] = field(default_factory=list)
    margin: list[str] = field(default_factory=list)


def _block_markdown(block: Block, body: float) -> str:
    text = "\n".join(line.text for line in block.lines)
    size = min(line.size for line in block.lines)
    if body and size >= 1.2 * body and len(text) < 200:
        return ("# " if size >= 1.6 * body else "## ") + text.replace("\n", " ")
    return text


def _untaken(lines: list[Line], taken: set[int]) -> list[Line]:
    """The lines, less the words a table took (a line left empty goes)."""
    out = []
    for line in lines:
        words = [w for w in line.words if id(w) not in taken]
        if len(words) == len(line.words):
            out.append(line)
        elif words:
            out.append(Line(min(w.x0 for w in words), min(w.y0 for w in words), max(w.x1 for w in words),
                            max(w.y1 for w in words), line.size, line.bold, line.horizontal, words))
    return out


def _furniture_text(lines: list[Line]) -> list[str]:
    return [line.text for line in sorted(lines, key=lambda ln: (ln.y0, ln.x0))]


def read_page(pdf_page: Any, task: str = "ocr") -> PageText:
    """The page's body text as Markdown in reading order (tables in place), its tables, and
    its headers, footers and margin text apart."""
    with unrotated(pdf_page):
        return _read(pdf_page, task)


def _read(pdf_page: Any, task: str) -> PageText:
    lines = page_lines(pdf_page)
    body_lines, furniture = split_furniture(pdf_page, lines)
    found = find_tables(pdf_page, body_lines)
    tables = [Table(markdown=rows_to_markdown(f.rows), rows=f.rows, bbox=f.bbox) for f in found]
    text = ""
    if task == "ocr":
        taken = set().union(*(f.words for f in found)) if found else set()
        rest = _untaken(body_lines, taken)
        body = body_size(rest or lines)
        items = [Item(b.bbox, _block_markdown(b, body)) for b in make_blocks(rest)]
        items += [Item(t.bbox, t.markdown) for t in tables if t.bbox]
        text = "\n\n".join(i.markdown for i in reading_order(items) if i.markdown).strip()
    return PageText(text, tables, _furniture_text(furniture.headers), _furniture_text(furniture.footers),
                    _furniture_text(furniture.margin))


def page_tables(pdf_page: Any) -> list[Table]:
    """Every table on the page (ruled and unruled), as Markdown and as rows of cells."""
    return read_page(pdf_page, "tables").tables


def page_markdown(pdf_page: Any) -> str:
    """The page's body text in reading order as Markdown, tables in place."""
    return read_page(pdf_page).text


def needs_model(page: RenderedPage) -> PageResult:
    """The failed result of a page whose text layer is not to be trusted, with the reason."""
    reason = page.text_layer_issue or "no_text_layer"
    return PageResult(
        page=page.number,
        status="failed",
        engine="text",
        width=page.image_size[0],
        height=page.image_size[1],
        tiles=0,
        has_text_layer=False,
        text_layer=reason,
        error=ErrorInfo(code="needs_model", message=f"{PAGE_ERROR_CODES['needs_model']} ({reason})"),
    )


class TextEngine:
    """Results straight from a born-digital page; no model, no GPU."""

    name = "text"

    def process(self, document: OpenedDocument, pages: Sequence[RenderedPage], task: Task) -> list[PageResult]:
        if task not in TEXT_TASKS:
            raise InvalidRequest(
                f"the text engine cannot do {task!r}; use engine 'internvl' or 'auto'",
                engine="text",
                task=task,
            )
        return [self.process_page(document, page, task) for page in pages]

    def process_page(self, document: OpenedDocument, page: RenderedPage, task: Task) -> PageResult:
        if not page.has_text_layer or document.pdf is None:
            return needs_model(page)
        start = time.perf_counter()
        read = read_page(document.pdf[page.number - 1], task)
        result = PageResult(
            page=page.number,
            status="succeeded",
            engine=self.name,
            width=page.image_size[0],
            height=page.image_size[1],
            tiles=0,
            has_text_layer=True,
            tables=read.tables,
            text=read.text if task == "ocr" else None,
            headers=read.headers,
            footers=read.footers,
            margin=read.margin,
        )
        result.timings_ms["text"] = (time.perf_counter() - start) * 1000
        return result
