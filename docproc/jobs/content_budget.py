"""How much page content a PDF makes MuPDF read: the check against decompression bombs.

MuPDF interprets a page's content each time the page is read (the text layer at intake, the
render, the text engine). What it reads is every content stream of the page, decoded through
its filters, and every form XObject the content calls with ``Do``, once per call (MuPDF keeps
no parsed copy), forms calling forms in turn. A few KiB of PDF can make that gigabytes: one
stream under ``[/FlateDecode /FlateDecode]``, RunLength or LZW, or a form of a few MiB called
thousands of times. :func:`check_content_size` counts it before any page is read:

* each stream is decoded by MuPDF itself (``pdf_open_stream_number``: its filters, chains,
  predictors and damaged ends as it reads them for the page), in 1 MiB chunks, never held
  whole, and only up to just past the limit;
* a stream's ``Do`` calls are found in its decoded bytes (``/Name Do``), each resolved
  through the caller's resources (:meth:`pymupdf.Document.get_page_xobjects`); a form costs
  its own bytes plus its calls; a form that calls itself (MuPDF refuses the cycle) or nests
  deeper than :data:`MAX_FORM_DEPTH` adds nothing more; each stream, form or not, is decoded
  once per check however many pages read it;
* a stream shared by several pages counts once per page.

Most documents never get there: when every stream of the file has at most one FlateDecode
filter, the file holds no form XObject and no name spelled with ``#xx`` escapes (which could
hide either), no page can read more than :data:`DEFLATE_MAX_RATIO` times the file per content
reference, and within the limit the document passes without a stream read (microseconds).

Not counted: Type 3 glyph procedures, tiling patterns and annotation appearances (read per
use as forms are); the task time limits stop those.
"""

from __future__ import annotations

import re
from collections import Counter

import pymupdf

from docproc.base.errors import ContentTooLarge

CONTENT_REF_RE = re.compile(r"(\d+)\s+\d+\s+R")  # an indirect reference in a /Contents value
FLATE_FILTERS = ("/FlateDecode", "[/FlateDecode]", "/Fl", "[/Fl]")
DEFLATE_MAX_RATIO = 1032
"""No Flate stream inflates to more than this many times its size: Deflate's densest code
spends 2 bits on a copy of 258 bytes (RFC 1951)."""
MAX_FORM_DEPTH = 32
CHUNK = 1 << 20

# In the file's own bytes (stream dictionaries are never inside object streams): every
# /Filter, those that name one Flate filter directly, form XObjects, and names with a #xx
# escape (which could spell /Filter, a filter or /Form in a way the others do not see).
_FILTER_KEY_RE = re.compile(rb"/Filter(?![A-Za-z0-9])")
_ONE_FLATE_RE = re.compile(rb"/Filter\s*(?:/FlateDecode|/Fl|\[\s*(?:/FlateDecode|/Fl)\s*\])(?![A-Za-z0-9])")
_FORM_RE = re.compile(rb"/Subtype\s*/Form(?![A-Za-z0-9])")
_ESCAPED_NAME_RE = re.compile(rb"/[A-Za-z0-9]*#[0-9A-Fa-f]{2}")

_DELIMITERS = rb"\s/\[\]<>(){}%"
_DO_RE = re.compile(rb"/([^" + _DELIMITERS + rb"]+)\s*Do(?![^" + _DELIMITERS + rb"])")
_ESCAPE_RE = re.compile(rb"#([0-9A-Fa-f]{2})")
_CARRY = 256  # bytes kept from one chunk to the next, so a "/Name Do" cut in two is found


def only_single_flate(data: bytes) -> bool:
    """True when every stream of the PDF file ``data`` is plain or has the one filter
    FlateDecode (so none decodes to more than :data:`DEFLATE_MAX_RATIO` times its size) and
    the file has no form XObject (nothing a page's content can call again and again)."""
    return (len(_FILTER_KEY_RE.findall(data)) == len(_ONE_FLATE_RE.findall(data))
            and _FORM_RE.search(data) is None and _ESCAPED_NAME_RE.search(data) is None)


def read_stream(doc: pymupdf.Document, xref: int, limit: int, *, calls: bool = True,
                buffer: bytearray | None = None) -> tuple[int, Counter[str]]:
    """What stream ``xref`` decodes to (bytes, counted only up to just past ``limit``) and, when
    ``calls``, the ``Do`` calls in it by XObject name (read through ``buffer``, :data:`CHUNK`
    bytes, made here if not given). Not a stream, or damaged data: as far as it decodes."""
    from pymupdf import mupdf

    size, found = 0, Counter[str]()
    if calls and buffer is None:
        buffer = bytearray(CHUNK)
    tail = b""
    try:
        stream = mupdf.pdf_open_stream_number(mupdf.pdf_document_from_fz_document(doc.this), xref)
        while size <= limit:
            if not calls:
                read = mupdf.fz_skip(stream, CHUNK)
            else:
                read = mupdf.fz_read(stream, mupdf.python_mutable_buffer_data(buffer), CHUNK)
                text = tail + memoryview(buffer)[:read].tobytes()
                for match in _DO_RE.finditer(text):
                    if match.end() > len(tail):  # one wholly inside the tail was counted with the last chunk
                        found[_name(match.group(1))] += 1
                tail = text[-_CARRY:]
            if read == 0:
                break
            size += read
    except Exception:  # noqa: BLE001 - not a stream, or damaged data: counted as far as it decodes
        pass
    return size, found


