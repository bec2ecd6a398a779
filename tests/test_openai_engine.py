"""The ``openai`` engine against a real chat-completions HTTP server on loopback.

The server (tests/openai_server.py) checks each request's shape and records what
it saw; no HTTP call is mocked. vLLM itself cannot run here (no GPU).
"""

from __future__ import annotations

import base64
import io
import json
import random
import sys
import threading
from email.utils import formatdate
from pathlib import Path

import builders
import httpx
import pytest
from openai_server import FakeChatServer
from PIL import Image

from docproc.base.errors import EngineUnavailable, InferenceServerUnavailable
from docproc.base.settings import Settings
from docproc.cli.localservices import free_port
from docproc.jobs.schemas import get_registry
from workers.engines.openai import (
    OpenAIEngine,
    backoff_s,
    encode_page_image,
    retry_after_s,
)
from workers.pages import RenderedPage
from workers.pipeline import Engines, process_document

MODEL = "internvl-test"
KEY = "sk-test-123"


@pytest.fixture
def server():
    with FakeChatServer(model=MODEL, api_key=KEY) as s:
        yield s


def engine_for(server: FakeChatServer | None, **overrides) -> OpenAIEngine:
    base = {"openai_base_url": server.url if server else None, "openai_api_key": KEY, "openai_model": MODEL,
            "openai_backoff_s": 0.01, "openai_backoff_max_s": 5.0}
    return OpenAIEngine(Settings(_env_file=None, **{**base, **overrides}))


def page(number: int = 1, size: tuple[int, int] = (620, 877), text: str | None = None) -> RenderedPage:
    image = Image.open(io.BytesIO(builders.png_image(*size)))
    return RenderedPage(number=number, image=image.convert("RGB"), text=text, has_text_layer=bool(text))


# --- the three tasks ---------------------------------------------------------------------


def test_ocr_tables_extract_through_the_engine(server):
    engine = engine_for(server)
    [ocr] = engine.process([page(text="Invoice INV-7 total 12.00")], "ocr")
    assert ocr.status == "succeeded" and ocr.engine == "openai" and "Hello from the test server" in ocr.text
    [tables] = engine.process([page()], "tables")
    assert tables.status == "succeeded" and tables.tables[0].rows == [["item", "amount"], ["Widget", "12.50"]]
    schema = get_registry().get("invoice")
    [extract] = engine.process([page()], "extract", schema)
    assert extract.status == "succeeded", extract.error
    assert not list(schema.validator.iter_errors(extract.fields))  # valid under the ORIGINAL schema
    assert extract.fields["vendor"]["name"] == "Sample"
    assert server.problems == []  # every request had the right shape
    ocr_body, tables_body, extract_body = server.requests
    assert "response_format" not in ocr_body and "response_format" not in tables_body
    assert "<<<\nInvoice INV-7 total 12.00" in json.dumps(ocr_body["messages"]).replace("\\n", "\n")  # text hint
    fmt = extract_body["response_format"]["json_schema"]
    assert fmt == {"name": "invoice", "schema": schema.model_schema(), "strict": True}
    assert extract_body["max_tokens"] == engine.settings.max_new_tokens_extract


@pytest.mark.parametrize("fmt", ["png", "jpeg"])
def test_page_images_are_size_capped_data_urls(fmt):
    big = Image.new("RGB", (4000, 3000), "white")
    url, (w, h) = encode_page_image(big, fmt=fmt, max_pixels=1_000_000)
    head, data = url.split(",", 1)
    assert head == f"data:image/{fmt};base64"
    decoded = Image.open(io.BytesIO(base64.b64decode(data)))
    assert decoded.format.lower() == fmt and decoded.size == (w, h)
    assert w * h <= 1_000_000 and abs(w / h - 4 / 3) < 0.01


def test_the_api_key_is_sent_and_a_wrong_one_fails_the_page_with_a_code(server):
    [ok] = engine_for(server).process([page()], "ocr")
    assert ok.status == "succeeded"
    [bad] = engine_for(server, openai_api_key="sk-wrong").process([page()], "ocr")
    assert bad.status == "failed" and bad.error.code == "inference_server_error"
    assert "sk-wrong" not in bad.error.message and "HTTP 400" in bad.error.message


