"""The stuck-job watchdog (docproc/housekeeping/watchdog.py) on a real Redis, then on the real stack.

First the active-jobs index the JobStore's scripts keep (create, start, page progress,
finish), and :func:`fail_stalled` against it with a clock moved forward; then a real
worker with the scheduler embedded (``-B``) fails two jobs whose messages are gone (one
never started, one whose page worker is missing) with ``timeout`` and revokes their tasks.
"""

from __future__ import annotations

import boto3
import builders
import pytest
import redis as redis_lib
from conftest import wait_until

from docproc.base.settings import Settings
from docproc.base.storage import open_storage
from docproc.housekeeping import after_end, watchdog
from docproc.jobs import lifecycle
from docproc.jobs.store import (
    ACTIVE_JOBS,
    ENDED_OUTBOX,
    TERMINAL,
    JobRequest,
    JobStore,
    PageStatus,
)
from docproc.submission.submit import submit_job
from workers.celery_app import create_app

from .conftest import TENANT

pytestmark = pytest.mark.reliability


def _create(store: JobStore, n: int = 0):
    job, _ = store.create(TENANT, JobRequest(), input_key=f"inputs/x{n}", input_sha256="0" * 64, size_bytes=1,
                          filename=None, idempotency_key=None, fingerprint="f")
    return job


def _ctx(settings: Settings, client, store: JobStore) -> lifecycle.Context:
    return after_end.context(settings=settings, redis=client, store=store, send=lambda *a: None)


def test_the_active_index_follows_progress_and_the_watchdog_fails_only_stalled_jobs(redis_client):
    settings = Settings(_env_file=None, watchdog_stall_s=60, watchdog_queued_s=600)
    store = JobStore(redis_client, settings)
    queued, running, fresh, done = (_create(store, n) for n in range(4))
    for job in (running, fresh, done):
        assert store.start(job.id, page_count=2, pages=[1, 2], media_type="application/pdf")
    store.add_task_ids(running.id, ["t-intake", "t-page-1"])
    assert store.page_started(running.id, 1) == 1
    assert store.finish(done.id, "succeeded")
    listed = dict(redis_client.zrange(ACTIVE_JOBS, 0, -1, withscores=True))
    assert set(listed) == {queued.id, running.id, fresh.id}  # finish took `done` out
    now = watchdog.redis_now_ms(_ctx(settings, redis_client, store))
    assert all(now - 5000 <= score <= now for score in listed.values())  # Redis's clock, ms

    # 2 minutes later `fresh` records a page: only `running` is past the 60 s stall limit;
    # `queued` is within its 600 s.
    later = now + 120_000
    redis_client.zadd(ACTIVE_JOBS, {fresh.id: later - 1000}, xx=True)
    revoked: list[list[str]] = []
    ctx = _ctx(settings, redis_client, store)
    assert watchdog.fail_stalled(ctx, revoked.append, now_ms=later) == [running.id]
    failed = store.load(running.id)
    assert failed.state == "failed" and failed.error.code == "timeout" and "no progress" in failed.error.message
    assert revoked == [["t-intake", "t-page-1"]]
    assert redis_client.zscore(ACTIVE_JOBS, running.id) is None
    assert redis_client.zscore(ENDED_OUTBOX, running.id) is None  # after-end steps ran (job_ended)
    assert store.load(queued.id).state == "queued" and store.load(fresh.id).state == "running"

    # A page of the failed job that still arrives changes nothing and never re-lists it.
    store.page_started(running.id, 2)
    assert redis_client.zscore(ACTIVE_JOBS, running.id) is None
    # 11 minutes on: the never-started job is past its queued limit too.
    assert watchdog.fail_stalled(ctx, revoked.append, now_ms=now + 660_000) == [queued.id, fresh.id]
    assert store.load(queued.id).error.message.startswith("the job was stuck (still queued")
    # Idempotent: a second tick (or a concurrent one) ends nothing again.
    assert watchdog.fail_stalled(ctx, revoked.append, now_ms=now + 660_000) == []


