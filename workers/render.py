"""Render: turn the pages of an opened document into RGB images (+ the PDF text layer).

PDF pages are rendered by PyMuPDF at the resolution :func:`render_scale`
chooses from the page size and the tile budget; image pages are decoded by
Pillow (every TIFF frame is a page), flattened onto white, turned upright by
their EXIF orientation and downscaled to ``render_max_pixels``. No page, however
large it claims to be, renders to more than ``render_max_pixels`` pixels.

Memory: a PDF page never needs more than its capped pixmap. A JPEG larger than
the cap is decoded at 1/2, 1/4 or 1/8 scale (``Image.draft``); other images are
decoded once at full size, which intake bounds by ``max_image_pixels``.
"""

from __future__ import annotations

import math
import re
import time
import unicodedata
from collections.abc import Iterator

import numpy as np
import pymupdf
from PIL import Image, JpegImagePlugin

from docproc.errors import CorruptDocument, DocprocError, ImageTooLarge, InvalidPageRange
from docproc.settings import Settings, get_settings
from workers.intake import MediaType, OpenedDocument, read_image_header
from workers.pages import RenderedPage, Word
from workers.tiling import choose_grid

RENDER_MARGIN = 1.1
"""Render this much finer than the tile grid strictly needs, so tiling always
downsamples (sharper than resampling at exactly 1:1 after rounding)."""

GARBAGE_MAX_FRACTION = 0.1
"""A text layer where more than this fraction of the visible characters are
U+FFFD, control or private-use characters (fonts without a usable ToUnicode
map) is not usable."""

# ---------------------------------------------------------------- page ranges

_PART = re.compile(r"^\s*(\d*)\s*(-?)\s*(\d*)\s*$")


def parse_page_range(spec: str | None, page_count: int) -> list[int]:
    """1-based page numbers selected by ``spec``, sorted, without duplicates.

    ``None``, ``""`` and ``"all"`` select every page. Otherwise a comma-separated
    list of ``N`` (one page), ``A-B`` (A to B), ``A-`` (A to the last page) and
    ``-B`` (the first page to B). Any page beyond ``page_count``, a zero, a
    descending range or anything else -> InvalidPageRange.
    """
    if spec is None or spec.strip().lower() in ("", "all"):
        return list(range(1, page_count + 1))
    pages: set[int] = set()
    for part in spec.split(","):
        m = _PART.match(part)
        if not m or not (m.group(1) or m.group(3)) or (m.group(1) and m.group(3) and not m.group(2)):
            raise InvalidPageRange(
                f"invalid page range {spec!r}: {part.strip()!r} is not N, A-B, A- or -B", spec=spec
            )
        first_s, dash, last_s = m.groups()
        first = int(first_s) if first_s else 1
        last = int(last_s) if last_s else (page_count if dash else first)
        if first < 1 or last < 1:
            raise InvalidPageRange(f"invalid page range {spec!r}: pages are numbered from 1", spec=spec)
        if max(first, last) > page_count:
            raise InvalidPageRange(
                f"invalid page range {spec!r}: page {max(first, last)} is beyond the "
                f"document's {page_count} page{'s' if page_count != 1 else ''}",
                spec=spec,
                page_count=page_count,
            )
        if first > last:
            raise InvalidPageRange(f"invalid page range {spec!r}: {first}-{last} is descending", spec=spec)
        pages.update(range(first, last + 1))
    return sorted(pages)


# ------------------------------------------------------------- render scale


def rendered_size(width_pt: float, height_pt: float, zoom: float) -> tuple[int, int]:
    """Pixel size of a ``width_pt`` x ``height_pt`` page rendered at ``zoom``, rounded as MuPDF does."""
    irect = (pymupdf.Rect(0, 0, width_pt, height_pt) * pymupdf.Matrix(zoom, zoom)).irect
    return irect.width, irect.height


def _max_zoom_for_pixels(width_pt: float, height_pt: float, max_pixels: int) -> float:
    # Largest z with (w*z + 2) * (h*z + 2) <= max_pixels: the +2 covers outward rounding.
    a = width_pt * height_pt
    b = 2.0 * (width_pt + height_pt)
    c = 4.0 - max_pixels
    return (-b + math.sqrt(b * b - 4.0 * a * c)) / (2.0 * a)


