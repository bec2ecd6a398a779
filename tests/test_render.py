"""Render on real files: page ranges, the grid-exact render-scale rule, the PDF text layer,
image decoding (EXIF, alpha, 16-bit, TIFF frames) and the pixel cap."""

from __future__ import annotations

import dataclasses
import io
import itertools
import sys
from pathlib import Path

import builders
import numpy as np
import pymupdf
import pytest
from PIL import Image, ImageOps

from docproc.base.errors import CorruptDocument, InvalidPageRange
from docproc.base.settings import Settings
from docproc.jobs.inputs import open_document
from docproc.jobs.requests import parse_page_range
from workers import render
from workers.render import (
    extract_text_layer,
    fit_pixels,
    layer_text,
    render_page,
    render_pages,
    render_scale,
    rendered_size,
    sort_words,
)
from workers.tiling import choose_grid, tile_image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
import reference_internvl as ref  # noqa: E402  (the model card's code)

# ------------------------------------------------------------------ page ranges


@pytest.mark.parametrize(
    ("spec", "count", "expected"),
    [
        (None, 3, [1, 2, 3]),
        ("", 2, [1, 2]),
        ("all", 2, [1, 2]),
        (" ALL ", 2, [1, 2]),
        ("1-3,7", 10, [1, 2, 3, 7]),
        ("5-", 7, [5, 6, 7]),
        ("-2", 7, [1, 2]),
        ("7,3,3,1-2", 7, [1, 2, 3, 7]),
        (" 2 - 4 , 6 ", 8, [2, 3, 4, 6]),
        ("4-4", 4, [4]),
        ("1-3,2-5", 5, [1, 2, 3, 4, 5]),
    ],
)
def test_parse_page_range(spec, count, expected):
    assert parse_page_range(spec, count) == expected


@pytest.mark.parametrize(
    ("spec", "count", "message"),
    [
        ("0", 5, "numbered from 1"),
        ("6", 5, "page 6 is beyond the document's 5 pages"),
        ("2-9", 5, "page 9 is beyond"),
        ("6-", 5, "page 6 is beyond"),
        ("4-2", 5, "descending"),
        ("a", 5, "'a' is not"),
        ("1,,2", 5, "'' is not"),
        ("1-2-3", 5, "'1-2-3' is not"),
        ("-", 5, "'-' is not"),
        ("1 2", 5, "'1 2' is not"),
        ("2", 1, "beyond the document's 1 page"),
    ],
)
def test_parse_page_range_rejects(spec, count, message):
    with pytest.raises(InvalidPageRange, match=message) as info:
        parse_page_range(spec, count)
    assert info.value.code == "invalid_page_range"


# ------------------------------------------------------------------ render scale

S = 448
HI = 300 / 72  # the default render_max_dpi as a zoom: the seed path's 300 dpi render


def _grid_of(width_px, height_px, settings):
    return choose_grid(
        width_px, height_px, min_tiles=settings.min_tiles, max_tiles=settings.max_tiles, image_size=settings.tile_size
    )


def _one_page_pdf(width_pt: float, height_pt: float) -> bytes:
    doc = pymupdf.open()
    page = doc.new_page(width=width_pt, height=height_pt)
    page.draw_rect(page.rect + (5, 5, -5, -5), color=(0, 0, 0), width=2)
    page.insert_text((10, min(40, height_pt - 10)), "Grid test page", fontsize=8)
    return doc.tobytes()