def _name(raw: bytes) -> str:
    """A PDF name's characters, its #xx escapes resolved (as MuPDF reads it)."""
    return _ESCAPE_RE.sub(lambda m: bytes([int(m.group(1), 16)]), raw).decode("latin-1")


class _Streams:
    """The streams of one check, each decoded once (its bytes, and its calls when asked for),
    through one buffer: a stream shared by pages, or a form called on many pages, is read once."""

    def __init__(self, doc: pymupdf.Document, limit: int) -> None:
        self.doc = doc
        self.limit = limit
        self.buffer: bytearray | None = None
        self.known: dict[int, tuple[int, Counter[str] | None]] = {}  # xref -> (bytes, calls if scanned)

    def read(self, xref: int, calls: bool) -> tuple[int, Counter[str]]:
        size, found = self.known.get(xref, (0, None))
        if xref not in self.known or (calls and found is None):
            if calls and self.buffer is None:
                self.buffer = bytearray(CHUNK)
            size, found = read_stream(self.doc, xref, self.limit, calls=calls, buffer=self.buffer)
            self.known[xref] = size, found if calls else None
        return size, found or Counter()


class _PageCost:
    """What reading one page costs: its streams' bytes and its forms' bytes once per call."""

    def __init__(self, streams: _Streams, index: int) -> None:
        self.streams = streams
        self.limit = streams.limit
        self.names: dict[int, dict[str, int]] = {}  # caller (0: the page, else a form) -> its names' forms
        try:
            for xref, name, invoker, _ in streams.doc.get_page_xobjects(index):
                self.names.setdefault(invoker, {})[name] = xref
        except Exception:  # noqa: BLE001 - damaged resources: MuPDF will find no form to call either
            self.names.clear()
        self.forms: dict[tuple[int, int], int] = {}  # (form, the caller whose names it uses) -> its cost

    def stream(self, xref: int, names: int = 0, stack: tuple[int, ...] = ()) -> int:
        """The bytes MuPDF reads for stream ``xref`` whose ``Do`` names resolve in the names of
        ``names`` (0: the page's), forms included, capped just past the limit."""
        size, calls = self.streams.read(xref, calls=bool(self.names))
        resolve = self.names.get(names, {})
        for name, times in calls.items():
            form = resolve.get(name)
            if form is None or form in stack or len(stack) >= MAX_FORM_DEPTH:
                continue  # not a form (an image), a cycle (MuPDF refuses it), or too deep
            size += times * self.form(form, names, stack)
            if size > self.limit:
                break
        return min(size, self.limit + 1)

    def form(self, xref: int, caller: int, stack: tuple[int, ...]) -> int:
        """A form's cost; one without forms in its own resources uses its caller's names."""
        names = xref if xref in self.names else caller
        if (xref, names) not in self.forms:
            self.forms[xref, names] = self.stream(xref, names, (*stack, xref))
        return self.forms[xref, names]


def check_content_size(doc: pymupdf.Document, count: int, limit: int, *, data: bytes) -> None:
    """ContentTooLarge when reading the pages once each would make MuPDF read more than
    ``limit`` bytes of content in all (module docstring); ``data``: the file."""
    pages: list[tuple[int, list[int]]] = []
    for index in range(count):
        try:
            kind, value = doc.xref_get_key(doc.page_xref(index), "Contents")
        except Exception:  # noqa: BLE001 - a damaged page tree: the repair checks report it
            continue
        if kind in ("xref", "array"):
            pages.append((index, [int(match.group(1)) for match in CONTENT_REF_RE.finditer(value)]))
    references = sum(len(xrefs) for _, xrefs in pages)
    if references * DEFLATE_MAX_RATIO * len(data) <= limit and only_single_flate(data):
        return
    streams = _Streams(doc, limit)
    total = 0
    for index, xrefs in pages:
        page = _PageCost(streams, index)
        for xref in xrefs:
            total += page.stream(xref)
            if total > limit:
                raise ContentTooLarge(
                    f"reading the PDF's pages means decoding more than {limit} bytes of content "
                    f"(page {index + 1}); it looks like a decompression bomb",
                    limit=limit, page=index + 1,
                )
