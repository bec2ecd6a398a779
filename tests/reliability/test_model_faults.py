"""Model faults on the real stack: the batched model worker SIGKILLed mid-batch.

Pages of two jobs wait on the gpu queue; a model worker takes them all into one batch
and is killed with SIGKILL while it runs (frozen first, so the kill lands mid-batch
however fast the tiny model is). Its unacked messages come back after the visibility
timeout (kombu's sweep, called at once), its page leases expire (no heartbeat), and a
second model worker runs the pages: every job ends once, one result per page, one
document.
(Faults *inside* a batch, a raising or out-of-memory model, are in
tests/test_model_batching.py, on the real tiny model.)
"""

from __future__ import annotations

import os
import signal
import sys
import time

import pytest
from conftest import settings_env, wait_until
from test_model_worker import BATCH, queue_pages
from test_worker import s3_keys, worker_settings  # noqa: F401 - fixtures

from docproc.base.storage import document_result_key, page_result_key
from docproc.jobs.leases import LEASE_PREFIX
from docproc.jobs.store import TERMINAL, JobStore
from workers.celery_app import create_app

from .test_leases import hand_out_again

pytestmark = [pytest.mark.reliability, pytest.mark.worker]

PY = sys.executable


def test_model_worker_killed_mid_batch_pages_redelivered_jobs_finish_once(worker_settings, redis_client,  # noqa: F811
                                                                          workers):  # noqa: F811
    store = JobStore(redis_client, worker_settings)
    visibility, ttl = 2, 2
    env = settings_env(worker_settings, visibility_timeout_s=visibility, lease_ttl_s=ttl,
                       max_new_tokens_ocr=1200, max_new_tokens_per_tile=1200, repetition_guard_span=0)
    jobs = queue_pages(worker_settings, store, workers, env, n_jobs=2, pages=2)

    first = workers([PY, "-m", "workers", "--queues", "gpu", "-n", "first@%h"], env)
    wait_until(lambda: BATCH.search(first.log()), 60, "the first batch to start", [first], interval=0.01)
    os.kill(first.proc.pid, signal.SIGSTOP)  # frozen mid-batch, then killed: no race with the model
    # the whole batch holds its pages' leases while it generates
    assert len(redis_client.keys(f"{LEASE_PREFIX}*")) == 4
    assert all(p.state == "running" for j in jobs for p in store.pages(j.id))
    first.kill()
    time.sleep(visibility + 0.5)
    hand_out_again(create_app(worker_settings.model_copy(update={"visibility_timeout_s": visibility})))

    fast = settings_env(worker_settings, visibility_timeout_s=visibility, lease_ttl_s=ttl)
    second = workers([PY, "-m", "workers", "--queues", "gpu", "-n", "second@%h"], fast)
    for job in jobs:
        wait_until(lambda: store.load(job.id).state in TERMINAL, 90, f"job {job.id}", [second])

    models = [first, second]
    for job in jobs:
        done = store.load(job.id)
        assert done.state == "succeeded" and (done.pages_done, done.pages_failed) == (2, 0)
        assert [p.attempts for p in store.pages(job.id)] == [2, 2]  # run by the first, then the second
        assert s3_keys(worker_settings, f"results/{job.id}/") == [
            document_result_key(job.id), page_result_key(job.id, 1), page_result_key(job.id, 2)]
        wait_until(lambda: f"job {job.id}: succeeded" in "".join(m.log() for m in models), 10, "the job's log line")
        assert "".join(m.log() for m in models).count(f"job {job.id}: succeeded") == 1  # finalised once
    assert BATCH.search(second.log())
    assert not redis_client.keys(f"{LEASE_PREFIX}*")  # released after recording
