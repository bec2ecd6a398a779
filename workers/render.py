"""Render: turn the pages of an opened document into RGB images (+ the PDF text layer).

PDF pages are rendered by PyMuPDF straight at the InternVL tile grid the page
will be cut into (:func:`render_scale`): the grid the model card's
``dynamic_preprocess`` picks for the page rendered at ``render_max_dpi``, so
tiling only resizes the thumbnail. Image pages are decoded by Pillow (every TIFF
frame is a page), flattened onto white, turned upright by their EXIF orientation
and downscaled to ``render_max_pixels``. No page, however large it claims to be,
renders to more than ``render_max_pixels`` pixels.

A PDF page is drawn only when a model reads it: a caller that routes pages to an engine
(``draw``) leaves a page for the text engine undrawn: no pixels (``RenderedPage.image`` None,
its size known) and no words (the text engine reads the page itself), only whether its text
layer can be trusted. That is about half of the render's work on such a page.

Memory: a PDF page never needs more than its capped pixmap. A JPEG larger than
the cap is decoded at 1/2, 1/4 or 1/8 scale (``Image.draft``); other images are
decoded once at full size, which intake bounds by ``max_image_pixels``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import pymupdf
from PIL import Image, JpegImagePlugin

from docproc.base.errors import (
    CorruptDocument,
    DocprocError,
    ImageTooLarge,
    InvalidPageRange,
)
from docproc.base.settings import Settings, get_settings
from docproc.jobs.inputs import MediaType, OpenedDocument, read_image_header
from workers.pages import RenderedPage, Word
from workers.text_routing import text_layer_issue
from workers.tiling import choose_grid

Draw = Callable[[bool], bool]
"""``draw(has_text_layer)``: whether a PDF page, its text layer judged, is drawn (its pixels
and its text layer as words, for a model); an undrawn page is read by the text engine."""

RENDER_MARGIN = 1.1
"""When a page cannot be rendered straight at its tile grid, it is rendered with
one zoom this much finer than covering the grid needs, so tiling downsamples."""

WORD_LINE_TOLERANCE = 3.0
"""Words whose top or bottom edges are this close (points) are on one line when
the text layer's words are put in reading order (PyMuPDF's ``sort=True`` rule)."""

# ------------------------------------------------------------- render scale


def rendered_size(width_pt: float, height_pt: float, zoom: float, zoom_y: float | None = None) -> tuple[int, int]:
    """Pixel size of a ``width_pt`` x ``height_pt`` page rendered at ``zoom`` (``zoom_y``
    vertically, if given), rounded as MuPDF does."""
    matrix = pymupdf.Matrix(zoom, zoom if zoom_y is None else zoom_y)
    irect = (pymupdf.Rect(0, 0, width_pt, height_pt) * matrix).irect
    return irect.width, irect.height


def _max_zoom_for_pixels(width_pt: float, height_pt: float, max_pixels: int) -> float:
    # Largest z with (w*z + 2) * (h*z + 2) <= max_pixels: the +2 covers outward rounding.
    a = width_pt * height_pt
    b = 2.0 * (width_pt + height_pt)
    c = 4.0 - max_pixels
    return (-b + math.sqrt(b * b - 4.0 * a * c)) / (2.0 * a)


@dataclass(frozen=True, slots=True)
class RenderScale:
    """How to render one PDF page: MuPDF's zoom per axis (pixels per point; dpi =
    72 * zoom) and the pixel size that gives."""

    zoom_x: float
    zoom_y: float
    width: int
    height: int
    grid: tuple[int, int] | None
    """(cols, rows) when the page is rendered straight at its tile grid (width =
    cols * tile_size, height = rows * tile_size); None for a uniform zoom."""

    @property
    def size(self) -> tuple[int, int]:
        return self.width, self.height


def render_scale(width_pt: float, height_pt: float, settings: Settings | None = None) -> RenderScale:
    """How to render a ``width_pt`` x ``height_pt`` page for the tile budget.

    The rule:

    1. The grid (cols x rows tiles of ``tile_size`` px, at most ``max_tiles``) is
       the one :func:`workers.tiling.choose_grid` - the model card's rule - picks
       for the page rendered at ``render_max_dpi``: the grid a 300 dpi render +
       ``dynamic_preprocess`` would cut it into.
    2. The page is rendered straight at that grid: zoom ``cols*tile_size/width_pt``
       across and ``rows*tile_size/height_pt`` down, exactly the pixels tiling
       would resize to, so tiling resizes only the thumbnail. The two zooms differ
       by the small factor between the page's aspect ratio and the grid's: the
       same non-uniform stretch ``dynamic_preprocess`` gives every page. An image
       of exactly that size picks the same grid back, except on an area tie
       ((3, 3) vs (4, 4) with ``max_tiles`` >= 16), which is checked.
    3. Only when that is not allowed - a zoom outside [render_min_dpi,
       render_max_dpi] / 72, more than ``render_max_pixels`` pixels, or the tie -
       one uniform zoom is used: ``RENDER_MARGIN`` x the larger of the two grid
       zooms, clamped to the dpi range; if that image would pick another grid,
       ``render_max_dpi`` itself (the reference, so the same grid).
    4. Above all, a uniform zoom is clamped to the largest whose pixmap has at most
       ``render_max_pixels`` pixels (so a 14400 pt page stays within the cap,
       even below render_min_dpi; its grid is then the capped image's).

    Example: A4 (595 x 842 pt) with 12 tiles of 448 px -> a 2x3 grid ->
    896 x 1344 px, at 108.4 x 114.9 dpi.
    """
    settings = settings or get_settings()
    if not (width_pt > 0 and height_pt > 0 and math.isfinite(width_pt) and math.isfinite(height_pt)):
        raise CorruptDocument(f"the page has an invalid size {width_pt} x {height_pt} pt")
    size = settings.tile_size
    lo = settings.render_min_dpi / 72.0
    hi = settings.render_max_dpi / 72.0
    eps = 1e-9

    def grid_of(w: int, h: int) -> tuple[int, int]:
        return choose_grid(
            max(w, 1), max(h, 1), min_tiles=settings.min_tiles, max_tiles=settings.max_tiles, image_size=size
        )

    grid = grid_of(*rendered_size(width_pt, height_pt, hi))
    cols, rows = grid
    zoom_x, zoom_y = cols * size / width_pt, rows * size / height_pt
    if (
        cols * rows * size * size <= settings.render_max_pixels
        and lo - eps <= min(zoom_x, zoom_y)
        and max(zoom_x, zoom_y) <= hi + eps
        and grid_of(cols * size, rows * size) == grid
    ):
        return RenderScale(zoom_x, zoom_y, cols * size, rows * size, grid)

    cap = _max_zoom_for_pixels(width_pt, height_pt, settings.render_max_pixels)
    zoom = min(max(RENDER_MARGIN * max(zoom_x, zoom_y), lo), hi, cap)
    if grid_of(*rendered_size(width_pt, height_pt, zoom)) != grid:
        zoom = min(hi, cap)
    return RenderScale(zoom, zoom, *rendered_size(width_pt, height_pt, zoom), None)


# ------------------------------------------------------------- text layer


def sort_words(words: Sequence[tuple], tolerance: float = WORD_LINE_TOLERANCE) -> list[tuple]:
    """PyMuPDF word tuples in reading order, as ``get_text("words", sort=True)`` orders
    them: by bottom then left edge, then words whose top or bottom edge is within
    ``tolerance`` of the line so far form one line, read left to right.

    The same rule as PyMuPDF's, on plain tuples (PyMuPDF builds a Rect per word,
    which costs more than extracting the words).
    """
    if not words:
        return []
    ordered = sorted(words, key=lambda w: (w[3], w[0]))
    out: list[tuple] = []
    line = [ordered[0]]
    lx0, ly0, lx1, ly1 = ordered[0][:4]
    for w in ordered[1:]:
        x0, y0, x1, y1 = w[:4]
        if abs(y0 - ly0) <= tolerance or abs(y1 - ly1) <= tolerance:
            line.append(w)
            if x0 < x1 and y0 < y1:  # an empty word box does not grow the line
                if lx0 < lx1 and ly0 < ly1:
                    lx0, ly0, lx1, ly1 = min(lx0, x0), min(ly0, y0), max(lx1, x1), max(ly1, y1)
                else:
                    lx0, ly0, lx1, ly1 = x0, y0, x1, y1
        else:
            line.sort(key=lambda w: w[0])
            out.extend(line)
            line = [w]
            lx0, ly0, lx1, ly1 = x0, y0, x1, y1
    line.sort(key=lambda w: w[0])
    out.extend(line)
    return out


def layer_text(blocks: Sequence[tuple], words: Sequence[tuple]) -> str:
    """The page text from PyMuPDF ``blocks`` and ``words`` tuples of one text page.

    One paragraph per text block, in the order of ``blocks`` (PyMuPDF's
    ``sort=True``: by bottom, then left edge), separated by a blank line; within a
    block, MuPDF's lines with their words joined by a space, and lines that sit
    side by side on one row (the cells of a table row) joined by a tab.
    """
    lines: dict[int, dict[int, list[tuple]]] = {}
    for w in words:
        lines.setdefault(w[5], {}).setdefault(w[6], []).append(w)
    paragraphs = []
    for block in blocks:
        if block[6] != 0 or block[5] not in lines:  # an image block, or only whitespace
            continue
        rows: list[str] = []
        row_y0 = row_y1 = row_x1 = 0.0
        for _, line in sorted(lines[block[5]].items()):
            line.sort(key=lambda w: w[7])
            text = " ".join(w[4] for w in line)
            x0, x1 = line[0][0], max(w[2] for w in line)
            y0, y1 = min(w[1] for w in line), max(w[3] for w in line)
            overlap = min(y1, row_y1) - max(y0, row_y0)
            if rows and x0 >= row_x1 - 1.0 and overlap >= 0.5 * min(y1 - y0, row_y1 - row_y0):
                rows[-1] += "\t" + text
                row_y0, row_y1, row_x1 = min(y0, row_y0), max(y1, row_y1), x1
            else:
                rows.append(text)
                row_y0, row_y1, row_x1 = y0, y1, x1
        paragraphs.append("\n".join(rows))
    return "\n\n".join(paragraphs)


def extract_text_layer(page: pymupdf.Page) -> tuple[str, list[Word]]:
    """The page's text (:func:`layer_text`) and its words in reading order
    (:func:`sort_words`), from one MuPDF text page."""
    textpage = page.get_textpage()
    blocks = page.get_text("blocks", textpage=textpage, sort=True)
    raw = page.get_text("words", textpage=textpage)
    words = [Word(w[4], w[0], w[1], w[2], w[3], w[5], w[6], w[7]) for w in sort_words(raw)]
    return layer_text(blocks, raw), words


# ------------------------------------------------------------- rendering


def render_page(doc: OpenedDocument, number: int, settings: Settings | None = None) -> RenderedPage:
    """Render page ``number`` (1-based) of ``doc``.

    Raises InvalidPageRange for a number outside the document and
    CorruptDocument (``details["page"]``) when the page cannot be rendered.
    """
    return next(render_pages(doc, [number], settings))


def render_pages(
    doc: OpenedDocument, pages: list[int], settings: Settings | None = None, *, draw: Draw | None = None
) -> Iterator[RenderedPage]:
    """Render ``pages`` (1-based) in the order given, one at a time.

    A page that fails raises (CorruptDocument) and ends the iteration; a caller
    that wants to go on past a bad page calls :func:`render_page` per page.
    ``draw``: asked for each PDF page, once its text layer is judged, whether to draw it
    (pixels and words, :data:`Draw`); None: every page is drawn.
    """
    settings = settings or get_settings()
    for number in pages:
        if not 1 <= number <= doc.page_count:
            raise InvalidPageRange(
                f"page {number} does not exist; the document has {doc.page_count} pages",
                page=number,
                page_count=doc.page_count,
            )
    if doc.media_type is MediaType.PDF:
        if doc.pdf is None:
            raise ValueError("the document is closed")
        for number in pages:
            yield _render_pdf_page(doc.pdf, number, settings, draw)
        return
    # One header-only instance for the whole run: Pillow remembers the TIFF frame
    # offsets, so seeking between frames costs no re-walk; doc.image stays untouched.
    try:
        im = read_image_header(doc.data, doc.media_type)
    except Exception as exc:  # it opened at intake; only a changed doc.data gets here
        raise CorruptDocument(f"the image cannot be read: {exc}") from exc
    try:
        for number in pages:
            yield _render_image_page(im, number, settings)
    finally:
        im.close()


def _draw(page: pymupdf.Page, scale: RenderScale) -> Image.Image:
    """The page's pixels at ``scale``: one copy, straight from MuPDF's buffer into Pillow's."""
    pix = page.get_pixmap(matrix=pymupdf.Matrix(scale.zoom_x, scale.zoom_y), alpha=False, colorspace=pymupdf.csRGB)
    image = Image.frombytes("RGB", (pix.width, pix.height), pix.samples_mv, "raw", "RGB", pix.stride)
    del pix  # MuPDF's copy goes before a resize makes a third
    if image.size != scale.size:  # MuPDF rounded the edge the other way: the resize tiling would do
        image = image.resize(scale.size, Image.Resampling.BICUBIC)
    return image


