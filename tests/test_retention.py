"""Retention (docproc/housekeeping/retention.py) on the session's real redis-server: what a purge
deletes, what it keeps, and that the API then answers 404; webhook events are made and
delivered for real to a loopback receiver, batches finish through their after-end step.

The clock is moved by passing ``now`` (retention is days; the test cannot wait).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time

import httpx
import pytest
from conftest import serving, settings_env
from test_webhooks import Sent
from webhook_receiver import WebhookReceiver

from api.app import create_app
from docproc.base import metrics
from docproc.base.auth import hash_key
from docproc.base.errors import NotFound
from docproc.base.settings import Settings
from docproc.delivery import webhooks
from docproc.housekeeping import after_end, retention
from docproc.jobs import lifecycle
from docproc.jobs.store import ENDED_OUTBOX, TENANTS, JobRequest, JobStore
from docproc.submission import batches, reprocess_diff

TENANT, OTHER = "acme", "globex"
KEY = "dp_retention-test-key-acme-00000000000000000"
SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
RETENTION_S = 3600


@pytest.fixture
def settings(redis_server, tmp_path) -> Settings:
    return Settings(
        _env_file=None,
        redis_url=redis_server.url,
        storage_url=f"file://{tmp_path}/store",
        api_keys={TENANT: hash_key(KEY)},
        webhook_secrets={TENANT: [SECRET], OTHER: [SECRET]},
        webhook_allow_hosts=["127.0.0.1/32"],
        webhook_retry_schedule_s=[0],  # one attempt: a failure is dead at once
        webhook_retry_jitter=0,
        webhook_timeout_s=2,
        retention_s=RETENTION_S,
    )


@pytest.fixture
def ctx(settings, redis_client) -> lifecycle.Context:
    return after_end.context(settings=settings, redis=redis_client, store=JobStore(redis_client, settings),
                             send=Sent())


@pytest.fixture
def receiver():
    with WebhookReceiver() as rx:
        yield rx


def _deliver_all(ctx: lifecycle.Context) -> None:
    """Run the delivery tasks the lifecycle asked for (one attempt each)."""
    while ctx.send.tasks:
        _, (event_id, attempt), _ = ctx.send.tasks.pop(0)
        webhooks.deliver(ctx, event_id, attempt)


def _job(ctx: lifecycle.Context, *, url: str | None = None, tenant: str = TENANT, batch_id: str | None = None,
         state: str | None = "succeeded", steps: bool = True, reprocess_of: str | None = None):
    """A job, ended in ``state`` (None: left running) with its after-end steps run (or not)."""
    store = ctx.store
    job, _ = store.create(tenant, JobRequest(task="ocr", webhook_url=url), input_key="inputs/x",
                          input_sha256="0" * 64, size_bytes=10, filename="a.pdf", idempotency_key=None,
                          fingerprint="f", batch_id=batch_id, reprocess_of=reprocess_of)
    store.start(job.id, page_count=1, pages=[1], media_type="application/pdf")
    if state is not None:
        assert store.finish(job.id, state, result_key=f"results/{job.id}/document.json")
        if steps:
            assert lifecycle.job_ended(job.id, ctx)
    return job


def _keys_of(r, ident: str) -> list[str]:
    return sorted(k for k in r.keys("docproc:*") if ident in k)


def test_a_purge_deletes_ended_work_past_retention_and_keeps_everything_still_in_flight(ctx, receiver, settings):
    r, store = ctx.redis, ctx.store
    ok_url = receiver.url
    delivered = _job(ctx, url=ok_url)
    _deliver_all(ctx)
    receiver.fail_times = 1  # `dead`: its one attempt gets a 503 -> dead-lettered
    dead = _job(ctx, url=ok_url, state="failed")
    _deliver_all(ctx)
    no_hook = _job(ctx, tenant=OTHER, state="canceled")
    running = _job(ctx, state=None)
    steps_pending = _job(ctx, url=ok_url, steps=False)  # its finisher died before the after-end steps
    pending_hook = _job(ctx, url=ok_url)  # its event waits for its delivery attempt
    ctx.send.tasks.clear()
    assert webhooks.events_for_subject(r, TENANT, delivered.id)[0].state == "succeeded"
    assert webhooks.events_for_subject(r, TENANT, dead.id)[0].state == "dead"
    assert webhooks.dead_letters(r, TENANT)[1] == 1
    assert webhooks.events_for_subject(r, TENANT, pending_hook.id)[0].state == "pending"

    # a finished batch (its two jobs ended, batch.completed delivered) and a batch still running
    bstore = batches.BatchStore(r)
    done_batch = batches.new_batch(TENANT, source="uris", request=JobRequest(), webhook_url=ok_url)
    open_batch = batches.new_batch(TENANT, source="uris", request=JobRequest(), webhook_url=None)
    for batch in (done_batch, open_batch):
        bstore.create(batch)
    members = [_job(ctx, batch_id=done_batch.id, steps=False) for _ in range(2)]
    early = _job(ctx, batch_id=open_batch.id, steps=False)  # ended long ago; its batch still lists more
    bstore.add_jobs(done_batch.id, enumerate(j.id for j in members))
    bstore.add_jobs(open_batch.id, [(0, early.id), (1, running.id)])
    bstore.mark_expanded(done_batch.id)
    bstore.mark_expanded(open_batch.id)
    for job in (*members, early):
        assert lifecycle.job_ended(job.id, ctx)
    _deliver_all(ctx)
    assert bstore.counts(done_batch.id).state == "completed" and bstore.counts(open_batch.id).state == "running"
    assert webhooks.events_for_subject(r, TENANT, done_batch.id)[0].state == "succeeded"

    expired = [delivered, dead, no_hook, *members]
    kept = [running, steps_pending, pending_hook, early]
    assert set(r.smembers(TENANTS)) == {TENANT, OTHER}

    # Before the retention has passed, nothing goes.
    assert retention.purge_expired(ctx, now=time.time() + RETENTION_S - 60) == retention.Purged()
    # Past it: a dry run counts, deletes nothing.
    later = time.time() + RETENTION_S + 60
    keys_before = sorted(r.keys("*"))
    dry = retention.purge_expired(ctx, now=later, dry_run=True)
    assert (dry.jobs, dry.batches, dry.events) == (len(expired), 1, 3)  # delivered, dead, batch.completed
    assert sorted(r.keys("*")) == keys_before

    purged_before = metrics.RETENTION_PURGED.labels(kind="job")._value.get()
    out = retention.purge_expired(ctx, now=later)
    assert (out.jobs, out.batches, out.events) == (dry.jobs, dry.batches, dry.events)
    assert out.kept == len(kept)
    assert metrics.RETENTION_PURGED.labels(kind="job")._value.get() == purged_before + len(expired)
    for job in expired:
        with pytest.raises(NotFound):
            store.load(job.id)
        assert _keys_of(r, job.id) == [], job.id  # no hash, no pages, no events, no attempt logs
    assert _keys_of(r, done_batch.id) == []
    assert webhooks.dead_letters(r, TENANT) == ([], 0)  # the dead letter went with its job
    # the tenants' job indexes hold exactly the kept jobs
    assert set(r.zrange(f"docproc:tenant:{TENANT}:jobs", 0, -1)) == {j.id for j in kept}
    assert r.zcard(f"docproc:tenant:{OTHER}:jobs") == 0
    assert r.zrange(bstore.tenant_key(TENANT), 0, -1) == [open_batch.id]
    for job in kept:
        assert store.load(job.id).id == job.id
    assert r.zscore(ENDED_OUTBOX, steps_pending.id) is not None
    assert webhooks.events_for_subject(r, TENANT, pending_hook.id)[0].state == "pending"

    # The API answers 404 for the purged job, and still serves the kept ones.
    with serving(create_app(settings)) as base, httpx.Client(base_url=base, timeout=30) as http:
        auth = {"X-API-Key": KEY}
        assert http.get(f"/v1/jobs/{delivered.id}", headers=auth).status_code == 404
        assert http.get(f"/v1/jobs/{delivered.id}/deliveries", headers=auth).status_code == 404
        assert http.get(f"/v1/batches/{done_batch.id}", headers=auth).status_code == 404
        assert http.get(f"/v1/jobs/{pending_hook.id}", headers=auth).json()["state"] == "succeeded"
        listed = http.get("/v1/jobs", headers=auth).json()
        assert {j["id"] for j in listed["jobs"]} == {j.id for j in kept}

    # Once in-flight work ends, a later purge takes it too; a second purge finds nothing.
    assert lifecycle.job_ended(steps_pending.id, ctx)
    _deliver_all(ctx)  # its job.succeeded event, delivered
    out = retention.purge_expired(ctx, now=later)
    assert (out.jobs, out.events, out.kept) == (1, 1, 3)  # steps_pending; running, pending_hook, early kept
    assert retention.purge_expired(ctx, now=later).jobs == 0


def test_a_purge_takes_a_documents_versions_with_their_jobs(ctx):
    store, r = ctx.store, ctx.redis
    first = _job(ctx)
    second = _job(ctx, reprocess_of=first.id)
    third = _job(ctx, reprocess_of=second.id)  # a re-process of a re-process
    other = _job(ctx, tenant=OTHER, reprocess_of=first.id)  # cannot happen through the API; never shown
    for job in (first, second, third):
        assert [v.id for v in store.versions(TENANT, job.id)] == [first.id, second.id, third.id]
    with pytest.raises(NotFound):
        store.versions(OTHER, first.id)
    assert [v.id for v in store.versions(OTHER, other.id)] == [other.id]
    assert store.purge(TENANT, first.id)
    assert [v.id for v in store.versions(TENANT, third.id)] == [second.id, third.id]  # the chain starts later
    assert retention.purge_expired(ctx, now=time.time() + RETENTION_S + 60).jobs == 3
    for job in (first, second, third, other):
        assert _keys_of(r, job.id) == [], job.id  # no job, no list of re-processes left behind


def test_a_purge_takes_a_reprocess_with_its_kept_diff(ctx):
    r = ctx.redis
    bstore = batches.BatchStore(r)
    rerun = batches.new_batch(TENANT, source="jobs", request=JobRequest(task="extract"), webhook_url=None,
                              kind="reprocess")
    bstore.create(rerun)
    job = _job(ctx, batch_id=rerun.id, steps=False)
    bstore.add_jobs(rerun.id, [(0, job.id)])
    bstore.mark_expanded(rerun.id)
    assert reprocess_diff.record(r, rerun.id, job.id, [("total", True), ("vendor.name", False)]) == 1
    assert lifecycle.job_ended(job.id, ctx) and bstore.counts(rerun.id).state == "completed"
    assert len(_keys_of(r, rerun.id)) > 3  # record, jobs, counted, the diff's three keys
    assert retention.purge_expired(ctx, now=time.time() + RETENTION_S + 60).batches == 1
    assert _keys_of(r, rerun.id) == []
    # a late diff step (the sweep) for the purged re-process makes no key again
    assert reprocess_diff.record(r, rerun.id, "f" * 32, [("total", True)]) == -1
    assert _keys_of(r, rerun.id) == []


def test_retention_zero_keeps_everything(ctx, settings):
    job = _job(ctx)
    forever = after_end.context(settings=settings.model_copy(update={"retention_s": 0}), redis=ctx.redis,
                                store=ctx.store, send=ctx.send)
    assert retention.purge_expired(forever, now=time.time() + 10 * 365 * 86400) == retention.Purged()
    assert ctx.store.load(job.id).state == "succeeded"


def test_one_tick_purges_at_most_retention_batch_jobs_and_the_backlog_drains(ctx):
    jobs = [_job(ctx) for _ in range(7)]
    later = time.time() + RETENTION_S + 60
    assert retention.purge_expired(ctx, now=later, limit=3).jobs == 3
    assert retention.purge_expired(ctx, now=later, limit=3).jobs == 3
    assert retention.purge_expired(ctx, now=later, limit=3).jobs == 1
    assert ctx.redis.zcard(f"docproc:tenant:{TENANT}:jobs") == 0
    assert all(not ctx.redis.exists(f"docproc:job:{j.id}") for j in jobs)


def test_docproc_purge_counts_with_dry_run_then_deletes(ctx, settings, redis_server):
    ended = [_job(ctx), _job(ctx, tenant=OTHER, state="failed")]
    running = _job(ctx, state=None)
    time.sleep(1.2)  # past a retention of 1 s
    env = settings_env(settings, retention_s=1)

    def purge(*argv: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "docproc", "purge", *argv], env=env, capture_output=True,
                              text=True, timeout=60)

    dry = purge("--dry-run", "--json")
    assert dry.returncode == 0, dry.stderr
    assert json.loads(dry.stdout) == {"jobs": 2, "batches": 0, "events": 0, "kept": 1, "dry_run": True,
                                      "retention_s": 1}
    assert all(ctx.redis.exists(f"docproc:job:{j.id}") for j in ended)
    done = purge()
    assert done.returncode == 0 and done.stdout.startswith("purged 2 jobs, 0 batches"), done.stdout + done.stderr
    assert not any(ctx.redis.exists(f"docproc:job:{j.id}") for j in ended)
    assert ctx.store.load(running.id).state == "running"
