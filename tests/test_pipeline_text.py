"""process_document and the CLI on the text engine: no model involved."""

from __future__ import annotations

import json
import subprocess
import sys

import builders
import pytest
from hypothesis import given
from hypothesis import settings as settings_
from hypothesis import strategies as st

from docproc.base.errors import InvalidRequest, UnknownSchema, UnsupportedType
from docproc.cli.commands import main
from workers.pipeline import process_document


def test_invoice_ocr_auto_uses_the_text_layer(settings):
    result = process_document(builders.invoice_pdf(), filename="invoice.pdf", task="ocr", settings=settings)
    assert result.status == "succeeded" and result.engine == "text"
    (page,) = result.pages
    assert builders.INVOICE_NUMBER in page.text
    assert page.tables[0].rows[1:] == builders.INVOICE_ROWS
    assert result.document.page_count == 1 and len(result.document.sha256) == 64
    assert {"intake", "render", "text", "total"} <= set(result.timings_ms)


def test_only_pages_for_a_model_are_drawn(settings, monkeypatch):
    """A page read from its text layer needs no pixels: process_document draws none for the
    text engine (the result's size is the drawn image's); drawn_for says which pages a
    model gets."""
    import pymupdf

    from workers.pipeline import drawn_for

    drawn: list[int] = []
    real = pymupdf.Page.get_pixmap
    monkeypatch.setattr(pymupdf.Page, "get_pixmap", lambda page, *a, **k: drawn.append(page.number) or real(page, *a, **k))
    result = process_document(builders.multipage_text_pdf(3), task="ocr", settings=settings)
    assert result.engine == "text" and drawn == []
    assert {(p.width, p.height) for p in result.pages} == {(896, 1344)}
    assert [drawn_for("ocr", "auto")(t) for t in (True, False)] == [False, True]
    assert [drawn_for("tables", "text")(t) for t in (True, False)] == [False, False]
    assert [drawn_for("ocr", "internvl")(t) for t in (True, False)] == [True, True]
    assert [drawn_for("extract", "auto")(t) for t in (True, False)] == [True, True]


def test_page_range_selects_pages(settings):
    result = process_document(builders.multipage_text_pdf(5), task="ocr", pages="2,4-5", settings=settings)
    assert [p.page for p in result.pages] == [2, 4, 5]


def test_scan_with_text_engine_fails_with_needs_model(settings):
    result = process_document(builders.tiff_multipage(2), task="ocr", engine="text", settings=settings)
    assert result.status == "failed"
    assert result.error.code == "needs_model"
    assert [p.error.code for p in result.pages] == ["needs_model", "needs_model"]


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"task": "extract"}, InvalidRequest),  # no schema
        ({"task": "extract", "schema": "invoice", "engine": "text"}, InvalidRequest),
        ({"task": "extract", "schema": "no-such-schema"}, UnknownSchema),
        ({"task": "ocr", "schema": "invoice"}, InvalidRequest),
        ({"task": "summarise"}, InvalidRequest),
    ],
)
def test_bad_requests_are_refused_before_reading(settings, kwargs, error):
    with pytest.raises(error):
        process_document(b"", settings=settings, **kwargs)


def test_cli_writes_json_and_prints_summary(tmp_path, capsys):
    src = tmp_path / "invoice.pdf"
    src.write_bytes(builders.invoice_pdf())
    code = main(["process", str(src), "--task", "tables", "--out", str(tmp_path / "out"), "--no-progress"])
    assert code == 0
    doc = json.loads((tmp_path / "out" / "invoice.json").read_text())
    assert doc["status"] == "succeeded" and doc["task"] == "tables"
    assert doc["pages"][0]["tables"][0]["rows"][0] == builders.INVOICE_HEADER
    assert "invoice.pdf: succeeded" in capsys.readouterr().out


