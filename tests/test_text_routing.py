"""When a PDF page's text layer is not to be trusted (workers/text_routing.py), and how
``auto`` acts on it: the page goes to the model and the reason is kept on the page."""

from __future__ import annotations

from pathlib import Path

import builders
import pymupdf
import pytest

from docproc.jobs.inputs import open_document
from workers.engines.text import TextEngine
from workers.jobflow import planned_engine
from workers.pipeline import route
from workers.render import render_page
from workers.text_routing import garbled, gibberish, plausible, text_layer_issue

DATA = Path(__file__).parent / "data" / "born_digital"


def page(name: str, number: int = 1):
    return pymupdf.open(DATA / name)[number - 1]


@pytest.mark.parametrize(
    ("name", "number", "issue"),
    [
        ("graphics_titles.pdf", 1, "vector_text"),  # the title drawn as outlines
        ("bad_ocr_layer.pdf", 1, "gibberish_text"),  # handwriting under an OCR layer of noise
        ("bad_ocr_layer.pdf", 3, "invisible_text_mismatch"),  # an OCR layer where the page is blank
        ("text_coverage.pdf", 2, "partial_text_coverage"),  # a scan with only "Page 1" as text
        # and pages to trust:
        ("text_coverage.pdf", 1, None),  # "Hello, world!" and nothing else
        ("text_coverage.pdf", 3, None),  # "Page 1" and nothing else
        ("text_coverage.pdf", 4, None),  # a photo beside real text
        ("bad_ocr_layer.pdf", 2, None),  # a scan under a good OCR layer
        ("bad_ocr_layer.pdf", 4, None),  # ... with a few OCR slips
        ("graphics_titles.pdf", 2, None),  # a small vector logo
        ("graphics_titles.pdf", 3, None),  # a bar chart and a scatter plot of round markers
        ("two_columns.pdf", 1, None),
        ("currency.pdf", 1, None),
    ],
)
def test_text_layer_issue(name, number, issue):
    assert text_layer_issue(page(name, number)) == issue


def test_no_text_and_garbled_text():
    scan = pymupdf.open(stream=builders.scanned_pdf(), filetype="pdf")[0]
    assert text_layer_issue(scan) == "no_text_layer"
    assert garbled("\ufffd" * 40) and garbled("Invoice " + "\ufffd" * 30)
    assert not garbled("Invoice number 42, total 476.00 \ufffd")


@pytest.mark.parametrize(
    "token",
    ["Invoice", "INV-2026-0042", "476.00", "(1,932)", "12.5%", "15mm", "A4", "don't", "e-mail", "https://x.org/a",
     "6:51", "2026-03-14", "Mr.", "§", "arXiv:2603.01234v1", "Müller", "(SFT", "DPO)"],
)
def test_plausible_tokens(token):
    assert plausible(token)


@pytest.mark.parametrize("token", ["l1,;", "~rn.u", "|i1..", ",.~", "nrn1", ";lI:", "I;l'", "lI;i", "rn~,"])
def test_implausible_tokens(token):
    assert not plausible(token)


def test_gibberish_needs_enough_words_and_mostly_noise():
    assert not gibberish("l1,; ~rn.u")  # too few words to judge
    assert gibberish("l1,; ~rn.u ;:'Il |i1.. ,.~ nrn1 ;lI: '.,i tl| ~;,1 uu.: I;l' rn~, .1|; lI;i ,:~' nn1.")
    assert not gibberish("The committee agreed to repair the north jetty before the summer season and to ask the "
                         "council for a grant of 4,000 EUR (see item 7.2).")


def test_auto_routes_an_untrusted_page_to_the_model_with_the_reason(settings):
    data = (DATA / "graphics_titles.pdf").read_bytes()
    with open_document(data, settings=settings) as doc:
        title, logo = render_page(doc, 1, settings), render_page(doc, 2, settings)
        assert (title.has_text_layer, title.text_layer_issue) == (False, "vector_text")
        assert route(title, "ocr", "auto") == "internvl" and route(logo, "ocr", "auto") == "text"
        # the job planner decides the same without rendering the page for the model
        assert planned_engine(doc, 1, "ocr", "auto", settings) == "internvl"
        assert planned_engine(doc, 2, "ocr", "auto", settings) == "text"
        # asked for the text engine anyway, the page fails as needs_model and says why
        (result,) = TextEngine().process(doc, [title], "ocr")
    assert result.error.code == "needs_model" and result.text_layer == "vector_text"
    assert "vector_text" in result.error.message and result.text is None


def test_short_real_text_is_text(settings):
    data = (DATA / "text_coverage.pdf").read_bytes()
    with open_document(data, settings=settings) as doc:
        hello = render_page(doc, 1, settings)
        (result,) = TextEngine().process(doc, [hello], "ocr")
    assert route(hello, "ocr", "auto") == "text"
    assert result.status == "succeeded" and result.text == "Hello, world!"


def test_a_little_hidden_text_on_a_born_digital_page_is_not_an_ocr_layer():
    doc = pymupdf.open(DATA / "currency.pdf")
    p = doc[0]
    p.insert_text((400, 700), "keywords: revenue costs", fontsize=6, render_mode=3)  # over blank paper
    assert text_layer_issue(p) is None
    p.insert_text((50, 720), " ".join(["hidden"] * 400), fontsize=2, render_mode=3)  # now most of the text
    assert text_layer_issue(p) == "invisible_text_mismatch"


@pytest.mark.parametrize(("number", "issue"), [(1, "gibberish_text"), (2, None), (3, "invisible_text_mismatch")])
def test_rotated_scans_are_judged_as_upright_ones(number, issue):
    p = page("bad_ocr_layer.pdf", number)
    p.set_rotation(270)
    assert text_layer_issue(p) == issue and p.rotation == 270
