"""What observability costs: the API's request middleware and a /metrics scrape.

    python benchmarks/observability.py [--requests 2000] [--rounds 3]

1. Middleware: ``GET /healthz`` through the API app in process (httpx's ASGI transport,
   no sockets), with :class:`api.middleware.RequestObservability` (request id, HTTP
   metrics, access log line at DEBUG) and with the same app built without it; rounds
   alternate, the best round of each counts. Printed: requests/s of both and their ratio.
2. Scrape: the Redis-read part of ``/metrics`` (queue depth and age of six queues, jobs
   by state) against a real redis-server (docproc.cli.localservices) holding 0, 1000 and
   10000 active jobs. Printed: ms per scrape and the ratio to the empty baseline. Then the
   whole ``GET /metrics`` handler (the service-wide counters of docproc.base.shared_metrics read
   back and rendered, this process's publish first) with 10000 active jobs.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time

import httpx
import redis

from api.app import create_app
from api.middleware import RequestObservability
from docproc.base import metrics
from docproc.base.broker import QUEUES
from docproc.base.settings import Settings
from docproc.cli.localservices import RedisServer
from docproc.jobs.store import ACTIVE_JOBS, JobStore


async def _requests_per_s(app, n: int) -> float:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://bench") as client:
        await client.get("/healthz")  # builds the middleware stack
        started = time.perf_counter()
        for _ in range(n):
            response = await client.get("/healthz")
            assert response.status_code == 200
        return n / (time.perf_counter() - started)


def middleware(n: int, rounds: int) -> None:
    settings = Settings(_env_file=None)
    with_mw = create_app(settings)
    without = create_app(settings)
    without.user_middleware = [m for m in without.user_middleware if m.cls is not RequestObservability]
    best = {"with": 0.0, "without": 0.0}
    for _ in range(rounds):
        best["without"] = max(best["without"], asyncio.run(_requests_per_s(without, n)))
        best["with"] = max(best["with"], asyncio.run(_requests_per_s(with_mw, n)))
    print(f"middleware: {best['without']:.0f} req/s without, {best['with']:.0f} req/s with "
          f"-> ratio {best['with'] / best['without']:.2f}")


def scrape(rounds: int) -> None:
    server = RedisServer(tempfile.mkdtemp(prefix="bench-redis-"))
    server.start()
    try:
        client = redis.Redis.from_url(server.url, decode_responses=True)
        store = JobStore(client, Settings(_env_file=None, redis_url=server.url))
        base = None
        for active in (0, 1000, 10000):
            client.flushdb()
            pipe = client.pipeline(transaction=False)
            for i in range(active):
                job_id = f"{i:032x}"
                pipe.hset(f"docproc:job:{job_id}", "state", "queued" if i % 2 else "running")
                pipe.zadd(ACTIVE_JOBS, {job_id: i})
            pipe.execute()
            collector = metrics.RedisStateCollector(client, QUEUES, store.count_active)
            list(collector.collect())
            started = time.perf_counter()
            for _ in range(rounds * 5):
                list(collector.collect())
            ms = (time.perf_counter() - started) * 1000 / (rounds * 5)
            base = base or ms
            print(f"scrape, {active:>5} active jobs: {ms:.1f} ms -> ratio {ms / base:.1f} vs 0 active")
        from api.routes.metrics import prometheus_metrics

        for stage in metrics.STAGES:  # some series in the shared counters, as a running service has
            metrics.STAGE_SECONDS.labels(stage=stage).observe(0.1)
        body = prometheus_metrics(client, store).body
        started = time.perf_counter()
        for _ in range(rounds * 5):
            prometheus_metrics(client, store)
        ms = (time.perf_counter() - started) * 1000 / (rounds * 5)
        print(f"whole /metrics (service-wide counters, {len(body) // 1024} KiB), 10000 active jobs: {ms:.1f} ms")
        client.close()
    finally:
        server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    middleware(args.requests, args.rounds)
    scrape(args.rounds)


if __name__ == "__main__":
    main()
