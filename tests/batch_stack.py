"""The real stack the batch and re-process tests share (imported by both modules).

Per test module: the session's redis-server (emptied), a fresh result bucket and a
source bucket on moto's S3 over HTTP, the API served by uvicorn on a loopback port, one
Celery worker subprocess on ``intake,render,bulk,webhooks,periodic`` (prefork), and a
real webhook receiver on loopback (allow-listed). Tenant A has a webhook secret;
tenant B exists only to prove isolation.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pymupdf
import pytest
import redis
from conftest import ServiceProcess, make_bucket, serving, settings_env, wait_until
from webhook_receiver import WebhookReceiver

from api.app import create_app
from docproc.base.auth import hash_key
from docproc.base.settings import Settings
from docproc.base.storage import open_storage
from docproc.jobs.store import JobStore, connect_redis
from docproc.submission.batches import BatchServices

TENANT_A, TENANT_B = "batch-a", "batch-b"
KEY_A = "dp_batch-a-key-00000000000000000000000000000000"
KEY_B = "dp_batch-b-key-00000000000000000000000000000000"
SECRET = "whsec_" + "c2VjcmV0LXNpZ25pbmcta2V5LWZvci1iYXRjaGVz"
MAX_FILE_BYTES = 20_000  # the text stack's per-document limit (its PDFs are ~1 KB)
MISSING_BUCKET = "h2-allowed-but-missing"  # on the allow-list, never created
CHUNK = 7  # tiny chunks: the expansion path runs many steps even on small prefixes
QUEUES = "intake,render,bulk,webhooks,periodic"


def text_pdf(i: int) -> bytes:
    """A distinct one-page born-digital PDF (the text engine reads it; no model needed)."""
    doc = pymupdf.open()
    page = doc.new_page(width=300, height=200)
    page.insert_text((20, 40), f"Document number {i:05d} of the batch test.", fontsize=10)
    page.insert_text((20, 60), "Total due: 100.00 EUR, thank you.", fontsize=10)
    data = doc.tobytes()
    doc.close()
    return data


def batch_services(settings: Settings) -> BatchServices:
    """The services the plain batch functions take, as a worker process makes them."""
    from workers.celery_app import create_app as celery_app

    client = connect_redis(settings)
    return BatchServices(settings=settings, redis=client, store=JobStore(client, settings),
                         storage=open_storage(settings), celery=celery_app(settings))


@dataclass
class Stack:
    settings: Settings
    source_bucket: str
    url: str
    a: httpx.Client
    b: httpx.Client
    worker: ServiceProcess
    receiver: WebhookReceiver
    env: dict[str, str]  # the worker's environment (a CLI subprocess sees the same settings)

    def wait_batch(self, batch_id: str, path: str = "batches", timeout: float = 120) -> dict:
        def done() -> dict | None:
            view = self.a.get(f"/v1/{path}/{batch_id}").json()
            return view if view["state"] == "completed" else None

        return wait_until(done, timeout, f"batch {batch_id} to complete", [self.worker], interval=0.2)


@contextmanager
def running_stack(redis_server, moto_server, log_dir: Path, *, queues: str = QUEUES,
                  **overrides: Any) -> Iterator[Stack]:
    """The stack with ``overrides`` on the settings of the API and the worker."""
    if redis_server.proc is None or redis_server.proc.poll() is not None:
        redis_server.start()
    with redis.Redis.from_url(redis_server.url) as client:
        client.flushdb()
    source = make_bucket(moto_server)
    with WebhookReceiver() as receiver:
        extra: dict[str, Any] = {"source_buckets": [source, MISSING_BUCKET], "webhook_secrets": {TENANT_A: [SECRET]},
                                 "webhook_allow_hosts": ["127.0.0.1"], "batch_chunk_size": CHUNK,
                                 "batch_expand_threads": 4, **overrides}
        settings = Settings(
            _env_file=None, redis_url=redis_server.url, storage_url=f"s3://{make_bucket(moto_server)}/",
            s3_endpoint_url=moto_server, s3_region="us-east-1", rate_limit_per_minute=0,
            api_keys={TENANT_A: hash_key(KEY_A), TENANT_B: hash_key(KEY_B)}, **extra,
        )
        env = settings_env(settings, **{k: json.dumps(v) if isinstance(v, list | dict) else v
                                        for k, v in extra.items()})
        worker = ServiceProcess([sys.executable, "-m", "workers", "--queues", queues, "-c", "2", "-n", "batch@%h"],
                                env, log_dir / "worker.log")
        try:
            wait_until(lambda: "ready." in worker.log(), 90, "the worker to start", [worker], interval=0.2)
            with serving(create_app(settings)) as url, \
                    httpx.Client(base_url=url, headers={"Authorization": f"Bearer {KEY_A}"}, timeout=60) as a, \
                    httpx.Client(base_url=url, headers={"Authorization": f"Bearer {KEY_B}"}, timeout=60) as b:
                yield Stack(settings, source, url, a, b, worker, receiver, env)
        finally:
            worker.stop()


@pytest.fixture(scope="module")
def stack(redis_server, moto_server, tmp_path_factory) -> Iterator[Stack]:
    """The text-engine stack (no model): intake, render, bulk, webhooks, periodic. Each expand
    task does one chunk and hands the rest to a fresh task (the long-listing path)."""
    with running_stack(redis_server, moto_server, tmp_path_factory.mktemp("batch-logs"),
                       max_file_bytes=MAX_FILE_BYTES, batch_expand_slice_s=0.001) as running:
        yield running