# name, size in points, the grid the card's dynamic_preprocess picks for a 300 dpi
# render, and whether the grid's zooms lie within [72, 300] dpi (grid-exact render)
NAMED_SIZES = [
    ("A4 portrait", builders.A4, (2, 3), True),
    ("A4 landscape", builders.A4[::-1], (4, 3), True),  # 1.415: 4/3 is nearer than 3/2
    ("Letter portrait", builders.LETTER, (3, 4), True),
    ("Letter landscape", builders.LETTER[::-1], (4, 3), True),
    ("Legal portrait", (612.0, 1008.0), (2, 3), True),
    ("Legal landscape", (1008.0, 612.0), (3, 2), True),
    ("A3 portrait", (842.0, 1191.0), (2, 3), True),
    ("A5 portrait", (420.0, 595.0), (2, 3), True),
    ("A6 portrait", (297.6, 419.5), (3, 4), False),  # 3x4 would need 325 dpi: rendered at 300
    ("A2 portrait", (1191.0, 1684.0), (2, 3), False),  # 2x3 would need 54 dpi: rendered at 72
    ("square", (500.0, 500.0), (3, 3), True),
    ("receipt strip", (226.8, 841.9), (1, 4), True),
    ("odd 333.3 x 777.7", (333.3, 777.7), (2, 5), True),
    ("wide banner", (1400.0, 300.0), (5, 1), True),
]


@pytest.mark.parametrize(("name", "size_pt", "grid", "exact"), NAMED_SIZES, ids=[n[0] for n in NAMED_SIZES])
def test_pdf_page_renders_at_the_seed_grid(settings, name, size_pt, grid, exact):
    """The seed path (300 dpi pixmap + the card's dynamic_preprocess) and docproc's
    render cut the page into the same grid; within the dpi range, docproc's image
    is exactly that grid."""
    data = _one_page_pdf(*size_pt)
    seed_pix = pymupdf.open(stream=data, filetype="pdf")[0].get_pixmap(dpi=300)
    assert ref.reference_grid(seed_pix.width, seed_pix.height, max_num=settings.max_tiles, image_size=S) == grid
    with open_document(data, settings=settings) as doc:
        page = render_page(doc, 1, settings)
    assert _grid_of(*page.image.size, settings) == grid  # tiling picks the seed's grid
    assert np.asarray(page.image).min() < 80  # the frame was drawn
    if not exact:
        assert page.grid is None and page.dpi == page.dpi_y
        assert settings.render_min_dpi <= page.dpi <= settings.render_max_dpi
        return
    cols, rows = grid
    assert page.grid == grid
    assert page.image.size == (cols * S, rows * S)
    assert page.dpi == pytest.approx(72 * cols * S / size_pt[0])
    assert page.dpi_y == pytest.approx(72 * rows * S / size_pt[1])
    # the stretch is the one dynamic_preprocess gives the page: to the grid's aspect ratio
    assert page.dpi / page.dpi_y == pytest.approx((cols / rows) / (size_pt[0] / size_pt[1]))


def test_rotated_page_renders_at_its_displayed_grid(settings):
    """A portrait A4 page with /Rotate 90 is shown (and rendered) landscape: the
    zooms apply to the displayed width and height, so it is the landscape grid."""
    doc = pymupdf.open()
    page = doc.new_page(width=builders.A4[0], height=builders.A4[1])
    page.insert_text((50, 60), "A rotated page of text, long enough to count.", fontsize=12)
    page.set_rotation(90)
    with open_document(doc.tobytes(), settings=settings) as opened:
        rendered = render_page(opened, 1, settings)
    assert (rendered.width_pt, rendered.height_pt) == pytest.approx(builders.A4[::-1])
    assert rendered.grid == (4, 3) and rendered.image.size == (4 * S, 3 * S)
    assert rendered.has_text_layer


def test_render_scale_a4_example_from_the_docstring(settings):
    scale = render_scale(*builders.A4, settings)
    assert (scale.width, scale.height, scale.grid) == (896, 1344, (2, 3))
    assert (round(72 * scale.zoom_x, 1), round(72 * scale.zoom_y, 1)) == (108.4, 114.9)


