"""The after-end steps, put together: what follows every job's end (:mod:`docproc.jobs.lifecycle`).

In order:

1. :func:`docproc.submission.reprocess_diff.diff_step`: a re-process's diff against the
   version it re-ran (before the batch count, so the batch's completion event finds it whole);
2. :func:`docproc.delivery.webhooks.job_event_step`: the job's webhook event;
3. :func:`docproc.submission.batches.count_ended_job`: the job counted once in its batch, and
   the batch's completion event when it was the last.

Every process that ends jobs builds its lifecycle context with :func:`context`: the API
(cancel), the workers (``end_job``, the sweep, the watchdog) and the operator commands.
Each step runs at least once and is idempotent.
"""

from __future__ import annotations

import redis

from docproc.base.settings import Settings
from docproc.base.storage import Storage
from docproc.delivery import webhooks
from docproc.jobs import lifecycle
from docproc.jobs.store import JobStore
from docproc.submission import batches, reprocess_diff

STEPS: tuple[lifecycle.AfterEndStep, ...] = (
    reprocess_diff.diff_step,
    webhooks.job_event_step,
    batches.count_ended_job,
)


def context(*, settings: Settings, redis: redis.Redis, store: JobStore, send: lifecycle.SendTask,
            storage: Storage | None = None) -> lifecycle.Context:
    """A lifecycle context with every after-end step."""
    return lifecycle.Context(settings=settings, redis=redis, store=store, send=send, storage=storage,
                             after_end=STEPS)
