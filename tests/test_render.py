"""Render on real files: page ranges, the render-scale rule, the PDF text layer,
image decoding (EXIF, alpha, 16-bit, TIFF frames) and the pixel cap."""

from __future__ import annotations

import io
import itertools

import numpy as np
import pymupdf
import pytest
from PIL import Image, ImageOps

import builders
from docproc.errors import CorruptDocument, InvalidPageRange
from docproc.settings import Settings
from workers.intake import open_document
from workers.render import (
    RENDER_MARGIN,
    fit_pixels,
    is_usable_text,
    parse_page_range,
    render_page,
    render_pages,
    render_scale,
    rendered_size,
)
from workers.tiling import choose_grid

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


def _grid_of(width_px, height_px, settings):
    return choose_grid(
        width_px, height_px, min_tiles=settings.min_tiles, max_tiles=settings.max_tiles, image_size=settings.tile_size
    )


@pytest.mark.parametrize(
    ("name", "size_pt", "grid"),
    [
        ("A4 portrait", builders.A4, (2, 3)),
        ("A4 landscape", builders.A4[::-1], (4, 3)),  # 1.415: 4/3 is nearer than 3/2
        ("Letter portrait", builders.LETTER, (3, 4)),
        ("Letter landscape", builders.LETTER[::-1], (4, 3)),
    ],
)
def test_render_scale_covers_the_tile_grid_just_enough(settings, name, size_pt, grid):
    w_pt, h_pt = size_pt
    zoom = render_scale(w_pt, h_pt, settings)
    w, h = rendered_size(w_pt, h_pt, zoom)
    assert _grid_of(w, h, settings) == grid
    cols, rows = grid
    s = settings.tile_size
    assert w >= cols * s and h >= rows * s  # tiling only downsamples
    # ... and not much finer than needed: the tighter side is within the margin
    assert min(w / (cols * s), h / (rows * s)) <= RENDER_MARGIN + 0.01
    assert settings.render_min_dpi <= 72 * zoom <= settings.render_max_dpi


def test_render_scale_a4_example_from_the_docstring(settings):
    zoom = render_scale(*builders.A4, settings)
    assert rendered_size(*builders.A4, zoom) == (1045, 1479)
    assert round(72 * zoom, 1) == 126.4


def test_tiny_page_renders_at_max_dpi(settings):
    zoom = render_scale(144, 72, settings)  # a 2 x 1 inch label
    assert zoom == pytest.approx(settings.render_max_dpi / 72)
    assert rendered_size(144, 72, zoom) == (600, 300)


def test_min_dpi_applies_when_the_budget_is_small(settings):
    one_tile = settings.model_copy(update={"max_tiles": 1, "render_min_dpi": 100.0})
    zoom = render_scale(*builders.A4, one_tile)  # one 448 px tile would need only ~58 dpi
    assert 72 * zoom == pytest.approx(100.0)


@pytest.mark.parametrize("side_pt", [14400.0, 144000.0])
def test_render_scale_respects_pixel_cap(settings, side_pt):
    zoom = render_scale(side_pt, side_pt, settings)
    w, h = rendered_size(side_pt, side_pt, zoom)
    assert w * h <= settings.render_max_pixels
    assert w * h > 0.99 * settings.render_max_pixels  # the cap, not far below it


def test_render_scale_rule_holds_over_many_page_sizes(settings):
    """For every size: never over the pixel cap; within the dpi range unless the
    cap forces less; and when no clamp applies, the rendered image covers the
    grid that tiling will choose for it."""
    sizes = [10, 50, 144, 300, 420, 595, 612, 792, 842, 1191, 1684, 2384, 5000, 14400]
    s = settings.tile_size
    covered = 0
    for w_pt, h_pt in itertools.product(sizes, repeat=2):
        zoom = render_scale(w_pt, h_pt, settings)
        w, h = rendered_size(w_pt, h_pt, zoom)
        assert w * h <= settings.render_max_pixels, (w_pt, h_pt)
        dpi = 72 * zoom
        assert dpi <= settings.render_max_dpi + 1e-9
        capped = (w + 3) * (h + 3) > settings.render_max_pixels
        assert dpi >= settings.render_min_dpi - 1e-9 or capped, (w_pt, h_pt)
        if settings.render_min_dpi + 1e-6 < dpi < settings.render_max_dpi - 1e-6 and not capped:
            cols, rows = _grid_of(w, h, settings)
            assert w >= cols * s and h >= rows * s, (w_pt, h_pt, w, h, cols, rows)
            covered += 1
    assert covered > 50


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
    zoom = render_scale(*builders.A4, settings)
    assert page.image.mode == "RGB"
    assert page.image.size == rendered_size(*builders.A4, zoom)
    assert (page.width_pt, page.height_pt) == pytest.approx(builders.A4)
    assert page.dpi == pytest.approx(72 * zoom)
    pixels = np.asarray(page.image)
    assert pixels.min() < 50 and np.median(pixels) == 255  # black text on white paper
    assert page.timings_ms["render"] > 0


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


def test_text_layer_needs_enough_characters(settings):
    pdf = builders.multipage_text_pdf(1, lines_per_page=0)  # only "Page 1 of 1": 8 visible chars
    with open_document(pdf, settings=settings) as doc:
        page = render_page(doc, 1, settings)
    assert page.text.strip() == "Page 1 of 1"
    assert not page.has_text_layer
    lenient = settings.model_copy(update={"min_text_chars": 8})
    with open_document(pdf, settings=lenient) as doc:
        assert render_page(doc, 1, lenient).has_text_layer


@pytest.mark.parametrize(
    ("text", "usable"),
    [
        ("Invoice INV-2026-0042 total 476.00 EUR", True),
        ("\ufffd" * 40, False),
        ("Invoice " + "\ufffd" * 30, False),
        ("Invoice number 42, total 476.00 \ufffd", True),  # one odd glyph is fine
        ("\ue000\ue001\ue002" * 10, False),  # private-use glyphs: no ToUnicode map
        ("short", False),
        ("   \n\n\t  " * 20, False),
    ],
)
def test_is_usable_text(text, usable):
    assert is_usable_text(text, 20) is usable


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
