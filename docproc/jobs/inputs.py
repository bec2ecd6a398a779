"""A job's input: recognise a document by its bytes, open it, refuse bad input early.

The API runs these checks at submission (:func:`docproc.submission.submit.check_input`) and
the workers again at intake (:mod:`workers.jobflow`), so both refuse the same files with
the same typed errors. :func:`open_document` runs every check that can be made without rendering, in
this order, and raises the matching :class:`~docproc.base.errors.InputError`:

1. size over ``max_file_bytes``            -> FileTooLarge
2. no bytes                                -> EmptyDocument
3. magic bytes not PDF/PNG/JPEG/TIFF/WEBP  -> UnsupportedType (the file name is never used)
4. the file does not open                  -> CorruptDocument
5. PDF needs a password                    -> EncryptedDocument
6. no pages                                -> NoPages (an empty page tree, also in a file
                                              that needed repair; a damaged PDF whose repair
                                              finds no page tree at all: CorruptDocument)
7. more than ``max_pages`` pages           -> TooManyPages
8. an image declares more than ``max_image_pixels`` -> ImageTooLarge (before decoding)
9. reading a PDF's pages would decode more than ``max_content_bytes`` of content (their
   streams through any filters, and the forms they call, once per call) -> ContentTooLarge
   (a decompression bomb: :mod:`docproc.jobs.content_budget`; a process remembers the last
   PDF that passed, by sha256 and limit, so the pages of one document done in a row by
   one worker are not counted again each)

Decisions:

* A PDF encrypted with an *empty* user password opens without one (MuPDF
  authenticates it) and is accepted: only the owner's permissions are limited,
  and every PDF reader shows it.
* A damaged PDF that MuPDF repairs (a truncated upload often is) is accepted
  when every page it recovers loads (``OpenedDocument.repaired``). Its pages may have
  lost content: :mod:`workers.repair` tells which, and the result says so (a
  ``repaired`` warning; a page whose content is gone fails ``corrupt_document``). If a
  page does not load, or no page tree is recovered, it is a CorruptDocument.
* Image headers are read with the format's Pillow plugin class, which reads the
  header only and skips Pillow's process-wide ``Image.MAX_IMAGE_PIXELS`` guard:
  ``Settings.max_image_pixels`` decides. Two Pillow paths keep that guard as an
  error above 2 x ``MAX_IMAGE_PIXELS`` (179 Mpx by default, above our 100 Mpx
  default): TIFF frames after the first, and WEBP. Its
  ``DecompressionBombError`` is turned into ImageTooLarge too; an operator who
  raises ``max_image_pixels`` past 179 Mpx must raise Pillow's value as well.
* A truncated PNG is caught here (``verify()`` checks every chunk's CRC without
  decompressing). JPEG, TIFF and WEBP keep no such cheap check; their
  truncation surfaces as CorruptDocument when the page is decoded in render.
* TIFF: every frame is a page; frames are counted by walking the IFDs (no pixel
  data read), and the walk stops at ``max_pages + 1``. Other images are one
  page (animated WEBP: the first frame).
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass, field
from enum import StrEnum

import pymupdf
from PIL import Image, JpegImagePlugin, PngImagePlugin, TiffImagePlugin, WebPImagePlugin

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
from docproc.base.settings import Settings, get_settings
from docproc.jobs.content_budget import check_content_size

PDF_MAGIC_WINDOW = 1024  # readers accept "%PDF-" anywhere in the first 1024 bytes


class MediaType(StrEnum):
    PDF = "application/pdf"
    PNG = "image/png"
    JPEG = "image/jpeg"
    TIFF = "image/tiff"
    WEBP = "image/webp"


# Formats we refuse, named so the user learns what they actually sent.
_KNOWN_OTHERS: tuple[tuple[bytes, str], ...] = (
    (b"\x7fELF", "ELF executable"),
    (b"MZ", "Windows executable"),
    (b"\xca\xfe\xba\xbe", "Mach-O or Java class file"),
    (b"\xcf\xfa\xed\xfe", "Mach-O executable"),
    (b"PK\x03\x04", "ZIP archive (or DOCX/XLSX/ODT)"),
    (b"PK\x05\x06", "empty ZIP archive"),
    (b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1", "legacy Microsoft Office document (OLE2)"),
    (b"\x1f\x8b", "gzip archive"),
    (b"BZh", "bzip2 archive"),
    (b"\xfd7zXZ\x00", "xz archive"),
    (b"7z\xbc\xaf\x27\x1c", "7-Zip archive"),
    (b"Rar!\x1a\x07", "RAR archive"),
    (b"GIF87a", "GIF image"),
    (b"GIF89a", "GIF image"),
    (b"BM", "BMP image"),
    (b"\x00\x00\x00\x0cjP  \r\n\x87\n", "JPEG 2000 image"),
    (b"\xff\x4f\xff\x51", "JPEG 2000 codestream"),
    (b"8BPS", "Photoshop document"),
    (b"%!PS", "PostScript document"),
    (b"{\\rtf", "RTF document"),
    (b"AT&TFORM", "DjVu document"),
)


def _describe_unsupported(data: bytes) -> str:
    for magic, name in _KNOWN_OTHERS:
        if data.startswith(magic):
            return name
    if data[4:8] == b"ftyp":
        brand = data[8:12]
        if brand in (b"heic", b"heix", b"heim", b"heis", b"mif1", b"msf1", b"avif"):
            return "HEIC/HEIF/AVIF image"
        return "MP4/QuickTime media"
    if data.startswith(b"RIFF"):
        return f"RIFF container ({data[8:12].decode('latin-1')!r})"
    head = data[:512].lstrip()
    lower = head.lower()
    if lower.startswith(b"<svg") or (lower.startswith(b"<?xml") and b"<svg" in data[:2048].lower()):
        return "SVG image"
    if lower.startswith((b"<!doctype html", b"<html")):
        return "HTML document"
    if lower.startswith(b"<?xml"):
        return "XML document"
    try:
        text = data[:4096].decode("utf-8")
    except UnicodeDecodeError as exc:
        if exc.start < 4090:  # not just a character cut at the window's edge
            return "unknown binary data"
        text = data[: exc.start].decode("utf-8")
    if text and all(ch.isprintable() or ch in "\r\n\t\f" for ch in text):
        return "plain text"
    return "unknown binary data"


def sniff_media_type(data: bytes) -> MediaType:
    """The media type of ``data``, from its magic bytes only.

    Raises EmptyDocument for no bytes and UnsupportedType (naming what was seen
    where it can) for anything other than PDF, PNG, JPEG, TIFF or WEBP.
    """
    if not data:
        raise EmptyDocument("the document is empty (0 bytes)")
    if b"%PDF-" in data[:PDF_MAGIC_WINDOW]:
        return MediaType.PDF
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return MediaType.PNG
    if data.startswith(b"\xff\xd8\xff"):
        return MediaType.JPEG
    if data[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):  # classic and BigTIFF
        return MediaType.TIFF
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return MediaType.WEBP
    seen = _describe_unsupported(data)
    raise UnsupportedType(
        f"unsupported file type: {seen}; send a PDF, PNG, JPEG, TIFF or WEBP",
        detected=seen,
    )


@dataclass(eq=False)
class OpenedDocument:
    """A document that passed intake, open and ready to render.

    Exactly one of ``pdf`` (a PyMuPDF document) and ``image`` (a Pillow image
    whose header is read but whose pixels are not decoded) is set.
    """

    media_type: MediaType
    data: bytes = field(repr=False)
    sha256: str
    size_bytes: int
    page_count: int
    filename: str | None = None
    pdf: pymupdf.Document | None = field(default=None, repr=False)
    image: Image.Image | None = field(default=None, repr=False)
    repaired: bool = False  # a damaged PDF that MuPDF repaired when opening it (workers.repair)

    def close(self) -> None:
        if self.pdf is not None:
            self.pdf.close()
            self.pdf = None
        if self.image is not None:
            self.image.close()
            self.image = None

    def __enter__(self) -> OpenedDocument:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def open_document(
    data: bytes, *, filename: str | None = None, settings: Settings | None = None
) -> OpenedDocument:
    """Check and open ``data``; see the module docstring for the checks and their order.

    ``filename`` is kept for the result only; it never decides the type.
    """
    settings = settings or get_settings()
    size = len(data)
    if size > settings.max_file_bytes:
        raise FileTooLarge(
            f"the file is {size} bytes; the limit is {settings.max_file_bytes} bytes",
            size_bytes=size,
            limit=settings.max_file_bytes,
        )
    media_type = sniff_media_type(data)
    pdf: pymupdf.Document | None = None
    image: Image.Image | None = None
    sha256 = hashlib.sha256(data).hexdigest()
    if media_type is MediaType.PDF:
        pdf = _open_pdf(data, settings, sha256)
        page_count = pdf.page_count
    else:
        image, page_count = _open_image(data, media_type, settings)
    return OpenedDocument(
        media_type=media_type,
        data=data,
        sha256=sha256,
        size_bytes=size,
        page_count=page_count,
        filename=filename,
        pdf=pdf,
        image=image,
        repaired=pdf is not None and pdf.is_repaired,
    )


def _check_page_count(count: int, settings: Settings) -> None:
    if count == 0:
        raise NoPages("the document has no pages")
    if count > settings.max_pages:
        raise TooManyPages(
            f"the document has {count} pages; the limit is {settings.max_pages}",
            page_count=count,
            limit=settings.max_pages,
        )


_content_passed: tuple[str, int] | None = None
"""(sha256, max_content_bytes) of the last PDF whose content passed the size check here."""


def _open_pdf(data: bytes, settings: Settings, sha256: str) -> pymupdf.Document:
    global _content_passed
    try:
        doc = pymupdf.open(stream=data, filetype="pdf")
    except Exception as exc:
        raise CorruptDocument(f"the PDF cannot be opened: {exc}") from exc
    try:
        if doc.needs_pass:
            raise EncryptedDocument("the PDF is encrypted and needs a password to open")
        try:
            count = doc.page_count
        except Exception as exc:
            raise CorruptDocument(f"the PDF's page tree is damaged: {exc}") from exc
        if count == 0 and doc.is_repaired and not _has_page_tree(doc):
            raise CorruptDocument("the PDF is damaged and no page could be recovered")
        _check_page_count(count, settings)
        checked = (sha256, settings.max_content_bytes)
        if checked != _content_passed:  # the same bytes passed just before: not again
            check_content_size(doc, count, settings.max_content_bytes, data=data)
            _content_passed = checked
        if doc.is_repaired:
            for index in range(count):
                try:
                    doc.load_page(index)
                except Exception as exc:
                    raise CorruptDocument(
                        f"the PDF is damaged: page {index + 1} does not load ({exc})", page=index + 1
                    ) from exc
        return doc
    except BaseException:
        doc.close()
        raise


def _has_page_tree(doc: pymupdf.Document) -> bool:
    """True when the catalog's /Pages is a page tree node (an empty one: no pages, not damage)."""
    try:
        kind, value = doc.xref_get_key(doc.pdf_catalog(), "Pages")
        return kind == "xref" and doc.xref_get_key(int(value.split()[0]), "Type") == ("name", "/Pages")
    except Exception:  # noqa: BLE001 - no catalog, a dangling reference: no page tree
        return False


