"""Shared pytest fixtures. Each block belongs to the part of docproc that needs it."""

from __future__ import annotations

import pytest

from docproc.base.settings import Settings

# ---------------------------------------------------------------------------
# intake + render (docproc/jobs/inputs.py, workers/render.py)
# ---------------------------------------------------------------------------


@pytest.fixture
def settings() -> Settings:
    """The shipped defaults, with no .env file read; tighten a limit with
    ``settings.model_copy(update={...})``."""
    return Settings(_env_file=None)


# --- end of intake + render block -------------------------------------------


# ---------------------------------------------------------------------------
# InternVL engine (workers/engines/internvl.py, workers/engines/tiny_internvl.py)
# ---------------------------------------------------------------------------


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory):
    """A tiny randomly initialised InternVL checkpoint (real architecture, seed 0), built once."""
    from workers.engines.tiny_internvl import build_tiny_internvl

    return build_tiny_internvl(tmp_path_factory.mktemp("tiny-internvl") / "model", seed=0)


@pytest.fixture(scope="session")
def tiny_settings(tiny_model_dir) -> Settings:
    """Settings that point the engine at the tiny model, on the CPU, with small token budgets."""
    return Settings(
        _env_file=None,
        model=str(tiny_model_dir),
        device="cpu",
        dtype="auto",
        attn_implementation="auto",
        max_new_tokens_ocr=24,
        max_new_tokens_tables=24,
        max_new_tokens_extract=32,
        extract_min_free_tokens=0,  # constrained extract: the closing reserve alone (test_constrained_proof)
    )


@pytest.fixture(scope="session")
def tiny_engine(tiny_settings):
    """An InternVLEngine that loaded the tiny model through the normal load() path."""
    from workers.engines.internvl import InternVLEngine

    return InternVLEngine(tiny_settings).load()


# --- end of InternVL engine block --------------------------------------------


# ---------------------------------------------------------------------------
# service: real Redis + real S3 (docproc/jobs/store.py, docproc/base/auth.py, docproc/base/storage.py)
# A redis-server started from PATH on a free loopback port (never the system one on
# 6379) and moto's S3 server over real HTTP; dummy AWS credentials, never real AWS.
# ---------------------------------------------------------------------------

import os  # noqa: E402

# The servers themselves live in docproc/cli/localservices.py (the benchmarks start them too);
# these names stay importable from conftest for the tests that use them directly.
from docproc.cli.localservices import DUMMY_AWS_ENV as _DUMMY_AWS_ENV  # noqa: E402
from docproc.cli.localservices import (  # noqa: E402, F401
    LoggedProcess,
    MotoS3,
    RedisServer,
    free_port,
    make_bucket,
    stop_group,
)


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory):
    """One redis-server for the test session; ``.url``, ``.port``, ``.stop()``, ``.start()``."""
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def redis_client(redis_server):
    """A client (str responses) on an emptied database; restarts the server if a test stopped it."""
    import redis

    if redis_server.proc is None or redis_server.proc.poll() is not None:
        redis_server.start()
    client = redis.Redis.from_url(redis_server.url, decode_responses=True)
    client.flushdb()
    yield client
    client.close()


@pytest.fixture(scope="session")
def moto_server():
    """moto's S3 over real HTTP on loopback, started once; yields its endpoint URL. Dummy
    AWS credentials are in the environment for the whole session (subprocesses inherit them)."""
    with pytest.MonkeyPatch.context() as mp:
        for name, value in _DUMMY_AWS_ENV.items():
            mp.setenv(name, value)
        mp.delenv("AWS_PROFILE", raising=False)
        mp.delenv("AWS_ENDPOINT_URL", raising=False)
        server = MotoS3()
        yield server.start()
        server.stop()


@pytest.fixture
def s3_settings(moto_server, monkeypatch) -> Settings:
    """Settings whose storage is a fresh bucket on the moto endpoint."""
    for name, value in _DUMMY_AWS_ENV.items():
        monkeypatch.setenv(name, value)
    bucket = make_bucket(moto_server)
    return Settings(_env_file=None, storage_url=f"s3://{bucket}/", s3_endpoint_url=moto_server, s3_region="us-east-1")


