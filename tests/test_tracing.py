"""Tracing hooks: spans per stage with the OpenTelemetry SDK's in-memory exporter.

A real job runs through :mod:`workers.jobflow` (submit -> intake -> pages) on the
session's redis-server and moto S3, with the text engine; the spans it leaves are
checked by name, count and attributes, with tracing on and off.
"""

from __future__ import annotations

import sys

import builders
import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from docproc.base import logs, tracing
from docproc.base.settings import Settings
from docproc.base.storage import open_storage
from docproc.jobs.store import JobRequest, JobStore, connect_redis
from docproc.submission.submit import submit_job
from workers import jobflow
from workers.celery_app import create_app
from workers.pipeline import Engines

PAGES = 2


@pytest.fixture
def exporter():
    """Tracing on, into an in-memory exporter; off again afterwards."""
    memory = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(memory))
    assert tracing.configure(Settings(_env_file=None, otel_enabled=True), provider=provider)
    yield memory
    tracing.configure(Settings(_env_file=None))
    provider.shutdown()


def run_job(settings: Settings, request_id: str) -> str:
    """Submit a PAGES-page text job, then run its intake and pages in this process."""
    store, storage = JobStore(connect_redis(settings), settings), open_storage(settings)
    celery = create_app(settings)
    try:
        with logs.bind(request_id=request_id):
            job = submit_job(store=store, storage=storage, celery=celery, settings=settings, tenant="acme",
                             request=JobRequest(task="ocr", engine="text"),
                             data=builders.multipage_text_pdf(PAGES), filename="doc.pdf").job
            pages = jobflow.run_intake(job.id, settings=settings, store=store, storage=storage,
                                       enqueue=lambda *_: None)
            engines = Engines(settings)
            for page in pages:
                with logs.bind(job_id=job.id):
                    jobflow.run_page(job.id, page, settings=settings, store=store, storage=storage, engines=engines)
    finally:
        celery.close()
    assert store.load(job.id).state == "succeeded"
    return job.id


def test_a_job_leaves_one_span_per_stage_with_the_request_id(service_settings, exporter) -> None:
    job_id = run_job(service_settings, "req-trace-1")
    spans = exporter.get_finished_spans()
    names = sorted(s.name for s in spans)
    assert names == sorted(["docproc.intake"] + ["docproc.render", "docproc.infer", "docproc.store"] * PAGES)
    assert all(s.attributes["docproc.request_id"] == "req-trace-1" for s in spans)
    assert all(s.end_time >= s.start_time for s in spans)
    by_stage = {name: [s for s in spans if s.name == name] for name in set(names)}
    for name in ("docproc.render", "docproc.infer", "docproc.store"):
        assert sorted(s.attributes["docproc.page"] for s in by_stage[name]) == list(range(1, PAGES + 1))
        assert all(s.attributes["docproc.job_id"] == job_id for s in by_stage[name])
    assert {s.attributes["docproc.engine"] for s in by_stage["docproc.infer"]} == {"text"}


def test_no_span_when_tracing_is_off(service_settings, exporter) -> None:
    tracing.configure(Settings(_env_file=None, otel_enabled=False))
    run_job(service_settings, "req-trace-off")
    with tracing.span("render") as current:
        assert current is None
    assert exporter.get_finished_spans() == ()


def test_engine_stages_are_laid_end_to_end_inside_the_engine_span(exporter) -> None:
    timings = {"render": 3.0, "tile": 10.0, "infer": 30.0, "postprocess": 5.0, "page": 50.0}
    with tracing.span("engine", engine="internvl") as engine:
        tracing.stage_spans(timings, page=4)
    spans = {s.name: s for s in exporter.get_finished_spans()}
    assert set(spans) == {"docproc.engine", "docproc.tile", "docproc.infer", "docproc.postprocess"}
    tile, infer, post = spans["docproc.tile"], spans["docproc.infer"], spans["docproc.postprocess"]
    assert [s.end_time - s.start_time for s in (tile, infer, post)] == [10_000_000, 30_000_000, 5_000_000]
    assert tile.end_time == infer.start_time and infer.end_time == post.start_time
    assert all(s.parent.span_id == engine.get_span_context().span_id for s in (tile, infer, post))
    assert all(s.attributes["docproc.page"] == 4 for s in (tile, infer, post))


def test_without_opentelemetry_tracing_stays_off(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "opentelemetry", None)  # import opentelemetry -> ImportError
    assert tracing.configure(Settings(_env_file=None, otel_enabled=True)) is False
    assert not tracing.enabled()
    with tracing.span("intake", job_id="x") as current:
        assert current is None
