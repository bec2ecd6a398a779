"""What follows a job's end: its after-end steps, run at least once.

A job becomes terminal in exactly one place, :meth:`JobStore.finish` (or its
cancel), and that Lua step also puts the job id in the *ended outbox*
(``docproc:outbox:ended``). Whoever ended the job then calls :func:`job_ended`,
which runs every after-end step and takes the job out of the outbox. If that
process dies in between (a SIGKILLed worker, a lost connection), the periodic
:func:`sweep_ended` finds the job still in the outbox after
``settings.ended_sweep_after_s`` and runs the steps again. So each step runs at
least once and must be idempotent (a webhook event has a stable id; a batch
counts a job once).

The steps, in order, are the context's ``after_end``: this module knows none of them. They
are put together once, in :mod:`docproc.housekeeping.after_end`, and every process that ends
jobs (the API, the workers, the operator commands) builds its context there. A step that
raises leaves the job in the outbox (the sweep retries all steps later) after the other steps
ran; a context without steps cannot end a job's after-end work (a wiring mistake), so
:func:`job_ended` refuses it instead of emptying the outbox.

Callers: :mod:`workers.jobflow` (``end_job``), the API's cancel route, the
watchdog, and the sweep (``workers.periodic``). ``send`` enqueues a Celery task
by name, so this module needs neither Celery's app nor the workers.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import redis

from docproc.base.errors import NotFound
from docproc.base.settings import Settings
from docproc.base.storage import Storage
from docproc.jobs.store import TERMINAL, Job, JobStore

logger = logging.getLogger(__name__)

SendTask = Callable[[str, list[Any], str], None]
"""``send(task_name, args, queue)`` enqueues one Celery task by name."""


@dataclass(frozen=True)
class Context:
    """What an after-end step may use."""

    settings: Settings
    redis: redis.Redis
    store: JobStore
    send: SendTask
    storage: Storage | None = None  # results, for the re-process diff (None: opened when needed)
    after_end: tuple[AfterEndStep, ...] = ()  # in order: docproc.housekeeping.after_end.STEPS


AfterEndStep = Callable[[Job, Context], None]


def job_ended(job_id: str, ctx: Context, job: Job | None = None) -> bool:
    """Run the after-end steps of a terminal job; True when all ran (it left the outbox).
    ``job``: the job as it ended, when the caller has it (read in its finishing step)."""
    if not ctx.after_end:
        raise RuntimeError("this lifecycle context has no after-end steps; build it with "
                           "docproc.housekeeping.after_end.context()")
    if job is None:
        try:
            job = ctx.store.load(job_id)
        except NotFound:  # gone (expired or deleted): nothing can follow
            ctx.store.ended_handled(job_id)
            return True
    if job.state not in TERMINAL:  # not ended (a caller's mistake): nothing follows yet
        logger.warning("job %s: after-end steps asked for a %s job; skipped", job_id, job.state)
        return False
    ok = True
    for step in ctx.after_end:
        try:
            step(job, ctx)
        except Exception:  # noqa: BLE001 - one failing step must not stop the others
            ok = False
            logger.exception("job %s: after-end step %s failed; the sweep retries it", job_id,
                             getattr(step, "__qualname__", step))
    if ok:
        ctx.store.ended_handled(job_id)
    return ok


def sweep_ended(ctx: Context, *, now: float | None = None, limit: int = 500) -> int:
    """Run the after-end steps of jobs that ended over ``ended_sweep_after_s`` ago and are
    still in the outbox (their finisher died); returns how many were completed."""
    now = time.time() if now is None else now
    cutoff_ms = int((now - ctx.settings.ended_sweep_after_s) * 1000)
    done = 0
    for job_id in ctx.store.ended_pending(cutoff_ms, limit=limit):
        try:
            done += job_ended(job_id, ctx)
        except Exception:  # noqa: BLE001 - e.g. the job expired; the next tick tries again
            logger.exception("job %s: sweep could not run its after-end steps", job_id)
    if done:
        logger.info("sweep: completed the after-end steps of %d job(s)", done)
    return done
