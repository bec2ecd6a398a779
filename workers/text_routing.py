"""Whether a PDF page's text layer can be trusted in place of reading the page with a model.

:func:`text_layer_issue` looks at what is on the page, not only at how many
characters its text layer has, and names the first reason not to trust it:

``no_text_layer``          no extractable text at all;
``garbled_text``           mostly U+FFFD, control or private-use characters (no usable ToUnicode map);
``vector_text``            lines of glyph-shaped vector paths with no text under them (a title or
                           a page drawn as outlines);
``invisible_text_mismatch`` an invisible (OCR) text layer whose words lie where the page shows no ink;
``gibberish_text``         an invisible (OCR) layer whose words are mostly not words (a failed OCR
                           run, e.g. over handwriting); visible text is the author's own, code and
                           markup included, and is only judged for ``garbled_text``;
``partial_text_coverage``  a scan-like image whose ink the text layer mostly does not cover (an
                           image of a document with only a page number as text).

Short text on an otherwise empty page ("Hello, world!", "Page 1") is trusted:
nothing else on the page needs reading; fewer than ``min_chars`` characters
beside an image are ``partial_text_coverage``. Only pages with images or invisible text
are rendered, once, at a low resolution, for the ink checks.
"""

from __future__ import annotations

import re
import unicodedata
from typing import Any

import numpy as np
import pymupdf

from workers.engines.text_lines import unrotated

GARBAGE_MAX_FRACTION = 0.1
"""More than this share of U+FFFD/control/private-use characters: ``garbled_text``."""
GIBBERISH_MIN_WORDS = 12
GIBBERISH_MAX_FRACTION = 0.3
"""A text layer of at least GIBBERISH_MIN_WORDS words with more than this share of
implausible words is ``gibberish_text``."""
GLYPH_ROW_MIN = 5
"""Glyph-shaped vector paths in a row, with no text under them, that make ``vector_text``."""
INK_DPI = 36
INK_LEVEL = 160
"""A pixel of the low-resolution grey render darker than this is ink."""
OCR_LAYER_SHARE = 0.5
"""Invisible text that is at least this share of the page's text is an OCR layer and is
checked against the page (a little hidden text on a born-digital page is not)."""
SCAN_MIN_AREA = 0.25
"""Images covering at least this share of the page are checked for text they hold."""
SHORT_TEXT_IMAGE = 0.05
"""Fewer characters than ``min_chars`` beside images covering this share of the page: not trusted."""
COVERED_MIN = 0.5
"""Share of a scan-like image's ink the text layer must cover."""

_TOKEN_OK = re.compile(
    r"[([\"'“‘]*("
    r"[^\W\d_]+(['’\-][^\W\d_]+)*"  # words, with inner hyphens or apostrophes
    r"|[+\-−]?[$€£¥]?\d+([.,:/\-]\d+)*[%$€£¥]?"  # numbers, dates, times, amounts
    r"|[A-Za-z0-9]+([.:/\-_#@&?=%~]+[A-Za-z0-9]+)+/?"  # codes, ids, urls, e-mail
    r"|[0-9]+[a-zA-Z]{1,3}|[A-Z]+[0-9]+[A-Z0-9]*"  # 15mm, 3rd, A4, V2
    r"|[&§•·–—\-=+*/]"  # a lone symbol
    r")[)\]\"'”’.,;:!?]*"
)


def plausible(token: str) -> bool:
    """True for a token that reads as a word, number, code or lone symbol, or that holds one
    (markup and code: ``<mime-type``, ``offset="0"``)."""
    if not _TOKEN_OK.fullmatch(token):
        return any(re.search(r"[aeiouyäöüéèàáíóúâêîôû]", run.lower()) or sum(ch.isdigit() for ch in run) >= 2
                   for run in re.findall(r"[^\W_]{3,}", token))
    letters = re.sub(r"[^\w]", "", token)
    if letters.isalpha() and len(letters) >= 4 and letters.lower() == letters:
        return bool(re.search(r"[aeiouyäöüéèàáíóúâêîôû]", letters.lower()))
    return len(letters) > 3 or not re.search(r"[a-z][A-Z]", letters)  # "lI", "tH": noise; "arXiv", "iPhone": words


def garbled(text: str) -> bool:
    visible = [ch for ch in text if not ch.isspace()]
    bad = sum(1 for ch in visible if ch == "\ufffd" or unicodedata.category(ch) in ("Cc", "Co", "Cs", "Cn"))
    return bool(visible) and bad > GARBAGE_MAX_FRACTION * len(visible)


