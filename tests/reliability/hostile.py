"""Hostile and broken documents, built cheaply in memory (no files checked in).

Each builder makes the smallest input that still carries the attack; the tests in
test_hostile_input.py say what docproc must answer to each.
"""

from __future__ import annotations

import io
import struct
import zlib

import builders
from builders import _pdf_from_objects
from PIL import Image

CATALOG = b"<< /Type /Catalog /Pages 2 0 R >>"
FONT = b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>"
TEXT = b"BT /F1 24 Tf 72 720 Td (Hello from a hostile document) Tj ET"
RESOURCES = b"/Resources << /Font << /F1 5 0 R >> >>"


def _stream(data: bytes, extra: bytes = b"") -> bytes:
    return b"<< /Length %d %s >>\nstream\n" % (len(data), extra) + data + b"\nendstream"


def _one_page(page_extra: bytes = b"", contents: bytes | None = None, catalog: bytes = CATALOG,
              more: list[bytes] | None = None) -> bytes:
    """Catalog 1, Pages 2, Page 3, contents 4, font 5, then ``more`` (6, 7, ...)."""
    page = (b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R " + RESOURCES + b" "
            + page_extra + b" >>")
    return _pdf_from_objects([catalog, b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>", page,
                              contents if contents is not None else _stream(TEXT), FONT, *(more or [])])


def many_pages_pdf(n: int = 100_000) -> bytes:
    """A valid PDF of ``n`` empty pages (~80 bytes each; 100,000 pages is 8 MB)."""
    kids = b" ".join(b"%d 0 R" % (i + 3) for i in range(n))
    pages = b"<< /Type /Pages /MediaBox [0 0 612 792] /Kids [" + kids + b"] /Count %d >>" % n
    return _pdf_from_objects([CATALOG, pages, *[b"<< /Type /Page /Parent 2 0 R >>"] * n])


def one_page_referenced_pdf(n: int = 100_000) -> bytes:
    """One page object listed ``n`` times in the page tree (a 600 KB "100,000-page" PDF)."""
    kids = b" ".join([b"3 0 R"] * n)
    pages = b"<< /Type /Pages /MediaBox [0 0 612 792] /Kids [" + kids + b"] /Count %d >>" % n
    return _pdf_from_objects([CATALOG, pages, b"<< /Type /Page /Parent 2 0 R >>"])


def page_count_lie_pdf(count: int = 100_000) -> bytes:
    """One page, but the page tree's /Count claims ``count``."""
    pages = b"<< /Type /Pages /MediaBox [0 0 612 792] /Kids [3 0 R] /Count %d >>" % count
    return _pdf_from_objects([CATALOG, pages, b"<< /Type /Page /Parent 2 0 R >>"])


def nested_arrays_pdf(depth: int = 100_000) -> bytes:
    """A page dictionary holding an array nested ``depth`` deep (parser stack exhaustion)."""
    return _one_page(b"/Bomb " + b"[" * depth + b"]" * depth)


def nested_dicts_pdf(depth: int = 50_000) -> bytes:
    return _one_page(b"/Bomb " + b"<< /A " * depth + b">> " * depth)


def _zeros_deflated(inflated_mb: int) -> bytes:
    """``inflated_mb`` MiB of zeros (PDF whitespace), Flate-compressed ~1000:1."""
    comp = zlib.compressobj(9)
    chunk = bytes(1 << 20)
    return b"".join(comp.compress(chunk) for _ in range(inflated_mb)) + comp.flush()


def _pages_sharing(content: bytes, pages: int) -> bytes:
    """``pages`` pages whose /Contents is the one stream object ``content``."""
    page = b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 3 0 R >>"
    kids = b" ".join(b"%d 0 R" % (4 + i) for i in range(pages))
    return _pdf_from_objects([CATALOG, b"<< /Type /Pages /Kids [" + kids + b"] /Count %d >>" % pages,
                              content, *[page] * pages])


def flate_bomb_pdf(inflated_mb: int = 256, pages: int = 1) -> bytes:
    """``pages`` pages sharing one content stream of ``inflated_mb`` MiB of zeros (PDF
    whitespace), FlateDecode-compressed ~1000:1."""
    return _pages_sharing(_stream(_zeros_deflated(inflated_mb), b"/Filter /FlateDecode"), pages)


