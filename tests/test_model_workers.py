"""A stack without a model worker (``docproc up --no-model-worker``, or a model that cannot
load): model work is refused at once or fails fast with ``engine_unavailable``, ``/readyz``
reports the model workers it sees, and a job whose model pages wait says why
(docproc/base/model_workers.py).

Real redis-server, moto S3, the API under uvicorn, a real CPU worker subprocess and, for the
second half, the real model worker (``python -m workers --queues gpu``) on the tiny InternVL.
"""

from __future__ import annotations

import socket
import sys
import time

import builders
import httpx
import pytest
from conftest import serving, settings_env, wait_until
from test_jobflow import text_and_scan_pdf

from api.app import create_app
from docproc.base import model_workers
from docproc.base.auth import hash_key
from docproc.base.settings import Settings
from docproc.jobs.store import TERMINAL

pytestmark = pytest.mark.worker

KEY = "dp_test-key-of-the-model-worker-tests-0000"
PY = sys.executable


@pytest.fixture
def mw_settings(service_settings: Settings, tiny_settings: Settings) -> Settings:
    return service_settings.model_copy(update={
        "api_keys": {"acme": hash_key(KEY)}, "model": tiny_settings.model, "device": "cpu",
        "max_new_tokens_ocr": 16, "max_new_tokens_extract": 24, "model_worker_heartbeat_s": 1.0,
    })


def post(client: httpx.Client, data: bytes, filename: str, **fields: str) -> httpx.Response:
    return client.post("/v1/jobs", files={"file": (filename, data, "application/octet-stream")}, data=fields)


def ended(client: httpx.Client, job_id: str, timeout: float, processes=()) -> dict:
    return wait_until(lambda: (j := client.get(f"/v1/jobs/{job_id}").json())["state"] in TERMINAL and j,
                      timeout, f"job {job_id} to end", processes)


def test_model_work_without_a_model_worker_is_refused_or_fails_fast_and_readyz_shows_the_workers(
        mw_settings, redis_client, workers):
    env = settings_env(mw_settings, model_worker_heartbeat_s=1.0)
    cpu = workers([PY, "-m", "workers", "--queues", "intake,render", "-c", "1", "-n", "cpu@%h"], env)
    with serving(create_app(mw_settings)) as url, httpx.Client(
            base_url=url, headers={"Authorization": f"Bearer {KEY}"}, timeout=30) as client:
        # 1. no model worker: readyz says so (and stays ready: text work goes on)
        ready = client.get("/readyz")
        assert ready.status_code == 200 and ready.json()["model_workers"] == []

        # work that certainly needs the model: 503 engine_unavailable at once, nothing queued
        for data, name, fields in ((builders.invoice_pdf(), "inv.pdf", {"task": "extract", "schema": "invoice"}),
                                   (builders.png_image(), "scan.png", {"task": "ocr"}),
                                   (builders.invoice_pdf(), "inv.pdf", {"task": "tables", "engine": "internvl"})):
            refused = post(client, data, name, **fields)
            assert refused.status_code == 503, refused.text
            assert refused.json()["code"] == "engine_unavailable" and refused.headers["Retry-After"]
            assert "no model worker" in refused.json()["detail"]
        assert redis_client.llen("intake") == 0 and redis_client.llen("gpu") == 0

        # a PDF whose second page is a scan (auto decides per page at intake): accepted, and the
        # scan page fails fast with engine_unavailable instead of waiting hours on the gpu queue
        started = time.monotonic()
        mixed = post(client, text_and_scan_pdf(), "mixed.pdf", task="ocr")
        assert mixed.status_code == 202, mixed.text
        job = ended(client, mixed.json()["id"], 60, [cpu])
        assert time.monotonic() - started < 30
        assert job["state"] == "partial" and redis_client.llen("gpu") == 0
        pages = {p["page"]: p for p in job["pages"]}
        assert pages[1]["state"] == "succeeded" and pages[1]["engine"] == "text"
        assert pages[2]["state"] == "failed" and pages[2]["error"]["code"] == "engine_unavailable"

        # 2. model pages queued while a model worker was online, which then went away: the job says why it waits
        model_workers.announce(redis_client, "gone@tests", "tests", heartbeat_s=60)
        waiting = post(client, builders.png_image(), "scan.png", task="ocr")
        assert waiting.status_code == 202, waiting.text
        wait_until(lambda: redis_client.llen("gpu") == 1, 30, "the scan page on the gpu queue", [cpu])
        model_workers.withdraw(redis_client, "gone@tests")
        shown = client.get(f"/v1/jobs/{waiting.json()['id']}").json()
        assert shown["state"] == "running" and "no model worker serves the gpu queue" in shown["waiting"]
        assert "1 model page(s) wait on the gpu queue" in shown["waiting"]

        # 3. a model worker comes online: readyz lists it, the waiting page runs, model work is accepted
        model = workers([PY, "-m", "workers", "--queues", "gpu", "-n", "model@%h"], env)
        node = f"model@{socket.gethostname()}"
        wait_until(lambda: client.get("/readyz").json()["model_workers"], 120, "the model worker online", [model])
        (seen,) = client.get("/readyz").json()["model_workers"]
        assert seen["node"] == node and seen["model"] == mw_settings.model
        scraped = client.get("/metrics").text  # the service-wide scrape counts it from its heartbeat
        assert f'docproc_model_workers{{model="{mw_settings.model}"}} 1.0' in scraped
        assert ended(client, waiting.json()["id"], 120, [model])["state"] in ("succeeded", "failed")
        assert client.get(f"/v1/jobs/{waiting.json()['id']}").json()["waiting"] is None
        extract = post(client, builders.invoice_pdf(), "inv.pdf", task="extract", schema="invoice")
        assert extract.status_code == 202, extract.text
        assert ended(client, extract.json()["id"], 120, [model])["state"] in ("succeeded", "partial", "failed")

        # 4. it stops: it withdraws at once, and model work is refused again
        model.stop()
        assert client.get("/readyz").json()["model_workers"] == []
        again = post(client, builders.png_image(), "scan.png", task="ocr")
        assert again.status_code == 503 and again.json()["code"] == "engine_unavailable"


