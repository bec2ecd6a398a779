"""The queued service's work without a broker: workers.jobflow on a real Redis and moto S3.

The Celery tasks are thin wrappers around these functions; here ``enqueue`` only
records what would be sent, and the tests deliver the pages themselves, in
order, twice, or not at all, as a broker at least once can.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field

import builders
import pymupdf
import pytest

from docproc.base.broker import page_queue
from docproc.base.errors import NotFound, StorageError
from docproc.base.settings import Settings
from docproc.base.storage import (
    S3Storage,
    document_result_key,
    open_storage,
    page_result_key,
)
from docproc.jobs.inputs import open_document
from docproc.jobs.leases import lease_key
from docproc.jobs.results import DocumentResult, PageResult
from docproc.jobs.store import Job, JobRequest, JobStore, PageStatus
from docproc.submission.submit import request_fingerprint
from workers import jobflow
from workers.pipeline import Engines, process_document, route
from workers.render import render_page

TENANT = "acme"


@dataclass
class Flow:
    """One worker's view: settings, the job store, storage, engines, and the pages it was asked to send."""

    settings: Settings
    store: JobStore
    storage: object
    engines: Engines
    sent: list[tuple[str, int, str]] = field(default_factory=list)

    def submit(self, data: bytes, filename: str = "doc.pdf", **request) -> Job:
        req = JobRequest(**request)
        sha = hashlib.sha256(data).hexdigest()
        job, created = self.store.create(
            TENANT, req, input_key=self.storage.put_input(data), input_sha256=sha, size_bytes=len(data),
            filename=filename, idempotency_key=None, fingerprint=request_fingerprint(sha, req),
        )  # fmt: skip
        assert created
        return job

    def enqueue(self, job_id: str, page: int, queue: str) -> str:
        self.sent.append((job_id, page, queue))
        return f"task-{job_id[-6:]}-{page}"

    def intake(self, job_id: str) -> list[int]:
        return jobflow.run_intake(job_id, settings=self.settings, store=self.store, storage=self.storage,
                                  enqueue=self.enqueue)

    def page(self, job_id: str, page: int) -> PageResult | None:
        return jobflow.run_page(job_id, page, settings=self.settings, store=self.store, storage=self.storage,
                                engines=self.engines)

    def run(self, job_id: str) -> Job:
        """Intake, then every page sent, in order; returns the job as stored."""
        self.intake(job_id)
        for jid, page, _ in list(self.sent):
            if jid == job_id:
                self.page(jid, page)
        return self.store.load(job_id)

    def document(self, job_id: str) -> DocumentResult:
        return DocumentResult.model_validate_json(self.storage.get(document_result_key(job_id)))


@pytest.fixture
def flow_settings(service_settings, tiny_settings) -> Settings:
    """The service's Redis + S3 bucket, with the tiny model and its small token budgets."""
    model_fields = ("model", "device", "max_new_tokens_ocr", "max_new_tokens_tables", "max_new_tokens_extract")
    return service_settings.model_copy(update={name: getattr(tiny_settings, name) for name in model_fields})


@pytest.fixture
def flow(flow_settings, redis_client, model_worker_online) -> Flow:
    """A flow whose model engine loads lazily (text-only jobs never load it); it counts as a model
    worker online, so intake queues model pages."""
    store = JobStore(redis_client, flow_settings)
    return Flow(flow_settings, store, open_storage(flow_settings), Engines(flow_settings))


@pytest.fixture
def model_flow(flow, tiny_engine) -> Flow:
    """A flow whose model engine is the session's tiny InternVL."""
    flow.engines = Engines(flow.settings, _internvl=tiny_engine)
    return flow


def text_and_scan_pdf() -> bytes:
    """Page 1 the born-digital invoice, page 2 a scan of it (no text layer)."""
    doc = pymupdf.open(stream=builders.invoice_pdf(), filetype="pdf")
    doc.insert_pdf(pymupdf.open(stream=builders.scanned_pdf(), filetype="pdf"))
    return doc.tobytes()


# --------------------------------------------------------------------- whole jobs


