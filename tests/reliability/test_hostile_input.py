"""Hostile and broken input: each answer is a typed error or a normal result; nothing
crashes, nothing hangs, nothing is executed.

At the intake level each document goes the whole way a worker takes it: the API's
check (:func:`docproc.submission.submit.check_input`), then open, render and tile every page (the
first three). At the API level (uvicorn on loopback, real Redis and S3): an upload over
the size limit cut off mid-stream, path-traversal file names, malformed JSON bodies.

Decisions these tests pin down:

* a PDF with more pages than ``max_pages`` is refused (``too_many_pages``) before any
  page is rendered; a page tree that lies (one page object listed 100,000 times, or a
  /Count that does not match its kids) is ``corrupt_document``;
* parser bombs (arrays/dicts nested 100,000 deep, an object stream declaring 200,000
  objects) render (MuPDF caps nesting); a FlateDecode content stream that inflates
  ~1000:1 renders while the pages' content stays under ``max_content_bytes`` (512 MiB,
  a shared stream counted per page) and is ``content_too_large`` past it, found by
  decoding each stream once in 1 MiB chunks before any page is read; the same stream
  compressed twice (``[/FlateDecode /FlateDecode]``, a 1 KiB file) is refused the same way, and
  so is a form XObject called so often that its reads add up past the limit (each call counts);
* JavaScript (OpenAction, the names tree) and Launch actions are never executed: the
  page renders normally and its text is read; the marker file they would create never
  appears;
* a polyglot is what its leading bytes say: PDF+ZIP and ZIP-with-a-PDF-inside open as
  the PDF (the ZIP part is never unpacked), a JPEG carrying a PDF in its first 1024
  bytes opens as the PDF (readers accept "%PDF-" there);
* 0x0 images are ``corrupt_document``; a 1x100000 image renders and tiles (12 tiles +
  thumbnail); a TIFF with 10,000 frames is ``too_many_pages`` after counting 501 IFDs;
  a TIFF whose IFD chain loops ends the walk (two pages).
"""

from __future__ import annotations

import json
import socket
import time

import boto3
import builders
import httpx
import pytest

from docproc.base.errors import DocprocError
from docproc.base.settings import Settings
from docproc.jobs.inputs import open_document
from docproc.jobs.store import JobRequest
from docproc.submission.submit import check_input
from workers.pipeline import render_or_fail
from workers.render import RenderedPage
from workers.tiling import tile_image

from . import hostile

pytestmark = pytest.mark.reliability

RENDERS = "renders"


def run_intake_and_render(data: bytes, settings: Settings) -> tuple[str, list]:
    """(outcome, pages): a DocprocError's code, or RENDERS and the first three rendered
    pages (each also tiled). Any other exception propagates: that is the bug."""
    try:
        check_input(data, JobRequest(), filename="hostile", settings=settings)
        pages = []
        with open_document(data, filename="hostile", settings=settings) as doc:
            for number in range(1, min(doc.page_count, 3) + 1):
                page = render_or_fail(doc, number, settings)
                if isinstance(page, RenderedPage):
                    tiles = tile_image(page.image, max_tiles=settings.max_tiles, image_size=settings.tile_size)
                    assert tiles.shape[1:] == (settings.tile_size, settings.tile_size, 3)
                pages.append(page)
        return RENDERS, pages
    except DocprocError as exc:
        return exc.code, []