def test_an_announcement_expires_when_its_worker_stops_beating(redis_client):
    """A model worker killed without a word (or one that restarts in a loop before its model
    loads) is not online once its last heartbeat has expired."""
    model_workers.announce(redis_client, "killed@tests", "m", heartbeat_s=0.2)
    assert [w["node"] for w in model_workers.online(redis_client)] == ["killed@tests"]
    time.sleep(3 * 0.2 + 0.1)
    assert model_workers.online(redis_client) == []
    assert not redis_client.hexists(model_workers.KEY, "killed@tests")  # dropped
    with pytest.raises(Exception) as refused:
        model_workers.require_online(redis_client, 0.2)
    assert refused.value.code == "engine_unavailable" and refused.value.http_status == 503


def test_model_pages_stranded_on_the_gpu_queue_fail_once_no_model_worker_was_online_for_the_grace(
        mw_settings, redis_client):
    """Pages queued while a model worker was online, which then went away for good: the watchdog
    tick fails them with engine_unavailable after model_worker_grace_s, not hours later."""
    from types import SimpleNamespace

    from docproc.base.broker import PAGE_TASK
    from docproc.base.storage import open_storage
    from docproc.jobs.store import JobRequest, JobStore
    from docproc.submission.submit import submit_job
    from workers import jobflow, stranded_pages
    from workers.celery_app import create_app

    settings = mw_settings.model_copy(update={"model_worker_grace_s": 2.0})
    store, storage, celery = JobStore(redis_client, settings), open_storage(settings), create_app(settings)
    r = SimpleNamespace(settings=settings, redis=redis_client, store=store, storage=storage,
                        job_ended=lambda job_id, job=None: None)
    model_workers.announce(redis_client, "gone@tests", "tests", heartbeat_s=0.2)  # online for 0.6 s
    try:
        job = submit_job(store=store, storage=storage, celery=celery, settings=settings, tenant="acme",
                         request=JobRequest(task="ocr"), data=builders.tiff_multipage(2), filename="scan.tiff").job
        jobflow.run_intake(job.id, settings=settings, store=store, storage=storage,
                           enqueue=lambda j, n, q: celery.send_task(PAGE_TASK, args=[j, n], queue=q).id)
    finally:
        celery.close()
    assert redis_client.llen("gpu") == 2 and store.load(job.id).state == "running"

    time.sleep(0.7)  # its announcement expired: offline, not yet for the grace
    assert stranded_pages.fail_stranded(r) == 0 and store.load(job.id).state == "running"
    time.sleep(2.0)
    assert stranded_pages.fail_stranded(r) == 2
    assert store.load(job.id).state == "failed"
    assert [p.error.code for p in store.pages(job.id)] == ["engine_unavailable", "engine_unavailable"]
    assert stranded_pages.fail_stranded(r) == 0  # recorded once
