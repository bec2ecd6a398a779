"""The text engine: no model, just the PDF text layer and PyMuPDF's table finder.

For born-digital pages this is exact and fast; a page without a usable text
layer (a scan) is reported as ``needs_model`` rather than as empty text.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Sequence
from typing import Any

from docproc.errors import PAGE_ERROR_CODES, InvalidRequest
from docproc.results import ErrorInfo, PageResult, Table, Task
from workers.intake import OpenedDocument
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


def page_tables(pdf_page: Any) -> list[Table]:
    """Every ruled table PyMuPDF's finder sees on the page, as Markdown and as rows of cells.

    The layout-gated default finder of PyMuPDF 2 garbles cells (drops spaces, splits
    decimals) and swallows the totals below a table; the plain line-based finder with
    ``extract_cells`` on one shared text page reads each cell exactly.
    """
    import pymupdf

    tables = []
    textpage = None
    for found in pdf_page.find_tables(use_layout=False).tables:
        textpage = textpage or pdf_page.get_textpage()
        rows = [
            [None if cell is None else " ".join(pymupdf.table.extract_cells(textpage, cell).split()) for cell in row.cells]
            for row in found.rows
        ]
        rows = [r for r in rows if any(c for c in r)]
        if rows:
            tables.append(Table(markdown=rows_to_markdown(rows), rows=rows, bbox=tuple(found.bbox)))
    return tables


def _inside(bbox: Sequence[float], table: Table) -> bool:
    """True when most of ``bbox`` lies inside the table's box."""
    x0, y0, x1, y1 = bbox
    tx0, ty0, tx1, ty1 = table.bbox or (0, 0, 0, 0)
    ix = max(0.0, min(x1, tx1) - max(x0, tx0))
    iy = max(0.0, min(y1, ty1) - max(y0, ty0))
    area = max((x1 - x0) * (y1 - y0), 1e-6)
    return ix * iy / area > 0.5


def page_markdown(pdf_page: Any, tables: Sequence[Table] = ()) -> str:
    """The page's text in reading order as Markdown.

    Blocks come in PyMuPDF's sorted reading order; a block set clearly larger
    than the body text becomes a heading; text inside a detected table is
    replaced by that table in Markdown, placed where the table starts.
    """
    blocks = [b for b in pdf_page.get_text("dict", sort=True)["blocks"] if b.get("type") == 0]
    sizes: Counter[float] = Counter()
    for b in blocks:
        for line in b["lines"]:
            for span in line["spans"]:
                sizes[round(span["size"], 1)] += len(span["text"].strip())
    body = sizes.most_common(1)[0][0] if sizes else 0.0

    items: list[tuple[float, float, str]] = [(t.bbox[1], t.bbox[0], t.markdown) for t in tables if t.bbox]
    for b in blocks:
        if any(_inside(b["bbox"], t) for t in tables):
            continue
        lines = [" ".join("".join(s["text"] for s in line["spans"]).split()) for line in b["lines"]]
        text = "\n".join(line for line in lines if line)
        if not text:
            continue
        span_sizes = [s["size"] for line in b["lines"] for s in line["spans"] if s["text"].strip()]
        if body and span_sizes and min(span_sizes) >= 1.2 * body and len(text) < 200:
            text = ("# " if min(span_sizes) >= 1.6 * body else "## ") + text.replace("\n", " ")
        items.append((b["bbox"][1], b["bbox"][0], text))
    items.sort(key=lambda item: (round(item[0], 1), item[1]))
    return "\n\n".join(text for _, _, text in items).strip()


def needs_model(page: RenderedPage) -> PageResult:
    return PageResult(
        page=page.number,
        status="failed",
        engine="text",
        width=page.image.width,
        height=page.image.height,
        tiles=0,
        has_text_layer=False,
        error=ErrorInfo(code="needs_model", message=PAGE_ERROR_CODES["needs_model"]),
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
        pdf_page = document.pdf[page.number - 1]
        tables = page_tables(pdf_page)
        result = PageResult(
            page=page.number,
            status="succeeded",
            engine=self.name,
            width=page.image.width,
            height=page.image.height,
            tiles=0,
            has_text_layer=True,
            tables=tables,
        )
        if task == "ocr":
            result.text = page_markdown(pdf_page, tables)
        result.timings_ms["text"] = (time.perf_counter() - start) * 1000
        return result
