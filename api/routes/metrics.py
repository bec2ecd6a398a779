"""``GET /metrics``: Prometheus text exposition, for the scraper (no key needed).

What it holds: the whole service's ``docproc_*`` metrics (pages, finished jobs, webhook
attempts ... counted by the workers, which add them to shared counters in Redis:
:mod:`docproc.base.shared_metrics`), this process's ``process_*``/``python_*`` metrics, and gauges
read from Redis at scrape time:
``docproc_queue_depth{queue}``, ``docproc_queue_oldest_age_seconds{queue}``,
``docproc_jobs_in_state{state}`` and ``docproc_redis_up``. Labels hold route
templates, task/schema names, states and error codes: no tenant, no job id, no secret.
"""

from __future__ import annotations

from fastapi import APIRouter, Response

from api.deps import RedisDep, StoreDep
from docproc.base import metrics, shared_metrics
from docproc.base.broker import QUEUES

router = APIRouter(tags=["operations"])


@router.get("/metrics", include_in_schema=False)
def prometheus_metrics(redis: RedisDep, store: StoreDep) -> Response:
    shared_metrics.publish(redis)  # this API process's own counts first, then the whole service's
    registry = metrics.scrape_registry([metrics.RedisStateCollector(redis, QUEUES, store.count_active)],
                                       service=redis)
    body, content_type = metrics.render(registry)
    return Response(body, media_type=content_type)