CASES = {
    "100,000 pages": (lambda: hostile.many_pages_pdf(100_000), "too_many_pages"),
    "one page listed 100,000 times": (lambda: hostile.one_page_referenced_pdf(100_000), "corrupt_document"),
    "page count lie": (lambda: hostile.page_count_lie_pdf(100_000), "corrupt_document"),
    "arrays nested 100,000 deep": (lambda: hostile.nested_arrays_pdf(100_000), RENDERS),
    "dicts nested 50,000 deep": (lambda: hostile.nested_dicts_pdf(50_000), RENDERS),
    "flate bomb (64 MiB content)": (lambda: hostile.flate_bomb_pdf(64), RENDERS),
    "flate bomb (200 MiB content on 3 pages)": (lambda: hostile.flate_bomb_pdf(200, pages=3), "content_too_large"),
    "flate bomb compressed twice (200 MiB on 3 pages, a 1 KiB file)": (
        lambda: hostile.flate_chain_bomb_pdf(200, pages=3), "content_too_large"),
    "one 4 MiB form called 200 times (a 5 KiB file)": (lambda: hostile.form_calls_bomb_pdf(4, 200), "content_too_large"),
    "one 4 MiB form called 100 times": (lambda: hostile.form_calls_bomb_pdf(4, 100), RENDERS),
    "object stream of 200,000 objects": (lambda: hostile.object_stream_bomb_pdf(200_000), RENDERS),
    "PDF+ZIP polyglot": (hostile.pdf_zip_polyglot, RENDERS),
    "ZIP holding a PDF": (hostile.zip_pdf_polyglot, RENDERS),
    "JPEG+PDF polyglot": (hostile.jpeg_pdf_polyglot, RENDERS),
    "0x0 PNG": (lambda: hostile.png_of_size(0, 0), "corrupt_document"),
    "1x100000 PNG": (lambda: hostile.png_of_size(1, 100_000), RENDERS),
    "100000x1 PNG": (lambda: hostile.png_of_size(100_000, 1), RENDERS),
    "TIFF of 10,000 frames": (lambda: hostile.tiff_frames(10_000), "too_many_pages"),
    "TIFF whose IFDs loop": (hostile.tiff_ifd_loop, RENDERS),
}


@pytest.mark.parametrize("name", list(CASES))
def test_hostile_documents_get_a_typed_answer(name, settings):
    build, expected = CASES[name]
    outcome, pages = run_intake_and_render(build(), settings)
    assert outcome == expected, name
    if outcome == RENDERS:
        assert pages and all(isinstance(p, RenderedPage) for p in pages), [getattr(p, "error", p) for p in pages]


def test_the_page_limit_refuses_before_rendering(settings, monkeypatch):
    """100,000 pages: the count alone decides; no page is ever loaded or drawn."""
    import pymupdf

    loaded: list[int] = []
    monkeypatch.setattr(pymupdf.Document, "load_page", lambda self, *a, **k: loaded.append(1))
    with pytest.raises(DocprocError) as caught:
        open_document(hostile.many_pages_pdf(100_000), settings=settings)
    assert caught.value.code == "too_many_pages" and caught.value.details["page_count"] == 100_000
    assert loaded == []


def test_pdf_actions_and_javascript_are_never_executed(settings, tmp_path):
    marker = tmp_path / hostile.MARKER_NAME
    outcome, pages = run_intake_and_render(hostile.javascript_pdf(str(marker)), settings)
    assert outcome == RENDERS and "Hello from a hostile document" in pages[0].text
    time.sleep(0.2)
    assert not marker.exists()


# ---------------------------------------------------------------------------
# the API: streaming limit, file names, JSON bodies
# ---------------------------------------------------------------------------

LIMIT = 1024 * 1024


@pytest.fixture
def api(stack_settings, serve_api) -> httpx.Client:
    """The API (1 MiB upload limit) as TENANT; ``api.settings`` are its settings."""
    settings = stack_settings(max_file_bytes=LIMIT)
    client = serve_api(settings)
    client.settings = settings
    return client


def test_an_upload_over_the_limit_is_cut_off_while_streaming(api):
    """A chunked upload (no Content-Length) of 64 MiB against a 1 MiB limit: the server
    answers 413 ``file_too_large`` after a little over 1 MiB, and the client stops sending."""
    host, port = api.base_url.host, api.base_url.port
    boundary = "hostileboundary"
    head = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"big.pdf\"\r\n"
            f"Content-Type: application/pdf\r\n\r\n%PDF-1.7\n").encode()
    total = 64 * LIMIT
    chunk = b"0" * 65536
    sock = socket.create_connection((host, port), timeout=30)
    sock.sendall((f"POST /v1/jobs HTTP/1.1\r\nHost: {host}\r\nX-API-Key: {api.headers['X-API-Key']}\r\n"
                  f"Content-Type: multipart/form-data; boundary={boundary}\r\nTransfer-Encoding: chunked\r\n\r\n"
                  ).encode())
    sent = 0
    response = b""
    sock.setblocking(False)

    def send_chunk(data: bytes) -> None:
        view = memoryview(b"%x\r\n" % len(data) + data + b"\r\n")
        while view:
            try:
                view = view[sock.send(view):]
            except BlockingIOError:
                time.sleep(0.001)
            except (BrokenPipeError, ConnectionResetError):
                return

    send_chunk(head)
    while sent < total:
        try:
            response += sock.recv(65536)
        except BlockingIOError:
            pass
        except ConnectionResetError:
            break
        if b"\r\n\r\n" in response:
            break
        send_chunk(chunk)
        sent += len(chunk)
    sock.setblocking(True)
    sock.settimeout(10)
    while b"\r\n\r\n" not in response or b'"code"' not in response:
        more = sock.recv(65536)
        if not more:
            break
        response += more
    sock.close()
    assert response.startswith(b"HTTP/1.1 413"), response[:200]
    assert b'"code":"file_too_large"' in response.replace(b" ", b"")
    assert sent < 8 * LIMIT, f"the server let the client send {sent} bytes"


