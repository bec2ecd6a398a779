"""Fixtures of the reliability suite: a whole stack that the tests may break.

Unlike the session's shared redis-server and moto server (tests/conftest.py), the
services here belong to one test, because the tests stop, kill and restart them:

* ``own_redis``: a redis-server (AOF ``everysec``) on its own port and directory;
* ``own_s3``: moto's S3 on a fixed free port, so it can be stopped (connections refused)
  and started again on the same endpoint; moto keeps its objects in this process, so
  they are all there again after the restart, as with a real S3 outage;
* ``stack_settings(...)``: Settings for that Redis and S3, two tenants' API keys;
* ``api``: the FastAPI app under uvicorn on loopback (``serving``), as an httpx client
  authenticated as :data:`TENANT`;
* ``start_worker(queues, ...)``: a real Celery worker subprocess; stopped at the end
  of the test and its log printed.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from conftest import ServiceProcess, serving, settings_env

from api.app import create_app
from docproc.base.auth import hash_key
from docproc.base.settings import Settings
from docproc.cli.localservices import (
    DUMMY_AWS_ENV,
    MotoS3,
    RedisServer,
    free_port,
    make_bucket,
)

TENANT = "rel-tenant"
API_KEY = "dp_reliability-key-00000000000000000000000000"
OTHER_TENANT = "rel-other"
OTHER_KEY = "dp_reliability-other-key-000000000000000000000"


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A redis-server of this test alone (the test may stop or kill it)."""
    server = RedisServer(tmp_path / "redis")
    server.dir.mkdir()
    server.start()
    yield server
    server.stop()


class RestartableS3:
    """moto's S3 on one fixed port: ``stop()`` makes the endpoint refuse connections,
    ``start()`` brings it back on the same URL with the same objects."""

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._server: MotoS3 | None = None

    def start(self) -> str:
        self._server = MotoS3(port=self.port)
        self._server.start()
        return self.url

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop()
            self._server = None


@pytest.fixture
def own_s3(monkeypatch: pytest.MonkeyPatch) -> Iterator[RestartableS3]:
    for name, value in DUMMY_AWS_ENV.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    server = RestartableS3()
    server.start()
    yield server
    server.stop()


def make_settings(redis_url: str, s3_url: str, bucket: str | None = None, **overrides) -> Settings:
    """Settings for one stack: its Redis, a bucket on its S3, two tenants with keys."""
    bucket = bucket or make_bucket(s3_url)
    return Settings(
        _env_file=None,
        redis_url=redis_url,
        storage_url=f"s3://{bucket}/",
        s3_endpoint_url=s3_url,
        s3_region="us-east-1",
        api_keys={TENANT: hash_key(API_KEY), OTHER_TENANT: hash_key(OTHER_KEY)},
        **overrides,
    )


@pytest.fixture
def stack_settings(own_redis: RedisServer, own_s3: RestartableS3) -> Callable[..., Settings]:
    """``stack_settings(**overrides)``: Settings for this test's own Redis and S3."""
    return lambda **overrides: make_settings(own_redis.url, own_s3.url, **overrides)


@pytest.fixture
def serve_api() -> Iterator[Callable[[Settings], httpx.Client]]:
    """``serve_api(settings)``: the API under uvicorn, as an httpx client with TENANT's key."""
    clients: list[httpx.Client] = []
    contexts = []

    def start(settings: Settings) -> httpx.Client:
        ctx = serving(create_app(settings))
        base = ctx.__enter__()
        contexts.append(ctx)
        client = httpx.Client(base_url=base, headers={"X-API-Key": API_KEY}, timeout=30)
        clients.append(client)
        return client

    yield start
    for client in clients:
        client.close()
    for ctx in reversed(contexts):
        ctx.__exit__(None, None, None)


WORKER_ENV_EXTRA = ("periodic_interval_s", "watchdog_stall_s", "watchdog_queued_s", "ended_sweep_after_s",
                    "max_attempts")


@pytest.fixture
def start_worker(tmp_path: Path, workers) -> Callable[..., ServiceProcess]:
    """``start_worker(settings, queues, beat=False, **env)``: ``celery worker`` (solo pool) as a
    subprocess; ``beat=True`` embeds the scheduler (``-B``). Stopped at the end, logs printed."""
    started: list[ServiceProcess] = []

    def start(settings: Settings, queues: str, *, beat: bool = False, **extra) -> ServiceProcess:
        for name in WORKER_ENV_EXTRA:
            extra.setdefault(name, getattr(settings, name))
        n = len(started)
        argv = [sys.executable, "-m", "celery", "-A", "workers.celery_app", "worker", "-Q", queues, "-P", "solo",
                "--loglevel", "INFO", "--without-gossip", "--without-mingle", "-n", f"rel{n}@%h"]
        if beat:
            argv += ["-B", "-s", str(tmp_path / f"beat-schedule{n}")]
        started.append(workers(argv, settings_env(settings, **extra)))
        return started[-1]

    return start