def test_page_progress_keeps_a_long_job_alive(redis_client):
    """Each page started or recorded moves the job's last progress forward."""
    settings = Settings(_env_file=None)
    store = JobStore(redis_client, settings)
    job = _create(store)
    store.start(job.id, page_count=2, pages=[1, 2], media_type="application/pdf")
    redis_client.zadd(ACTIVE_JOBS, {job.id: 0}, xx=True)  # as if the last progress were long ago
    store.page_started(job.id, 1)
    assert redis_client.zscore(ACTIVE_JOBS, job.id) > 0
    redis_client.zadd(ACTIVE_JOBS, {job.id: 0}, xx=True)
    store.page_finished(job.id, PageStatus(page=1, state="succeeded"))
    assert redis_client.zscore(ACTIVE_JOBS, job.id) > 0
    store.page_finished(job.id, PageStatus(page=2, state="succeeded"))
    store.finish(job.id, "succeeded")
    assert redis_client.zscore(ACTIVE_JOBS, job.id) is None


def _s3_keys(settings: Settings, prefix: str) -> list[str]:
    bucket = settings.storage_url.removeprefix("s3://").strip("/")
    s3 = boto3.client("s3", endpoint_url=settings.s3_endpoint_url, region_name=settings.s3_region)
    return [o["Key"] for o in s3.list_objects_v2(Bucket=bucket, Prefix=prefix).get("Contents", [])]


def test_jobs_whose_workers_are_gone_fail_with_timeout_and_their_tasks_are_revoked(stack_settings, start_worker):
    settings = stack_settings(watchdog_stall_s=3, watchdog_queued_s=3, periodic_interval_s=0.5)
    client = redis_lib.Redis.from_url(settings.redis_url, decode_responses=True)
    store = JobStore(client, settings)
    celery = create_app(settings)
    storage = open_storage(settings)

    def submit(n_pages: int):
        return submit_job(store=store, storage=storage, celery=celery, settings=settings, tenant=TENANT,
                          request=JobRequest(task="ocr", engine="text"), data=builders.multipage_text_pdf(n_pages),
                          filename="doc.pdf").job

    # 1. a job whose intake message is lost (dropped from the broker before any worker ran)
    lost = submit(1)
    client.delete(*client.keys("intake*"))
    # 2. a job whose pages wait on a queue ("render") whose workers are all gone
    orphan = submit(2)
    worker = start_worker(settings, "intake,periodic", beat=True)
    # "running" is written before the page tasks' ids are: wait for the intake to have recorded both
    def page_tasks() -> list[str]:
        return [t for t in store.load(orphan.id).task_ids if t not in orphan.task_ids]

    wait_until(lambda: store.load(orphan.id).state == "running" and len(page_tasks()) == 2, 60,
               "the orphan's intake", [worker])
    assert store.load(orphan.id).page_count == 2

    for job in (lost, orphan):
        wait_until(lambda: store.load(job.id).state in TERMINAL, 60, f"the watchdog to end {job.id}", [worker])
    for job, what in ((lost, "still queued"), (orphan, "no progress")):
        ended = store.load(job.id)
        assert ended.state == "failed" and ended.error.code == "timeout", ended
        assert what in ended.error.message
    # its tasks were revoked: the live worker got the broadcast and lists every one
    revoked = wait_until(lambda: _revoked(celery), 20, "the worker to list revoked tasks", [worker])
    assert set(store.load(orphan.id).task_ids) <= revoked and set(lost.task_ids) <= revoked
    assert "watchdog: job" in worker.log() and client.zcard(ACTIVE_JOBS) == 0
    # after-end steps ran (the tick runs them right after its revoke broadcast)
    wait_until(lambda: client.zscore(ENDED_OUTBOX, orphan.id) is None, 20, "the after-end steps", [worker])

    # A page worker that comes back takes the stale page messages and does nothing with them.
    pages_worker = start_worker(settings, "render")
    wait_until(lambda: client.llen("render") == 0 and worker_log_has(pages_worker, "job is failed; skipped"),
               60, "the stale pages to be skipped", [pages_worker])
    assert store.load(orphan.id).state == "failed" and _s3_keys(settings, f"results/{orphan.id}/") == []
    celery.close()
    client.close()


def worker_log_has(worker, text: str) -> bool:
    return worker.log().count(text) >= 2


def _revoked(celery) -> set[str]:
    replies = celery.control.inspect(timeout=2).revoked() or {}
    return {task for ids in replies.values() for task in ids}