# httpx sends CR, LF and NUL in a multipart file name percent-encoded (as browsers do)
_SENT = {"\r": "%0D", "\n": "%0A", "\x00": "%00"}


@pytest.mark.parametrize("filename", ["../../../../etc/passwd", "..\\..\\windows\\win.ini", "/abs/path.pdf",
                                      "a\r\nX-Injected: yes.pdf", "nul\x00byte.pdf", "x" * 5000 + ".pdf"])
def test_a_path_traversal_file_name_is_never_a_path_and_is_echoed_safely(api, filename):
    """The name is data: echoed as given in the job's JSON, never used for a storage key
    (keys are content-addressed) or a header; a name past the multipart header limit is 422."""
    upload = builders.multipage_text_pdf(1)
    response = api.post("/v1/jobs", files={"file": (filename, upload, "application/pdf")}, data={"task": "ocr"})
    assert "X-Injected" not in response.headers
    if len(filename) > 1000:
        assert response.status_code == 422 and response.json()["code"] == "invalid_request"
        return
    assert response.status_code == 202, response.text
    sent = "".join(_SENT.get(ch, ch) for ch in filename)
    job = api.get(f"/v1/jobs/{response.json()['id']}").json()
    assert job["filename"] == sent
    s3 = boto3.client("s3", endpoint_url=api.settings.s3_endpoint_url, region_name="us-east-1")
    bucket = api.settings.storage_url.removeprefix("s3://").strip("/")
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=bucket).get("Contents", [])]
    assert keys and all(k.startswith("inputs/sha256/") for k in keys), keys


@pytest.mark.parametrize("body", [
    {"source_uri": 42},
    {"source_uri": "s3://b/k", "task": ["ocr"]},
    {"source_uri": "s3://b/k", "pages": {"from": 1}},
    {"source_uri": "s3://b/k", "metadata": "not an object"},
    {"source_uri": "s3://b/k", "priority": "urgent"},
    {"source_uri": "s3://b/k", "unknown_field": 1},
    {"source_uri": "s3://b/k", "webhook_url": "file:///etc/passwd"},
    [1, 2, 3],
    "just a string",
    None,
])
def test_json_bodies_with_wrong_types_or_unknown_fields_are_422_with_a_code(api, body):
    response = api.post("/v1/jobs", content=json.dumps(body), headers={"Content-Type": "application/json"})
    assert response.status_code == 422, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    assert response.json()["code"] == "invalid_request"


def test_a_json_body_that_is_not_json_is_a_typed_error(api):
    for raw in (b"{", b"\xff\xfe", b'{"source_uri": "s3://b/k"' + b" " * 70_000 + b"}"):
        response = api.post("/v1/jobs", content=raw, headers={"Content-Type": "application/json"})
        assert response.status_code == 422 and response.json()["code"] == "invalid_request", response.text


# ---------------------------------------------------------------------------
# the API: bodies that used to give 500 (or be changed silently), a trickling upload
# ---------------------------------------------------------------------------


def assert_refused(response: httpx.Response, status: int, code: str, reason: str | None = None) -> dict:
    assert response.status_code == status, (response.status_code, response.text[:300])
    assert response.headers["content-type"].startswith("application/problem+json")
    body = response.json()
    assert body["code"] == code, body
    if reason is not None:
        assert body["reason"] == reason, body
    return body


@pytest.mark.parametrize("route", sorted(hostile.JSON_ROUTES))
@pytest.mark.parametrize("name", sorted(hostile.HOSTILE_JSON_VALUES))
def test_json_that_python_parses_but_docproc_cannot_keep_is_a_typed_422(api, route, name):
    """Deep nesting, a 5,000-digit integer, lone surrogates, NaN/Infinity: each a 422
    invalid_request whose reason names the check, on every route that reads JSON."""
    value, reason = hostile.HOSTILE_JSON_VALUES[name]
    body = hostile.JSON_ROUTES[route] % value
    response = api.post(route, content=body.encode(), headers={"Content-Type": "application/json"})
    assert_refused(response, 422, "invalid_request", reason)


