"""``docproc up``: the whole service on this machine, on loopback, one command.

Starts, as child processes sharing one environment:

    redis-server   broker + job state (AOF on, data in <var>/redis)
    api            the REST API (uvicorn)                       http://127.0.0.1:<port>
    cpu worker     Celery prefork on the intake, render, bulk and periodic queues
    webhook worker the webhooks queue, a threads pool (slow receivers never hold page work)
    scheduler      celery beat: sends the housekeeping ticks (workers.periodic)
    model worker   the gpu queue: loads the model once, batches pages across jobs (workers.model_worker)
    flower         Celery monitoring, basic auth                http://127.0.0.1:<flower port>

Results go to local disk (<var>/storage) unless DOCPROC_STORAGE_URL names an S3
bucket. While it runs, <var>/docproc-up.env holds its Redis and storage settings, where
the operator commands in another terminal find them (docproc/cli/stackfile.py). Ctrl-C (or
SIGTERM) stops everything, workers first so they finish or return their current task,
Redis last. If ``up`` itself dies without stopping them (SIGKILL, OOM), the kernel sends each
child SIGTERM (Linux's parent-death signal), so no API, worker or Redis outlives it.
"""

from __future__ import annotations

import ctypes
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from docproc.base.auth import generate_key, hash_key
from docproc.base.errors import ConfigurationError
from docproc.cli import stackfile
from docproc.cli.localservices import stop_group


@dataclass
class Child:
    name: str
    argv: list[str]
    process: subprocess.Popen | None = None


@dataclass
class Stack:
    var: Path
    api_port: int = 8000
    redis_port: int = 6390
    flower_port: int = 5555
    model_worker: bool = True
    env: dict[str, str] = field(default_factory=lambda: dict(os.environ))
    children: list[Child] = field(default_factory=list)
    dev_key: str | None = None

    def plan(self) -> list[Child]:
        redis = shutil.which("redis-server")
        if redis is None:
            raise ConfigurationError("redis-server is not installed (apt-get install redis-server)")
        (self.var / "redis").mkdir(parents=True, exist_ok=True)
        py = sys.executable
        celery = [py, "-m", "celery", "-A", "workers.celery_app"]
        flower_auth = self.env.setdefault("DOCPROC_FLOWER_BASIC_AUTH", f"admin:{secrets.token_urlsafe(12)}")
        plan = [
            Child("redis", [redis, "--port", str(self.redis_port), "--bind", "127.0.0.1", "--dir", str(self.var / "redis"),
                            "--appendonly", "yes", "--appendfsync", "everysec", "--save", "",
                            "--maxmemory-policy", "noeviction",
                            "--logfile", str((self.var / "redis" / "redis.log").resolve())]),
            Child("api", [py, "-m", "api", "--host", "127.0.0.1", "--port", str(self.api_port)]),
            Child("cpu-worker", [py, "-m", "workers", "--queues", "intake,render,bulk,periodic", "-c", "2"]),
            # webhook delivery in its own pool (threads): slow receivers never hold page work
            Child("webhook-worker", [py, "-m", "workers", "--queues", "webhooks"]),
            Child("scheduler", [*celery, "beat", "--loglevel", "INFO",
                                "--schedule", str((self.var / "beat-schedule").resolve())]),
        ]
        if self.model_worker:
            plan.append(Child("model-worker", [py, "-m", "workers", "--queues", "gpu"]))
        plan.append(Child("flower", [*celery, "flower", "--address=127.0.0.1", f"--port={self.flower_port}",
                                     f"--basic-auth={flower_auth}"]))
        return plan

    def start(self) -> None:
        if not self.env.get("DOCPROC_API_KEYS"):
            # A development key for tenant "local", made fresh each time and shown once.
            self.dev_key = generate_key()
            self.env["DOCPROC_API_KEYS"] = json.dumps({"local": hash_key(self.dev_key)})
        self.env.setdefault("DOCPROC_REDIS_URL", f"redis://127.0.0.1:{self.redis_port}/0")
        self.env.setdefault("DOCPROC_STORAGE_URL", (self.var / "storage").resolve().as_uri())
        self.env.setdefault("DOCPROC_LOG_FORMAT", "text")  # a terminal, not a log shipper: readable lines
        for child in self.plan():
            self.spawn(child)
            self.children.append(child)
            if child.name == "redis":
                wait_for_port(self.redis_port, timeout=10)
                # where the operator CLI (docproc jobs/queues/keys ...) finds this Redis and storage
                stackfile.write(self.var, self.env)

    def spawn(self, child: Child) -> None:
        """Start ``child`` in a session of its own (its group is stopped as one), set to get
        SIGTERM when this process dies."""
        child.process = subprocess.Popen(child.argv, env=self.env, start_new_session=True,
                                         preexec_fn=_terminate_with_parent(os.getpid()))

    def watch(self) -> int:
        """Block until the API exits (or we are interrupted).

        Redis, the workers, the scheduler and Flower are restarted when they exit, with a
        backoff doubling up to a minute: Redis comes back from its AOF (the API and the
        workers reconnect by themselves, as after any Redis restart), the model worker
        deliberately exits after an inference timeout, and one that cannot load its
        model exits at start (its log says why).
        """
        delays: dict[str, float] = {}
        due: dict[str, float] = {}
        while True:
            now = time.monotonic()
            for child in self.children:
                code = child.process.poll() if child.process else None
                if code is None:
                    continue
                if child.name == "api":
                    print(f"docproc up: {child.name} exited with {code}; stopping", file=sys.stderr)
                    return code or 1
                if child.name not in due:
                    delays[child.name] = min(60.0, delays.get(child.name, 0.5) * 2)
                    due[child.name] = now + delays[child.name]
                    print(f"docproc up: {child.name} exited with {code}; restarting in "
                          f"{delays[child.name]:.0f} s", file=sys.stderr)
                elif now >= due[child.name]:
                    del due[child.name]
                    self.spawn(child)
            time.sleep(0.5)

    def stop(self, timeout: float = 20.0) -> None:
        """Workers and API first (SIGTERM: warm shutdown), Redis last."""
        stackfile.remove(self.var)
        for child in reversed(self.children):
            if child.process:
                stop_group(child.process, timeout)