def test_cli_bad_inputs_one_line_each_no_traceback(tmp_path):
    (tmp_path / "invoice.pdf").write_bytes(builders.elf_bytes())
    (tmp_path / "empty.pdf").write_bytes(b"")
    (tmp_path / "locked.pdf").write_bytes(builders.encrypted_pdf())
    (tmp_path / "good.pdf").write_bytes(builders.invoice_pdf())
    files = [str(tmp_path / n) for n in ("invoice.pdf", "empty.pdf", "locked.pdf", "missing.pdf", "good.pdf")]
    proc = subprocess.run(
        [sys.executable, "-m", "docproc", "process", *files, "--out", str(tmp_path / "out"), "--no-progress"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert [line.split(": ")[1] for line in lines] == [
        "unsupported_type",
        "empty_document",
        "encrypted_document",
        "unreadable_file",
    ]
    assert (tmp_path / "out" / "good.json").exists()  # one bad file does not stop the others


def test_cli_unknown_schema_is_one_line(capsys):
    assert main(["process", "x.pdf", "--task", "extract", "--schema", "nope"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("docproc: unknown_schema:") and "\n" not in err


def test_cli_schemas_lists_shipped_schemas(capsys):
    assert main(["schemas"]) == 0
    out = capsys.readouterr().out
    for name in ("invoice", "receipt", "purchase_order", "bank_statement", "identity_document"):
        assert f"{name}@" in out


def test_unsupported_type_raised_from_library(settings):
    with pytest.raises(UnsupportedType):
        process_document(builders.elf_bytes(), filename="invoice.pdf", settings=settings)


# ---------------------------------------------------------------------------
# damaged PDFs that MuPDF repairs, and text that cannot be serialised as it comes
# ---------------------------------------------------------------------------


def test_a_pdf_cut_to_90_percent_says_it_was_repaired_and_fails_the_pages_it_lost(settings):
    """The end of the file is gone: the last pages' content streams are missing and one
    is cut short. Those pages fail corrupt_document (never needs_model: they are not
    scans), and the document and those pages carry a repaired warning."""
    data = builders.book_pdf(48)
    whole = process_document(data, task="ocr", engine="auto", settings=settings)
    result = process_document(data[: len(data) * 9 // 10], task="ocr", engine="auto", settings=settings)
    assert whole.warnings == [] and all(p.warnings == [] for p in whole.pages)
    lost = [p.page for p in result.pages if p.status == "failed"]
    assert lost and lost == list(range(lost[0], 49))  # the tail of the book
    assert all(p.error.code == "corrupt_document" and [w.code for w in p.warnings] == ["repaired"]
               for p in result.pages if p.status == "failed")
    assert result.status == "partial" and result.document.page_count == 48
    (warning,) = result.warnings
    assert warning.code == "repaired" and warning.pages == lost
    for page in result.pages:  # what is kept is whole, or said to be incomplete
        if page.status == "succeeded" and not page.warnings:
            assert page.text == whole.pages[page.page - 1].text


def test_a_pdf_cut_in_half_keeps_half_its_pages_and_says_which_lost_content(settings):
    data = builders.book_pdf(48)
    whole = process_document(data, task="ocr", engine="text", settings=settings)
    result = process_document(data[: len(data) // 2], task="ocr", engine="text", settings=settings)
    failed = [p for p in result.pages if p.status == "failed"]
    assert 20 <= len(failed) <= 30 and {p.error.code for p in failed} == {"corrupt_document"}  # not needs_model
    (cut,) = [p for p in result.pages if p.status == "succeeded" and p.warnings]  # the page the cut went through
    assert [w.code for w in cut.warnings] == ["repaired"] and "incomplete" in cut.warnings[0].message
    assert 0 < len(cut.text) < len(whole.pages[cut.page - 1].text)
    assert result.warnings[0].pages == [cut.page, *(p.page for p in failed)]
    json.loads(result.model_dump_json())  # and it serialises


def test_table_cells_with_lone_surrogates_are_cleaned_at_the_engine_boundary(settings):
    """PyMuPDF's table finder returns split (and lone) UTF-16 surrogates for a font whose
    ToUnicode map has them: the pair is joined into its character, a lone half becomes
    U+FFFD, and the result serialises."""
    for task in ("tables", "ocr"):
        result = process_document(builders.surrogate_table_pdf(), task=task, engine="text", settings=settings)
        (page,) = result.pages
        assert page.status == "succeeded", page.error
        encoded = result.model_dump_json().encode("utf-8")
        assert "\U0001d465C head" in encoded.decode()
    assert [row[0] for row in page.tables[0].rows] == list(builders.SURROGATE_CELLS)


def test_cli_writes_the_json_of_a_page_with_surrogates(tmp_path):
    src = tmp_path / "math.pdf"
    src.write_bytes(builders.surrogate_table_pdf())
    proc = subprocess.run([sys.executable, "-m", "docproc", "process", str(src), "--task", "tables", "--engine",
                           "text", "--out", str(tmp_path / "out"), "--no-progress"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    doc = json.loads((tmp_path / "out" / "math.json").read_text(encoding="utf-8"))
    assert doc["status"] == "succeeded"
    assert [row[0] for row in doc["pages"][0]["tables"][0]["rows"]] == list(builders.SURROGATE_CELLS)


SURROGATE_TEXT = st.text(st.one_of(st.characters(), st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF)),
                         max_size=40)


@settings_(max_examples=200, deadline=None)
@given(text=SURROGATE_TEXT, cells=st.lists(st.lists(st.one_of(st.none(), SURROGATE_TEXT), max_size=3), max_size=3),
       fields=st.recursive(st.one_of(st.none(), st.integers(), SURROGATE_TEXT),
                           lambda inner: st.dictionaries(SURROGATE_TEXT, inner, max_size=3) | st.lists(inner, max_size=3),
                           max_leaves=8))
def test_no_string_an_engine_returns_can_break_serialisation(text, cells, fields):
    """Whatever strings an engine puts in a page result (text, tables, fields and their keys,
    raw output, error messages), the result that leaves the engine serialises as UTF-8."""
    from PIL import Image

    from docproc.jobs.results import ErrorInfo, PageResult, Table
    from workers.pages import RenderedPage
    from workers.pipeline import finish_page

    page = RenderedPage(number=1, image=Image.new("RGB", (4, 4)))
    result = PageResult(page=1, status="failed", engine="internvl", text=text, raw_output=text,
                        tables=[Table(markdown=text, rows=cells)], fields={"f": fields},
                        error=ErrorInfo(code="invalid_output", message=text))
    finished = finish_page(page, result)
    finished.model_dump_json().encode("utf-8")
    json.loads(finished.model_dump_json())
    if not any(0xD800 <= ord(c) <= 0xDFFF for c in text):
        assert finished.text == text  # clean text is left as it is
