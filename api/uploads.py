"""Reading request bodies with a hard size limit, without ever holding an unbounded body.

A multipart upload is parsed as it streams in: the file part goes to a
``SpooledTemporaryFile`` (memory up to ``SPOOL_BYTES``, disk beyond), the form
fields stay small strings. The read stops with :class:`~docproc.base.errors.FileTooLarge`
(413 ``file_too_large``) the moment the file passes ``max_file_bytes``; a
``Content-Length`` that already says so is refused before a byte is read.

Every body is read through :func:`body_chunks`, which drops a request whose body has
not arrived ``request_body_timeout_s`` after its first read (408 ``request_timeout``).
JSON (bodies, and the ``metadata`` form field) is parsed by :mod:`api.strict_json`.
A body in a Content-Type the route does not read is 415 ``unsupported_media_type``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from tempfile import SpooledTemporaryFile
from typing import Any

from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError
from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.requests import Request

from api import strict_json
from docproc.base.errors import (
    FileTooLarge,
    InvalidRequest,
    RequestTimeout,
    UnsupportedMediaType,
)
from docproc.jobs.store import JobRequest

SPOOL_BYTES = 1024 * 1024  # a file part stays in memory up to this, then goes to disk
FIELD_BYTES = 32 * 1024  # one form field (metadata is at most 16 KiB of JSON)
MAX_FIELDS = 16
# Multipart framing + form fields a request may carry besides the file itself.
FORM_OVERHEAD_BYTES = MAX_FIELDS * FIELD_BYTES + 16 * 1024
JSON_BODY_BYTES = 64 * 1024
FILE_FIELD = "file"
MAX_BOUNDARY = 256  # python-multipart's own limit (RFC 2046 asks for at most 70)


@dataclass
class Upload:
    """A multipart upload read to its end: the file, spooled, and the text fields."""

    file: SpooledTemporaryFile = field(repr=False)
    filename: str | None
    size: int
    fields: dict[str, str]

    def read(self) -> bytes:
        """The whole file (at most ``max_file_bytes``)."""
        self.file.seek(0)
        return self.file.read()

    def close(self) -> None:
        self.file.close()


def content_type(request: Request) -> str:
    """The request's media type, lower-case, without parameters ("" when it has none)."""
    return request.headers.get("content-type", "").split(";")[0].strip().lower()


def unsupported_content_type(request: Request, expected: str) -> UnsupportedMediaType:
    """415 for a body the route does not read; ``expected`` says what it reads."""
    return UnsupportedMediaType(f"send {expected}", content_type=content_type(request) or None)


def multipart_boundary(request: Request) -> bytes:
    """The boundary of a ``multipart/form-data`` request; InvalidRequest when missing or too long."""
    _, params = parse_options_header(request.headers.get("content-type"))
    boundary = params.get(b"boundary")
    if not boundary:
        raise InvalidRequest("the multipart Content-Type has no boundary")
    if len(boundary) > MAX_BOUNDARY:
        raise InvalidRequest(f"the multipart boundary is {len(boundary)} characters; at most {MAX_BOUNDARY}",
                             reason="boundary_too_long", limit=MAX_BOUNDARY)
    return boundary


async def body_chunks(request: Request, timeout_s: float) -> AsyncIterator[bytes]:
    """The request body as it streams in; RequestTimeout (408) once ``timeout_s`` have passed
    since the first read and the body has not ended, however steadily bytes trickle in."""
    deadline = time.monotonic() + timeout_s
    stream = request.stream()
    while True:
        try:
            async with asyncio.timeout(max(0.0, deadline - time.monotonic())):
                chunk = await anext(stream)
        except StopAsyncIteration:
            return
        except TimeoutError:
            raise RequestTimeout(f"the request body did not arrive within {timeout_s:g} s",
                                 limit_s=timeout_s) from None
        yield chunk


def too_large(size: int | None, limit: int) -> FileTooLarge:
    shown = f"is {size} bytes" if size is not None else "is larger"
    return FileTooLarge(f"the upload {shown}; the limit is {limit} bytes", limit=limit)


def declared_length(request: Request) -> int | None:
    """The request's ``Content-Length`` as a number, or None when it has none."""
    value = request.headers.get("content-length")
    if value is None:
        return None
    try:
        length = int(value)
    except ValueError:
        raise InvalidRequest("the Content-Length header is not a number") from None
    if length < 0:
        raise InvalidRequest("the Content-Length header is negative")
    return length