def _render_pdf_page(pdf: pymupdf.Document, number: int, settings: Settings, draw: Draw | None = None) -> RenderedPage:
    start = time.perf_counter()
    try:
        page = pdf.load_page(number - 1)
        rect = page.rect
        scale = render_scale(rect.width, rect.height, settings)
        issue = text_layer_issue(page, settings.min_text_chars)
        drawn = draw is None or draw(issue is None)
        # the text layer as words, for a model's hint (the text engine reads the page itself)
        text, words = extract_text_layer(page) if drawn else ("", [])
        read = time.perf_counter()
        image = _draw(page, scale) if drawn else None
    except DocprocError as exc:
        exc.details.setdefault("page", number)
        raise
    except Exception as exc:
        raise CorruptDocument(f"page {number} cannot be rendered: {exc}", page=number) from exc
    done = time.perf_counter()
    return RenderedPage(
        number=number,
        image=image,
        undrawn_size=scale.size,
        width_pt=rect.width,
        height_pt=rect.height,
        dpi=72.0 * scale.zoom_x,
        dpi_y=72.0 * scale.zoom_y,
        grid=scale.grid,
        text=text,
        words=words,
        has_text_layer=issue is None,
        text_layer_issue=issue,
        timings_ms={"render": (done - read) * 1000.0, "text_layer": (read - start) * 1000.0},
    )