def read_image_header(data: bytes, media_type: MediaType) -> Image.Image:
    """A Pillow image of ``data`` with only its header read, opened with the
    format's plugin class (no decoding, no process-wide bomb check)."""
    fp = io.BytesIO(data)
    if media_type is MediaType.PNG:
        return PngImagePlugin.PngImageFile(fp)
    if media_type is MediaType.JPEG:
        return JpegImagePlugin.jpeg_factory(fp)
    if media_type is MediaType.TIFF:
        return TiffImagePlugin.TiffImageFile(fp)
    if media_type is MediaType.WEBP:
        return WebPImagePlugin.WebPImageFile(fp)
    raise AssertionError(media_type)


def _check_image_size(im: Image.Image, settings: Settings, frame: int | None = None) -> None:
    width, height = im.size
    where = f" (frame {frame + 1})" if frame is not None else ""
    if width <= 0 or height <= 0:
        raise CorruptDocument(f"the image declares an empty size {width}x{height}{where}")
    if width * height > settings.max_image_pixels:
        raise ImageTooLarge(
            f"the image declares {width}x{height} = {width * height} pixels{where}; "
            f"the limit is {settings.max_image_pixels}",
            width=width,
            height=height,
            limit=settings.max_image_pixels,
        )


def _count_tiff_frames(im: Image.Image, settings: Settings) -> int:
    """The TIFF's frames, each one's declared size checked; stops past ``max_pages``."""
    count = 1
    while True:
        try:
            im.seek(count)
        except EOFError:
            break
        if count == settings.max_pages:
            raise TooManyPages(
                f"the TIFF has more than {settings.max_pages} frames (pages); "
                f"the limit is {settings.max_pages}",
                limit=settings.max_pages,
            )
        _check_image_size(im, settings, frame=count)
        count += 1
    im.seek(0)
    return count


def _open_image(data: bytes, media_type: MediaType, settings: Settings) -> tuple[Image.Image, int]:
    try:
        im = read_image_header(data, media_type)
    except Image.DecompressionBombError as exc:
        raise ImageTooLarge(f"the image is too large: {exc}") from exc
    except Exception as exc:
        raise CorruptDocument(f"the {media_type.name} image cannot be read: {exc}") from exc
    try:
        _check_image_size(im, settings)
        if media_type is MediaType.TIFF:
            count = _count_tiff_frames(im, settings)
        else:
            count = 1
        _check_page_count(count, settings)
        if media_type is MediaType.PNG:
            PngImagePlugin.PngImageFile(io.BytesIO(data)).verify()
        return im, count
    except DocprocError:
        im.close()
        raise
    except Image.DecompressionBombError as exc:
        im.close()
        raise ImageTooLarge(f"the image is too large: {exc}") from exc
    except Exception as exc:
        im.close()
        raise CorruptDocument(f"the {media_type.name} image is damaged: {exc}") from exc
