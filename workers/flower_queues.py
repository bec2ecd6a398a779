"""Flower lists every docproc queue, also one no worker consumes right now.

Flower's broker page and ``/api/queues/length`` show the queues of the workers online, and
all declared queues only when no worker is online at all. So with CPU workers up and no model
worker (``docproc up --no-model-worker``, a GPU pool scaled to zero, a model worker that cannot
load its model), the ``gpu`` queue vanished from Flower exactly when its backlog matters.
:func:`keep_every_queue` makes Flower list the workers' queues plus every queue of
:data:`docproc.base.broker.QUEUES`. It runs when Flower loads the app
(``celery -A workers.celery_app flower``, ``docproc flower``).
"""

from __future__ import annotations

from typing import Any


def keep_every_queue() -> None:
    """Patch Flower's handler base once: its queue names always include docproc's queues."""
    from flower.views import BaseHandler

    from docproc.base.broker import QUEUES

    active = BaseHandler.get_active_queue_names
    if getattr(active, "docproc_every_queue", False):
        return

    def every_queue(self: Any) -> list[str]:
        return sorted(set(active(self)) | set(QUEUES))

    every_queue.docproc_every_queue = True  # type: ignore[attr-defined]
    BaseHandler.get_active_queue_names = every_queue