_EXIF_ORIENTATION = 0x0112
_TRANSPOSE_FOR_ORIENTATION = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}


def _exif_orientation(im: Image.Image) -> int | None:
    """The EXIF Orientation tag, or None; damaged metadata never fails a page."""
    try:
        return im.getexif().get(_EXIF_ORIENTATION)
    except Exception:
        return None


def fit_pixels(width: int, height: int, max_pixels: int) -> tuple[int, int]:
    """The largest size of the same aspect ratio with at most ``max_pixels`` pixels."""
    if width * height <= max_pixels:
        return width, height
    s = math.sqrt(max_pixels / (width * height))
    w, h = max(1, int(width * s)), max(1, int(height * s))
    while w * h > max_pixels:  # float rounding guard
        w, h = max(1, w - 1), max(1, h - 1)
    return w, h


def _resizable(im: Image.Image) -> Image.Image:
    """A decoded frame in a mode Pillow resizes well: L, LA, RGB or RGBA."""
    mode = im.mode
    if mode in ("L", "LA", "RGB", "RGBA"):
        return im
    if mode.startswith("I;16"):
        return Image.fromarray((np.asarray(im) >> 8).astype(np.uint8), "L")
    if mode in ("I", "F"):
        arr = np.asarray(im, dtype=np.float64)
        lo, hi = float(arr.min()), float(arr.max())
        scaled = (arr - lo) * (255.0 / (hi - lo)) if hi > lo else np.zeros_like(arr)
        return Image.fromarray(scaled.astype(np.uint8), "L")
    if mode == "1":
        return im.convert("L")
    if mode in ("P", "PA"):
        has_alpha = mode == "PA" or "transparency" in im.info
        return im.convert("RGBA" if has_alpha else "RGB")
    if mode in ("La", "RGBa"):  # premultiplied -> straight alpha
        return im.convert({"La": "LA", "RGBa": "RGBA"}[mode])
    if mode.endswith("A"):
        return im.convert("RGBA")
    return im.convert("RGB")  # CMYK, YCbCr, LAB, HSV, ...