class MultipartReader:
    """python-multipart callbacks that keep one file part and a few small fields."""

    def __init__(self, max_file_bytes: int) -> None:
        self.max_file_bytes = max_file_bytes
        self.file: SpooledTemporaryFile = SpooledTemporaryFile(max_size=SPOOL_BYTES)
        self.filename: str | None = None
        self.size = 0
        self.has_file = False
        self.fields: dict[str, str] = {}
        self.ended = False
        self._header_name = b""
        self._header_value = b""
        self._disposition = b""
        self._name: str | None = None
        self._is_file = False
        self._buffer = bytearray()

    def callbacks(self) -> dict[str, Any]:
        return {
            "on_part_begin": self.on_part_begin,
            "on_part_data": self.on_part_data,
            "on_part_end": self.on_part_end,
            "on_header_field": self.on_header_field,
            "on_header_value": self.on_header_value,
            "on_header_end": self.on_header_end,
            "on_headers_finished": self.on_headers_finished,
            "on_end": self.on_end,
        }

    def on_part_begin(self) -> None:
        self._disposition = b""
        self._name = None
        self._is_file = False
        self._buffer = bytearray()

    def on_header_field(self, data: bytes, start: int, end: int) -> None:
        self._header_name += data[start:end]

    def on_header_value(self, data: bytes, start: int, end: int) -> None:
        self._header_value += data[start:end]

    def on_header_end(self) -> None:
        if self._header_name.lower() == b"content-disposition":
            self._disposition = self._header_value
        self._header_name = b""
        self._header_value = b""

    def on_headers_finished(self) -> None:
        _, options = parse_options_header(self._disposition)
        if b"name" not in options:
            raise InvalidRequest("a multipart part has no name (Content-Disposition)")
        self._name = options[b"name"].decode("utf-8", "replace")
        if b"filename" in options or self._name == FILE_FIELD:
            if self._name != FILE_FIELD:
                raise InvalidRequest(f"send the document in the form field {FILE_FIELD!r}, not {self._name!r}")
            if self.has_file:
                raise InvalidRequest("send one document per job (one 'file' part)")
            self.has_file = True
            self._is_file = True
            raw = options.get(b"filename")
            self.filename = raw.decode("utf-8", "replace") if raw else None
        else:
            if self._name in self.fields:
                raise InvalidRequest(f"the form field {self._name!r} is given twice")
            if len(self.fields) >= MAX_FIELDS:
                raise InvalidRequest(f"too many form fields (at most {MAX_FIELDS})")

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        n = end - start
        if self._is_file:
            self.size += n
            if self.size > self.max_file_bytes:
                raise too_large(None, self.max_file_bytes)
            self.file.write(data[start:end])
        else:
            if len(self._buffer) + n > FIELD_BYTES:
                raise InvalidRequest(f"the form field {self._name!r} is longer than {FIELD_BYTES} bytes")
            self._buffer += data[start:end]

    def on_part_end(self) -> None:
        if not self._is_file and self._name is not None:
            try:
                self.fields[self._name] = self._buffer.decode("utf-8")
            except UnicodeDecodeError:
                raise InvalidRequest(f"the form field {self._name!r} is not UTF-8") from None

    def on_end(self) -> None:
        self.ended = True


async def read_multipart(request: Request, *, max_file_bytes: int, timeout_s: float) -> Upload:
    """Stream a ``multipart/form-data`` body: the ``file`` part spooled, the rest as fields.

    Raises FileTooLarge as soon as the file passes ``max_file_bytes`` (or at once
    when ``Content-Length`` says it must), InvalidRequest for a malformed body or
    a missing file part.
    """
    length = declared_length(request)
    if length is not None and length > max_file_bytes + FORM_OVERHEAD_BYTES:
        raise too_large(length, max_file_bytes)
    boundary = multipart_boundary(request)
    reader = MultipartReader(max_file_bytes)
    try:
        parser = MultipartParser(boundary, reader.callbacks())
        async for chunk in body_chunks(request, timeout_s):
            parser.write(chunk)
        parser.finalize()
    except FormParserError as exc:
        reader.file.close()
        raise InvalidRequest(f"the multipart body is malformed: {exc}") from None
    except BaseException:
        reader.file.close()
        raise
    if not reader.ended:
        reader.file.close()
        raise InvalidRequest("the multipart body ended before its closing boundary")
    if not reader.has_file:
        reader.file.close()
        raise InvalidRequest(f"no document: send it in the multipart form field {FILE_FIELD!r}")
    return Upload(file=reader.file, filename=reader.filename, size=reader.size, fields=reader.fields)


async def read_json(request: Request, *, timeout_s: float, max_bytes: int = JSON_BODY_BYTES) -> Any:
    """A JSON request body of at most ``max_bytes``, parsed strictly (:mod:`api.strict_json`);
    UnsupportedMediaType unless the Content-Type is JSON, InvalidRequest otherwise."""
    if content_type(request) != "application/json":
        raise unsupported_content_type(request, "a JSON body (Content-Type: application/json)")
    length = declared_length(request)
    if length is not None and length > max_bytes:
        raise InvalidRequest(f"the JSON body is {length} bytes; the limit is {max_bytes}", limit=max_bytes)
    body = bytearray()
    async for chunk in body_chunks(request, timeout_s):
        body += chunk
        if len(body) > max_bytes:
            raise InvalidRequest(f"the JSON body is longer than {max_bytes} bytes", limit=max_bytes)
    return strict_json.loads(bytes(body), "the body")


def invalid_body(exc: ValidationError) -> RequestValidationError:
    """A body that failed validation, reported like FastAPI's own (loc starts with "body")."""
    errors = exc.errors(include_input=False, include_url=False)
    return RequestValidationError([{**err, "loc": ("body", *err["loc"])} for err in errors])


def request_from_form(fields: dict[str, str]) -> JobRequest:
    """A JobRequest from multipart form fields (``metadata`` sent as a JSON string)."""
    values: dict[str, Any] = dict(fields)
    if "metadata" in values:
        values["metadata"] = strict_json.loads(values["metadata"], "the metadata field")
    return JobRequest.model_validate(values)