def test_text_pdf_job_end_to_end(flow):
    data = builders.multipage_text_pdf(3)
    job = flow.submit(data, filename="three.pdf", task="ocr")

    assert flow.intake(job.id) == [1, 2, 3]
    assert flow.sent == [(job.id, n, "render") for n in (1, 2, 3)]
    running = flow.store.load(job.id)
    assert running.state == "running" and running.pages == [1, 2, 3] and running.page_count == 3
    assert running.media_type == "application/pdf"
    assert running.task_ids == [f"task-{job.id[-6:]}-{n}" for n in (1, 2, 3)]

    for _, page, _ in flow.sent:
        result = flow.page(job.id, page)
        assert result.status == "succeeded" and result.engine == "text"
    done = flow.store.load(job.id)
    assert done.state == "succeeded" and done.pages_done == 3 and done.pages_failed == 0
    assert done.result_key == document_result_key(job.id) and done.error is None and done.model is None

    document = flow.document(job.id)
    assert document.status == "succeeded" and document.engine == "text" and document.model is None
    assert document.document.filename == "three.pdf" and document.document.page_count == 3
    assert document.document.sha256 == hashlib.sha256(data).hexdigest()
    # the queued service reads the pages exactly as the in-process pipeline (the CLI) does
    local = process_document(data, filename="three.pdf", task="ocr", settings=flow.settings)
    assert [p.text for p in document.pages] == [p.text for p in local.pages]
    for n, page in enumerate(document.pages, start=1):
        assert page.text.startswith(f"Line 1 of page {n}:") and page.headers == [f"Page {n} of 3"]
        stored = PageResult.model_validate_json(flow.storage.get(page_result_key(job.id, n)))
        assert stored == page
    assert {"queued", "render", "text", "total"} <= set(document.timings_ms)
    assert [(p.page, p.state, p.attempts) for p in flow.store.pages(job.id)] == [(n, "succeeded", 1) for n in (1, 2, 3)]


def test_a_page_read_from_its_text_layer_is_not_drawn(flow, monkeypatch):
    """The page path draws a page only for a model: a text job's pages go without a pixmap
    and their results keep the size of the image they would have had."""
    import pymupdf

    drawn: list[int] = []
    real = pymupdf.Page.get_pixmap
    monkeypatch.setattr(pymupdf.Page, "get_pixmap", lambda page, *a, **k: drawn.append(page.number) or real(page, *a, **k))
    job = flow.submit(builders.multipage_text_pdf(2), task="tables", engine="text")
    assert flow.run(job.id).state == "succeeded"
    assert drawn == [] and {(p.width, p.height) for p in flow.document(job.id).pages} == {(896, 1344)}


def test_scan_page_goes_to_the_gpu_queue_and_the_model(model_flow):
    flow = model_flow
    job = flow.submit(text_and_scan_pdf(), task="ocr", engine="auto")
    done = flow.run(job.id)

    assert [(page, queue) for _, page, queue in flow.sent] == [(1, "render"), (2, "gpu")]
    document = flow.document(job.id)
    text_page, scan_page = document.pages
    assert text_page.engine == "text" and builders.INVOICE_NUMBER in text_page.text
    assert scan_page.engine == "internvl" and scan_page.tiles >= 1 and not scan_page.has_text_layer
    assert scan_page.status == "succeeded" or scan_page.error.code in {"invalid_output", "degenerate_output"}
    assert document.engine == "internvl+text" and document.model == flow.settings.model
    assert done.state == document.status and done.model == flow.settings.model


def test_extract_job_merges_pages_with_the_schema(model_flow):
    flow = model_flow
    job = flow.submit(builders.invoice_pdf(), task="extract", schema="invoice")
    done = flow.run(job.id)

    assert [queue for *_, queue in flow.sent] == ["gpu"]  # extract always needs the model
    document = flow.document(job.id)
    (page,) = document.pages
    assert document.schema_name == "invoice" and document.schema_version
    assert done.schema_version == document.schema_version
    if page.status == "succeeded":
        assert document.fields == page.fields and set(document.provenance) == set(page.fields)
    else:  # random tiny weights: the honest outcome is a page that did not parse, raw text kept
        assert page.error.code in {"invalid_output", "degenerate_output"} and page.raw_output is not None
        assert document.status == "failed" and done.error.code == page.error.code


