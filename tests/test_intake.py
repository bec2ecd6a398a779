"""Intake on real files: the right type, the right page count, and a typed error
for every kind of bad input."""

from __future__ import annotations

import hashlib
import json
import random
import subprocess
import sys
import textwrap
import time
import zlib
from pathlib import Path

import builders
import pymupdf
import pytest
from PIL import Image

from docproc.base.errors import (
    CorruptDocument,
    DocprocError,
    EmptyDocument,
    EncryptedDocument,
    FileTooLarge,
    ImageTooLarge,
    NoPages,
    TooManyPages,
    UnsupportedType,
)
from docproc.jobs.inputs import MediaType, open_document, sniff_media_type
from docproc.jobs.requests import parse_page_range
from workers.render import render_pages

REPO = Path(__file__).resolve().parent.parent

# ------------------------------------------------------------------ sniffing


@pytest.mark.parametrize(
    ("build", "expected"),
    [
        (builders.invoice_pdf, MediaType.PDF),
        (lambda: builders.png_image(), MediaType.PNG),
        (lambda: builders.jpeg_photo(), MediaType.JPEG),
        (lambda: builders.tiff_multipage(2), MediaType.TIFF),
        (lambda: builders.webp_image(), MediaType.WEBP),
    ],
)
def test_sniff_recognises_supported_types(build, expected):
    assert sniff_media_type(build()) is expected


def test_pdf_magic_accepted_within_first_1024_bytes_only():
    pdf = builders.invoice_pdf()
    assert sniff_media_type(b"\r\n" * 500 + pdf) is MediaType.PDF
    with pytest.raises(UnsupportedType):
        sniff_media_type(b" " * 1100 + pdf)


def test_pdf_after_leading_junk_opens():
    with open_document(b"junk from a mail gateway\n" * 20 + builders.invoice_pdf()) as doc:
        assert doc.media_type is MediaType.PDF and doc.page_count == 1


def test_elf_named_invoice_pdf_is_unsupported(settings):
    with pytest.raises(UnsupportedType) as info:
        open_document(builders.elf_bytes(), filename="invoice.pdf", settings=settings)
    err = info.value
    assert err.code == "unsupported_type"
    assert err.http_status == 415
    assert "ELF executable" in err.message
    assert err.details["detected"] == "ELF executable"


@pytest.mark.parametrize(
    ("data", "named"),
    [
        (b"PK\x03\x04\x14\x00\x06\x00" + bytes(100), "ZIP archive"),
        (b"GIF89a\x01\x00\x01\x00" + bytes(20), "GIF image"),
        (b"Dear supplier,\nplease find attached our invoice.\n", "plain text"),
        (b"<!DOCTYPE html><html><body>invoice</body></html>", "HTML document"),
        (b"\x00\x00\x00\x18ftypheic" + bytes(40), "HEIC"),
        (bytes(range(256)) * 4, "unknown binary data"),
    ],
)
def test_unsupported_types_are_named(data, named):
    with pytest.raises(UnsupportedType, match=named):
        sniff_media_type(data)


def test_empty_input(settings):
    with pytest.raises(EmptyDocument):
        sniff_media_type(b"")
    with pytest.raises(EmptyDocument) as info:
        open_document(b"", settings=settings)
    assert info.value.code == "empty_document" and info.value.http_status == 400


def test_file_too_large_is_checked_first(settings):
    pdf = builders.invoice_pdf()
    tight = settings.model_copy(update={"max_file_bytes": len(pdf) - 1})
    with pytest.raises(FileTooLarge) as info:
        open_document(pdf, settings=tight)
    assert info.value.details == {"size_bytes": len(pdf), "limit": len(pdf) - 1}
    # size is checked before the type: an oversized executable is "too large"
    with pytest.raises(FileTooLarge):
        open_document(builders.elf_bytes(), settings=settings.model_copy(update={"max_file_bytes": 10}))
    with open_document(pdf, settings=settings.model_copy(update={"max_file_bytes": len(pdf)})) as doc:
        assert doc.size_bytes == len(pdf)


# ------------------------------------------------------------------ PDFs


def test_opened_pdf_records_identity_and_closes(settings):
    pdf = builders.multipage_text_pdf(3)
    doc = open_document(pdf, filename="report.pdf", settings=settings)
    with doc:
        assert doc.media_type is MediaType.PDF
        assert doc.page_count == 3
        assert doc.sha256 == hashlib.sha256(pdf).hexdigest()
        assert doc.size_bytes == len(pdf)
        assert doc.filename == "report.pdf"
        assert doc.image is None
        handle = doc.pdf
        assert handle is not None and not handle.is_closed
    assert doc.pdf is None and handle.is_closed


