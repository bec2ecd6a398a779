"""The stuck-job watchdog: a job that stopped moving ends ``failed`` with code ``timeout``.

Every non-terminal job is listed in the zset :data:`~docproc.jobs.store.ACTIVE_JOBS`
(``docproc:active``) with the time of its last progress, on Redis's own clock: the
JobStore's Lua scripts set it when the job is created, starts, and when a page starts
or is recorded, and remove the job when it ends. So a tick reads only the oldest
entries (``ZRANGEBYSCORE``), never every job.

A job is stalled when

* it is ``running`` and nothing happened for ``settings.watchdog_stall_s`` (its page
  messages were lost, or its workers are gone for good), or
* it is still ``queued`` ``settings.watchdog_queued_s`` after it was created (its
  intake message was lost).

A stalled job is ended through the one terminal path, :meth:`JobStore.finish` (which
also puts it in the ended outbox) and then :func:`docproc.jobs.lifecycle.job_ended` (its
webhook, its batch count), and its Celery tasks (``job.task_ids``) are revoked, so a
worker that comes back later skips them. A page task that still arrives finds the job
terminal and does nothing (``workers.jobflow.run_page``).

The deadlines must stay above the time a lost page takes to come back by itself
(``visibility_timeout_s`` + ``task_time_limit_s``), or the watchdog would fail jobs
that were about to recover. The periodic task ``docproc.periodic.watchdog``
(``workers/periodic.py``) calls :func:`fail_stalled` every ``periodic_interval_s``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from docproc.base import metrics
from docproc.base.errors import NotFound
from docproc.jobs import lifecycle
from docproc.jobs.results import ErrorInfo
from docproc.jobs.store import ACTIVE_JOBS, TERMINAL

logger = logging.getLogger(__name__)

TIMEOUT = "timeout"

Revoke = Callable[[list[str]], object]
"""``revoke(task_ids)``: tell the workers to discard these Celery tasks (``app.control.revoke``)."""


def redis_now_ms(ctx: lifecycle.Context) -> int:
    """Redis's clock in ms: the clock the progress times were written with."""
    seconds, micros = ctx.redis.time()
    return int(seconds) * 1000 + int(micros) // 1000


def fail_stalled(ctx: lifecycle.Context, revoke: Revoke | None = None, *, now_ms: int | None = None) -> list[str]:
    """End every stalled job ``failed`` with code ``timeout`` and revoke its tasks.

    Returns the ids of the jobs this call ended. Safe to run concurrently with itself
    and with the workers: a job that ended meanwhile is left as it is
    (:meth:`JobStore.finish` decides atomically).
    """
    settings = ctx.settings
    now_ms = redis_now_ms(ctx) if now_ms is None else now_ms
    running_cutoff = now_ms - int(settings.watchdog_stall_s * 1000)
    queued_cutoff = now_ms - int(settings.watchdog_queued_s * 1000)
    candidates = ctx.redis.zrangebyscore(
        ACTIVE_JOBS, "-inf", max(running_cutoff, queued_cutoff), start=0, num=settings.watchdog_batch, withscores=True
    )
    ended: list[str] = []
    for job_id, score in candidates:
        job_id = job_id.decode() if isinstance(job_id, bytes) else job_id
        try:
            job = ctx.store.load(job_id)
        except NotFound:  # expired or deleted: nothing to watch
            ctx.redis.zrem(ACTIVE_JOBS, job_id)
            continue
        if job.state in TERMINAL:  # ended by a path that predates the index: drop it
            ctx.redis.zrem(ACTIVE_JOBS, job_id)
            continue
        limit_s = settings.watchdog_queued_s if job.state == "queued" else settings.watchdog_stall_s
        if score > (queued_cutoff if job.state == "queued" else running_cutoff):
            continue
        idle_s = (now_ms - score) / 1000.0
        what = "still queued" if job.state == "queued" else "no progress"
        error = ErrorInfo(code=TIMEOUT, message=f"the job was stuck ({what} for {idle_s:.0f} s; "
                                                f"the limit is {limit_s:.0f} s)")
        if not ctx.store.finish(job_id, "failed", error=error):
            continue  # it ended meanwhile, by its own finisher or a cancel
        ended.append(job_id)
        metrics.count_job_finished(job, "failed")
        metrics.ERRORS.labels(code=TIMEOUT, stage="job").inc()
        logger.warning("watchdog: job %s failed with timeout (%s for %.0f s)", job_id, what, idle_s,
                       extra={"job_id": job_id, "tenant": job.tenant, "stage": "watchdog"})
        if revoke is not None and job.task_ids:
            try:
                revoke(list(job.task_ids))
            except Exception:  # noqa: BLE001 - the job is failed already; stale tasks skip a terminal job
                logger.exception("watchdog: job %s: could not revoke its tasks", job_id, extra={"job_id": job_id})
        lifecycle.job_ended(job_id, ctx)
    return ended