PR_SET_PDEATHSIG = 1  # linux/prctl.h


def _terminate_with_parent(parent: int):
    """A ``preexec_fn``: in the child, before exec, ask Linux for SIGTERM when ``parent``
    dies (and exit at once if it already has). Elsewhere a no-op."""

    def preexec() -> None:
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
        except (OSError, AttributeError):  # not Linux: Ctrl-C and SIGTERM still stop the stack
            return
        if os.getppid() != parent:  # died between fork and prctl
            os._exit(1)

    return preexec


def wait_for_port(port: int, *, timeout: float, host: str = "127.0.0.1") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex((host, port)) == 0:
                return
        time.sleep(0.05)
    raise ConfigurationError(f"nothing listens on {host}:{port} after {timeout:.0f} s")


def run_stack(stack: Stack) -> int:
    def on_term(signum, frame):  # noqa: ARG001 - signal handler signature
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    try:
        stack.start()
        print(
            f"docproc up: API http://127.0.0.1:{stack.api_port}/docs  "
            f"Flower http://127.0.0.1:{stack.flower_port} (user:password {stack.env['DOCPROC_FLOWER_BASIC_AUTH']})  "
            f"Redis 127.0.0.1:{stack.redis_port}  storage {stack.env['DOCPROC_STORAGE_URL']}  -- Ctrl-C stops\n"
            f"docproc up: operator commands in this checkout (docproc jobs, queues, keys ...) use this stack: "
            f"{stackfile.stack_file(stack.var)}",
            file=sys.stderr,
        )
        if stack.dev_key:
            print(f"docproc up: API key for tenant 'local': {stack.dev_key}\n"
                  f"  export DOCPROC_KEY={stack.dev_key}", file=sys.stderr)
        return stack.watch()
    except KeyboardInterrupt:
        return 0
    finally:
        stack.stop()
