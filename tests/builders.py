"""Real documents for tests, built in memory with PyMuPDF, Pillow and by hand.

Plain functions returning the bytes of a file; every one is a document a user
could really send (or a real bad one). Nothing here is mocked: the invoice has
a text layer and ruled table that PyMuPDF's own table finder reads, the scan is
only an image, the bomb's header really declares 10^10 pixels.
"""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pymupdf
from PIL import Image, ImageDraw

A4 = (595.0, 842.0)
LETTER = (612.0, 792.0)

INVOICE_VENDOR = "ACME Tools GmbH"
INVOICE_BUYER = "Globex Corporation"
INVOICE_NUMBER = "INV-2026-0042"
INVOICE_DATE = "2026-03-14"
INVOICE_DUE_DATE = "2026-04-13"
INVOICE_HEADER = ["Description", "Qty", "Unit price", "Amount"]
INVOICE_ROWS = [
    ["Cordless drill 18V", "2", "129.00", "258.00"],
    ["Drill bit set (25 pcs)", "5", "19.90", "99.50"],
    ["Safety goggles", "10", "4.25", "42.50"],
]
INVOICE_SUBTOTAL = "400.00"
INVOICE_TAX = "76.00"  # 19 % VAT
INVOICE_TOTAL = "476.00"

# Where the line-item table sits on the invoice page (PDF points, y down).
INVOICE_TABLE_X = (56.0, 300.0, 360.0, 450.0, 540.0)  # column rulings
INVOICE_TABLE_TOP = 300.0
INVOICE_ROW_HEIGHT = 22.0


def invoice_pdf() -> bytes:
    """A born-digital one-page A4 invoice with a ruled line-item table.

    Vendor, buyer, number and dates are text; the table (header + 3 rows) is
    drawn with full horizontal and vertical rulings so ``page.find_tables()``
    finds it cell for cell; subtotal, tax and total follow below it.
    """
    doc = pymupdf.open()
    page = doc.new_page(width=A4[0], height=A4[1])
    page.insert_text((56, 70), INVOICE_VENDOR, fontsize=18, fontname="hebo")
    # left-column lines share the right column's baselines, so reading order pairs them cleanly
    page.insert_text((56, 100), "Werkzeugstrasse 7, 70173 Stuttgart, Germany", fontsize=9)
    page.insert_text((56, 115), "VAT ID DE123456789", fontsize=9)
    page.insert_text((400, 70), "INVOICE", fontsize=20, fontname="hebo")
    page.insert_text((400, 100), f"Invoice no.: {INVOICE_NUMBER}", fontsize=10)
    page.insert_text((400, 115), f"Invoice date: {INVOICE_DATE}", fontsize=10)
    page.insert_text((400, 130), f"Due date: {INVOICE_DUE_DATE}", fontsize=10)
    page.insert_text((56, 170), "Bill to:", fontsize=10, fontname="hebo")
    page.insert_text((56, 185), INVOICE_BUYER, fontsize=10)
    page.insert_text((56, 199), "1 Globex Way, Springfield, USA", fontsize=10)

    xs = INVOICE_TABLE_X
    rows = [INVOICE_HEADER, *INVOICE_ROWS]
    ys = [INVOICE_TABLE_TOP + i * INVOICE_ROW_HEIGHT for i in range(len(rows) + 1)]
    for y in ys:
        page.draw_line((xs[0], y), (xs[-1], y), color=(0, 0, 0), width=0.8)
    for x in xs:
        page.draw_line((x, ys[0]), (x, ys[-1]), color=(0, 0, 0), width=0.8)
    for r, row in enumerate(rows):
        font = "hebo" if r == 0 else "helv"
        for c, cell in enumerate(row):
            page.insert_text((xs[c] + 4, ys[r] + 15), cell, fontsize=10, fontname=font)

    y = ys[-1] + 25
    for label, value in (("Subtotal", INVOICE_SUBTOTAL), ("VAT 19%", INVOICE_TAX), ("Total EUR", INVOICE_TOTAL)):
        page.insert_text((360, y), label, fontsize=10, fontname="hebo" if label.startswith("Total") else "helv")
        page.insert_text((454, y), value, fontsize=10, fontname="hebo" if label.startswith("Total") else "helv")
        y += 16
    page.insert_text((56, 760), "Payment within 30 days. IBAN DE89 3704 0044 0532 0130 00.", fontsize=9)
    return doc.tobytes(garbage=3, deflate=True)