def render_scale(width_pt: float, height_pt: float, settings: Settings | None = None) -> float:
    """PyMuPDF zoom (pixels per point; dpi = 72 * zoom) for a page of this size.

    The rule:

    1. The tile grid is the one :func:`workers.tiling.choose_grid` picks for the
       page (cols x rows tiles of ``tile_size`` px, at most ``max_tiles``),
       judged at ``render_max_dpi`` (or at the pixel cap, if that is lower).
    2. The zoom is the smallest at which the page covers that grid in both
       directions (cols*tile_size x rows*tile_size px), times ``RENDER_MARGIN``,
       so tiling only ever downsamples. (If the page rendered at that zoom
       would pick another grid, the zoom is recomputed for that grid.)
    3. It is clamped to [render_min_dpi, render_max_dpi] / 72,
    4. and then, above all, to the largest zoom whose pixmap has at most
       ``render_max_pixels`` pixels (so a 14400 pt page stays within the cap,
       even below render_min_dpi).

    Example: A4 (595 x 842 pt) with 12 tiles of 448 px -> a 2x3 grid
    (896 x 1344 px) -> zoom 1.1 * 1344/842 = 1.756 (126 dpi), 1045 x 1479 px.
    """
    settings = settings or get_settings()
    if not (width_pt > 0 and height_pt > 0 and math.isfinite(width_pt) and math.isfinite(height_pt)):
        raise CorruptDocument(f"the page has an invalid size {width_pt} x {height_pt} pt")
    size = settings.tile_size
    lo = settings.render_min_dpi / 72.0
    hi = settings.render_max_dpi / 72.0
    cap = _max_zoom_for_pixels(width_pt, height_pt, settings.render_max_pixels)

    def grid_at(zoom: float) -> tuple[int, int]:
        w, h = rendered_size(width_pt, height_pt, zoom)
        return choose_grid(
            max(w, 1), max(h, 1), min_tiles=settings.min_tiles, max_tiles=settings.max_tiles, image_size=size
        )

    grid = grid_at(min(hi, cap))
    zoom = hi
    for _ in range(3):  # converges at once except on grid ties
        cols, rows = grid
        need = RENDER_MARGIN * max(cols * size / width_pt, rows * size / height_pt)
        zoom = min(max(need, lo), hi, cap)
        actual = grid_at(zoom)
        if actual == grid:
            break
        grid = actual
    return zoom


# ------------------------------------------------------------- text layer


def is_usable_text(text: str, min_chars: int) -> bool:
    """True when ``text`` has at least ``min_chars`` visible characters and is
    not mostly garbage (see GARBAGE_MAX_FRACTION)."""
    visible = [ch for ch in text if not ch.isspace()]
    if len(visible) < min_chars:
        return False
    bad = sum(1 for ch in visible if ch == "\ufffd" or unicodedata.category(ch) in ("Cc", "Co", "Cs", "Cn"))
    return bad <= GARBAGE_MAX_FRACTION * len(visible)


# ------------------------------------------------------------- rendering


def render_page(doc: OpenedDocument, number: int, settings: Settings | None = None) -> RenderedPage:
    """Render page ``number`` (1-based) of ``doc``.

    Raises InvalidPageRange for a number outside the document and
    CorruptDocument (``details["page"]``) when the page cannot be rendered.
    """
    return next(render_pages(doc, [number], settings))


def render_pages(
    doc: OpenedDocument, pages: list[int], settings: Settings | None = None
) -> Iterator[RenderedPage]:
    """Render ``pages`` (1-based) in the order given, one at a time.

    A page that fails raises (CorruptDocument) and ends the iteration; a caller
    that wants to go on past a bad page calls :func:`render_page` per page.
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
            yield _render_pdf_page(doc.pdf, number, settings)
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


def _render_pdf_page(pdf: pymupdf.Document, number: int, settings: Settings) -> RenderedPage:
    start = time.perf_counter()
    try:
        page = pdf.load_page(number - 1)
        rect = page.rect
        zoom = render_scale(rect.width, rect.height, settings)
        pix = page.get_pixmap(matrix=pymupdf.Matrix(zoom, zoom), alpha=False, colorspace=pymupdf.csRGB)
        # One copy, straight from MuPDF's buffer into Pillow's (RGB rows -> Pillow's 4-byte pixels).
        image = Image.frombytes("RGB", (pix.width, pix.height), pix.samples_mv, "raw", "RGB", pix.stride)
        del pix
        rendered = time.perf_counter()
        raw_words = page.get_text("words", sort=True)
        text = page.get_text("text", sort=True)
    except DocprocError as exc:
        exc.details.setdefault("page", number)
        raise
    except Exception as exc:
        raise CorruptDocument(f"page {number} cannot be rendered: {exc}", page=number) from exc
    done = time.perf_counter()
    words = [Word(w[4], w[0], w[1], w[2], w[3], w[5], w[6], w[7]) for w in raw_words]
    return RenderedPage(
        number=number,
        image=image,
        width_pt=rect.width,
        height_pt=rect.height,
        dpi=72.0 * zoom,
        text=text,
        words=words,
        has_text_layer=is_usable_text(text, settings.min_text_chars),
        timings_ms={"render": (rendered - start) * 1000.0, "text_layer": (done - rendered) * 1000.0},
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
