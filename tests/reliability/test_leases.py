"""Page leases (docproc.jobs.leases) on a real redis-server, and a task that runs past the Redis
visibility timeout: its page is executed once.

The service test gives the broker a 1 s visibility timeout and runs two model workers:
while one still runs a page, the broker hands its message out again to the other,
which finds the lease held by a live owner and keeps the message instead of running
the page; once the owner has recorded it, the other finds the result stored and acks.
"""

from __future__ import annotations

import os
import signal
import sys
import time

import builders
import pytest
from conftest import settings_env, wait_until
from test_jobflow import flow, flow_settings  # noqa: F401 - fixtures
from test_model_worker import BATCH, queue_pages
from test_worker import s3_keys, worker_settings  # noqa: F401 - fixtures

from docproc.base.storage import document_result_key, page_result_key
from docproc.jobs.leases import LEASE_PREFIX, LeaseHeld, PageLeases, lease_key
from docproc.jobs.store import TERMINAL, JobStore
from workers.celery_app import create_app

pytestmark = pytest.mark.reliability


def hand_out_again(celery) -> None:
    """kombu's visibility sweep (``restore_visible``) on the broker, now: every unacked
    message older than the visibility timeout goes back on its queue."""
    with celery.connection_for_read() as conn:
        conn.default_channel.qos.restore_visible(num=100, interval=1)

PY = sys.executable


def test_one_owner_heartbeat_keeps_it_release_frees_it(redis_client):
    leases, other = PageLeases(redis_client, ttl_s=0.3), PageLeases(redis_client, ttl_s=0.3)
    lease = leases.acquire("job1", 3)
    with pytest.raises(LeaseHeld) as held:
        other.acquire("job1", 3)
    assert held.value.owner == lease.token and redis_client.get(lease_key("job1", 3)) == lease.token
    other.acquire("job1", 4).release()  # another page is another lease
    time.sleep(1.0)  # > 3 TTLs: only the heartbeat keeps it
    assert leases.owner("job1", 3) == lease.token and not lease.lost
    other._release(keys=[lease_key("job1", 3)], args=["not-the-owner"])  # compare-and-delete
    assert leases.owner("job1", 3) == lease.token
    lease.release()
    assert leases.owner("job1", 3) is None
    other.acquire("job1", 3).release()


def test_a_dead_owners_lease_expires_within_one_ttl(redis_client):
    dead = PageLeases(redis_client, ttl_s=0.3)
    lease = dead.acquire("job2", 1)
    dead._forget(lease)  # the owner's process is gone: nobody renews
    with pytest.raises(LeaseHeld):
        PageLeases(redis_client, ttl_s=0.3).acquire("job2", 1)
    time.sleep(0.4)
    taken = PageLeases(redis_client, ttl_s=0.3).acquire("job2", 1)
    assert not lease.renew() and lease.lost  # the old owner cannot extend the new one's lease
    taken.release()


def test_run_page_does_not_run_a_page_leased_by_a_live_owner(flow):  # noqa: F811
    job = flow.submit(builders.multipage_text_pdf(1), filename="one.pdf", task="ocr")
    flow.intake(job.id)
    owner = PageLeases(flow.store.redis, ttl_s=5).acquire(job.id, 1)
    with pytest.raises(LeaseHeld):
        flow.page(job.id, 1)
    assert [p.attempts for p in flow.store.pages(job.id)] == [0]  # not started, not counted
    owner.release()
    assert flow.page(job.id, 1).status == "succeeded"
    assert flow.store.load(job.id).state == "succeeded"
    assert not flow.store.redis.keys(f"{LEASE_PREFIX}*")  # released after recording


@pytest.mark.worker
def test_a_page_running_past_the_visibility_timeout_is_executed_once(worker_settings, redis_client,  # noqa: F811
                                                                    workers):  # noqa: F811
    """The owner is paused (SIGSTOP: a long GC pause, a starved CPU, a page that simply takes
    long) while it runs the page, past the 1 s visibility timeout and well within its lease."""
    store = JobStore(redis_client, worker_settings)
    env = settings_env(worker_settings, visibility_timeout_s=1, lease_ttl_s=30, max_new_tokens_ocr=1200,
                       max_new_tokens_per_tile=1200, repetition_guard_span=0)
    models = [workers([PY, "-m", "workers", "--queues", "gpu", "-n", f"model{i}@%h"], env) for i in (1, 2)]
    for model in models:
        wait_until(lambda: "ready" in model.log(), 60, "a model worker to start", models)
    (job,) = queue_pages(worker_settings, store, workers, env, n_jobs=1, pages=1)

    owner = wait_until(lambda: next((m for m in models if BATCH.search(m.log())), None), 30,
                       "a worker to take the page", models, interval=0.01)
    os.kill(owner.proc.pid, signal.SIGSTOP)
    try:
        (other,) = [m for m in models if m is not owner]
        assert store.load(job.id).state == "running" and redis_client.exists(lease_key(job.id, 1))
        time.sleep(1.5)  # past the visibility timeout: the running page's message is due again
        celery = create_app(worker_settings.model_copy(update={"visibility_timeout_s": 1}))
        # kombu's own sweep hands it out again; it runs every 10th poll of a client, so call
        # it now rather than wait for one (the timing is forced, the mechanism is kombu's)
        wait_until(lambda: hand_out_again(celery) or "kept for later" in other.log(), 30,
                   "the redelivery to meet the lease", [other], interval=0.5)
        celery.close()
    finally:
        os.kill(owner.proc.pid, signal.SIGCONT)
    wait_until(lambda: store.load(job.id).state in TERMINAL, 60, f"job {job.id}", models)

    assert store.load(job.id).state == "succeeded"
    assert [p.attempts for p in store.pages(job.id)] == [1]  # executed once
    assert s3_keys(worker_settings, f"results/{job.id}/") == [document_result_key(job.id), page_result_key(job.id, 1)]
    assert not BATCH.search(other.log())  # the other worker never ran the page
    wait_until(lambda: f"job {job.id}: succeeded" in owner.log(), 10, "the job's log line")
    assert (owner.log() + other.log()).count(f"job {job.id}: succeeded") == 1  # finalised once
    wait_until(lambda: not redis_client.keys(f"{LEASE_PREFIX}*"), 10, "the lease to be released")