def test_grid_exact_size_is_what_mupdf_renders():
    """MuPDF's pixmap for the grid zooms has exactly cols*S x rows*S pixels, on odd page sizes."""
    settings = Settings(_env_file=None)
    doc = pymupdf.open()
    sizes = [(595.0, 842.0), (612.0, 792.0), (333.3, 777.7), (611.9, 1008.1), (431.17, 287.91), (521.0, 523.0)]
    sizes += [(300 + 37.3 * k, 1300 - 53.9 * k) for k in range(16)]
    for w_pt, h_pt in sizes:
        scale = render_scale(w_pt, h_pt, settings)
        assert scale.grid is not None, (w_pt, h_pt)
        page = doc.new_page(width=w_pt, height=h_pt)
        pix = page.get_pixmap(matrix=pymupdf.Matrix(scale.zoom_x, scale.zoom_y), alpha=False)
        assert (pix.width, pix.height) == scale.size == (scale.grid[0] * S, scale.grid[1] * S), (w_pt, h_pt)


BUDGETS = [(1, 6), (1, 12), (1, 40), (2, 12), (4, 4), (6, 6), (1, 1)]
PAGE_SIDES = [10, 50, 144, 250, 288, 300, 420, 500, 595, 612, 792, 842, 1008, 1191, 1684, 2384, 5000, 14400]


@pytest.mark.parametrize(("min_tiles", "max_tiles"), BUDGETS)
def test_render_scale_rule_holds_over_many_page_sizes(settings, min_tiles, max_tiles):
    """For every page size and tile budget: the rendered image picks the grid the
    page picks at 300 dpi (the seed's), unless the pixel cap forced a smaller
    render; a grid-exact render is exactly the grid; never over the pixel cap;
    within the dpi range unless the cap forces less."""
    budget = settings.model_copy(update={"min_tiles": min_tiles, "max_tiles": max_tiles})
    lo, hi = budget.render_min_dpi / 72, budget.render_max_dpi / 72
    exact = 0
    for w_pt, h_pt in itertools.product(PAGE_SIDES, repeat=2):
        scale = render_scale(w_pt, h_pt, budget)
        w, h = scale.size
        assert w * h <= budget.render_max_pixels, (w_pt, h_pt)
        seed_grid = _grid_of(*rendered_size(w_pt, h_pt, HI), budget)
        if scale.grid is not None:
            exact += 1
            cols, rows = scale.grid
            assert scale.grid == seed_grid
            assert scale.size == (cols * S, rows * S)
            assert (scale.zoom_x, scale.zoom_y) == pytest.approx((cols * S / w_pt, rows * S / h_pt))
            assert lo - 1e-9 <= min(scale.zoom_x, scale.zoom_y) <= max(scale.zoom_x, scale.zoom_y) <= hi + 1e-9
        else:
            assert scale.zoom_x == scale.zoom_y and scale.size == rendered_size(w_pt, h_pt, scale.zoom_x)
            assert scale.zoom_x <= hi + 1e-9
            capped = (w + 3) * (h + 3) > budget.render_max_pixels
            assert scale.zoom_x >= lo - 1e-9 or capped, (w_pt, h_pt)
            if capped:
                continue
        assert _grid_of(w, h, budget) == seed_grid, (w_pt, h_pt, scale)
    assert exact >= 25  # ordinary page sizes render straight at their grid (1x1: the 25 of 108-448 pt)


def test_a_grid_exact_image_can_tie_into_a_larger_grid():
    """Why render_scale checks the grid back: at max_tiles >= 16 a 1344 px square
    (3x3 tiles exactly) picks 4x4 - the card's tie rule takes the later grid when the
    image has over half its pixels. A 4 inch square page then renders uniformly
    at 300 dpi, as the seed does, and keeps the seed's 3x3."""
    budget = Settings(_env_file=None, max_tiles=16)
    assert ref.reference_grid(3 * S, 3 * S, max_num=16, image_size=S) == (4, 4)
    seed_grid = ref.reference_grid(*rendered_size(288, 288, HI), max_num=16, image_size=S)
    assert seed_grid == (3, 3)
    scale = render_scale(288, 288, budget)
    assert scale.grid is None
    assert scale.size == (1200, 1200)
    assert _grid_of(*scale.size, budget) == seed_grid


def test_tiny_page_renders_at_max_dpi(settings):
    scale = render_scale(144, 72, settings)  # a 2 x 1 inch label: its 2x1 grid would need 448 dpi
    assert scale.grid is None
    assert scale.zoom_x == scale.zoom_y == pytest.approx(settings.render_max_dpi / 72)
    assert scale.size == (600, 300)


