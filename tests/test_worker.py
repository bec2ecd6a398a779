"""Real Celery workers (subprocesses) on a real redis-server, with moto S3 and the tiny InternVL.

Jobs are submitted the way the API submits them (:func:`docproc.submission.submit.submit_job`:
input to S3, job in the JobStore, ``docproc.intake`` sent by name) and followed in
the JobStore until they end. The crash test kills workers with SIGKILL mid-page
and checks that the job still ends exactly once.

Slow (each worker imports torch and loads the model): marked ``worker``;
``pytest -m "not worker"`` skips them.
"""

from __future__ import annotations

import os
import re
import signal
import sys
import time

import boto3
import builders
import pytest
from conftest import settings_env, wait_until

from docproc.base.settings import Settings
from docproc.base.storage import document_result_key, open_storage, page_result_key
from docproc.jobs.results import DocumentResult
from docproc.jobs.store import TERMINAL, Job, JobRequest, JobStore
from docproc.submission.submit import submit_job
from workers.celery_app import create_app

pytestmark = pytest.mark.worker

TENANT = "acme"


@pytest.fixture
def worker_settings(service_settings, tiny_settings, model_worker_online) -> Settings:
    """The service with the tiny model; model work is accepted before the tests' model workers load."""
    return service_settings.model_copy(update={
        "model": tiny_settings.model, "device": "cpu", "max_new_tokens_ocr": 24,
    })  # fmt: skip


def submit(settings: Settings, store: JobStore, data: bytes, filename: str, **request) -> Job:
    celery = create_app(settings)
    try:
        submitted = submit_job(store=store, storage=open_storage(settings), celery=celery, settings=settings,
                               tenant=TENANT, request=JobRequest(**request), data=data, filename=filename)
    finally:
        celery.close()
    return submitted.job


def s3_keys(settings: Settings, prefix: str) -> list[str]:
    bucket = settings.storage_url.removeprefix("s3://").strip("/")
    s3 = boto3.client("s3", endpoint_url=settings.s3_endpoint_url, region_name=settings.s3_region)
    return sorted(o["Key"] for o in s3.list_objects_v2(Bucket=bucket, Prefix=prefix).get("Contents", []))


def test_a_worker_runs_text_and_scan_jobs_end_to_end(worker_settings, redis_client, workers):
    store = JobStore(redis_client, worker_settings)
    # `python -m workers` picks the pool: solo, because the worker consumes the gpu queue
    worker = workers([sys.executable, "-m", "workers", "--queues", "intake,render,gpu", "-n", "e2e@%h"],
                     settings_env(worker_settings))
    text_job = submit(worker_settings, store, builders.multipage_text_pdf(2), "text.pdf", task="ocr")
    scan_job = submit(worker_settings, store, builders.tiff_multipage(2), "scan.tiff", task="ocr")

    for job in (text_job, scan_job):
        wait_until(lambda: store.load(job.id).state in TERMINAL, 60, f"job {job.id}", [worker])
    storage = open_storage(worker_settings)
    text_done, scan_done = store.load(text_job.id), store.load(scan_job.id)
    assert text_done.state == "succeeded" and text_done.pages_done == 2

    text_doc = DocumentResult.model_validate_json(storage.get(document_result_key(text_job.id)))
    assert [p.engine for p in text_doc.pages] == ["text", "text"] and text_doc.model is None
    assert text_doc.pages[1].headers == ["Page 2 of 2"]  # page furniture, read across pages in its own task
    assert s3_keys(worker_settings, f"results/{text_job.id}/") == [
        document_result_key(text_job.id), page_result_key(text_job.id, 1), page_result_key(text_job.id, 2)
    ]

    scan_doc = DocumentResult.model_validate_json(storage.get(document_result_key(scan_job.id)))
    assert [p.engine for p in scan_doc.pages] == ["internvl", "internvl"]
    assert all(p.tiles >= 1 for p in scan_doc.pages) and scan_doc.model == worker_settings.model
    assert scan_done.state == scan_doc.status and scan_done.result_key == document_result_key(scan_job.id)

    log = worker.log()
    assert "concurrency: 1 (solo)" in log  # the gpu queue got the solo pool
    # the model was loaded once, at worker start, before the worker took its first task
    assert log.count("internvl: loaded") == 1
    assert log.index("internvl: loaded") < log.index("Task docproc.intake")


RECEIVED = re.compile(r"Task docproc\.page\[([0-9a-f-]+)\] received")