def flate_chain_bomb_pdf(inflated_mb: int = 256, pages: int = 1) -> bytes:
    """:func:`flate_bomb_pdf` compressed a second time under ``/Filter [/FlateDecode
    /FlateDecode]``: a file of about 1 KiB."""
    twice = zlib.compress(_zeros_deflated(inflated_mb), 9)
    return _pages_sharing(_stream(twice, b"/Filter [/FlateDecode /FlateDecode]"), pages)


def form_calls_bomb_pdf(form_mb: int = 4, calls: int = 200) -> bytes:
    """One page calling one form XObject ``calls`` times; the form holds ``form_mb`` MiB of
    zeros (PDF whitespace), FlateDecode-compressed: MuPDF reads the form again at each call."""
    page = b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R " \
           b"/Resources << /XObject << /Fm0 5 0 R >> >> >>"
    form = _stream(_zeros_deflated(form_mb), b"/Type /XObject /Subtype /Form /BBox [0 0 10 10] /Filter /FlateDecode")
    return _pdf_from_objects([CATALOG, b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>", page,
                              _stream(zlib.compress(b"/Fm0 Do\n" * calls, 9), b"/Filter /FlateDecode"), form])


def object_stream_bomb_pdf(objects: int = 200_000) -> bytes:
    """A compressed object stream that declares ``objects`` objects (huge /N, tiny file)."""
    header = b" ".join(b"%d 0" % (i + 100) for i in range(objects))
    body = header + b" " + b"null " * objects
    packed = zlib.compress(body, 9)
    objstm = _stream(packed, b"/Type /ObjStm /N %d /First %d /Filter /FlateDecode" % (objects, len(header) + 1))
    return _one_page(more=[objstm])


MARKER_NAME = "docproc-launch-marker"


def javascript_pdf(marker: str) -> bytes:
    """OpenAction JavaScript, a page-open Launch action and a link to a shell command, each of
    which would create the file ``marker`` if anything ever executed it."""
    js = _stream(b"app.launchURL('file://" + marker.encode() + b"'); this.exportDataObject({cName: 'x', nLaunch: 2});")
    catalog = (b"<< /Type /Catalog /Pages 2 0 R /OpenAction << /S /JavaScript /JS 6 0 R >> "
               b"/Names << /JavaScript << /Names [(x) << /S /JavaScript /JS 6 0 R >>] >> >> >>")
    launch = b"<< /S /Launch /F (/usr/bin/touch) /Unix << /F (/usr/bin/touch) /P (" + marker.encode() + b") >> >>"
    page_extra = (b"/AA << /O " + launch + b" >> /Annots [<< /Type /Annot /Subtype /Link /Rect [0 0 612 792] "
                  b"/A " + launch + b" >>]")
    return _one_page(page_extra, catalog=catalog, more=[js])


def zip_entry(name: bytes, payload: bytes) -> bytes:
    """A one-file stored (uncompressed) ZIP archive."""
    crc = zlib.crc32(payload)
    local = struct.pack("<IHHHHHIIIHH", 0x04034B50, 20, 0, 0, 0, 0, crc, len(payload), len(payload), len(name), 0)
    central = struct.pack("<IHHHHHHIIIHHHHHII", 0x02014B50, 20, 20, 0, 0, 0, 0, crc, len(payload), len(payload),
                          len(name), 0, 0, 0, 0, 0, 0)
    cd_offset = len(local) + len(name) + len(payload)
    end = struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, 1, 1, len(central) + len(name), cd_offset, 0)
    return local + name + payload + central + name + end


def pdf_zip_polyglot() -> bytes:
    """A PDF followed by a ZIP archive: a PDF to PDF readers, a ZIP to unzip."""
    return builders.multipage_text_pdf(1) + zip_entry(b"payload.sh", b"#!/bin/sh\necho pwned\n")


def zip_pdf_polyglot() -> bytes:
    """A ZIP archive whose first entry (stored) is a PDF: "%PDF-" sits inside the first 1024 bytes."""
    return zip_entry(b"a.pdf", builders.multipage_text_pdf(1))