def test_min_dpi_applies_when_the_budget_is_small(settings):
    one_tile = settings.model_copy(update={"max_tiles": 1, "render_min_dpi": 100.0})
    scale = render_scale(*builders.A4, one_tile)  # one 448 px tile would need only ~54 x 38 dpi
    assert scale.grid is None
    assert 72 * scale.zoom_x == 72 * scale.zoom_y == pytest.approx(100.0)


def test_grid_over_the_pixel_cap_renders_uniformly_under_it(settings):
    small_cap = settings.model_copy(update={"render_max_pixels": 1_000_000})  # a 2x3 grid is 1.2 Mpx
    scale = render_scale(*builders.A4, small_cap)
    assert scale.grid is None and scale.zoom_x == scale.zoom_y
    assert 0.98 * 1_000_000 < scale.width * scale.height <= 1_000_000
    assert _grid_of(*scale.size, small_cap) == (2, 3)


@pytest.mark.parametrize("side_pt", [14400.0, 144000.0])
def test_render_scale_respects_pixel_cap(settings, side_pt):
    scale = render_scale(side_pt, side_pt, settings)
    w, h = scale.size
    assert w * h <= settings.render_max_pixels
    assert w * h > 0.99 * settings.render_max_pixels  # the cap, not far below it


def test_invalid_page_size_is_corrupt(settings):
    with pytest.raises(CorruptDocument):
        render_scale(0.0, 842.0, settings)


# ------------------------------------------------------------------ PDF pages


@pytest.fixture(scope="module")
def invoice_page():
    settings = Settings(_env_file=None)
    with open_document(builders.invoice_pdf(), settings=settings) as doc:
        return render_page(doc, 1, settings)


def test_invoice_page_image(invoice_page, settings):
    page = invoice_page
    assert page.image.mode == "RGB"
    assert page.image.size == (896, 1344) and page.grid == (2, 3)
    assert (page.width_pt, page.height_pt) == pytest.approx(builders.A4)
    assert (page.dpi, page.dpi_y) == pytest.approx((72 * 896 / 595, 72 * 1344 / 842))
    pixels = np.asarray(page.image)
    assert pixels.min() < 50 and np.median(pixels) == 255  # black text on white paper
    assert page.timings_ms["render"] > 0


def test_tiling_a_grid_exact_page_only_cuts_it(invoice_page):
    """tile_image on a page rendered at its grid: the tiles are the image's own
    448 px squares (no grid resize), the thumbnail is the whole page resized."""
    image = invoice_page.image
    tiles = tile_image(image, max_tiles=12, image_size=S)
    assert tiles.shape == (7, S, S, 3)
    pixels = np.asarray(image)
    for i in range(6):
        row, col = divmod(i, 2)
        assert np.array_equal(tiles[i], pixels[row * S : (row + 1) * S, col * S : (col + 1) * S]), i
    assert np.array_equal(tiles[6], np.asarray(image.resize((S, S))))


def test_a_page_the_caller_does_not_draw_has_its_size_and_text_layer_verdict_only(invoice_page, settings):
    """``draw`` is asked once per PDF page with whether its text layer is usable; a page it
    declines is not drawn: ``image`` None and no words (the text engine reads the page
    itself), the same size, resolution and text-layer verdict as the drawn page."""
    asked: list[bool] = []
    with open_document(builders.invoice_pdf(), settings=settings) as doc:
        (page,) = render_pages(doc, [1], settings, draw=lambda has_text_layer: asked.append(has_text_layer) or False)
    assert asked == [True]
    assert page.image is None and page.image_size == invoice_page.image_size == invoice_page.image.size
    assert (page.dpi, page.dpi_y, page.grid) == (invoice_page.dpi, invoice_page.dpi_y, invoice_page.grid)
    assert (page.has_text_layer, page.text_layer_issue) == (invoice_page.has_text_layer, None) == (True, None)
    assert (page.text, page.words) == ("", []) and invoice_page.words


