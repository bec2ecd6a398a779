"""``GET /metrics``: Prometheus text exposition, for the scraper (no key needed).

What it holds: the API's own metrics (every uvicorn worker's when
``PROMETHEUS_MULTIPROC_DIR`` is set) and gauges read from Redis at scrape time:
``docproc_queue_depth{queue}``, ``docproc_queue_oldest_age_seconds{queue}``,
``docproc_jobs_in_state{state}`` and ``docproc_redis_up``. Labels hold route
templates, task/schema names, states and error codes: no tenant, no job id, no secret.
"""

from __future__ import annotations

from fastapi import APIRouter, Response

from api.deps import RedisDep, StoreDep
from docproc import metrics
from workers.celery_app import QUEUES

router = APIRouter(tags=["operations"])


@router.get("/metrics", include_in_schema=False)
def prometheus_metrics(redis: RedisDep, store: StoreDep) -> Response:
    registry = metrics.scrape_registry([metrics.RedisStateCollector(redis, QUEUES, store.count_active)])
    body, content_type = metrics.render(registry)
    return Response(body, media_type=content_type)
