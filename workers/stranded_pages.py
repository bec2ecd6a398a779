"""Model pages stranded on the ``gpu`` queue: no model worker has been online for a while.

Intake no longer queues model pages while no model worker is online (they fail at once with
``engine_unavailable``), but pages queued while one was online stay on the ``gpu`` list when
the last one goes away (a crash loop after an upgrade, a model that no longer loads, a pool
scaled to zero). Once none has been online for ``settings.model_worker_grace_s``, the
watchdog tick (:mod:`workers.periodic`) fails each such page with ``engine_unavailable``
(:func:`workers.jobflow.fail_page`: its failed result is written once and counted once; the
last page ends the job), so the job ends within minutes instead of the stuck-job watchdog's
hours. The messages stay on the queue: a model worker that comes back finds the pages'
results stored and only acks them.
"""

from __future__ import annotations

import base64
import json
import logging
from typing import Any

from docproc.base import model_workers
from docproc.base.broker import GPU_QUEUE, PAGE_TASK
from docproc.base.errors import InvalidRequest, NotFound
from docproc.base.queue_depth import priority_keys
from workers.jobflow import ENGINE_UNAVAILABLE, fail_page

logger = logging.getLogger(__name__)


def waiting_pages(client: Any, limit: int) -> list[tuple[str, int]]:
    """(job id, page) of up to ``limit`` ``docproc.page`` messages waiting on the gpu queue."""
    found: list[tuple[str, int]] = []
    for key in priority_keys(GPU_QUEUE):
        for raw in client.lrange(key, 0, limit - len(found) - 1) if len(found) < limit else []:
            try:
                message = json.loads(raw)
                if message["headers"]["task"] != PAGE_TASK:
                    continue
                args = json.loads(base64.b64decode(message["body"]))[0]
                job_id, page = args[0], args[1]
            except (ValueError, KeyError, TypeError, IndexError):
                continue
            if isinstance(job_id, str) and isinstance(page, int):
                found.append((job_id, page))
    return found


def fail_stranded(r: Any, *, limit: int = 1000) -> int:
    """Fail the model pages waiting on the gpu queue when no model worker has been online for
    ``model_worker_grace_s`` (``r``: the worker's resources); returns how many were recorded."""
    settings = r.settings
    offline = model_workers.offline_for(r.redis)
    if offline is None or not settings.model_worker_grace_s or offline < settings.model_worker_grace_s:
        return 0
    message = (f"no model worker has served the gpu queue for {offline:.0f} s (model_worker_grace_s="
               f"{settings.model_worker_grace_s:.0f}); the page was not run")
    failed = 0
    for job_id, page in dict.fromkeys(waiting_pages(r.redis, limit)):
        try:
            recorded = fail_page(job_id, page, ENGINE_UNAVAILABLE, message, settings=settings, store=r.store,
                                 storage=r.storage, on_ended=r.job_ended)
        except (NotFound, InvalidRequest):  # purged, or a page that is not the job's: nothing to record
            continue
        failed += recorded is not None
    if failed:
        logger.warning("%d model page(s) failed: %s", failed, message)
    return failed