def test_pixmap_off_by_a_pixel_is_resized_to_the_grid(settings, monkeypatch):
    """Should MuPDF round a grid render's edge the other way, the image is resized
    (bicubic, as tiling would) to exactly the planned size."""
    real = render.render_scale

    def one_pixel_wider(width_pt, height_pt, s=None):
        scale = real(width_pt, height_pt, s)
        return dataclasses.replace(scale, width=scale.width + 1)

    with open_document(builders.invoice_pdf(), settings=settings) as doc:
        expected = render_page(doc, 1, settings).image
        monkeypatch.setattr(render, "render_scale", one_pixel_wider)
        page = render_page(doc, 1, settings)
    assert page.image.size == (897, 1344)
    assert np.array_equal(np.asarray(page.image), np.asarray(expected.resize((897, 1344), Image.Resampling.BICUBIC)))


def test_invoice_text_layer(invoice_page):
    page = invoice_page
    assert page.has_text_layer
    words = {w.text: w for w in page.words}
    for token in ("ACME", "INV-2026-0042", "2026-03-14", "Description", "476.00"):
        assert token in words, token
    number = words["INV-2026-0042"]
    assert 400 < number.x0 < number.x1 < builders.A4[0]
    assert 85 < number.y0 < number.y1 < 105  # drawn on the baseline y=100, 10 pt font
    # reading order: heading, then the table header, then its rows, then the total
    text = page.text
    order = [builders.INVOICE_VENDOR, "Description", "Cordless drill 18V", "Safety goggles", "Total EUR"]
    positions = [text.index(t) for t in order]
    assert positions == sorted(positions)
    # words come sorted top to bottom (a line may hold words a few points apart)
    bottoms = [w.y1 for w in page.words]
    assert all(b >= a - 5 for a, b in zip(bottoms, bottoms[1:]))


def _mixed_layout_pdf() -> bytes:
    """A page with words of one line on slightly different baselines and sizes,
    a wrapped paragraph, and two columns."""
    doc = pymupdf.open()
    page = doc.new_page(width=595, height=842)
    page.insert_text((50, 60), "Total", fontsize=14)
    page.insert_text((100, 62), "due", fontsize=9)  # 2 pt lower, smaller: the same line
    page.insert_text((130, 59), "now", fontsize=11)
    page.insert_textbox(pymupdf.Rect(50, 80, 250, 300), "wrapped paragraph text " * 20, fontsize=10)
    page.insert_textbox(pymupdf.Rect(320, 80, 545, 200), "right column words " * 12, fontsize=10)
    page.insert_text((320, 240), "Key:", fontsize=10)
    page.insert_text((420, 240), "value", fontsize=10)
    return doc.tobytes()


@pytest.mark.parametrize(
    "build",
    [builders.invoice_pdf, lambda: builders.multipage_text_pdf(1), _mixed_layout_pdf],
    ids=["invoice", "text", "mixed"],
)
def test_words_come_in_pymupdfs_sorted_order(build):
    """The words equal PyMuPDF's ``get_text("words", sort=True)``, tuple for tuple:
    top to bottom, a line (words within 3 pt) left to right, MuPDF's block/line/word numbers."""
    page = pymupdf.open(stream=build(), filetype="pdf")[0]
    expected = page.get_text("words", sort=True)
    assert sort_words(page.get_text("words")) == expected
    _, words = extract_text_layer(page)
    assert [(w.x0, w.y0, w.x1, w.y1, w.text, w.block, w.line, w.number) for w in words] == expected


def test_word_numbers_locate_the_word_in_its_block_and_line(invoice_page):
    by_line: dict[tuple[int, int], list] = {}
    for w in invoice_page.words:
        by_line.setdefault((w.block, w.line), []).append(w)
    lines = {" ".join(w.text for w in sorted(ws, key=lambda w: w.number)): ws for ws in by_line.values()}
    line = lines[f"Invoice no.: {builders.INVOICE_NUMBER}"]
    assert sorted(w.number for w in line) == [0, 1, 2]
    assert f"Invoice date: {builders.INVOICE_DATE}" in lines
    (block,) = {w.block for w in line}
    # the same block holds the three lines of the right-hand header, numbered 0, 1, 2
    assert sorted({w.line for w in invoice_page.words if w.block == block}) == [0, 1, 2]


