"""Housekeeping tasks, sent every ``settings.periodic_interval_s`` by the scheduler
(``celery beat``, see :func:`workers.celery_app.beat_schedule`) to the ``periodic`` queue.

Each task is a thin wrapper around a plain function that tests call directly:

    docproc.periodic.sweep_ended    docproc.jobs.lifecycle.sweep_ended: after-end steps of jobs
                                    whose finisher died (webhook event, batch count)
    docproc.periodic.webhooks_due   webhook deliveries whose retry time has come
    docproc.periodic.watchdog       jobs with no progress past their deadline fail with ``timeout``;
                                    upload batches whose upload was lost end their listing; model
                                    pages stranded on gpu fail with ``engine_unavailable``
    docproc.periodic.purge_expired  the Redis records of work ended more than ``retention_s``
                                    ago are deleted (docproc.housekeeping.retention)

A tick that raises is logged and dropped: the next tick does the work.
"""

from __future__ import annotations

import logging

from docproc.base.broker import (
    PURGE_EXPIRED_TASK,
    SWEEP_ENDED_TASK,
    WATCHDOG_TASK,
    WEBHOOKS_DUE_TASK,
)
from docproc.delivery import webhooks
from docproc.housekeeping import retention, watchdog
from docproc.jobs import lifecycle
from docproc.submission import batches
from workers import batch_tasks, stranded_pages
from workers.celery_app import app
from workers.tasks import resources

logger = logging.getLogger(__name__)


@app.task(name=SWEEP_ENDED_TASK, ignore_result=True)
def sweep_ended_task() -> int:
    """Complete the after-end steps of jobs left in the ended outbox."""
    return lifecycle.sweep_ended(resources().lifecycle)


@app.task(name=WATCHDOG_TASK, ignore_result=True)
def watchdog_task() -> int:
    """Fail the jobs that stopped moving (code ``timeout``) and revoke their tasks; end the
    listing of upload batches whose upload was lost with its API process; fail the model pages
    stranded on the gpu queue with no model worker online (workers.stranded_pages)."""
    stalled = watchdog.fail_stalled(resources().lifecycle, revoke=app.control.revoke)
    stranded = stranded_pages.fail_stranded(resources())
    return len(stalled) + len(batches.end_stalled_uploads(batch_tasks.services())) + stranded


@app.task(name=WEBHOOKS_DUE_TASK, ignore_result=True)
def webhooks_due_task() -> int:
    """Send the webhook delivery attempts that are due (long retries wait in Redis, not in ETAs)."""
    return webhooks.enqueue_due(resources().lifecycle)


@app.task(name=PURGE_EXPIRED_TASK, ignore_result=True)
def purge_expired_task() -> int:
    """Delete the Redis records of jobs and batches that ended more than ``retention_s`` ago."""
    return retention.purge_expired(resources().lifecycle).jobs
