"""A small real stack for the observability tests, and a Prometheus scrape parser.

:func:`text_stack` starts a prefork Celery worker subprocess (``python -m workers
--queues intake,render -c 2``: two pool children, so the multiprocess metrics are
really summed over processes) with its metrics endpoint on a free port and JSON
logs, then serves the API (uvicorn on a loopback port, in a thread). Jobs use the
text engine: no model is loaded, so the stack is quick. Redis, moto S3 and the
tenant's key come from the caller's settings.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
from conftest import (
    ServiceProcess,
    free_port,
    serving,
    settings_env,
    wait_for_http,
    wait_until,
)
from prometheus_client.parser import text_string_to_metric_families

from api.app import create_app
from docproc.base.settings import Settings
from docproc.jobs.store import TERMINAL

WORKER_QUEUES = ("intake", "render")


@dataclass
class Stack:
    settings: Settings
    api: httpx.Client  # with the tenant's key
    api_url: str
    worker: ServiceProcess
    worker_metrics_url: str

    def wait_for_job(self, job_id: str, timeout: float = 60.0) -> dict:
        """Poll GET /v1/jobs/{id} until it ends; returns the last view and counts the polls."""
        self.polls = getattr(self, "polls", 0)

        def ended() -> dict | None:
            self.polls += 1
            view = self.api.get(f"/v1/jobs/{job_id}").json()
            return view if view["state"] in TERMINAL else None

        return wait_until(ended, timeout, f"job {job_id} to end", [self.worker], interval=0.1)


@contextmanager
def text_stack(settings: Settings, log_dir: Path, api_key: str) -> Iterator[Stack]:
    port = free_port()
    env = settings_env(settings, worker_metrics_port=port, worker_metrics_host="127.0.0.1", log_format="json")
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)  # the worker makes its own
    argv = [sys.executable, "-m", "workers", "--queues", ",".join(WORKER_QUEUES), "-c", "2", "-n", "obs@%h"]
    worker = ServiceProcess(argv, env, log_dir / "worker.log")
    metrics_url = f"http://127.0.0.1:{port}/metrics"

    try:
        wait_for_http(metrics_url, 90, "the worker's metrics endpoint", [worker])
        with serving(create_app(settings)) as url, httpx.Client(
            base_url=url, headers={"Authorization": f"Bearer {api_key}"}, timeout=30
        ) as http:
            yield Stack(settings=settings, api=http, api_url=url, worker=worker, worker_metrics_url=metrics_url)
    finally:
        worker.stop()


@contextmanager
def fresh_text_stack(redis_server, moto_server, log_dir: Path, *, tenant: str, api_key: str) -> Iterator[Stack]:
    """:func:`text_stack` on the session's redis-server (emptied) and a new moto bucket,
    with ``api_key`` the key of ``tenant``."""
    import redis
    from conftest import make_bucket

    from docproc.base.auth import hash_key

    if redis_server.proc is None or redis_server.proc.poll() is not None:
        redis_server.start()
    with redis.Redis.from_url(redis_server.url) as client:
        client.flushdb()
    settings = Settings(
        _env_file=None, redis_url=redis_server.url, storage_url=f"s3://{make_bucket(moto_server)}/",
        s3_endpoint_url=moto_server, s3_region="us-east-1", api_keys={tenant: hash_key(api_key)},
    )
    with text_stack(settings, log_dir, api_key) as running:
        yield running


Samples = dict[tuple[str, frozenset], float]


def parse(text: str) -> Samples:
    """Prometheus text -> {(sample name, labels): value}."""
    out: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return out


def scrape(url: str) -> Samples:
    response = httpx.get(url, timeout=10)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain"), response.headers
    return parse(response.text)


def value(samples: Samples, name: str, **labels: str) -> float:
    """The sample's value; 0.0 when it is not there (a counter never incremented)."""
    return samples.get((name, frozenset(labels.items())), 0.0)


def delta(before: Samples, after: Samples, name: str, **labels: str) -> float:
    return value(after, name, **labels) - value(before, name, **labels)