def test_text_is_blocks_in_order_with_table_rows_on_one_line(invoice_page):
    text = invoice_page.text
    assert text.startswith(f"{builders.INVOICE_VENDOR}\n\nINVOICE\n\n")  # one paragraph per block
    # the lines of one block stay lines
    assert f"Invoice no.: {builders.INVOICE_NUMBER}\nInvoice date: {builders.INVOICE_DATE}\n" in text
    # cells side by side on a row are joined by tabs, each row its own line
    assert "\t".join(builders.INVOICE_HEADER) in text.splitlines()
    for row in builders.INVOICE_ROWS:
        assert "\t".join(row) in text.splitlines()
    assert text.endswith("IBAN DE89 3704 0044 0532 0130 00.")


def test_text_of_a_wrapped_paragraph_and_a_split_line():
    page = pymupdf.open(stream=_mixed_layout_pdf(), filetype="pdf")[0]
    text, _ = extract_text_layer(page)
    paragraphs = text.split("\n\n")
    (wrapped,) = [par for par in paragraphs if par.startswith("wrapped")]
    assert len(wrapped.splitlines()) > 5  # the wrapped lines are not glued into one row
    assert wrapped.split() == ("wrapped paragraph text " * 20).split()
    # runs side by side on one row (other baselines, sizes, a gap) are one line, tab-separated
    assert "Total\tdue\tnow" in paragraphs and "Key:\tvalue" in paragraphs
    # every word of the page is in the text, once per occurrence
    assert sorted(text.split()) == sorted(w[4] for w in page.get_text("words"))
    blocks = page.get_text("blocks", sort=True)
    assert layer_text(blocks, page.get_text("words")) == text


def test_invoice_table_is_found_by_pymupdf():
    """The builder's ruled table is what PyMuPDF's table finder sees, cell for cell."""
    page = pymupdf.open(stream=builders.invoice_pdf(), filetype="pdf")[0]
    tables = page.find_tables(use_layout=False).tables
    assert len(tables) == 1
    table = tables[0]
    xs, top, rh = builders.INVOICE_TABLE_X, builders.INVOICE_TABLE_TOP, builders.INVOICE_ROW_HEIGHT
    assert table.bbox == pytest.approx((xs[0], top, xs[-1], top + 4 * rh), abs=1)
    assert (table.row_count, table.col_count) == (4, 4)
    textpage = page.get_textpage()
    cells = [[pymupdf.table.extract_cells(textpage, c) for c in row.cells] for row in table.rows]
    assert cells == [builders.INVOICE_HEADER, *builders.INVOICE_ROWS]
    # the default (layout-gated) finder also finds it, starting with the same rows
    default = page.find_tables().tables
    assert len(default) == 1
    rows = [[pymupdf.table.extract_cells(textpage, c) for c in row.cells] for row in default[0].rows]
    assert rows[:4] == [builders.INVOICE_HEADER, *builders.INVOICE_ROWS]


def test_scanned_page_has_no_text_layer(settings):
    with open_document(builders.scanned_pdf(), settings=settings) as doc:
        page = render_page(doc, 1, settings)
    assert not page.has_text_layer
    assert page.words == [] and page.text.strip() == ""
    assert np.asarray(page.image).min() < 80  # the scan itself is there


def test_short_text_alone_on_a_page_is_a_text_layer(settings):
    """"Page 1 of 1" and nothing else: nothing more to read, so it is text, not a model's job
    (short text beside a scan is not: tests/test_text_routing.py)."""
    pdf = builders.multipage_text_pdf(1, lines_per_page=0)  # only "Page 1 of 1": 8 visible chars
    with open_document(pdf, settings=settings) as doc:
        page = render_page(doc, 1, settings)
    assert page.text.strip() == "Page 1 of 1"
    assert page.has_text_layer and page.text_layer_issue is None


