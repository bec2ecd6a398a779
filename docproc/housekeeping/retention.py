"""Retention: the Redis records of work that ended long ago are purged.

Redis holds every job's record, its pages, its webhook events with their attempt logs,
and every batch. Without an end that grows for as long as docproc runs, and Redis runs
with ``noeviction``. So a record lives ``settings.retention_s`` (30 days by default; 0
keeps everything) after its work *ended*, then :func:`purge_expired`, the periodic
``docproc.periodic.purge_expired`` tick (``docproc purge`` by hand), deletes it and its
index entries; the API answers 404 for it from then on.

A job is kept past its retention while it has not ended, while its after-end steps
(:mod:`docproc.jobs.lifecycle`) have not run, while one of its webhook events is still being
delivered, and while its batch is kept: a batch and its jobs go together, once the batch
finished ``retention_s`` ago. A dead-lettered event goes with its job.

S3 objects are never deleted here: inputs are content-addressed and shared between
jobs and re-processes, and results are the product. Expire them with a bucket lifecycle
rule (README, "Operating docproc").

One tick deletes at most ``settings.retention_batch`` jobs and examines at most five
times that, so it never holds the periodic worker for long; a backlog drains over
several ticks. Tenants are visited in a random order so none waits behind a big one.
"""

from __future__ import annotations

import logging
import random
import time
from dataclasses import dataclass

from docproc.base import metrics
from docproc.delivery import webhooks
from docproc.jobs.lifecycle import Context
from docproc.jobs.store import ENDED_OUTBOX, TENANTS, TERMINAL, Job
from docproc.submission.batches import BatchStore

logger = logging.getLogger(__name__)

_CHUNK = 200  # index entries read per call
UNLIMITED = 10**12  # a ``limit`` for a purge by hand (``docproc purge``): the whole backlog in one pass


@dataclass
class Purged:
    """What one purge deleted (or, for a dry run, would delete)."""

    jobs: int = 0
    batches: int = 0
    events: int = 0
    kept: int = 0  # jobs made before the cutoff but kept (not ended, steps or webhooks pending, batch kept)


@dataclass
class _Pass:
    ctx: Context
    batches: BatchStore
    cutoff_ms: int
    dry_run: bool
    limit: int
    out: Purged
    gone_batches: set[str]
    examined: int = 0

    @property
    def spent(self) -> bool:
        return self.out.jobs >= self.limit or self.examined >= 5 * self.limit


def purge_expired(ctx: Context, *, now: float | None = None, dry_run: bool = False,
                  limit: int | None = None) -> Purged:
    """Delete the records of jobs and batches that ended more than ``retention_s`` before
    ``now`` (default: the current time). ``dry_run`` counts without deleting."""
    retention = ctx.settings.retention_s
    if retention <= 0:
        return Purged()
    cutoff_ms = int(((time.time() if now is None else now) - retention) * 1000)
    run = _Pass(ctx=ctx, batches=BatchStore(ctx.redis), cutoff_ms=cutoff_ms, dry_run=dry_run,
                limit=limit or ctx.settings.retention_batch, out=Purged(), gone_batches=set())
    tenants = [t.decode() if isinstance(t, bytes) else t for t in ctx.redis.smembers(TENANTS)]
    random.shuffle(tenants)
    for tenant in tenants:  # batches first: their jobs go once the batch is gone
        _purge_batches(run, tenant)
    for tenant in tenants:
        if run.spent:
            break
        _purge_jobs(run, tenant)
    out = run.out
    if not dry_run:
        for kind, n in (("job", out.jobs), ("batch", out.batches), ("event", out.events)):
            metrics.RETENTION_PURGED.labels(kind=kind).inc(n)
        if out.jobs or out.batches:
            logger.info("retention: purged %d jobs, %d batches, %d webhook events ended before the cutoff "
                        "(%d kept)", out.jobs, out.batches, out.events, out.kept)
    return out


def _purge_events(run: _Pass, tenant: str, subject: str) -> bool:
    """The subject's webhook events, unless one is still pending (then False: keep it all)."""
    n = webhooks.purge_subject(run.ctx.redis, tenant, subject, delete=not run.dry_run)
    if n is None:
        return False
    run.out.events += n
    return True


def _purge_batches(run: _Pass, tenant: str) -> None:
    start = 0
    while not run.spent:
        rows = run.batches.created_before(tenant, run.cutoff_ms, start=start, count=_CHUNK)
        if not rows:
            return
        kept = 0
        for batch_id, exists, finished_at in rows:
            run.examined += 1
            expired = not exists or (finished_at is not None and finished_at.timestamp() * 1000 < run.cutoff_ms)
            if expired and _purge_events(run, tenant, batch_id) and (
                    run.dry_run or run.batches.purge(tenant, batch_id)):
                run.gone_batches.add(batch_id)
                run.out.batches += exists
            else:
                kept += 1
        start += len(rows) if run.dry_run else kept  # purged entries left the index


def _ended_before_cutoff(job: Job, cutoff_ms: int) -> bool:
    return job.state in TERMINAL and job.finished_at is not None and job.finished_at.timestamp() * 1000 < cutoff_ms


def _purge_jobs(run: _Pass, tenant: str) -> None:
    store, r = run.ctx.store, run.ctx.redis
    start = 0
    while not run.spent:
        rows = store.created_before(tenant, run.cutoff_ms, start=start, count=_CHUNK)
        if not rows:
            return
        pipe = r.pipeline(transaction=False)
        for job_id, job in rows:
            pipe.zscore(ENDED_OUTBOX, job_id)
            pipe.exists(BatchStore.key(job.batch_id) if job and job.batch_id else "")
        flags = pipe.execute()
        kept = 0
        for (job_id, job), steps_pending, batch_kept in zip(rows, flags[::2], flags[1::2], strict=True):
            run.examined += 1
            if job is not None:
                batch_kept = batch_kept and job.batch_id not in run.gone_batches
                if (steps_pending is not None or batch_kept or not _ended_before_cutoff(job, run.cutoff_ms)
                        or not _purge_events(run, tenant, job_id)):
                    kept += 1
                    continue
            if run.dry_run or store.purge(tenant, job_id, job.reprocess_of if job else None):
                run.out.jobs += job is not None
            else:
                kept += 1
            if run.spent:
                return
        run.out.kept += kept
        start += len(rows) if run.dry_run else kept