@pytest.mark.parametrize(
    ("request_fields", "queues"),
    [
        ({"task": "ocr", "engine": "auto"}, ["render", "gpu"]),
        ({"task": "tables", "engine": "auto", "priority": "bulk"}, ["bulk", "gpu"]),
        ({"task": "ocr", "engine": "text"}, ["render", "render"]),
        ({"task": "ocr", "engine": "internvl"}, ["gpu", "gpu"]),
        ({"task": "extract", "schema": "invoice"}, ["gpu", "gpu"]),
    ],
)
def test_intake_routes_pages_by_text_layer_task_engine_and_priority(flow, request_fields, queues):
    data = text_and_scan_pdf()
    job = flow.submit(data, **request_fields)
    flow.intake(job.id)
    assert [queue for *_, queue in flow.sent] == queues
    # the plan made without rendering agrees with the route the rendered page takes
    request = flow.store.load(job.id).request
    with open_document(data, settings=flow.settings) as doc:
        routed = [route(render_page(doc, n, flow.settings), request.task, request.engine) for n in (1, 2)]
    assert [page_queue(engine, request.priority) for engine in routed] == queues


def test_text_engine_on_a_scan_reports_needs_model(flow):
    job = flow.submit(text_and_scan_pdf(), task="ocr", engine="text")
    done = flow.run(job.id)
    assert done.state == "partial" and done.pages_done == 1 and done.pages_failed == 1
    assert flow.document(job.id).pages[1].error.code == "needs_model"


def test_a_truncated_pdf_job_records_repaired_and_fails_the_lost_pages_as_corrupt(flow):
    """The service says what the CLI says about a PDF cut to 90 %: the job and its document
    carry a repaired warning naming the pages that lost content; those pages go to the
    CPU queue (not the model's: they are not scans) and fail corrupt_document."""
    data = builders.book_pdf(48)
    cut = data[: len(data) * 9 // 10]
    job = flow.submit(cut, task="ocr", engine="auto")
    done = flow.run(job.id)
    local = process_document(cut, task="ocr", engine="auto", settings=flow.settings)
    lost = local.warnings[0].pages
    assert lost and {queue for _, page, queue in flow.sent if page in lost} == {"render"}
    assert done.state == "partial" and done.pages_failed == len(lost)
    assert [(w.code, w.pages) for w in done.warnings] == [("repaired", lost)]
    document = flow.document(job.id)
    assert document.warnings == local.warnings
    assert [(p.page, p.error.code) for p in document.pages if p.error] == [(n, "corrupt_document") for n in lost]
    assert all([w.code for w in document.pages[n - 1].warnings] == ["repaired"] for n in lost)


def test_a_page_with_lone_surrogates_is_stored_cleaned_not_failed(flow):
    job = flow.submit(builders.surrogate_table_pdf(), task="tables", engine="text")
    done = flow.run(job.id)
    assert done.state == "succeeded", flow.store.pages(job.id)
    rows = flow.document(job.id).pages[0].tables[0].rows
    assert [row[0] for row in rows] == list(builders.SURROGATE_CELLS)


# --------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("data", "request_fields", "code"),
    [
        (builders.encrypted_pdf(), {}, "encrypted_document"),
        (b"just some plain text, not a document", {}, "unsupported_type"),
        (builders.truncated_pdf(), {}, "corrupt_document"),
        (builders.multipage_text_pdf(2), {"pages": "5"}, "invalid_page_range"),
        (builders.invoice_pdf(), {"task": "extract", "schema": "no_such_schema"}, "unknown_schema"),
    ],
)
def test_bad_input_fails_the_job_with_its_code(flow, data, request_fields, code):
    job = flow.submit(data, **request_fields)
    assert flow.intake(job.id) == []
    failed = flow.store.load(job.id)
    assert failed.state == "failed" and failed.error.code == code and failed.finished_at is not None
    assert flow.sent == [] and not flow.storage.exists(document_result_key(job.id))


def test_too_many_pages_at_the_worker_fails_the_job(flow):
    job = flow.submit(builders.multipage_text_pdf(3))
    flow.settings = flow.settings.model_copy(update={"max_pages": 2})
    flow.intake(job.id)
    assert flow.store.load(job.id).error.code == "too_many_pages"


