"""What MuPDF's silent repair of a damaged PDF cost: which pages lost content.

MuPDF opens a truncated or damaged PDF by rebuilding its cross-reference table from the
objects it finds (``Document.is_repaired``). The page tree usually survives (it tends to
come first), so every page still "loads"; but the content streams of the pages past the
cut are gone, and the stream the cut went through ends early. Read as it is, such a file
gives pages with no text (reported as scans, ``needs_model``) and a page whose text ends
mid-sentence, and nothing says so.

For a repaired PDF, :func:`page_damage` tells per page:

* ``MISSING``: the page object or one of its content streams is gone from the file: the
  page is reported failed, ``corrupt_document`` (never as a scan);
* ``CUT``: a content stream is there but ends before its data does (a Flate stream that
  does not reach its end): the page is read and carries a ``repaired`` warning (if no
  usable text is left, it fails ``corrupt_document`` too);
* None: the page's content is whole.

The document carries a ``repaired`` warning listing the pages that lost content
(:func:`document_warning`).
"""

from __future__ import annotations

import zlib
from typing import Literal

import pymupdf

from docproc.jobs.content_budget import CONTENT_REF_RE, FLATE_FILTERS
from docproc.jobs.results import ResultWarning

MISSING = "missing"
CUT = "cut"
Damage = Literal["missing", "cut"]
REPAIRED = "repaired"

_CHUNK = 1 << 20


def _ends(raw: bytes) -> bool:
    """True when Flate data ``raw`` reaches its end-of-stream marker (output discarded)."""
    inflater = zlib.decompressobj()
    try:
        while raw and not inflater.eof:
            inflater.decompress(raw, _CHUNK)
            raw = inflater.unconsumed_tail
    except zlib.error:
        return False
    return inflater.eof


def _stream_damage(pdf: pymupdf.Document, xref: int) -> Damage | None:
    if not 0 < xref < pdf.xref_length():
        return MISSING
    try:
        if not pdf.xref_is_stream(xref):
            return MISSING
        if pdf.xref_get_key(xref, "Filter")[1] not in FLATE_FILTERS:
            return None  # no end marker to check
        return None if _ends(pdf.xref_stream_raw(xref) or b"") else CUT
    except Exception:  # noqa: BLE001 - "bad xref": the object is not in the repaired file
        return MISSING


def page_damage(pdf: pymupdf.Document, number: int) -> Damage | None:
    """How page ``number`` (1-based) of a repaired PDF came through (module docstring)."""
    try:
        kind, value = pdf.xref_get_key(pdf.page_xref(number - 1), "Contents")
    except Exception:  # noqa: BLE001 - the page object itself is gone
        return MISSING
    if kind not in ("xref", "array"):
        return None  # a page without content is blank by design
    worst: Damage | None = None
    for match in CONTENT_REF_RE.finditer(value):
        damage = _stream_damage(pdf, int(match.group(1)))
        if damage == MISSING:
            return MISSING
        worst = worst or damage
    return worst


MISSING_MESSAGE = "the page's content is missing from the damaged PDF (lost where the file was cut or damaged)"
CUT_MESSAGE = "the page's content is cut short in the damaged PDF before any usable text"


def page_warning(damage: Damage) -> ResultWarning:
    """The ``repaired`` warning of a page that lost (part of) its content."""
    if damage == MISSING:
        return ResultWarning(code=REPAIRED, message=MISSING_MESSAGE)
    return ResultWarning(code=REPAIRED, message="the page's content is cut short in the damaged PDF: what is "
                         "read from it is incomplete")


def document_warning(pdf: pymupdf.Document, numbers: list[int]) -> ResultWarning:
    """The document's ``repaired`` warning: which of ``numbers`` lost content."""
    touched = [n for n in numbers if page_damage(pdf, n) is not None]
    lost = f"; pages that lost content: {_ranges(touched)}" if touched else "; no page lost content"
    return ResultWarning(code=REPAIRED, pages=touched,
                         message=f"the PDF is damaged (truncated?) and was repaired when opened{lost}")


def _ranges(numbers: list[int]) -> str:
    """``[1, 2, 3, 7]`` -> ``"1-3, 7"``."""
    out: list[str] = []
    for n in numbers:
        if out and int(out[-1].split("-")[-1]) == n - 1:
            out[-1] = f"{out[-1].split('-')[0]}-{n}"
        else:
            out.append(str(n))
    return ", ".join(out)