def test_scan_page_records_why_its_layer_is_not_used(settings):
    with open_document(builders.scanned_pdf(), settings=settings) as doc:
        page = render_page(doc, 1, settings)
    assert not page.has_text_layer and page.text_layer_issue == "no_text_layer"


def test_render_pages_in_given_order(settings):
    fast = settings.model_copy(update={"max_tiles": 1})
    with open_document(builders.multipage_text_pdf(5, lines_per_page=1), settings=fast) as doc:
        pages = list(render_pages(doc, [4, 2, 5], fast))
    assert [p.number for p in pages] == [4, 2, 5]
    assert [p.text.splitlines()[0] for p in pages] == ["Page 4 of 5", "Page 2 of 5", "Page 5 of 5"]


def test_page_out_of_range(settings):
    with open_document(builders.multipage_text_pdf(2, lines_per_page=1), settings=settings) as doc:
        with pytest.raises(InvalidPageRange):
            render_page(doc, 3, settings)
        with pytest.raises(InvalidPageRange):
            render_page(doc, 0, settings)


def test_huge_page_renders_under_the_pixel_cap(settings):
    with open_document(builders.huge_page_pdf(), settings=settings) as doc:
        page = render_page(doc, 1, settings)
    w, h = page.image.size
    assert (page.width_pt, page.height_pt) == (14400, 14400)
    assert w * h <= settings.render_max_pixels
    assert w * h > 0.99 * settings.render_max_pixels
    assert page.dpi < settings.render_min_dpi  # the cap wins over the minimum dpi
    assert np.asarray(page.image).min() < 50  # the frame and the text were drawn


def test_user_unit_page_renders_under_the_pixel_cap(settings):
    small_cap = settings.model_copy(update={"render_max_pixels": 1_000_000})
    with open_document(builders.huge_page_pdf(user_unit=10), settings=small_cap) as doc:
        page = render_page(doc, 1, small_cap)
    assert page.width_pt == pytest.approx(144000)
    assert page.image.width * page.image.height <= 1_000_000


def test_page_that_cannot_load_is_corrupt(settings):
    with open_document(builders.page_tree_cycle_pdf(), settings=settings) as doc:
        assert doc.page_count == 1
        with pytest.raises(CorruptDocument, match="cycle in page tree") as info:
            render_page(doc, 1, settings)
    assert info.value.details["page"] == 1


# ------------------------------------------------------------------ images