def gibberish(text: str) -> bool:
    tokens = text.split()
    if len(tokens) < GIBBERISH_MIN_WORDS:
        return False
    bad = sum(not plausible(t) for t in tokens)
    return bad > GIBBERISH_MAX_FRACTION * len(tokens)


def vector_text(page: Any, text_boxes: list[tuple[float, float, float, float]]) -> bool:
    """Rows of filled, glyph-sized outline paths with no text under them."""
    glyphs = []
    for path in page.get_cdrawings():
        x0, y0, x1, y1 = path["rect"]
        h, w = y1 - y0, x1 - x0
        if path.get("fill") is None or not (3 <= h <= 90) or not (0.5 <= w <= 1.6 * h) or len(path["items"]) < 4:
            continue
        if any(b[0] <= (x0 + x1) / 2 <= b[2] and b[1] <= (y0 + y1) / 2 <= b[3] for b in text_boxes):
            continue
        glyphs.append((y1, x0, x1, h))
    glyphs.sort()
    row: list[tuple] = []
    for g in glyphs:
        if row and abs(g[0] - row[-1][0]) <= 0.25 * max(g[3], row[-1][3]):
            row.append(g)
        else:
            row = [g]
        if len(row) >= GLYPH_ROW_MIN and len({round(r[2] - r[1]) for r in row}) >= 2:
            return True
    return False


def _ink(page: Any) -> tuple[np.ndarray, float]:
    pix = page.get_pixmap(dpi=INK_DPI, colorspace=pymupdf.csGRAY, alpha=False)
    grey = np.frombuffer(pix.samples, dtype=np.uint8).reshape(pix.height, pix.stride)[:, : pix.width]
    return grey < INK_LEVEL, pix.width / page.rect.width


def _mask(shape: tuple[int, int], boxes: list, scale: float, pad: float = 0.0) -> np.ndarray:
    mask = np.zeros(shape, dtype=bool)
    for x0, y0, x1, y1 in boxes:
        mask[max(0, int((y0 - pad) * scale)): int((y1 + pad) * scale) + 1,
             max(0, int((x0 - pad) * scale)): int((x1 + pad) * scale) + 1] = True
    return mask


def text_layer_issue(page: Any, min_chars: int = 20) -> str | None:
    """Why ``page``'s text layer should not be trusted, or None when it can be."""
    with unrotated(page):
        return _issue(page, min_chars)


def _issue(page: Any, min_chars: int) -> str | None:
    visible_text, invisible_text = [], []
    visible_boxes, invisible_boxes = [], []
    for span in page.get_texttrace():
        text = "".join(chr(c[0]) for c in span["chars"])
        if span["type"] == 3 or span["opacity"] == 0:
            invisible_text.append(text)
            invisible_boxes.append(span["bbox"])
        else:
            visible_text.append(text)
            visible_boxes.append(span["bbox"])
    text = " ".join(visible_text + invisible_text)
    if not text.strip():
        return "no_text_layer"
    if garbled(text):
        return "garbled_text"
    if vector_text(page, visible_boxes + invisible_boxes):
        return "vector_text"
    page_area = abs(page.rect)
    images = [i["bbox"] for i in page.get_image_info()]
    image_area = sum(abs(pymupdf.Rect(b) & page.rect) for b in images)
    if len("".join(text.split())) < min_chars and image_area >= SHORT_TEXT_IMAGE * page_area:
        return "partial_text_coverage"  # a page number on a scan
    ocr_layer = sum(map(len, invisible_text)) >= OCR_LAYER_SHARE * sum(map(len, visible_text + invisible_text))
    if ocr_layer or image_area >= SCAN_MIN_AREA * page_area:
        ink, scale = _ink(page)
        if ocr_layer:
            on_ink = [ink[_mask(ink.shape, [b], scale)].mean() > 0.02 for b in invisible_boxes]
            if sum(on_ink) < 0.5 * len(on_ink):
                return "invisible_text_mismatch"
        if ocr_layer and gibberish(" ".join(invisible_text)):
            return "gibberish_text"
        if image_area >= SCAN_MIN_AREA * page_area:
            in_images = _mask(ink.shape, images, scale)
            image_ink = ink & in_images
            if image_ink.sum() and in_images.sum() and 1 - ink[in_images].mean() >= 0.6:  # paper-like
                covered = (image_ink & _mask(ink.shape, visible_boxes + invisible_boxes, scale, 2.0)).sum()
                if covered < COVERED_MIN * image_ink.sum():
                    return "partial_text_coverage"
    return None