def test_no_base_url_is_a_typed_configuration_error():
    with pytest.raises(EngineUnavailable) as info:
        engine_for(None)
    assert info.value.code == "engine_unavailable" and "DOCPROC_OPENAI_BASE_URL" in info.value.message


# --- retries, backoff, timeouts --------------------------------------------------------------


@pytest.mark.parametrize("status", [429, 500, 503])
def test_429_and_5xx_are_retried(server, status):
    server.fail = [status, status]
    [result] = engine_for(server, openai_max_retries=3).process([page()], "ocr")
    assert result.status == "succeeded"
    assert len(server.arrivals) == 3


def test_retry_after_is_honoured(server):
    server.fail, server.retry_after = [429], "1"
    [result] = engine_for(server, openai_backoff_s=0.0).process([page()], "ocr")
    assert result.status == "succeeded"
    first, second = server.arrivals
    assert second - first >= 0.95  # the header's 1 s, not the 0 s backoff


def test_retry_after_parsing_and_backoff_bounds():
    def resp(value: str) -> httpx.Response:
        return httpx.Response(429, headers={"Retry-After": value})

    assert retry_after_s(resp("7")) == 7.0
    assert 55 <= retry_after_s(resp(formatdate(timeval=__import__("time").time() + 60, usegmt=True))) <= 60
    assert retry_after_s(resp("soon")) is None and retry_after_s(None) is None
    rng = random.Random(0)
    delays = [backoff_s(n, base_s=0.5, max_s=4.0, rng=rng) for n in range(6)]
    for n, d in enumerate(delays):  # doubling, capped, jittered into the upper half
        cap = min(4.0, 0.5 * 2**n)
        assert cap / 2 <= d <= cap


def test_a_long_retry_after_gives_up_at_once(server):
    server.fail, server.retry_after = [429, 429], "3600"
    with pytest.raises(InferenceServerUnavailable) as info:
        engine_for(server).process([page()], "ocr")
    assert info.value.code == "inference_server_unavailable" and "3600" in info.value.message
    assert len(server.arrivals) == 1


def test_server_failing_every_retry_raises_the_typed_transient_error(server):
    server.fail = [502] * 10
    with pytest.raises(InferenceServerUnavailable) as info:
        engine_for(server, openai_max_retries=2).process([page()], "ocr")
    assert "3 time(s)" in info.value.message and "HTTP 502" in info.value.message
    assert len(server.arrivals) == 3


def test_server_down_raises_the_typed_transient_error():
    port = free_port()  # nothing listens there
    engine = OpenAIEngine(Settings(_env_file=None, openai_base_url=f"http://127.0.0.1:{port}/v1",
                                   openai_max_retries=1, openai_backoff_s=0.01))
    with pytest.raises(InferenceServerUnavailable) as info:
        engine.process([page()], "ocr")
    assert "connection failed" in info.value.message


def test_slow_server_times_out_with_a_code(server):
    server.delay_s = 1.5
    [result] = engine_for(server, openai_timeout_s=0.3).process([page()], "ocr")
    assert result.status == "failed" and result.error.code == "timeout"
    assert len(server.arrivals) == 1  # a timed-out request is not sent again


def test_garbage_answer_fails_the_page_with_a_code(server):
    server.garbage = True
    [result] = engine_for(server).process([page()], "ocr")
    assert result.status == "failed" and result.error.code == "inference_server_error"
    assert "not JSON" in result.error.message


# --- concurrency ---------------------------------------------------------------------------


def test_concurrency_limit_is_honoured_across_calls(server):
    server.delay_s = 0.15
    engine = engine_for(server, openai_max_concurrency=2)
    pages = [page(n, size=(200, 200)) for n in range(1, 7)]
    results: list = []
    callers = [threading.Thread(target=lambda: results.extend(engine.process(pages, "ocr"))) for _ in range(2)]
    for t in callers:
        t.start()
    for t in callers:
        t.join()
    assert len(results) == 12 and all(r.status == "succeeded" for r in results)
    assert server.max_in_flight == 2  # reached, never exceeded


def test_one_bad_page_does_not_fail_the_others(server):
    broken = RenderedPage(number=2, image=Image.new("RGB", (0, 0)))
    results = engine_for(server).process([page(1), broken, page(3)], "ocr")
    assert [r.status for r in results] == ["succeeded", "failed", "succeeded"]
    assert results[1].error.code == "inference_error"