def test_a_transient_storage_fault_raises_and_leaves_the_job_queued(flow, flow_settings):
    job = flow.submit(builders.multipage_text_pdf(1))
    bucket = flow_settings.storage_url.removeprefix("s3://").strip("/")
    with socket_on_a_closed_port() as port:
        flow.storage = S3Storage(bucket, endpoint_url=f"http://127.0.0.1:{port}", max_attempts=1, connect_timeout=1)
        with pytest.raises(StorageError) as info:
            flow.intake(job.id)
    assert info.value.retryable and jobflow.is_transient(info.value)
    assert flow.store.load(job.id).state == "queued" and flow.sent == []


class socket_on_a_closed_port:
    """A loopback port that refuses connections (bound, never listening)."""

    def __enter__(self) -> int:
        import socket

        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        return self.sock.getsockname()[1]

    def __exit__(self, *exc) -> None:
        self.sock.close()


# --------------------------------------------------------------------- at least once


def test_a_duplicate_page_delivery_is_recorded_once(flow):
    job = flow.submit(builders.multipage_text_pdf(2))
    flow.intake(job.id)
    first = flow.page(job.id, 1)
    again = flow.page(job.id, 1)  # redelivered: finds its stored result
    assert again == first
    assert flow.store.load(job.id).pages_done == 1

    # a second delivery that computed something else loses to the stored result
    other = PageResult(page=1, status="failed", engine="text", error={"code": "needs_model", "message": "x"})
    kept = jobflow.record_page(job.id, other, attempts=2, settings=flow.settings, store=flow.store,
                               storage=flow.storage)
    assert kept == first and flow.store.load(job.id).pages_failed == 0

    flow.page(job.id, 2)
    done = flow.store.load(job.id)
    stored = flow.storage.get(document_result_key(job.id))
    flow.page(job.id, 2)  # the last page delivered again: no second finalise
    flow.page(job.id, 1)
    after = flow.store.load(job.id)
    assert after.state == "succeeded" and after.finished_at == done.finished_at
    assert after.pages_done == 2 and flow.storage.get(document_result_key(job.id)) == stored
    assert [p.page for p in flow.document(job.id).pages] == [1, 2]


def test_a_finaliser_lost_after_the_last_page_is_recovered_by_the_redelivery(flow):
    job = flow.submit(builders.multipage_text_pdf(2))
    flow.intake(job.id)
    flow.page(job.id, 1)
    # the delivery of page 2 stored its result and counted it, then its worker died
    result = jobflow.process_page(flow.store.load(job.id), 2, settings=flow.settings, storage=flow.storage,
                                  engines=flow.engines)
    flow.storage.put_result(page_result_key(job.id, 2), result.model_dump_json().encode())
    assert flow.store.page_finished(job.id, PageStatus(page=2, state="succeeded", engine="text")) == 0
    assert flow.store.load(job.id).state == "running"

    flow.page(job.id, 2)  # the broker delivers page 2 again
    done = flow.store.load(job.id)
    assert done.state == "succeeded" and done.pages_done == 2
    assert flow.document(job.id).pages[1] == result


def test_a_redelivered_intake_enqueues_only_unfinished_pages(flow):
    job = flow.submit(builders.multipage_text_pdf(3))
    flow.intake(job.id)
    flow.page(job.id, 1)
    flow.sent.clear()
    assert flow.intake(job.id) == [2, 3]
    assert [page for _, page, _ in flow.sent] == [2, 3]
    assert flow.store.load(job.id).pages == [1, 2, 3]


def test_a_page_started_more_than_max_attempts_fails_as_poison(flow):
    flow.settings = flow.settings.model_copy(update={"max_attempts": 2})
    job = flow.submit(builders.multipage_text_pdf(2))
    flow.intake(job.id)
    flow.store.page_started(job.id, 2)  # two deliveries lost with their workers
    flow.store.page_started(job.id, 2)
    flow.page(job.id, 1)
    result = flow.page(job.id, 2)

    assert result.status == "failed" and result.error.code == "too_many_attempts"
    done = flow.store.load(job.id)
    assert done.state == "partial" and done.pages_failed == 1
    statuses = {p.page: p for p in flow.store.pages(job.id)}
    assert statuses[2].error.code == "too_many_attempts" and statuses[2].attempts == 3
    assert statuses[1].attempts == 1
    assert flow.document(job.id).pages[1].error.code == "too_many_attempts"