def jpeg_pdf_polyglot() -> bytes:
    """A JPEG with a whole PDF in a COM segment near its start, and the JPEG's data after."""
    jpeg = builders.jpeg_photo(64, 48)
    pdf = builders.multipage_text_pdf(1)[:60000]
    com = b"\xff\xfe" + struct.pack(">H", len(pdf) + 2) + pdf
    return jpeg[:2] + com + jpeg[2:]


def png_of_size(width: int, height: int) -> bytes:
    if width and height:
        buf = io.BytesIO()
        Image.new("L", (width, height), 255).save(buf, format="PNG")
        return buf.getvalue()
    return builders.bomb_png(width, height)  # Pillow will not write a 0-pixel image


def tiff_frames(n: int = 10_000) -> bytes:
    """A little-endian TIFF of ``n`` 1x1 frames: one strip of one byte each, IFDs chained."""
    out = bytearray(b"II*\x00" + struct.pack("<I", 8))
    entries = 8
    ifd_size = 2 + entries * 12 + 4
    for i in range(n):
        start = len(out)
        data_at = start + ifd_size
        nxt = 0 if i == n - 1 else data_at + 2  # the pixel byte, then a pad byte, then the next IFD
        tags = [(256, 3, 1, 1), (257, 3, 1, 1), (258, 3, 1, 8), (259, 3, 1, 1), (262, 3, 1, 1),
                (273, 4, 1, data_at), (278, 3, 1, 1), (279, 4, 1, 1)]
        out += struct.pack("<H", entries)
        for tag, kind, count, value in tags:
            out += struct.pack("<HHII", tag, kind, count, value)
        out += struct.pack("<I", nxt)
        out += b"\x80\x00"
    return bytes(out)


def tiff_ifd_loop() -> bytes:
    """A TIFF whose second IFD points back at the first (an endless frame chain)."""
    data = bytearray(tiff_frames(2))
    last_next = len(data) - 2 - 4
    data[last_next:last_next + 4] = struct.pack("<I", 8)
    return bytes(data)


# ---------------------------------------------------------------------------
# request bodies: JSON that Python's json module takes but docproc must refuse
# ---------------------------------------------------------------------------

# name -> (JSON text of a value, the refusal's reason)
HOSTILE_JSON_VALUES = {
    "an object nested 400 deep": ('{"a":' * 400 + "1" + "}" * 400, "nesting_too_deep"),
    "an integer of 5,000 digits": ("9" * 5000, "number_too_large"),
    "a lone surrogate": ('"\\ud800"', "lone_surrogate"),
    "a lone surrogate as a key": ('{"\\udc00": 1}', "lone_surrogate"),
    "NaN": ("NaN", "non_finite_number"),
    "Infinity": ("Infinity", "non_finite_number"),
    "-Infinity": ("-Infinity", "non_finite_number"),
    "1e999 (Infinity as a float)": ("1e999", "non_finite_number"),
}

# route -> a JSON body around one value (metadata where the route has it)
JSON_ROUTES = {
    "/v1/jobs": '{"source_uri": "s3://inbox/a.pdf", "metadata": {"x": %s}}',
    "/v1/batches": '{"source_uris": ["s3://inbox/a.pdf"], "metadata": {"x": %s}}',
    "/v1/reprocess": '{"selector": {"schema": "invoice"}, "dry_run": true, "model": %s}',
    "/v1/webhooks/endpoints/enable": '{"url": %s}',
}


def nested_array(depth: int) -> str:
    """``[[[...]]]`` ``depth`` deep: past Python's recursion limit at 1,000."""
    return "[" * depth + "]" * depth


def multipart_body(boundary: str, fields: dict[str, str], file: bytes | None = None) -> bytes:
    """A multipart/form-data body with ``fields`` and, given, one ``file`` part (a PDF)."""
    out = b""
    for name, value in fields.items():
        out += (f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n').encode()
    if file is not None:
        out += (f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="a.pdf"\r\n'
                f"Content-Type: application/pdf\r\n\r\n").encode() + file + b"\r\n"
    return out + f"--{boundary}--\r\n".encode()