def test_truncated_pdf_is_corrupt(settings):
    with pytest.raises(CorruptDocument) as info:
        open_document(builders.truncated_pdf(), settings=settings)
    assert info.value.code == "corrupt_document"


def test_every_truncation_either_works_or_is_corrupt(settings):
    """Cut a 3-page PDF at many points: each cut either opens and renders every
    page MuPDF recovers, or is a CorruptDocument; nothing else escapes."""
    pdf = builders.multipage_text_pdf(3, lines_per_page=4)
    fast = settings.model_copy(update={"max_tiles": 1, "render_min_dpi": 10.0, "render_max_dpi": 20.0})
    outcomes = {"rendered": 0, "corrupt": 0}
    for cut in range(16, len(pdf), max(1, len(pdf) // 60)):
        try:
            with open_document(pdf[:cut], settings=fast) as doc:
                pages = list(render_pages(doc, parse_page_range(None, doc.page_count), fast))
                assert [p.number for p in pages] == list(range(1, doc.page_count + 1))
                assert all(p.image.width > 0 for p in pages)
            outcomes["rendered"] += 1
        except CorruptDocument:
            outcomes["corrupt"] += 1
    assert outcomes["rendered"] > 0 and outcomes["corrupt"] > 0, outcomes


def test_lying_page_count_is_corrupt(settings):
    with pytest.raises(CorruptDocument, match="page tree"):
        open_document(builders.lying_page_count_pdf(), settings=settings)


def test_encrypted_pdf_is_refused(settings):
    with pytest.raises(EncryptedDocument) as info:
        open_document(builders.encrypted_pdf(), settings=settings)
    assert info.value.code == "encrypted_document"


def test_pdf_encrypted_with_empty_user_password_is_accepted(settings):
    data = builders.encrypted_pdf(user_pw="")
    assert b"/Encrypt" in data  # really encrypted; MuPDF opens it with the empty password
    with open_document(data, settings=settings) as doc:
        (page,) = render_pages(doc, [1], settings)
    assert page.text.startswith("Page 1 of 1")


def test_zero_page_pdf_has_no_pages(settings):
    data = builders.zero_page_pdf()
    assert pymupdf.open(stream=data, filetype="pdf").is_repaired is False  # really a valid file
    with pytest.raises(NoPages) as info:
        open_document(data, settings=settings)
    assert info.value.code == "no_pages"


def test_too_many_pages(settings):
    pdf = builders.multipage_text_pdf(6, lines_per_page=1)
    with pytest.raises(TooManyPages) as info:
        open_document(pdf, settings=settings.model_copy(update={"max_pages": 5}))
    assert info.value.details == {"page_count": 6, "limit": 5}
    with open_document(pdf, settings=settings.model_copy(update={"max_pages": 6})) as doc:
        assert doc.page_count == 6


# ------------------------------------------------------------------ images


@pytest.mark.parametrize("frames", [1, 3, 7])
def test_tiff_frames_are_pages(settings, frames):
    with open_document(builders.tiff_multipage(frames), settings=settings) as doc:
        assert doc.media_type is MediaType.TIFF
        assert doc.page_count == frames
        assert doc.image is not None and doc.image.tell() == 0


def test_tiff_with_too_many_frames(settings):
    data = builders.tiff_multipage(6, size=(60, 80))
    with pytest.raises(TooManyPages, match="more than 5"):
        open_document(data, settings=settings.model_copy(update={"max_pages": 5}))
    with open_document(data, settings=settings.model_copy(update={"max_pages": 6})) as doc:
        assert doc.page_count == 6


def test_tiff_frame_over_the_pixel_limit(settings):
    data = builders.tiff_multipage(3, sizes=[(100, 100), (100, 100), (400, 300)])
    with pytest.raises(ImageTooLarge, match="frame 3"):
        open_document(data, settings=settings.model_copy(update={"max_image_pixels": 50_000}))


@pytest.mark.parametrize(
    ("build", "media_type", "size"),
    [
        (lambda: builders.png_image(320, 200), MediaType.PNG, (320, 200)),
        (lambda: builders.jpeg_photo(640, 480), MediaType.JPEG, (640, 480)),
        (lambda: builders.webp_image(300, 250), MediaType.WEBP, (300, 250)),
    ],
)
def test_single_images_are_one_page(settings, build, media_type, size):
    with open_document(build(), settings=settings) as doc:
        assert doc.media_type is media_type
        assert doc.page_count == 1
        assert doc.image.size == size


def test_intake_reads_image_headers_only(settings):
    """A JPEG whose scan data is cut off passes intake: its pixels were never decoded."""
    data = builders.jpeg_photo(800, 600)
    with open_document(data[: len(data) // 2], settings=settings) as doc:
        assert doc.page_count == 1 and doc.image.size == (800, 600)


def test_bomb_png_refused_before_decoding(settings):
    data = builders.bomb_png()  # declares 100_000 x 100_000 = 10^10 pixels
    assert len(data) < 1000
    start = time.perf_counter()
    with pytest.raises(ImageTooLarge) as info:
        open_document(data, settings=settings)
    assert time.perf_counter() - start < 0.5
    assert info.value.code == "image_too_large" and info.value.http_status == 413
    assert info.value.details["width"] == 100_000


def test_pixel_limit_is_ours_not_pillows(settings, monkeypatch):
    """Pillow's process-wide MAX_IMAGE_PIXELS neither lets a bomb through nor
    refuses an image that Settings.max_image_pixels allows."""
    bomb, page = builders.bomb_png(3000, 3000), builders.png_image(400, 300)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)
    with pytest.raises(ImageTooLarge):
        open_document(bomb, settings=settings.model_copy(update={"max_image_pixels": 1_000_000}))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    with open_document(page, settings=settings) as doc:
        (page,) = render_pages(doc, [1], settings)
    assert page.image.size == (400, 300)


_MEMORY_PROBE = textwrap.dedent(
    """
    import io, json, resource, sys, time
    from PIL import Image
    from docproc.base.errors import ImageTooLarge
    from docproc.base.settings import Settings
    from docproc.jobs.inputs import open_document

    data = open(sys.argv[1], "rb").read()
    settings = Settings(_env_file=None, max_image_pixels=4_000_000)
    # Cap the address space at what the process has now + 48 MB: any decode of the
    # 36 Mpx bomb (>= 108 MB of RGB) must then fail with MemoryError.
    vm = int(open("/proc/self/statm").read().split()[0]) * resource.getpagesize()
    resource.setrlimit(resource.RLIMIT_AS, (vm + 48 * 2**20, resource.RLIM_INFINITY))
    start = time.perf_counter()
    try:
        open_document(data, settings=settings)
        code = None
    except ImageTooLarge as exc:
        code = exc.code
    seconds = time.perf_counter() - start
    # control: under the same cap, really decoding the file runs out of memory
    Image.MAX_IMAGE_PIXELS = None
    try:
        Image.open(io.BytesIO(data)).convert("RGB")
        control = "decoded"
    except MemoryError:
        control = "MemoryError"
    print(json.dumps({"code": code, "seconds": seconds, "control": control}))
    """
)


def test_bomb_png_refusal_allocates_nothing_large(tmp_path):
    """In a fresh process whose address space is capped at +48 MB: refusing a bomb
    whose pixels are all really there works, while decoding it runs out of memory."""
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(builders.bomb_png(6000, 6000, full=True))  # 36 Mpx, ~35 KB on disk
    out = subprocess.run(
        [sys.executable, "-c", _MEMORY_PROBE, str(bomb)],
        capture_output=True, text=True, cwd=REPO, timeout=120,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    probe = json.loads(out.stdout.strip().splitlines()[-1])
    assert probe["code"] == "image_too_large", probe
    assert probe["seconds"] < 0.5, probe
    assert probe["control"] == "MemoryError", probe  # the cap really bites a decode


def test_zero_size_png_is_corrupt(settings):
    with pytest.raises(CorruptDocument):
        open_document(builders.bomb_png(0, 0), settings=settings)


def test_truncated_png_is_corrupt_at_intake(settings):
    data = builders.png_image(400, 300)
    with pytest.raises(CorruptDocument):
        open_document(data[: len(data) - 40], settings=settings)


def test_declared_image_size_limit(settings):
    data = builders.png_image(400, 300)
    with pytest.raises(ImageTooLarge):
        open_document(data, settings=settings.model_copy(update={"max_image_pixels": 400 * 300 - 1}))
    with open_document(data, settings=settings.model_copy(update={"max_image_pixels": 400 * 300})) as doc:
        assert doc.page_count == 1


# ------------------------------------------------------------------ robustness


@pytest.mark.filterwarnings("ignore::UserWarning")  # Pillow's notes on the damaged metadata
@pytest.mark.parametrize(
    "build",
    [
        builders.invoice_pdf,
        lambda: builders.png_image(120, 90),
        lambda: builders.jpeg_photo(120, 90),
        lambda: builders.tiff_multipage(3, size=(60, 80)),
        lambda: builders.webp_image(120, 90),
    ],
    ids=["pdf", "png", "jpeg", "tiff", "webp"],
)
def test_damaged_bytes_only_raise_typed_errors(settings, build):
    """Flip random bytes (header kept, so the type still sniffs) and cut random
    tails: intake + render of every page either works or raises a DocprocError."""
    original = build()
    fast = settings.model_copy(update={"max_tiles": 1, "render_min_dpi": 10.0, "render_max_dpi": 20.0})
    rng = random.Random(20260314)
    errors: dict[str, int] = {}
    for trial in range(60):
        data = bytearray(original)
        if trial % 3 == 0:
            data = data[: rng.randrange(16, len(data))]
        for _ in range(rng.randint(1, 8)):
            i = rng.randrange(16, len(data))
            data[i] = rng.randrange(256)
        try:
            with open_document(bytes(data), settings=fast) as doc:
                for page in render_pages(doc, parse_page_range(None, doc.page_count), fast):
                    assert page.image.mode == "RGB"
        except DocprocError as exc:
            errors[exc.code] = errors.get(exc.code, 0) + 1
    assert set(errors) <= {"corrupt_document", "no_pages", "image_too_large", "unsupported_type"}, errors


def test_a_zero_page_pdf_that_needed_repair_still_has_no_pages(settings):
    """A hand-written empty page tree without an xref table: MuPDF repairs the file and
    finds the (empty) page tree: no_pages, as documented, not corrupt_document."""
    data = (b"%PDF-1.4\n1 0 obj\n<< /Type /Catalog /Pages 2 0 R >>\nendobj\n"
            b"2 0 obj\n<< /Type /Pages /Kids [] /Count 0 >>\nendobj\ntrailer\n<< /Root 1 0 R >>\n%%EOF\n")
    assert pymupdf.open(stream=data, filetype="pdf").is_repaired
    with pytest.raises(NoPages) as info:
        open_document(data, settings=settings)
    assert info.value.code == "no_pages"
    no_tree = data.replace(b"/Pages 2 0 R", b"/Pagez 2 0 R")  # no page tree at all: damage
    with pytest.raises(CorruptDocument):
        open_document(no_tree, settings=settings)


# ------------------------------------------------------------------ content size (Flate bombs)


def _pdf_with_flate_pages(pages: int, content: bytes) -> bytes:
    """``pages`` pages, each with its own FlateDecode content stream holding ``content``."""
    with pymupdf.open() as doc:
        for _ in range(pages):
            page = doc.new_page()
            xref = doc.get_new_xref()
            doc.update_object(xref, "<<>>")
            doc.update_stream(xref, content)  # compressed: /Filter /FlateDecode
            doc.xref_set_key(page.xref, "Contents", f"{xref} 0 R")
        return doc.tobytes()


def _pdf_with_encoded_content(encoded: bytes, filter_value: str, *, indirect: bool = False) -> bytes:
    """One page whose content stream holds ``encoded`` as it is, under /Filter ``filter_value``
    (given by reference to an object holding it when ``indirect``)."""
    with pymupdf.open() as doc:
        page = doc.new_page()
        xref = doc.get_new_xref()
        doc.update_object(xref, "<<>>")
        doc.update_stream(xref, encoded, compress=False)
        if indirect:
            held = doc.get_new_xref()
            doc.update_object(held, filter_value)
            filter_value = f"{held} 0 R"
        doc.xref_set_key(xref, "Filter", filter_value)
        doc.xref_set_key(page.xref, "Contents", f"{xref} 0 R")
        return doc.tobytes()


def _run_length(data: bytes) -> bytes:
    """RunLengthDecode data for ``data`` made of runs of 128 equal bytes (2 bytes per run)."""
    return b"".join(bytes([129, data[i]]) for i in range(0, len(data), 128)) + b"\x80"


CONTENT = b" " * (4 << 20)  # 4 MiB of PDF whitespace: nothing to draw, all to decode
BOMBS = {  # each decodes to CONTENT through filters the one-Flate shortcut must not trust
    "Flate twice": lambda: _pdf_with_encoded_content(zlib.compress(zlib.compress(CONTENT, 9), 9),
                                                     "[/FlateDecode /FlateDecode]"),
    "Flate twice, the filters by reference": lambda: _pdf_with_encoded_content(
        zlib.compress(zlib.compress(CONTENT, 9), 9), "[/FlateDecode /FlateDecode]", indirect=True),
    "RunLength": lambda: _pdf_with_encoded_content(_run_length(CONTENT), "/RunLengthDecode"),
    "Flate over RunLength, abbreviated": lambda: _pdf_with_encoded_content(
        zlib.compress(_run_length(CONTENT), 9), "[/Fl /RL]"),
}


@pytest.mark.parametrize("name", list(BOMBS))
def test_content_size_decodes_filter_chains_as_mupdf_does(name):
    """A content stream under a chain of filters, or a filter other than one FlateDecode, is
    counted as MuPDF decodes it when it reads the page: past the limit it is refused, however
    small the file (a double-Flate bomb is a few KiB), and within it the page still reads."""
    from docproc.base.errors import ContentTooLarge
    from docproc.jobs import content_budget as budget

    data = BOMBS[name]()
    assert not budget.only_single_flate(data)
    with pymupdf.open(stream=data, filetype="pdf") as doc:
        with pytest.raises(ContentTooLarge) as refused:
            budget.check_content_size(doc, 1, len(CONTENT) - 1, data=data)
        assert refused.value.code == "content_too_large" and refused.value.details["page"] == 1
        budget.check_content_size(doc, 1, len(CONTENT), data=data)
        assert doc[0].get_text() == ""


def _pdf_calling_forms(content: bytes, forms: dict[str, tuple[bytes, list[str]]], page_forms: list[str]) -> bytes:
    """One page with ``content`` and the form XObjects ``page_forms`` in its resources; each
    form of ``forms`` has its own content and the forms it names in its own resources (none:
    no /Resources, so it uses its caller's). Every stream FlateDecode-compressed."""
    with pymupdf.open() as doc:
        page = doc.new_page()
        xrefs = {name: doc.get_new_xref() for name in forms}

        def xobjects(names: list[str]) -> str:
            return "<< /XObject << " + " ".join(f"/{n} {xrefs[n]} 0 R" for n in names) + " >> >>"

        for name, (body, calls) in forms.items():
            resources = f" /Resources {xobjects(calls)}" if calls else ""
            doc.update_object(xrefs[name], f"<< /Type /XObject /Subtype /Form /BBox [0 0 10 10]{resources} >>")
            doc.update_stream(xrefs[name], body)
        xref = doc.get_new_xref()
        doc.update_object(xref, "<<>>")
        doc.update_stream(xref, content)
        doc.xref_set_key(page.xref, "Contents", f"{xref} 0 R")
        doc.xref_set_key(page.xref, "Resources", xobjects(page_forms))
        return doc.tobytes()


FORM = b" " * (1 << 20)  # 1 MiB of whitespace: MuPDF reads it all at each call
FORM_CALLS = {  # (content, forms, the page's forms) -> the bytes a read of the page decodes
    "a form called 200 times (the 147th call cut by the chunk boundary)": (
        (b"/F0 Do " * 200, {"F0": (FORM, [])}, ["F0"]), 7 * 200 + 200 * len(FORM)),
    "a form calling another 20 times, called 10 times": (
        (b"/A Do " * 10, {"A": (b"/B Do " * 20, ["B"]), "B": (FORM, [])}, ["A"]), 60 + 10 * (120 + 20 * len(FORM))),
    "a form without resources calling the page's form": (
        (b"/A Do " * 5, {"A": (b"/B Do " * 40, []), "B": (FORM, [])}, ["A", "B"]), 30 + 5 * (240 + 40 * len(FORM))),
    "a name spelled with an escape": ((b"/F#6d0 Do " * 30, {"Fm0": (FORM, [])}, ["Fm0"]), 300 + 30 * len(FORM)),
}


@pytest.mark.parametrize("name", list(FORM_CALLS))
def test_content_size_counts_a_form_at_each_call(name, monkeypatch):
    """MuPDF reads a form XObject's content again at each Do (a few KiB of PDF can call a
    1 MiB form thousands of times): the check counts it per call, forms within forms too,
    through the caller's resources for a form that has none, and across 1 KiB chunks (a call
    cut in two by a chunk boundary counts once)."""
    from docproc.base.errors import ContentTooLarge
    from docproc.jobs import content_budget as budget

    (content, forms, page_forms), read = FORM_CALLS[name]
    data = _pdf_calling_forms(content, forms, page_forms)
    assert len(data) < 40_000 and not budget.only_single_flate(data)
    monkeypatch.setattr(budget, "CHUNK", 1024)
    with pymupdf.open(stream=data, filetype="pdf") as doc:
        budget.check_content_size(doc, 1, read, data=data)
        with pytest.raises(ContentTooLarge) as refused:
            budget.check_content_size(doc, 1, read - 1, data=data)
        assert refused.value.code == "content_too_large" and refused.value.details["page"] == 1


def test_a_form_that_calls_itself_counts_once():
    """MuPDF refuses a form's call of itself (a cycle): it adds nothing past the first read."""
    from docproc.base.errors import ContentTooLarge
    from docproc.jobs import content_budget as budget

    data = _pdf_calling_forms(b"/A Do", {"A": (b"/A Do " + b" " * 1000, ["A"])}, ["A"])
    with pymupdf.open(stream=data, filetype="pdf") as doc:
        budget.check_content_size(doc, 1, 5 + 1006, data=data)
        with pytest.raises(ContentTooLarge):
            budget.check_content_size(doc, 1, 5 + 1005, data=data)
        assert doc[0].get_text() == ""


def test_the_no_read_shortcut_trusts_only_single_flate_filters():
    """The file-bytes test behind the shortcut: plain streams and one FlateDecode (also as a
    one-element array, also abbreviated) pass; a chain, another filter, a /Filter by
    reference, a name spelled with #xx escapes or a form XObject does not."""
    from docproc.jobs.content_budget import only_single_flate

    content = b"0 0 m 100 100 l S\n" * 50
    assert only_single_flate(_pdf_with_flate_pages(2, content))
    assert only_single_flate(_pdf_with_encoded_content(zlib.compress(content), "[/FlateDecode]"))
    assert only_single_flate(_pdf_with_encoded_content(zlib.compress(content), "/Fl"))
    assert only_single_flate(b"%PDF-1.7\n1 0 obj << /Length 3 >> stream\nabc\nendstream endobj")
    assert not only_single_flate(_pdf_with_encoded_content(zlib.compress(content), "[/FlateDecode /AHx]"))
    assert not only_single_flate(_pdf_with_encoded_content(content, "/LZWDecode"))
    assert not only_single_flate(_pdf_with_encoded_content(zlib.compress(content), "/FlateDecode", indirect=True))
    escaped = _pdf_with_encoded_content(zlib.compress(content), "/FlateDecode").replace(b"/FlateDecode", b"/Fl#61teDecode")
    assert not only_single_flate(escaped)
    assert not only_single_flate(escaped.replace(b"/Filter", b"/Filt#65r").replace(b"/Fl#61teDecode", b"/FlateDecode"))
    assert not only_single_flate(_pdf_calling_forms(b"/Fm0 Do", {"Fm0": (content, [])}, ["Fm0"]))


def test_content_size_counts_exactly_when_the_file_could_hold_more_than_the_limit(settings, monkeypatch):
    """The shortcut (references x 1032 x file size within the limit: no stream read) and the
    full count agree: a limit the file could exceed counts every stream, one byte under the
    pages' real content is refused, the content itself passes."""
    from docproc.base.errors import ContentTooLarge
    from docproc.jobs import content_budget as budget

    content = b"0 0 m 100 100 l S\n" * 5000  # 90,000 bytes, inflated
    data = _pdf_with_flate_pages(3, content)
    bound = 3 * budget.DEFLATE_MAX_RATIO * len(data)
    total = 3 * len(content)
    with pymupdf.open(stream=data, filetype="pdf") as doc:
        assert [doc.xref_get_key(doc.page_xref(i), "Contents")[0] for i in range(3)] == ["xref"] * 3
        budget.check_content_size(doc, 3, total, data=data)
        with pytest.raises(ContentTooLarge) as refused:
            budget.check_content_size(doc, 3, total - 1, data=data)
        assert refused.value.code == "content_too_large" and refused.value.details["page"] == 3

        inflated: list[int] = []
        counting = budget.read_stream
        monkeypatch.setattr(budget, "read_stream",
                            lambda doc, xref, limit, **kw: inflated.append(1) or counting(doc, xref, limit, **kw))
        budget.check_content_size(doc, 3, bound, data=data)
        assert inflated == []  # within the bound: no stream read
        budget.check_content_size(doc, 3, bound - 1, data=data)
        assert inflated == [1, 1, 1]  # past it: each stream inflated once, and the content passes