def multipage_text_pdf(n: int, *, page_size: tuple[float, float] = A4, lines_per_page: int = 12) -> bytes:
    """``n`` born-digital pages; page i (1-based) starts with "Page i of n"."""
    doc = pymupdf.open()
    for i in range(1, n + 1):
        page = doc.new_page(width=page_size[0], height=page_size[1])
        page.insert_text((50, 60), f"Page {i} of {n}", fontsize=14)
        for k in range(lines_per_page):
            page.insert_text(
                (50, 90 + 16 * k),
                f"Line {k + 1} of page {i}: the quick brown fox jumps over the lazy dog.",
                fontsize=10,
            )
    return doc.tobytes(garbage=3, deflate=True)


def scanned_pdf(*, dpi: int = 100) -> bytes:
    """One A4 page that is only a raster image of the invoice: no text layer."""
    src = pymupdf.open(stream=invoice_pdf(), filetype="pdf")
    pix = src[0].get_pixmap(dpi=dpi, colorspace=pymupdf.csGRAY)
    doc = pymupdf.open()
    page = doc.new_page(width=A4[0], height=A4[1])
    page.insert_image(page.rect, stream=pix.tobytes("png"))
    return doc.tobytes(garbage=3, deflate=True)


def _labelled_page(width: int, height: int, label: str, color: str = "white") -> Image.Image:
    im = Image.new("RGB", (width, height), color)
    draw = ImageDraw.Draw(im)
    draw.rectangle((10, 10, width - 11, height - 11), outline="black", width=3)
    draw.text((30, 30), label, fill="black", font_size=max(12, height // 12))
    return im


def tiff_multipage(
    n: int,
    *,
    size: tuple[int, int] = (300, 420),
    sizes: list[tuple[int, int]] | None = None,
    compression: str = "tiff_lzw",
) -> bytes:
    """An ``n``-frame TIFF, as a scanner writes a multi-page document; frame i says "Page i".

    Every frame is ``size`` unless ``sizes`` gives one size per frame.
    """
    sizes = sizes or [size] * n
    frames = [_labelled_page(*sizes[i - 1], f"Page {i}") for i in range(1, n + 1)]
    buf = io.BytesIO()
    frames[0].save(buf, format="TIFF", save_all=True, append_images=frames[1:], compression=compression)
    return buf.getvalue()


# The top-left corner of jpeg_photo's stored pixels is red, the rest blue: after an
# EXIF rotation the red block moves, which tests can see.
PHOTO_MARK = (220, 30, 30)
PHOTO_BACKGROUND = (40, 60, 200)


def jpeg_photo(width: int = 640, height: int = 480, *, orientation: int | None = None, quality: int = 90) -> bytes:
    """A JPEG "phone photo": blue with a red block in the stored top-left corner.

    ``orientation`` (1..8) writes the EXIF Orientation tag (0x0112), as phones
    do instead of rotating the pixels.
    """
    im = Image.new("RGB", (width, height), PHOTO_BACKGROUND)
    ImageDraw.Draw(im).rectangle((0, 0, width // 4, height // 4), fill=PHOTO_MARK)
    buf = io.BytesIO()
    kwargs = {}
    if orientation is not None:
        exif = Image.Exif()
        exif[0x0112] = orientation
        kwargs["exif"] = exif.tobytes()
    im.save(buf, format="JPEG", quality=quality, **kwargs)
    return buf.getvalue()


def png_image(width: int = 400, height: int = 300, *, mode: str = "RGB") -> bytes:
    """A PNG page with a frame and a label (``mode`` e.g. RGB, RGBA, L, 1, I;16)."""
    im = _labelled_page(width, height, "PNG page")
    if mode == "RGBA":
        im = im.convert("RGBA")
        im.putalpha(Image.new("L", im.size, 0))  # fully transparent: must read as white
        ImageDraw.Draw(im).rectangle((0, 0, width // 2, height // 2), fill=(0, 0, 0, 255))
    elif mode == "I;16":  # a 16-bit scan: the full 0..65535 range
        im = Image.fromarray(np.asarray(im.convert("L")).astype(np.uint16) * 257)
    elif mode != "RGB":
        im = im.convert(mode)
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue()


def webp_image(width: int = 400, height: int = 300) -> bytes:
    """A lossless WEBP page."""
    buf = io.BytesIO()
    _labelled_page(width, height, "WEBP page").save(buf, format="WEBP", lossless=True)
    return buf.getvalue()


def encrypted_pdf(*, user_pw: str = "secret", owner_pw: str = "owner-secret") -> bytes:
    """A one-page AES-256 encrypted PDF. ``user_pw=""`` gives one anyone can open
    (only permissions are restricted)."""
    doc = pymupdf.open(stream=multipage_text_pdf(1), filetype="pdf")
    return doc.tobytes(encryption=pymupdf.PDF_ENCRYPT_AES_256, user_pw=user_pw, owner_pw=owner_pw)


def _pdf_from_objects(objects: list[bytes], root: int = 1) -> bytes:
    """Serialise numbered objects (1..n) with a correct classic xref table."""
    out = bytearray(b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n")
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % number + body + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n" % (len(objects) + 1)
    out += b"0000000000 65535 f \n"
    for off in offsets:
        out += b"%010d 00000 n \n" % off
    out += b"trailer\n<< /Size %d /Root %d 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objects) + 1, root, xref)
    return bytes(out)


def book_pdf(n: int = 48, lines_per_page: int = 40) -> bytes:
    """``n`` born-digital pages, each with one compressed content stream, objects in page
    order (as most writers lay a book chapter out): cutting the file at 90 % loses the
    last pages' content and cuts one page's stream short, as a truncated upload does."""
    doc = pymupdf.open(stream=multipage_text_pdf(n, lines_per_page=lines_per_page), filetype="pdf")
    return doc.tobytes(garbage=4, deflate=True, clean=True)


SURROGATE_CELLS = ("\U0001d465C head", "\ufffd x \ufffd")  # what the cleaned cells read (x: math italic)


def surrogate_table_pdf() -> bytes:
    """A born-digital page with a ruled 2x2 table whose font's ToUnicode map sends "A" to a
    lone high surrogate (D835) and "B" to a lone low one (DC65), as split math-italic
    glyphs do: PyMuPDF's table finder returns them as lone surrogates in Python strings
    ("AB" -> "\ud835\udc65", "A x B" -> "\ud835 x \udc65"), which no UTF-8 can encode."""
    doc = pymupdf.open()
    page = doc.new_page(width=400, height=300)
    for i in range(6):  # a usable text layer in another font
        page.insert_text((40, 170 + 16 * i), f"Body line {i + 1}: the quick brown fox jumps over the lazy dog.",
                         fontsize=10, fontname="tiro")
    for y in (40, 80, 120):
        page.draw_line((40, y), (360, y))
    for x in (40, 200, 360):
        page.draw_line((x, 40), (x, 120))
    for (x, y), text in zip(((50, 65), (210, 65), (50, 105), (210, 105)), ("ABC head", "Value", "A x B", "42")):
        page.insert_text((x, y), text, fontsize=11, fontname="helv")
    doc = pymupdf.open(stream=doc.tobytes(), filetype="pdf")
    helv = next(f[0] for f in doc.get_page_fonts(0) if f[3] == "Helvetica")
    cmap = doc.get_new_xref()
    doc.update_object(cmap, "<< >>")
    doc.update_stream(cmap, b"/CIDInit /ProcSet findresource begin 12 dict begin begincmap\n"
                      b"/CIDSystemInfo << /Registry (Adobe) /Ordering (UCS) /Supplement 0 >> def\n"
                      b"/CMapName /Adobe-Identity-UCS def /CMapType 2 def\n"
                      b"1 begincodespacerange <00> <FF> endcodespacerange\n"
                      b"2 beginbfchar <41> <D835> <42> <DC65> endbfchar\n"
                      b"endcmap CMapName currentdict /CMap defineresource pop end end")
    doc.xref_set_key(helv, "ToUnicode", f"{cmap} 0 R")
    return doc.tobytes()


def zero_page_pdf() -> bytes:
    """A syntactically valid PDF whose page tree is empty (/Count 0, no /Kids)."""
    return _pdf_from_objects([
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [] /Count 0 >>",
    ])


def truncated_pdf(keep: int = 300) -> bytes:
    """The invoice cut after ``keep`` bytes, as an interrupted upload leaves it.

    The default keeps the header and part of the first object only: nothing a
    repair can recover. Larger ``keep`` values may be repaired by MuPDF.
    """
    return invoice_pdf()[:keep]


def bomb_png(width: int = 100_000, height: int = 100_000, *, full: bool = False) -> bytes:
    """A grayscale PNG whose IHDR declares ``width`` x ``height`` pixels.

    By default the IDAT holds one row only (the file stays a few hundred bytes
    even for 10^10 pixels); ``full=True`` writes every row (all zeros, so it
    still compresses ~1000:1) for a file that would really decode to that size.
    """

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit gray, no interlace
    comp = zlib.compressobj(9)
    row = bytes(width + 1)  # filter byte 0 + zero pixels
    idat = bytearray()
    for _ in range(height if full else min(height, 1)):
        idat += comp.compress(row)
    idat += comp.flush()
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", bytes(idat)) + chunk(b"IEND", b"")


def huge_page_pdf(size_pt: float = 14400.0, *, user_unit: float | None = None) -> bytes:
    """One page of ``size_pt`` x ``size_pt`` points (14400 pt = 200 in, PDF's largest).

    ``user_unit`` writes /UserUnit on the page: MuPDF then scales the page by it
    (14400 pt at UserUnit 10 is a 2000-inch page).
    """
    doc = pymupdf.open()
    page = doc.new_page(width=size_pt, height=size_pt)
    page.draw_rect(pymupdf.Rect(100, 100, size_pt - 100, size_pt - 100), color=(0, 0, 0), width=20)
    page.insert_text((size_pt / 3, size_pt / 2), "A very large drawing sheet", fontsize=400)
    if user_unit is not None:
        doc.xref_set_key(page.xref, "UserUnit", repr(float(user_unit)))
    return doc.tobytes(garbage=3, deflate=True)


def page_tree_cycle_pdf() -> bytes:
    """A PDF whose page tree lists itself as its own kid: opens, counts 1 page,
    and the page cannot be loaded (MuPDF: "cycle in page tree")."""
    return _pdf_from_objects([
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [2 0 R] /Count 1 >>",
    ])


def lying_page_count_pdf() -> bytes:
    """A PDF whose page tree claims /Count 5 but holds one page."""
    return _pdf_from_objects([
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 5 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 595 842] >>",
    ])


def elf_bytes() -> bytes:
    """The 64-byte header of an x86-64 Linux executable, plus some padding."""
    ident = b"\x7fELF" + bytes([2, 1, 1, 0]) + bytes(8)  # 64-bit, little endian, version 1, SysV
    header = struct.pack(
        "<HHIQQQIHHHHHH",
        2,  # ET_EXEC
        0x3E,  # EM_X86_64
        1,  # version
        0x401000,  # entry
        64,  # program header offset
        0,  # section header offset
        0,  # flags
        64,  # header size
        56,  # program header entry size
        0,  # program header count
        64,  # section header entry size
        0,  # section header count
        0,  # section name index
    )
    return ident + header + bytes(192)
