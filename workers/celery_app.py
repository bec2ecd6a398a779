"""The workers' Celery app: docproc's broker configuration (:mod:`docproc.base.broker`) and
the task modules a worker registers.

Every worker, the scheduler and Flower load this module (``celery -A workers.celery_app ...``).
It must stay light: no torch, no engines; the tasks live in :mod:`workers.tasks` and its
siblings, which a worker imports (``include``). The scheduler is one
``celery -A workers.celery_app beat`` process per deployment (``docproc up`` starts it); it
only sends the ticks in :func:`docproc.base.broker.beat_schedule`. Job state is written by
the plain functions in :mod:`workers.jobflow`.
"""

from __future__ import annotations

import sys

from celery import Celery

from docproc.base.broker import configure
from docproc.base.settings import Settings, get_settings
from workers import observability  # noqa: F401 - connects the workers' task signals (logs, metrics)

# Modules whose tasks a worker registers (each imports its engines and stores lazily).
TASK_MODULES: tuple[str, ...] = ("workers.tasks", "workers.periodic", "workers.batch_tasks",
                                  "workers.webhook_tasks")


def create_app(settings: Settings | None = None) -> Celery:
    """A docproc Celery app configured from ``settings`` (default: the environment)."""
    app = Celery("docproc", include=list(TASK_MODULES))
    return configure(app, settings or get_settings())


app = create_app()

if "flower" in sys.modules:  # loaded by Flower (celery -A workers.celery_app flower): list every queue
    from workers.flower_queues import keep_every_queue

    keep_every_queue()
