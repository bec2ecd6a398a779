"""Batch tasks (queue ``bulk``): thin wrappers around :mod:`docproc.submission.batches`.

``docproc.batch.expand(batch_id)`` creates and enqueues the jobs of a batch given as a
list of URIs, an S3 prefix or a re-process selection, one chunk at a time from the
cursor saved in Redis (a redelivered task resumes, creating no job twice). A long
listing is handed to a fresh task after ``settings.batch_expand_slice_s``. A listing
that fails for good (the prefix cannot be read) ends the listing with that error: the
batch completes with the jobs made so far instead of staying "expanding" forever.
"""

from __future__ import annotations

import logging

from celery import Task

from docproc.base.broker import BULK_QUEUE
from docproc.base.errors import DocprocError
from docproc.submission import batches, expansion
from workers.celery_app import app
from workers.tasks import RETRY_OPTIONS, failure_error, resources

logger = logging.getLogger(__name__)


def services() -> batches.BatchServices:
    """This worker process's batch services (its Redis, job store, storage; the Celery app)."""
    r = resources()
    return batches.BatchServices(settings=r.settings, redis=r.redis, store=r.store, storage=r.storage, celery=app)


class ExpandTask(Task):
    def on_failure(self, exc, task_id, args, kwargs, einfo) -> None:  # noqa: ARG002 - Celery's signature
        batch_id = args[0] if args else kwargs.get("batch_id")
        error = failure_error(exc, resources().settings)
        logger.error("batch %s: listing failed for good: %s", batch_id, error.code, extra={"batch_id": batch_id})
        try:
            batches.fail_listing(services(), batch_id, DocprocError(error.message) if not isinstance(
                exc, DocprocError) else exc)
        except Exception:  # noqa: BLE001 - best effort: Redis may be what failed
            logger.exception("batch %s: could not record the listing failure", batch_id)


@app.task(name=batches.EXPAND_TASK, bind=True, base=ExpandTask, **RETRY_OPTIONS)
def expand_task(self: Task, batch_id: str) -> bool:
    """Create and enqueue the batch's jobs from its cursor on; True when the listing is done."""
    done = expansion.expand_batch(services(), batch_id)
    if not done:
        app.send_task(batches.EXPAND_TASK, args=[batch_id], queue=BULK_QUEUE)
    return done
