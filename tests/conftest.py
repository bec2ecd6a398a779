"""Shared pytest fixtures. Each block belongs to the part of docproc that needs it."""

from __future__ import annotations

import pytest

from docproc.settings import Settings

# ---------------------------------------------------------------------------
# intake + render (workers/intake.py, workers/render.py)
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
    )


@pytest.fixture(scope="session")
def tiny_engine(tiny_settings):
    """An InternVLEngine that loaded the tiny model through the normal load() path."""
    from workers.engines.internvl import InternVLEngine

    return InternVLEngine(tiny_settings).load()


# --- end of InternVL engine block --------------------------------------------


# ---------------------------------------------------------------------------
# service: real Redis + real S3 (docproc/jobs.py, docproc/auth.py, docproc/storage.py)
# A redis-server started from PATH on a free loopback port (never the system one on
# 6379) and moto's S3 server over real HTTP; dummy AWS credentials, never real AWS.
# ---------------------------------------------------------------------------

import os  # noqa: E402
import shutil  # noqa: E402
import socket  # noqa: E402
import subprocess  # noqa: E402
import time  # noqa: E402
import uuid  # noqa: E402
from pathlib import Path  # noqa: E402


def free_port() -> int:
    """A loopback TCP port nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class RedisServer:
    """A redis-server process (AOF on, no RDB snapshots) that can be stopped and started
    again on the same port and data directory: what a Redis restart looks like to clients."""

    def __init__(self, directory: Path, port: int | None = None) -> None:
        self.dir = Path(directory)
        self.port = port or free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 10.0) -> None:
        import redis

        binary = shutil.which("redis-server")
        if binary is None:
            pytest.fail("redis-server is not on PATH (scripts/bootstrap.sh --services installs it)")
        cmd = [
            binary, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.dir),
            "--save", "", "--appendonly", "yes", "--appendfsync", "everysec",
            "--protected-mode", "no", "--daemonize", "no", "--logfile", str(self.dir / "redis.log"),
        ]  # fmt: skip
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        client = redis.Redis(host="127.0.0.1", port=self.port, socket_connect_timeout=0.5)
        deadline = time.monotonic() + timeout
        while True:
            try:
                if client.ping():
                    break
            except (redis.exceptions.ConnectionError, redis.exceptions.BusyLoadingError):
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                logfile = self.dir / "redis.log"
                log = logfile.read_text(errors="replace")[-2000:] if logfile.exists() else ""
                self.stop()
                pytest.fail(f"redis-server did not answer PING on port {self.port}:\n{log}")
            time.sleep(0.02)
        client.close()

    def stop(self, timeout: float = 10.0) -> None:
        """Graceful shutdown (SIGTERM: the AOF is flushed)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def kill(self) -> None:
        """SIGKILL: a crash, not a shutdown."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.proc = None


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


_DUMMY_AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_SESSION_TOKEN": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_CONFIG_FILE": os.devnull,
    "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
    "AWS_EC2_METADATA_DISABLED": "true",
}


@pytest.fixture(scope="session")
def moto_server():
    """moto's S3 over real HTTP on loopback, started once; yields its endpoint URL. Dummy
    AWS credentials are in the environment for the whole session (subprocesses inherit them)."""
    from moto.server import ThreadedMotoServer

    with pytest.MonkeyPatch.context() as mp:
        for name, value in _DUMMY_AWS_ENV.items():
            mp.setenv(name, value)
        mp.delenv("AWS_PROFILE", raising=False)
        mp.delenv("AWS_ENDPOINT_URL", raising=False)
        server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        server.start()
        host, port = server.get_host_and_port()
        yield f"http://{host}:{port}"
        server.stop()


def make_bucket(endpoint_url: str, name: str | None = None) -> str:
    """Create a fresh bucket on the given (moto) endpoint; returns its name."""
    import boto3

    name = name or f"docproc-test-{uuid.uuid4().hex[:12]}"
    boto3.client(
        "s3", endpoint_url=endpoint_url, region_name="us-east-1",
        aws_access_key_id="testing", aws_secret_access_key="testing",
    ).create_bucket(Bucket=name)  # fmt: skip
    return name


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


# --- end of service block ----------------------------------------------------