def _flatten_rgb(im: Image.Image) -> Image.Image:
    """RGB, with any transparency composited onto white (as a viewer shows it)."""
    if im.mode in ("LA", "RGBA"):
        background = Image.new("RGB", im.size, (255, 255, 255))
        background.paste(im.convert("RGB"), mask=im.getchannel("A"))
        return background
    return im if im.mode == "RGB" else im.convert("RGB")


def _render_image_page(im: Image.Image, number: int, settings: Settings) -> RenderedPage:
    start = time.perf_counter()
    try:
        if im.tell() != number - 1:
            im.seek(number - 1)
        width, height = im.size
        target = fit_pixels(width, height, settings.render_max_pixels)
        if target != (width, height) and isinstance(im, JpegImagePlugin.JpegImageFile):
            im.draft(None, target)  # decode at 1/2, 1/4 or 1/8 scale, still >= target
        orientation = _exif_orientation(im)
        im.load()
        frame = _resizable(im)
        if frame.size != target:
            frame = frame.resize(target, Image.Resampling.LANCZOS, reducing_gap=3.0)
        image = _flatten_rgb(frame)
        if image is im:
            image = im.copy()  # the next seek would decode into im's buffer
        transpose = _TRANSPOSE_FOR_ORIENTATION.get(orientation)
        if transpose is not None:
            image = image.transpose(transpose)
    except DocprocError:
        raise
    except Image.DecompressionBombError as exc:
        raise ImageTooLarge(f"page {number}: {exc}", page=number) from exc
    except Exception as exc:
        raise CorruptDocument(f"page {number} cannot be decoded: {exc}", page=number) from exc
    return RenderedPage(
        number=number,
        image=image,
        timings_ms={"render": (time.perf_counter() - start) * 1000.0},
    )
