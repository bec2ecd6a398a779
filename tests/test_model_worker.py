"""The batched model worker (``python -m workers --queues gpu``) as a real subprocess on a
real redis-server, with moto S3 and the tiny InternVL: pages of several jobs, submitted at
once, are read in one batched call and every job succeeds once.

Marked ``worker`` (each worker process imports torch and loads the model).
"""

from __future__ import annotations

import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import builders
import httpx
import pytest
from conftest import free_port, settings_env, wait_until
from test_worker import s3_keys, submit, worker_settings  # noqa: F401 - fixtures

from docproc.base.settings import REPO_ROOT
from docproc.base.storage import document_result_key, open_storage, page_result_key
from docproc.jobs.results import DocumentResult
from docproc.jobs.store import TERMINAL, JobStore
from workers.celery_app import create_app

pytestmark = pytest.mark.worker

BATCH = re.compile(r"model batch: (\d+) pages of (\d+) jobs")
PY = sys.executable


def queue_pages(settings, store, workers, env, n_jobs: int, pages: int) -> list:
    """Submit ``n_jobs`` scans of ``pages`` pages (different sizes) and let a CPU worker run
    their intake, so every page waits on the gpu queue before a model worker starts."""
    workers([PY, "-m", "workers", "--queues", "intake,render", "-c", "1", "-n", "cpu@%h"], env)
    sizes = [(300, 420), (900, 300), (600, 600), (420, 300)]
    jobs = [submit(settings, store, builders.tiff_multipage(pages, sizes=[sizes[(j + k) % 4] for k in range(pages)]),
                   f"scan{j}.tiff", task="ocr") for j in range(n_jobs)]
    wait_until(lambda: all(store.load(j.id).state == "running" for j in jobs), 60, "the pages to be queued")
    return jobs


@contextmanager
def celery_events(settings) -> Iterator[list[dict]]:
    """Every Celery event on the broker while the block runs (what Flower listens to)."""
    app = create_app(settings)
    seen: list[dict] = []
    conn = app.connection_for_read()
    receiver = app.events.Receiver(conn, handlers={"*": seen.append})
    thread = threading.Thread(target=lambda: receiver.capture(limit=None, timeout=None, wakeup=False),
                              daemon=True)
    thread.start()
    try:
        yield seen
    finally:
        receiver.should_stop = True
        thread.join(5)
        conn.release()
        app.close()


def test_model_worker_reads_pages_of_several_jobs_in_one_batch(worker_settings, redis_client, workers):  # noqa: F811
    store = JobStore(redis_client, worker_settings)
    env = settings_env(worker_settings)
    jobs = queue_pages(worker_settings, store, workers, env, n_jobs=3, pages=2)

    with celery_events(worker_settings) as events:
        model = workers([PY, "-m", "workers", "--queues", "gpu", "-n", "model@%h"], env)
        for job in jobs:
            wait_until(lambda: store.load(job.id).state in TERMINAL, 90, f"job {job.id}", [model])
        wait_until(lambda: any(e["type"] == "worker-heartbeat" for e in events), 10, "a worker heartbeat")

    # intake and page tasks (read once the jobs ended: intake lists its page tasks just after it
    # marks the job running)
    task_ids = {t for job in jobs for t in store.load(job.id).task_ids}
    storage = open_storage(worker_settings)
    for job in jobs:
        done = store.load(job.id)
        assert done.state == "succeeded" and done.pages_done == 2
        assert s3_keys(worker_settings, f"results/{job.id}/") == [
            document_result_key(job.id), page_result_key(job.id, 1), page_result_key(job.id, 2)]
        document = DocumentResult.model_validate_json(storage.get(document_result_key(job.id)))
        assert [p.engine for p in document.pages] == ["internvl", "internvl"]
        assert all(p.attempts == 1 for p in store.pages(job.id))
    log = model.log()
    batches = [(int(p), int(j)) for p, j in BATCH.findall(log)]
    assert max(batches) == (6, 3), batches  # all six pages of the three jobs in one call
    assert "attention=sdpa" in log and log.count("internvl: loaded") == 1
    assert log.index("internvl: loaded") < log.index("model batch:")
    # Flower sees the worker and every page task it ran
    by_type = {}
    for event in events:
        by_type.setdefault(event["type"], []).append(event)
    assert {e["hostname"] for e in by_type["worker-online"]} == {model_host(log)}
    succeeded = {e["uuid"] for e in by_type["task-succeeded"]}
    assert len(succeeded) == 6 and succeeded <= task_ids and succeeded == {e["uuid"] for e in by_type["task-started"]}


def model_host(log: str) -> str:
    return re.search(r"model worker (\S+): ready", log).group(1)


def test_page_messages_as_celery_sends_them_are_parsed(service_settings, redis_client):
    """The model worker reads the very messages the API and intake send (protocol 2), with
    their eta; anything else on the queue is refused (and acked by the worker, not run)."""
    from kombu import Consumer

    from docproc.base.broker import GPU_QUEUE, PAGE_TASK
    from workers.model_worker import parse_page_message

    app = create_app(service_settings)
    sent = [app.send_task(PAGE_TASK, args=["job-a", 3], queue=GPU_QUEUE).id,
            app.send_task(PAGE_TASK, args=["job-b", 1], queue=GPU_QUEUE, countdown=30).id,
            app.send_task("docproc.intake", args=["job-c"], queue=GPU_QUEUE).id]
    got = []
    with app.connection_for_read() as conn, Consumer(conn, queues=[app.amqp.queues[GPU_QUEUE]], accept=["json"],
                                                        callbacks=[lambda body, message: got.append(message)]):
        deadline = time.monotonic() + 10
        while len(got) < 3 and time.monotonic() < deadline:
            try:
                conn.drain_events(timeout=1)
            except TimeoutError:
                pass
        (work_a, id_a, eta_a, _), (work_b, id_b, eta_b, _) = (parse_page_message(m) for m in got[:2])
        with pytest.raises(ValueError, match="docproc.intake"):
            parse_page_message(got[2])
        for message in got:
            message.ack()
    app.close()
    assert (work_a.job_id, work_a.page, work_a.retries, id_a, eta_a) == ("job-a", 3, 0, sent[0], 0.0)
    assert (work_b.job_id, work_b.page, id_b) == ("job-b", 1, sent[1]) and eta_b > time.time() + 20


