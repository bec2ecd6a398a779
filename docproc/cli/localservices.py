"""Throwaway backing services on loopback, for the tests and the benchmarks.

* :class:`RedisServer`: a ``redis-server`` from PATH on a free port (never the system
  one on 6379), AOF on and no RDB snapshots as in production; it can be stopped and
  started again on the same port and data directory (a Redis restart, as clients see it).
* :class:`LoggedProcess`: a service subprocess (API, worker, Flower) with its log file,
  stopped with its whole process group.
* :class:`MotoS3`: moto's S3 server over real HTTP in a thread of this process; boto3
  talks to it exactly as to AWS. :data:`DUMMY_AWS_ENV` holds the fake credentials that
  clients (and child processes) need; real AWS is never reached.

moto is a dev dependency (``pip install -e '.[dev]'``); it is imported only when a
:class:`MotoS3` starts.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
import uuid
from pathlib import Path

from docproc.base.errors import ConfigurationError

DUMMY_AWS_ENV: dict[str, str] = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_SESSION_TOKEN": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_CONFIG_FILE": os.devnull,
    "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
    "AWS_EC2_METADATA_DISABLED": "true",
}
"""Fake AWS credentials and no config files: boto3 signs requests, and only moto answers."""


def stop_group(proc: subprocess.Popen, timeout: float = 20.0) -> None:
    """Stop a child started with ``start_new_session=True`` and everything it forked:
    SIGTERM to its process group (a Celery worker's warm shutdown), SIGKILL after ``timeout``."""
    if proc.poll() is not None:
        return
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


REPO_ROOT = Path(__file__).resolve().parents[2]


class LoggedProcess:
    """A service subprocess (API, Celery worker, Flower) in its own process group, run from
    the repository root, its output in a log file. Its own group: a Ctrl-C reaches only
    the script that started it, which stops it in order."""

    def __init__(self, argv: list[str] | tuple[str, ...], env: dict[str, str], log: Path,
                 name: str | None = None) -> None:
        self.log_path = Path(log)
        self.name = name or self.log_path.name
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(list(argv), cwd=REPO_ROOT, env=env, stdout=self._log,
                                     stderr=subprocess.STDOUT, start_new_session=True)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def tail(self, chars: int = 3000) -> str:
        return f"--- {self.name} (last {chars} chars) ---\n{self.log()[-chars:]}"

    def children(self) -> list[int]:
        """Pids of its direct children (e.g. a prefork worker's pool processes)."""
        found = []
        for task in Path(f"/proc/{self.proc.pid}/task").iterdir():
            found += [int(p) for p in (task / "children").read_text().split()]
        return found

    def kill(self) -> None:
        """SIGKILL to the process and its children: a machine lost, not a shutdown."""
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)

    def stop(self, timeout: float = 20.0) -> None:
        """SIGTERM to the group (a Celery worker's warm shutdown), SIGKILL after ``timeout``."""
        stop_group(self.proc, timeout)
        self._log.close()


def free_port() -> int:
    """A loopback TCP port nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class RedisServer:
    """A redis-server process in ``directory`` (AOF ``everysec``, no snapshots), in its own
    session so a Ctrl-C meant for its parent does not stop it before its clients."""

    def __init__(self, directory: str | os.PathLike[str], port: int | None = None) -> None:
        self.dir = Path(directory)
        self.port = port or free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 10.0) -> None:
        """Start it and wait until it answers PING; ConfigurationError if it does not."""
        import redis

        binary = shutil.which("redis-server")
        if binary is None:
            raise ConfigurationError("redis-server is not on PATH (scripts/bootstrap.sh --services installs it)")
        cmd = [
            binary, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.dir),
            "--save", "", "--appendonly", "yes", "--appendfsync", "everysec",
            "--protected-mode", "no", "--daemonize", "no", "--logfile", str(self.dir / "redis.log"),
        ]  # fmt: skip
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                     start_new_session=True)  # fmt: skip
        client = redis.Redis(host="127.0.0.1", port=self.port, socket_connect_timeout=0.5)
        deadline = time.monotonic() + timeout
        try:
            while True:
                try:
                    if client.ping():
                        return
                except (redis.exceptions.ConnectionError, redis.exceptions.BusyLoadingError):
                    pass
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    logfile = self.dir / "redis.log"
                    log = logfile.read_text(errors="replace")[-2000:] if logfile.exists() else ""
                    self.stop()
                    raise ConfigurationError(f"redis-server did not answer PING on port {self.port}:\n{log}")
                time.sleep(0.02)
        finally:
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


class MotoS3:
    """moto's S3 server on ``127.0.0.1`` (a free port unless given); ``.url`` once started.

    Clients need :data:`DUMMY_AWS_ENV` in their environment (or explicit fake keys)."""

    def __init__(self, port: int = 0) -> None:
        self.port = port
        self.url: str | None = None
        self._server = None

    def start(self) -> str:
        """Start the server thread; returns the endpoint URL (``http://127.0.0.1:PORT``)."""
        from moto.server import ThreadedMotoServer

        self._server = ThreadedMotoServer(ip_address="127.0.0.1", port=self.port, verbose=False)
        self._server.start()
        host, port = self._server.get_host_and_port()
        self.url = f"http://{host}:{port}"
        return self.url

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop()
            self._server = None


def make_bucket(endpoint_url: str, name: str | None = None) -> str:
    """Create a fresh bucket on the given (moto) endpoint with fake keys; returns its name."""
    import boto3

    name = name or f"docproc-test-{uuid.uuid4().hex[:12]}"
    boto3.client(
        "s3", endpoint_url=endpoint_url, region_name="us-east-1",
        aws_access_key_id="testing", aws_secret_access_key="testing",
    ).create_bucket(Bucket=name)  # fmt: skip
    return name