def test_starts_that_were_retries_after_transient_faults_are_not_poison(flow):
    flow.settings = flow.settings.model_copy(update={"max_attempts": 1})
    job = flow.submit(builders.multipage_text_pdf(1))
    flow.intake(job.id)
    flow.store.page_started(job.id, 1)  # two starts that raised a transient fault and were retried
    flow.store.page_started(job.id, 1)
    result = jobflow.run_page(job.id, 1, settings=flow.settings, store=flow.store, storage=flow.storage,
                              engines=flow.engines, retries=2)
    assert result.status == "succeeded" and flow.store.load(job.id).state == "succeeded"
    assert flow.store.pages(job.id)[0].attempts == 3


def test_a_job_canceled_before_intake_enqueues_nothing(flow):
    job = flow.submit(builders.multipage_text_pdf(2))
    flow.store.cancel(TENANT, job.id)
    assert flow.intake(job.id) == [] and flow.sent == []
    assert flow.store.load(job.id).state == "canceled"


def test_a_job_canceled_while_running_stops_its_pages(flow):
    job = flow.submit(builders.multipage_text_pdf(3))
    flow.intake(job.id)
    flow.page(job.id, 1)
    flow.store.cancel(TENANT, job.id)
    assert flow.page(job.id, 2) is None and flow.page(job.id, 3) is None
    assert not flow.storage.exists(page_result_key(job.id, 2))
    assert jobflow.finalise_job(job.id, settings=flow.settings, store=flow.store, storage=flow.storage) is None
    canceled = flow.store.load(job.id)
    assert canceled.state == "canceled" and canceled.pages_done == 1
    assert not flow.storage.exists(document_result_key(job.id))


def test_fail_page_records_a_task_that_ended_without_a_result(flow):
    job = flow.submit(builders.multipage_text_pdf(2))
    flow.intake(job.id)
    flow.page(job.id, 1)
    jobflow.fail_page(job.id, 2, "timeout", "the task ran past its time limit", settings=flow.settings,
                      store=flow.store, storage=flow.storage)
    done = flow.store.load(job.id)
    assert done.state == "partial" and flow.document(job.id).pages[1].error.code == "timeout"
    # a page with a stored result keeps it
    jobflow.fail_page(job.id, 1, "internal_error", "x", settings=flow.settings, store=flow.store, storage=flow.storage)
    assert flow.document(job.id).pages[0].status == "succeeded"


# --------------------------------------------------------------------- inference timeout


def test_an_engine_call_past_the_inference_timeout_fails_the_page(model_flow):
    flow = model_flow
    flow.settings = flow.settings.model_copy(update={"inference_timeout_s": 0})
    job = flow.submit(builders.scanned_pdf(), task="ocr")
    done = flow.run(job.id)

    (page,) = flow.document(job.id).pages
    assert page.engine == "internvl" and page.error.code == "timeout"
    assert done.state == "failed" and done.error.code == "timeout"
    deadline = time.monotonic() + 30  # the abandoned call finishes on its own
    while jobflow.inference_still_running() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not jobflow.inference_still_running()


def test_call_with_timeout_returns_and_raises_like_the_call():
    assert jobflow.call_with_timeout(lambda: 42, 5) == 42
    with pytest.raises(ZeroDivisionError):
        jobflow.call_with_timeout(lambda: 1 / 0, 5)
    with pytest.raises(jobflow.InferenceTimeout):
        jobflow.call_with_timeout(lambda: time.sleep(0.5), 0.05)


def test_read_input_downloads_a_document_once_for_its_pages_in_a_row(tmp_path):
    from docproc.base.storage import LocalStorage

    storage = LocalStorage(tmp_path / "store")
    first, second = storage.put_input(b"%PDF-1.7 first"), storage.put_input(b"%PDF-1.7 second")
    assert jobflow.read_input(storage, first) == b"%PDF-1.7 first"
    (tmp_path / "store" / first).unlink()  # gone from storage: the next read of it comes from memory
    assert jobflow.read_input(storage, first) == b"%PDF-1.7 first"
    assert jobflow.read_input(storage, second) == b"%PDF-1.7 second"
    with pytest.raises(NotFound):  # only the last input is kept
        jobflow.read_input(storage, first)


# ------------------------------------------------------------------ a one-page job's page in its intake