def test_workers_killed_mid_page_still_finish_the_job_exactly_once(worker_settings, redis_client, workers):
    """SIGKILL twice, mid-page: first a prefork child (its parent re-queues the message:
    task_reject_on_worker_lost), then the whole worker (its unacked message is handed
    out again after the visibility timeout, to a second worker)."""
    store = JobStore(redis_client, worker_settings)
    visibility = 2
    env = settings_env(
        worker_settings,
        visibility_timeout_s=visibility,
        lease_ttl_s=2,  # a dead owner's page lease expires soon, and its page is taken over
        # genuinely slow pages: long generations that nothing stops early
        max_new_tokens_ocr=150, max_new_tokens_per_tile=150, repetition_guard_span=0,
    )  # fmt: skip
    celery = [sys.executable, "-m", "celery", "-A", "workers.celery_app", "worker", "-Q", "intake,render,gpu",
              "-c", "1", "--loglevel", "INFO", "--without-gossip", "--without-mingle"]
    first = workers([*celery, "-P", "prefork", "-n", "first@%h"], env)
    job = submit(worker_settings, store, builders.tiff_multipage(3), "scan.tiff", task="ocr")

    def attempts() -> dict[int, int]:
        return {p.page: p.attempts for p in store.pages(job.id)} if store.load(job.id).pages else {}

    def started_since(before: dict[int, int]):
        """The page started since ``before`` (its attempts went up) and still unfinished."""
        now = {p.page: p for p in store.pages(job.id)} if store.load(job.id).pages else {}
        return next((n for n, p in now.items() if p.attempts > before.get(n, 0) and p.state == "running"), None)

    # 1. the pool child dies (say, the OOM killer) mid-page
    child_victim = wait_until(lambda: started_since({}), 60, "a page to start", [first])
    child_task = RECEIVED.findall(first.log())[-1]
    (child,) = first.children()
    os.kill(child, signal.SIGKILL)
    wait_until(lambda: "WorkerLostError" in first.log(), 10, "the pool to see its child lost", [first])
    before = attempts()

    # 2. the whole worker dies mid-page: the next page its new child started
    worker_victim = wait_until(lambda: started_since(before), 60, "a page to start again", [first])
    worker_task = RECEIVED.findall(first.log())[-1]
    victim_attempts = attempts()[worker_victim]
    first.kill()
    time.sleep(visibility + 0.5)  # the unacked message is due again
    second = workers([*celery, "-P", "solo", "-n", "second@%h"], env)
    wait_until(lambda: store.load(job.id).state in TERMINAL, 60, "the job to end", [second])

    done = store.load(job.id)
    assert done.state == "succeeded" and (done.pages_done, done.pages_failed) == (3, 0)
    final = {p.page: p for p in store.pages(job.id)}
    assert [p.state for p in final.values()] == ["succeeded"] * 3
    assert final[child_victim].attempts >= 2 and final[worker_victim].attempts == victim_attempts + 1
    # the very messages that were in flight were delivered again (not re-sent by anyone)
    logs = first.log() + second.log()
    assert RECEIVED.findall(logs).count(child_task) >= 2
    assert worker_task in RECEIVED.findall(second.log())
    # exactly once: one result per page, one document, one finalisation
    assert s3_keys(worker_settings, f"results/{job.id}/") == [
        document_result_key(job.id), *(page_result_key(job.id, n) for n in (1, 2, 3))
    ]
    document = DocumentResult.model_validate_json(open_storage(worker_settings).get(document_result_key(job.id)))
    assert [p.page for p in document.pages] == [1, 2, 3] and document.status == "succeeded"
    # the finaliser logs its line after the job's after-end steps, so it may trail the state
    line = f"job {job.id}: succeeded"

    def logs_with_line() -> str | None:
        text = first.log() + second.log()
        return text if line in text else None

    assert wait_until(logs_with_line, 10, "the finaliser's log line", [second]).count(line) == 1


@pytest.mark.parametrize("runs_here", [True, False])
def test_a_one_page_text_job_runs_in_its_intake_task_unless_turned_off(worker_settings, redis_client, workers,
                                                                       runs_here):
    """With ``intake_runs_single_page`` (the default) the worker that takes the intake runs the
    page in it: no ``docproc.page`` message is sent or received; off, the page is a task."""
    settings = worker_settings.model_copy(update={"intake_runs_single_page": runs_here})
    store = JobStore(redis_client, settings)
    worker = workers([sys.executable, "-m", "workers", "--queues", "intake,render", "-c", "1", "-n", "one@%h"],
                     settings_env(settings, intake_runs_single_page=str(runs_here).lower()))
    job = submit(settings, store, builders.invoice_pdf(), "invoice.pdf", task="ocr", engine="text")
    wait_until(lambda: store.load(job.id).state in TERMINAL, 60, f"job {job.id}", [worker])

    done = store.load(job.id)
    assert done.state == "succeeded" and (done.pages_done, done.pages_failed) == (1, 0)
    assert [(p.state, p.attempts) for p in store.pages(job.id)] == [("succeeded", 1)]
    assert s3_keys(settings, f"results/{job.id}/") == [document_result_key(job.id), page_result_key(job.id, 1)]
    tasks = 1 if runs_here else 2  # the intake, and the page when it was sent
    assert len(done.task_ids) == tasks  # kept for revoking on cancel
    def task_lines_done() -> str | None:
        log = worker.log()
        return log if log.count(" succeeded in ") == tasks else None

    log = wait_until(task_lines_done, 10, "the worker's task lines", [worker])
    assert len(RECEIVED.findall(log)) == (0 if runs_here else 1)