def test_model_worker_answers_celery_remote_control(worker_settings, workers):  # noqa: F811
    """Celery remote control on the model worker (workers/remote_control.py): the container
    healthcheck's exact command gets its pong; another node name gets none; the inspect
    calls Flower's worker page makes get Celery-shaped answers; ``shutdown`` stops the
    worker cleanly."""
    env = settings_env(worker_settings)
    model = workers([PY, "-m", "workers", "--queues", "gpu", "-n", "model@%h"], env)
    port = free_port()
    flower = workers([PY, "-m", "celery", "-A", "workers.celery_app", "flower", f"--port={port}",
                      "--address=127.0.0.1", "--basic-auth=ops:pw"], env)
    wait_until(lambda: "ready" in model.log(), 120, "the model worker to be ready", [model])
    host = model_host(model.log())

    def ping(node: str) -> subprocess.CompletedProcess:
        return subprocess.run([PY, "-m", "celery", "-A", "workers.celery_app", "inspect", "ping", "-d", node,
                               "--timeout", "5"], env=env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=90)

    answered = ping(host)
    assert answered.returncode == 0 and f"{host}: OK" in answered.stdout and "pong" in answered.stdout, answered
    assert ping("gpu@nowhere").returncode != 0  # nobody answers for another node

    app = create_app(worker_settings)
    try:
        inspect = app.control.inspect(destination=[host], timeout=10)
        stats = inspect.stats()[host]
        assert stats["pid"] == model.proc.pid and stats["prefetch_count"] == worker_settings.model_worker_prefetch
        assert stats["broker"]["transport"] == "redis" and "password" not in stats["broker"]
        assert [q["name"] for q in inspect.active_queues()[host]] == ["gpu"]
        assert inspect.registered()[host] == ["docproc.page"]
        assert (inspect.active()[host], inspect.reserved()[host], inspect.scheduled()[host]) == ([], [], [])
        assert inspect.conf()[host]["batch_size"] == worker_settings.batch_size
        # Flower's page of the worker renders from those answers (a missing key would be a 500)
        page = wait_until(lambda: _get(f"http://127.0.0.1:{port}/worker/{host}", auth=("ops", "pw")), 30,
                          "Flower's worker page", [flower])
        assert page.status_code == 200 and "docproc.page" in page.text and "gpu" in page.text, page.text[:500]
        assert app.control.enable_events(destination=[host], reply=True, timeout=10) == [
            {host: {"ok": "task events are always on for the model worker"}}]
        # Flower asks every worker to enable events every few seconds: answered, not logged as an error
        assert "pidbox command error" not in model.log() and "KeyError" not in model.log()
        replies = app.control.broadcast("shutdown", destination=[host], reply=True, timeout=10)
    finally:
        app.close()
    assert replies == [{host: {"ok": "shutting down after the current batch"}}]
    wait_until(lambda: model.proc.poll() is not None, 30, "the model worker to stop")
    assert model.proc.returncode == 0 and "remote control: shutdown asked" in model.log()


def _get(url: str, **kwargs) -> httpx.Response | None:
    """The page once it answers (None while the server starts or still gets to know the worker)."""
    try:
        response = httpx.get(url, timeout=10, **kwargs)
    except httpx.TransportError:
        return None
    return response if response.status_code != 404 else None


def test_inspect_lists_the_running_batch_the_due_pages_and_the_waiting_ones(worker_settings):  # noqa: F811
    """What Flower's worker page shows of the model worker's held messages: the batch in
    generate is ``active``, due pages ``reserved``, pages waiting on an eta ``scheduled``."""
    from types import SimpleNamespace

    from workers import remote_control
    from workers.model_batching import PageWork
    from workers.model_worker import Delivery, ModelWorker

    worker = ModelWorker(SimpleNamespace(settings=worker_settings), hostname="gpu@test")
    message = SimpleNamespace(delivery_info={"redelivered": False})
    running, due, later = (Delivery(message, PageWork(f"job{i}", i + 1), f"task-{i}",
                                    not_before=time.time() + (3600 if i == 2 else 0)) for i in range(3))
    worker.held = {d.task_id: d for d in (running, due, later)}
    worker.running = (running,)
    active = remote_control._active(worker)
    assert [(t["id"], t["args"], t["name"], t["hostname"]) for t in active] == [
        ("task-0", ["job0", 1], "docproc.page", "gpu@test")]
    assert [t["id"] for t in remote_control._reserved(worker)] == ["task-1"]
    (scheduled,) = remote_control._scheduled(worker)
    assert scheduled["request"]["id"] == "task-2" and scheduled["eta"] > time.strftime("%Y")
    assert remote_control._stats(worker)["total"] == {}  # nothing done yet