def _run_here(flow: Flow, queues: set[str], ran: list[tuple[str, int, str]]) -> jobflow.RunHere:
    def run(job_id: str, page: int, queue: str, doc) -> None:
        ran.append((job_id, page, queue))
        jobflow.run_page(job_id, page, settings=flow.settings, store=flow.store, storage=flow.storage,
                         engines=flow.engines, doc=doc)

    return jobflow.RunHere(queues=frozenset(queues), run=run)


def test_a_one_page_jobs_page_runs_inside_its_intake_and_is_recorded_once(flow):
    job = flow.submit(builders.invoice_pdf(), task="ocr", engine="text")
    ran: list[tuple[str, int, str]] = []
    pages = jobflow.run_intake(job.id, settings=flow.settings, store=flow.store, storage=flow.storage,
                               enqueue=flow.enqueue, run_here=_run_here(flow, {"render", "intake"}, ran))
    assert pages == [1] and flow.sent == [] and ran == [(job.id, 1, "render")]
    done = flow.store.load(job.id)
    assert done.state == "succeeded" and done.pages_done == 1 and done.task_ids == []
    [status] = flow.store.pages(job.id)
    assert status.state == "succeeded" and status.attempts == 1
    assert flow.document(job.id).pages[0].text and flow.storage.exists(page_result_key(job.id, 1))

    # a redelivered intake of the ended job runs nothing again
    assert jobflow.run_intake(job.id, settings=flow.settings, store=flow.store, storage=flow.storage,
                              enqueue=flow.enqueue, run_here=_run_here(flow, {"render"}, ran)) == []
    assert len(ran) == 1 and flow.store.pages(job.id)[0].attempts == 1


@pytest.mark.parametrize(
    "data, request_fields, queues, why",
    [
        (builders.multipage_text_pdf(2, lines_per_page=3), {"task": "ocr", "engine": "text"}, {"render"}, "two pages"),
        (builders.invoice_pdf(), {"task": "ocr", "engine": "text", "priority": "bulk"}, {"render"}, "bulk not taken"),
        (builders.scanned_pdf(), {"task": "ocr", "engine": "auto"}, {"render"}, "a model page"),
    ],
)
def test_intake_sends_the_page_when_the_job_has_more_pages_or_its_queue_is_not_taken(
    flow, data, request_fields, queues, why
):
    job = flow.submit(data, **request_fields)
    ran: list[tuple[str, int, str]] = []
    pages = jobflow.run_intake(job.id, settings=flow.settings, store=flow.store, storage=flow.storage,
                               enqueue=flow.enqueue, run_here=_run_here(flow, queues, ran))
    assert ran == [], why
    assert [(page, queue) for _, page, queue in flow.sent] == [
        (n, page_queue("internvl" if why == "a model page" else "text", request_fields.get("priority", "normal")))
        for n in pages
    ]
    assert flow.store.load(job.id).state == "running"


def test_a_redelivered_intake_runs_the_unfinished_page_of_its_one_page_job_again(flow):
    """The worker died in the page that ran inside the intake: the intake's redelivery runs
    it again (a second attempt, under a fresh lease), and the job ends once."""
    job = flow.submit(builders.invoice_pdf(), task="ocr", engine="text")
    died: list[tuple[str, int, str]] = []

    def killed(job_id: str, page: int, queue: str, doc) -> None:  # took the page's first start, then died
        died.append((job_id, page, queue))
        flow.store.first_start(job_id, page, lease_key=lease_key(job_id, page), token="dead", ttl_ms=1)

    jobflow.run_intake(job.id, settings=flow.settings, store=flow.store, storage=flow.storage,
                       enqueue=flow.enqueue, run_here=jobflow.RunHere(queues=frozenset({"render"}), run=killed))
    assert died and flow.store.load(job.id).state == "running"
    time.sleep(0.01)  # the dead owner's lease (1 ms) has expired
    ran: list[tuple[str, int, str]] = []
    assert jobflow.run_intake(job.id, settings=flow.settings, store=flow.store, storage=flow.storage,
                              enqueue=flow.enqueue, run_here=_run_here(flow, {"render"}, ran)) == [1]
    assert ran == [(job.id, 1, "render")] and flow.sent == []
    assert flow.store.load(job.id).state == "succeeded"
    assert flow.store.pages(job.id)[0].attempts == 2