@pytest.mark.parametrize("route", sorted(hostile.JSON_ROUTES))
def test_a_json_body_nested_3000_deep_is_a_typed_422(api, route):
    response = api.post(route, content=hostile.nested_array(3000).encode(), headers={"Content-Type": "application/json"})
    assert_refused(response, 422, "invalid_request", "nesting_too_deep")


@pytest.mark.parametrize("route", ["/v1/jobs", "/v1/batches"])
@pytest.mark.parametrize("name", sorted(hostile.HOSTILE_JSON_VALUES))
def test_metadata_form_fields_follow_the_same_json_rules(api, route, name):
    """In a multipart upload metadata is a JSON string: NaN there used to be stored as null
    without a word (202), deep nesting or a 5,000-digit integer gave 500."""
    value, reason = hostile.HOSTILE_JSON_VALUES[name]
    boundary = "b0undary"
    body = hostile.multipart_body(boundary, {"task": "ocr", "metadata": '{"x": %s}' % value},
                                  builders.multipage_text_pdf(1))
    response = api.post(route, content=body, headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
    assert_refused(response, 422, "invalid_request", reason)
    assert api.get("/v1/jobs").json()["jobs"] == []  # nothing was made


@pytest.mark.parametrize("route", ["/v1/jobs", "/v1/batches"])
def test_a_multipart_boundary_over_256_characters_is_a_typed_422(api, route):
    boundary = "b" * 300
    body = hostile.multipart_body(boundary, {"task": "ocr"}, builders.multipage_text_pdf(1))
    response = api.post(route, content=body, headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
    assert_refused(response, 422, "invalid_request", "boundary_too_long")
    ok = "b" * 256  # python-multipart's limit, and ours
    body = hostile.multipart_body(ok, {"task": "ocr"}, builders.multipage_text_pdf(1))
    assert api.post(route, content=body, headers={"Content-Type": f"multipart/form-data; boundary={ok}"}
                    ).status_code == 202


@pytest.mark.parametrize("route", ["/v1/jobs", "/v1/batches", "/v1/reprocess", "/v1/webhooks/endpoints/enable"])
@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded", None])
def test_a_body_in_a_content_type_the_route_does_not_read_is_415(api, route, content_type):
    headers = {"Content-Type": content_type} if content_type else {}
    response = api.post(route, content=b'{"selector": {"schema": "invoice"}}', headers=headers)
    body = assert_refused(response, 415, "unsupported_media_type")
    assert body["content_type"] == content_type


def test_a_trickling_upload_is_dropped_with_408_at_the_body_deadline(stack_settings, serve_api):
    """1 byte every 0.3 s: every read arrives in time, but the body as a whole does not:
    408 request_timeout once request_body_timeout_s (here 2 s) passed since its first read."""
    api = serve_api(stack_settings(request_body_timeout_s=2.0))
    boundary = "slowboundary"
    body = hostile.multipart_body(boundary, {"task": "ocr"}, builders.multipage_text_pdf(1))
    sock = socket.create_connection((api.base_url.host, api.base_url.port), timeout=30)
    sock.sendall((f"POST /v1/jobs HTTP/1.1\r\nHost: x\r\nX-API-Key: {api.headers['X-API-Key']}\r\n"
                  f"Content-Type: multipart/form-data; boundary={boundary}\r\nContent-Length: {len(body)}\r\n\r\n"
                  ).encode())
    started = time.monotonic()
    sock.setblocking(False)
    response = b""
    for byte in body:
        try:
            sock.send(bytes([byte]))
        except (BrokenPipeError, ConnectionResetError):
            break
        time.sleep(0.3)
        try:
            response += sock.recv(65536)
        except BlockingIOError:
            pass
        if b'"code"' in response or time.monotonic() - started > 20:
            break
    elapsed = time.monotonic() - started
    sock.close()
    assert response.startswith(b"HTTP/1.1 408"), response[:300]
    assert b'"code":"request_timeout"' in response.replace(b" ", b"")
    assert 1.5 < elapsed < 6, elapsed
    assert api.get("/v1/jobs").json()["jobs"] == []
