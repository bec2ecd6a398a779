"""The text engine on real born-digital and scanned documents."""

from __future__ import annotations

import builders
import pymupdf
import pytest

from docproc.base.errors import InvalidRequest
from docproc.jobs.inputs import open_document
from workers.engines.text import (
    TextEngine,
    page_markdown,
    page_tables,
    rows_to_markdown,
)
from workers.render import render_pages


def test_invoice_table_rows_are_exact():
    page = pymupdf.open(stream=builders.invoice_pdf(), filetype="pdf")[0]
    table, totals = page_tables(page)
    assert table.rows == [builders.INVOICE_HEADER, *builders.INVOICE_ROWS]
    # the unruled totals under it pair each label with its amount; they have no header row
    assert totals.rows == [["", ""], ["Subtotal", builders.INVOICE_SUBTOTAL], ["VAT 19%", builders.INVOICE_TAX],
                           ["Total EUR", builders.INVOICE_TOTAL]]
    assert table.markdown.splitlines()[0] == "| " + " | ".join(builders.INVOICE_HEADER) + " |"
    assert table.markdown.splitlines()[1] == "|---|---|---|---|"
    assert len(table.markdown.splitlines()) == 2 + len(builders.INVOICE_ROWS)


def test_markdown_reading_order_and_table_in_place():
    page = pymupdf.open(stream=builders.invoice_pdf(), filetype="pdf")[0]
    md = page_markdown(page)
    for needle in (builders.INVOICE_VENDOR, builders.INVOICE_NUMBER, builders.INVOICE_BUYER, builders.INVOICE_TOTAL):
        assert needle in md
    # header before table before totals; the table's cells are not repeated as loose text
    assert md.index(builders.INVOICE_NUMBER) < md.index("| Description |") < md.index(builders.INVOICE_TOTAL)
    assert md.count(builders.INVOICE_ROWS[0][0]) == 1
    assert md.startswith("# ")  # the large title becomes a heading


def test_multipage_text_in_order(settings):
    data = builders.multipage_text_pdf(3)
    with open_document(data, settings=settings) as doc:
        pages = list(render_pages(doc, [1, 2, 3], settings))
        results = TextEngine().process(doc, pages, "ocr")
    assert [r.page for r in results] == [1, 2, 3]
    assert all(r.status == "succeeded" and r.text for r in results)
    for n, r in enumerate(results, 1):
        assert r.text.startswith(f"Line 1 of page {n}:")
        # "Page n of 3" at the top of each page is page furniture, not body text
        assert r.headers == [f"Page {n} of 3"] and "Page " not in r.text


def test_scan_needs_a_model_not_empty_text(settings):
    with open_document(builders.scanned_pdf(), settings=settings) as doc:
        pages = list(render_pages(doc, [1], settings))
        (result,) = TextEngine().process(doc, pages, "ocr")
    assert result.status == "failed"
    assert result.error.code == "needs_model"
    assert result.text is None


def test_extract_is_refused(settings):
    with open_document(builders.invoice_pdf(), settings=settings) as doc:
        pages = list(render_pages(doc, [1], settings))
        with pytest.raises(InvalidRequest):
            TextEngine().process(doc, pages, "extract")


def test_rows_to_markdown_escapes_and_pads():
    md = rows_to_markdown([["a|b", "c"], ["x\ny"]])
    assert md.splitlines() == ["| a\\|b | c |", "|---|---|", "| x y |  |"]
