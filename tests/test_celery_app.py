"""The Celery app, the tasks' failure and retry rules, and the worker entry point (no worker started)."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys

import builders
import pytest
from celery.exceptions import SoftTimeLimitExceeded, TimeLimitExceeded

from docproc.base.broker import intake_queue, page_queue
from docproc.base.errors import EncryptedDocument, StorageError
from docproc.base.settings import REPO_ROOT
from docproc.base.storage import document_result_key, open_storage
from docproc.jobs.store import JobRequest
from docproc.submission.submit import request_fingerprint
from workers import jobflow, tasks
from workers.celery_app import create_app
from workers.worker_cli import parse_queues, worker_argv


def _python(code: str, **env: str) -> str:
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=60,
                          env={**os.environ, **env})
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_the_api_side_import_is_light_and_all_clients_share_the_visibility_timeout():
    out = _python(
        "import sys, json; from workers.celery_app import app; "
        "print(json.dumps({'torch': 'torch' in sys.modules, 'tasks': 'workers.tasks' in sys.modules, "
        "'transport': app.conf.broker_transport_options, 'vt': app.conf.visibility_timeout, "
        "'broker': app.conf.broker_url}))",
        DOCPROC_VISIBILITY_TIMEOUT_S="321", DOCPROC_REDIS_URL="redis://127.0.0.1:1/3",
    )
    seen = json.loads(out)
    assert seen["torch"] is False and seen["tasks"] is False
    assert seen["transport"]["visibility_timeout"] == 321 and seen["vt"] == 321
    assert seen["broker"] == "redis://127.0.0.1:1/3"


def test_retry_countdowns_stay_below_the_visibility_timeout():
    out = _python(
        "from workers.tasks import page_task, intake_task; "
        "print(page_task.retry_backoff_max, intake_task.retry_backoff_max, page_task.max_retries)",
        DOCPROC_VISIBILITY_TIMEOUT_S="40",
    )
    page_max, intake_max, retries = map(int, out.split())
    assert page_max == intake_max == 20 and retries == tasks.MAX_RETRIES
    assert tasks.RETRY_BACKOFF_MAX_S < tasks.get_settings().visibility_timeout_s


def test_tasks_route_to_their_queues(settings):
    app = create_app(settings)
    router = app.amqp.router
    assert router.route({}, "docproc.intake")["queue"].name == "intake"
    assert router.route({}, "docproc.page")["queue"].name == "render"
    assert router.route({"queue": "gpu"}, "docproc.page")["queue"].name == "gpu"
    assert router.route({}, "docproc.webhook.deliver")["queue"].name == "webhooks"
    assert [intake_queue(p) for p in ("high", "normal", "bulk")] == ["intake", "intake", "bulk"]
    assert [page_queue(e, p) for e, p in (("text", "normal"), ("text", "bulk"), ("internvl", "bulk"))] == [
        "render", "bulk", "gpu"
    ]


def test_worker_cli_picks_the_pool_by_queue():
    assert worker_argv(["gpu"])[:6] == ["worker", "-Q", "gpu", "-P", "solo", "--loglevel"]
    assert "-c" in worker_argv(["intake", "gpu"]) and worker_argv(["intake", "gpu"])[-3] == "1"
    cpu = worker_argv(["intake", "render"], concurrency=4, hostname="cpu1@%h")
    assert cpu[cpu.index("-P") + 1] == "prefork" and cpu[cpu.index("-c") + 1] == "4" and cpu[-1] == "cpu1@%h"
    assert parse_queues(" intake, render ,intake") == ["intake", "render"]
    with pytest.raises(ValueError, match="unknown queue"):
        parse_queues("intake,gpus")
    proc = subprocess.run([sys.executable, "-m", "workers", "--queues", "nope"], cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "unknown queue(s) nope" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.parametrize(
    ("exc", "code"),
    [
        (SoftTimeLimitExceeded(), "timeout"),
        (TimeLimitExceeded(1900), "timeout"),
        (tasks.PermanentFault("storage_error", "access denied"), "storage_error"),
        (EncryptedDocument("locked"), "encrypted_document"),
        (KeyError("boom"), "internal_error"),
    ],
)
def test_a_task_failure_tells_the_user_a_code(settings, exc, code):
    assert tasks.failure_error(exc, settings).code == code


def test_only_retryable_storage_faults_are_retried():
    with pytest.raises(tasks.PermanentFault) as info:
        with tasks._permanent_faults_fail_fast():
            raise StorageError("access denied", retryable=False)
    assert not isinstance(info.value, tasks.TRANSIENT_ERRORS) and info.value.code == "storage_error"
    with pytest.raises(StorageError):
        with tasks._permanent_faults_fail_fast():
            raise StorageError("unreachable", retryable=True)
    assert issubclass(StorageError, tasks.TRANSIENT_ERRORS)


@pytest.fixture
def task_resources(service_settings, monkeypatch) -> tasks.Resources:
    """The tasks' per-process resources, pointed at the test Redis and bucket."""
    res = tasks.Resources(settings=service_settings)
    monkeypatch.setattr(tasks, "_resources", res)
    monkeypatch.setattr(tasks, "_resources_pid", os.getpid())
    return res


def _job(res: tasks.Resources, data: bytes):
    req = JobRequest(task="ocr")
    sha = hashlib.sha256(data).hexdigest()
    job, _ = res.store.create("acme", req, input_key=res.storage.put_input(data), input_sha256=sha,
                              size_bytes=len(data), filename=None, idempotency_key=None,
                              fingerprint=request_fingerprint(sha, req))
    return job


def test_a_page_task_past_its_time_limit_fails_the_page_with_timeout(task_resources):
    res = task_resources
    job = _job(res, builders.multipage_text_pdf(2))
    sent = []
    jobflow.run_intake(job.id, settings=res.settings, store=res.store, storage=res.storage,
                       enqueue=lambda *a: sent.append(a))
    tasks.page_task.run(job.id, 1)  # the task body, in this process
    tasks.page_task.on_failure(SoftTimeLimitExceeded(), "t-2", (job.id, 2), {}, None)

    done = res.store.load(job.id)
    assert done.state == "partial" and (done.pages_done, done.pages_failed) == (1, 1)
    pages = json.loads(open_storage(res.settings).get(document_result_key(job.id)))["pages"]
    assert [p["error"]["code"] if p["error"] else None for p in pages] == [None, "timeout"]


def test_an_intake_task_that_failed_for_good_fails_the_job(task_resources):
    res = task_resources
    job = _job(res, builders.multipage_text_pdf(1))
    tasks.intake_task.on_failure(StorageError("S3 unreachable", retryable=True), "t-1", (job.id,), {}, None)
    failed = res.store.load(job.id)
    assert failed.state == "failed" and failed.error.code == "storage_error"