@pytest.fixture
def service_settings(s3_settings, redis_client, redis_server) -> Settings:
    """Settings for the whole service: the session's Redis (emptied) and a fresh S3 bucket."""
    return s3_settings.model_copy(update={"redis_url": redis_server.url})


@pytest.fixture
def model_worker_online(redis_client):
    """A model worker counted online (docproc.base.model_workers) for a test that queues model pages
    without running one: with none online, model work is refused (engine_unavailable)."""
    from docproc.base import model_workers
    model_workers.announce(redis_client, "placeholder@tests", "tests", heartbeat_s=3600)
    yield
    model_workers.withdraw(redis_client, "placeholder@tests")


# --- end of service block ----------------------------------------------------


# ---------------------------------------------------------------------------
# service processes: the API in a thread, workers and Flower as subprocesses
# (tests/test_api.py, tests/test_worker.py, tests/test_e2e.py)
# ---------------------------------------------------------------------------

import socket  # noqa: E402
import sys  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable, Iterator, Sequence  # noqa: E402
from contextlib import contextmanager  # noqa: E402
from typing import Any  # noqa: E402


@contextmanager
def serving(app: Any) -> Iterator[str]:
    """Run the ASGI ``app`` with uvicorn on a free loopback port in a thread; yields its base URL."""
    import uvicorn

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on", timeout_graceful_shutdown=2))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            sock.close()
            pytest.fail("the API server did not start")
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()


WORKER_SETTINGS = ("redis_url", "storage_url", "s3_endpoint_url", "s3_region", "model", "device",
                   "max_new_tokens_ocr", "max_new_tokens_tables", "max_new_tokens_extract", "extract_min_free_tokens",
                   "visibility_timeout_s")


def settings_env(settings: Settings, **extra: Any) -> dict[str, str]:
    """The environment a worker (or Flower) process needs to see ``settings``: this process's
    environment plus the DOCPROC_* variables of WORKER_SETTINGS, then of ``extra``."""
    env = dict(os.environ)
    for name in WORKER_SETTINGS:
        value = getattr(settings, name)
        if value is not None:
            env[f"DOCPROC_{name.upper()}"] = str(value)
    env.update({f"DOCPROC_{k.upper()}": str(v) for k, v in extra.items()})
    env["PYTHONUNBUFFERED"] = "1"
    return env


ServiceProcess = LoggedProcess  # the tests' name for it


def wait_until(predicate: Callable[[], Any], timeout: float, what: str,
               processes: Sequence[ServiceProcess] = (), interval: float = 0.05) -> Any:
    """Poll ``predicate`` until it returns something truthy (returned); AssertionError on
    timeout or when one of ``processes`` exits, with their log tails in the message."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        for p in processes:
            if p.proc.poll() is not None:
                raise AssertionError(f"{p.log_path.stem} exited ({p.proc.returncode}) while waiting for {what}:\n"
                                     f"{p.tail()}")
        time.sleep(interval)
    tails = "\n".join(p.tail() for p in processes)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}\n{tails}".rstrip())


def wait_for_http(url: str, timeout: float, what: str, processes: Sequence[ServiceProcess] = (),
                  interval: float = 0.2) -> None:
    """Wait until GET ``url`` answers 200 (a service that is up), as :func:`wait_until` does."""
    import httpx

    def answers() -> bool:
        try:
            return httpx.get(url, timeout=5).status_code == 200
        except httpx.TransportError:
            return False

    wait_until(answers, timeout, what, processes, interval=interval)


# --- end of service processes block -------------------------------------------


@pytest.fixture
def workers(tmp_path):
    """Start workers with ``workers(argv, env)``; all are stopped at the end, their logs
    printed when the test failed."""
    started: list[ServiceProcess] = []

    def start(argv: list[str], env: dict[str, str]) -> ServiceProcess:
        worker = ServiceProcess(argv, env, tmp_path / f"worker{len(started)}.log")
        started.append(worker)
        return worker

    yield start
    for worker in started:
        worker.stop()
        sys.stdout.write(f"{worker.tail()}\n")