def _red_corner(image: Image.Image) -> str:
    """Which corner of the image holds jpeg_photo's red mark."""
    arr = np.asarray(image).astype(int)
    h, w, _ = arr.shape
    corners = {
        "top-left": arr[: h // 8, : w // 8],
        "top-right": arr[: h // 8, -w // 8 :],
        "bottom-left": arr[-h // 8 :, : w // 8],
        "bottom-right": arr[-h // 8 :, -w // 8 :],
    }
    red = np.array(builders.PHOTO_MARK)
    return min(corners, key=lambda k: np.abs(corners[k].mean(axis=(0, 1)) - red).sum())


@pytest.mark.parametrize(
    ("orientation", "corner", "size"),
    [
        (None, "top-left", (640, 480)),
        (1, "top-left", (640, 480)),
        (2, "top-right", (640, 480)),
        (3, "bottom-right", (640, 480)),
        (4, "bottom-left", (640, 480)),
        (5, "top-left", (480, 640)),
        (6, "top-right", (480, 640)),
        (7, "bottom-right", (480, 640)),
        (8, "bottom-left", (480, 640)),
    ],
)
def test_jpeg_exif_orientation_is_honoured(settings, orientation, corner, size):
    data = builders.jpeg_photo(640, 480, orientation=orientation)
    with open_document(data, settings=settings) as doc:
        page = render_page(doc, 1, settings)
    assert page.image.mode == "RGB"
    assert page.image.size == size
    assert _red_corner(page.image) == corner
    # the same as Pillow's own reading of the tag
    reference = ImageOps.exif_transpose(Image.open(io.BytesIO(data))).convert("RGB")
    assert np.abs(np.asarray(page.image, dtype=int) - np.asarray(reference, dtype=int)).mean() < 1
    assert page.dpi is None and page.words == [] and not page.has_text_layer


def test_tiff_frames_render_as_pages(settings):
    n = 4
    with open_document(builders.tiff_multipage(n), settings=settings) as doc:
        pages = list(render_pages(doc, parse_page_range(None, doc.page_count), settings))
        again = render_page(doc, 3, settings)
    assert [p.number for p in pages] == [1, 2, 3, 4]
    arrays = [np.asarray(p.image) for p in pages]
    for a, b in itertools.combinations(arrays, 2):
        assert (a != b).any()  # each frame's label differs
    assert (np.asarray(again.image) == arrays[2]).all()  # rendering is repeatable, pages independent
    assert all(p.image.mode == "RGB" and p.image.size == (300, 420) for p in pages)


def test_tiff_pages_out_of_order_and_kept_apart(settings):
    with open_document(builders.tiff_multipage(3, sizes=[(100, 120), (200, 150), (90, 90)]), settings=settings) as doc:
        third, first = list(render_pages(doc, [3, 1], settings))
    assert (third.number, third.image.size) == (3, (90, 90))
    assert (first.number, first.image.size) == (1, (100, 120))


def test_transparent_png_is_flattened_onto_white(settings):
    with open_document(builders.png_image(200, 100, mode="RGBA"), settings=settings) as doc:
        image = render_page(doc, 1, settings).image
    assert image.mode == "RGB"
    assert image.getpixel((150, 75)) == (255, 255, 255)  # transparent -> white paper
    assert image.getpixel((20, 20)) == (0, 0, 0)  # the opaque black block


@pytest.mark.parametrize("mode", ["I;16", "1", "L"])
def test_other_png_modes_render_to_rgb(settings, mode):
    with open_document(builders.png_image(200, 100, mode=mode), settings=settings) as doc:
        image = render_page(doc, 1, settings).image
    assert image.mode == "RGB"
    assert image.getpixel((5, 5)) == (255, 255, 255)  # white margin stays white
    assert image.getpixel((11, 50))[0] < 60  # the black frame stays dark


def test_webp_renders(settings):
    with open_document(builders.webp_image(300, 200), settings=settings) as doc:
        page = render_page(doc, 1, settings)
    assert page.image.size == (300, 200) and page.image.getpixel((5, 5)) == (255, 255, 255)


@pytest.mark.parametrize(
    "build",
    [lambda: builders.jpeg_photo(2400, 1600, orientation=6), lambda: builders.png_image(1600, 1200)],
    ids=["jpeg", "png"],
)
def test_large_images_are_downscaled_to_the_cap(settings, build):
    cap = settings.model_copy(update={"render_max_pixels": 300_000})
    with open_document(build(), settings=cap) as doc:
        width, height = doc.image.size
        page = render_page(doc, 1, cap)
    w, h = page.image.size
    assert w * h <= 300_000
    assert w * h > 0.98 * 300_000
    assert max(w, h) / min(w, h) == pytest.approx(max(width, height) / min(width, height), rel=0.01)


def test_fit_pixels():
    assert fit_pixels(400, 300, 120_000) == (400, 300)
    w, h = fit_pixels(6000, 4000, 1_000_000)
    assert w * h <= 1_000_000 < (w + 1) * (h + 1)  # the largest that fits
    assert w / h == pytest.approx(1.5, rel=0.005)


def test_truncated_jpeg_is_corrupt_at_render(settings):
    data = builders.jpeg_photo(800, 600)
    with open_document(data[: len(data) // 2], settings=settings) as doc:
        with pytest.raises(CorruptDocument) as info:
            render_page(doc, 1, settings)
    assert info.value.details["page"] == 1