# --- whole documents ------------------------------------------------------------------------


def test_whole_document_through_process_document(server):
    settings = Settings(_env_file=None, openai_base_url=server.url, openai_api_key=KEY, openai_model=MODEL)
    result = process_document(builders.scanned_pdf(), filename="scan.pdf", task="extract", schema="invoice",
                              engine="openai", settings=settings, engines=Engines(settings))
    assert result.status == "succeeded" and result.engine == "openai" and result.model == MODEL
    assert result.fields is not None and not list(get_registry().get("invoice").validator.iter_errors(result.fields))
    assert server.problems == [] and len(server.requests) == len(result.pages)


def test_cli_process_with_engine_openai(server, tmp_path: Path, monkeypatch):
    from docproc.base.settings import get_settings
    from docproc.cli import commands as cli

    monkeypatch.setenv("DOCPROC_OPENAI_BASE_URL", server.url)
    monkeypatch.setenv("DOCPROC_OPENAI_API_KEY", KEY)
    monkeypatch.setenv("DOCPROC_OPENAI_MODEL", MODEL)
    get_settings.cache_clear()
    try:
        src = tmp_path / "photo.jpg"
        src.write_bytes(builders.jpeg_photo())
        code = cli.main(["process", str(src), "--engine", "openai", "--task", "ocr", "--out", str(tmp_path / "out"),
                         "--no-progress"])
    finally:
        get_settings.cache_clear()
    assert code == 0
    [out] = (tmp_path / "out").glob("*.json")
    doc = json.loads(out.read_text())
    assert doc["engine"] == "openai" and doc["pages"][0]["text"].startswith("# Test page")


# --- the queued service ----------------------------------------------------------------------


@pytest.mark.worker
def test_a_cpu_only_worker_runs_an_openai_job(service_settings, redis_client, server, tmp_path):
    """A worker that consumes intake + render only (no gpu queue, no model) finishes an
    engine=openai extract job: its pages went to the render queue and to the server."""
    from conftest import ServiceProcess, settings_env, wait_until
    from test_worker import submit

    from docproc.base.storage import document_result_key, open_storage
    from docproc.jobs.results import DocumentResult
    from docproc.jobs.store import TERMINAL, JobStore

    store = JobStore(redis_client, service_settings)
    env = settings_env(service_settings, openai_base_url=server.url, openai_api_key=KEY, openai_model=MODEL)
    worker = ServiceProcess([sys.executable, "-m", "workers", "--queues", "intake,render", "-c", "1",
                             "-n", "openai@%h"], env, tmp_path / "worker.log")
    try:
        job = submit(service_settings, store, builders.tiff_multipage(2), "scan.tiff", task="extract",
                     schema="invoice", engine="openai")
        wait_until(lambda: store.load(job.id).state in TERMINAL, 90, f"job {job.id}", [worker])
        done = store.load(job.id)
        doc = DocumentResult.model_validate_json(open_storage(service_settings).get(document_result_key(job.id)))
    finally:
        worker.stop()
    assert done.state == "succeeded", worker.tail()
    assert [p.engine for p in doc.pages] == ["openai", "openai"] and doc.model == MODEL
    assert doc.fields is not None and not list(get_registry().get("invoice").validator.iter_errors(doc.fields))
    assert len(server.requests) == 2 and server.problems == []
    assert KEY not in worker.log()  # the API key is never logged


def test_an_answer_with_lone_surrogate_escapes_still_gives_a_serialisable_result(server, monkeypatch):
    """A server's JSON may carry "\\ud835" escapes (a split or lone UTF-16 half): valid JSON,
    but no UTF-8 text. The page keeps its text, cleaned where it leaves the engine."""
    monkeypatch.setattr(server, "answer", lambda body: "Math: \ud835\udc65 and a lone \ud835 half")
    settings = Settings(_env_file=None, openai_base_url=server.url, openai_api_key=KEY, openai_model=MODEL)
    result = process_document(builders.scanned_pdf(), task="ocr", engine="openai", settings=settings,
                              engines=Engines(settings))
    assert result.status == "succeeded"
    assert {p.text for p in result.pages} == {"Math: \U0001d465 and a lone \ufffd half"}
    result.model_dump_json().encode("utf-8")
