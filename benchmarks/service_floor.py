"""The floor under ``benchmarks/service.py``'s plumbing cost: what the libraries the stack is
built on cost per one-page job on this machine, with no docproc logic in them.

    python benchmarks/service_floor.py [--calls 400] [--tasks 2000] [--requests 1000]

Measured, each on loopback and from /proc or the calling thread's CPU clock:

    S3      docproc's S3Storage (boto3: conditional PUT with a SHA-256 checksum, GET) on moto's
            S3 server over HTTP, 8 KiB objects (the benchmark's invoice): client CPU per call
    Celery  a no-op ``docproc.intake`` sent by name and run by a prefork worker (-c 2), both
            with docproc's broker configuration (late acks, task events on for Flower):
            sender + worker + redis-server CPU per task; the same with task events off
    HTTP    FastAPI + uvicorn with nothing behind the routes (``benchmarks/floor_services.py``):
            a multipart upload of 8 KiB and a JSON read, server CPU per request

A one-page job needs at least: 1 upload and 1 read of its state (the API), 1 task, 4 S3
calls (the input's PUT in the API; its GET, the page's and the document's PUT in a worker).
Their sum is the floor printed; ``service.py``'s plumbing is that floor plus docproc's own
work (job state, leases, checks, logs, metrics) and the extra polls of its client.
Needs the dev extra (moto, httpx) and redis-server on PATH.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

import httpx
import redis

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from service import group_cpu_s  # noqa: E402 - this directory's service benchmark

from docproc.base.broker import INTAKE_TASK, client  # noqa: E402
from docproc.base.settings import Settings  # noqa: E402
from docproc.base.storage import S3Storage  # noqa: E402
from docproc.cli.localservices import (  # noqa: E402
    DUMMY_AWS_ENV,
    LoggedProcess,
    MotoS3,
    RedisServer,
    free_port,
    make_bucket,
)

BODY = os.urandom(8 * 1024)


def s3_per_call(cleanup: ExitStack, calls: int) -> tuple[float, float]:
    """(PUT, GET) client CPU ms per call of S3Storage on moto."""
    os.environ.update(DUMMY_AWS_ENV)
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # moto's server: no line per request
    moto = MotoS3()
    url = moto.start()
    cleanup.callback(moto.stop)
    storage = S3Storage(make_bucket(url, "docproc-floor"), endpoint_url=url)
    for i in range(20):  # warm: connections, botocore's lazy loading
        storage.put_result(f"warm/{i}.json", BODY)
        storage.get(f"warm/{i}.json")
    started = time.thread_time()
    for i in range(calls):
        storage.put_result(f"floor/{i}.json", BODY)
    put = time.thread_time() - started
    started = time.thread_time()
    for i in range(calls):
        storage.get(f"floor/{i}.json")
    get = time.thread_time() - started
    return put / calls * 1000, get / calls * 1000


def celery_per_task(var: Path, tasks: int, *, events: bool) -> tuple[float, float, float]:
    """(sender, worker, redis) CPU ms per no-op task, docproc's broker configuration."""
    with ExitStack() as cleanup:
        data = var / f"redis-{events}"
        data.mkdir()
        server = RedisServer(data)
        server.start()
        cleanup.callback(server.stop)
        env = dict(os.environ, DOCPROC_REDIS_URL=server.url, PYTHONPATH=f"{REPO / 'benchmarks'}:{REPO}")
        argv = [sys.executable, "-m", "celery", "-A", "floor_services.celery_app", "worker", "-Q", "intake", "-c", "2",
                "-P", "prefork", "--loglevel", "WARNING", "-n", "floor@%h"]  # fmt: skip
        worker = LoggedProcess(argv, env | ({} if events else {"FLOOR_NO_EVENTS": "1"}), var / f"worker-{events}.log")
        cleanup.callback(worker.stop)
        sender = client(Settings(_env_file=None, redis_url=server.url))
        sender.conf.update(task_send_sent_event=events)
        r = redis.Redis.from_url(server.url)

        def drained() -> None:
            deadline = time.monotonic() + 120
            while r.llen("intake") or r.hlen("unacked"):
                if worker.proc.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit(f"the floor worker did not drain its queue\n{worker.tail()}")
                time.sleep(0.05)

        for i in range(50):
            sender.send_task(INTAKE_TASK, args=[f"warm-{i}"], queue="intake")
        drained()
        time.sleep(1)
        w0, r0, s0 = group_cpu_s(worker.proc.pid), group_cpu_s(server.proc.pid), time.process_time()
        for i in range(tasks):
            sender.send_task(INTAKE_TASK, args=[f"job-{i}"], queue="intake")
        s1 = time.process_time()
        drained()
        time.sleep(0.5)
        w1, r1 = group_cpu_s(worker.proc.pid), group_cpu_s(server.proc.pid)
        return (s1 - s0) / tasks * 1000, (w1 - w0) / tasks * 1000, (r1 - r0) / tasks * 1000


def http_per_request(var: Path, requests: int) -> tuple[float, float]:
    """(upload, read) server CPU ms per request of the bare FastAPI app under uvicorn."""
    port = free_port()
    env = dict(os.environ, PYTHONPATH=f"{REPO / 'benchmarks'}:{REPO}")
    server = LoggedProcess([sys.executable, "-m", "uvicorn", "floor_services:http_app", "--host", "127.0.0.1",
                            "--port", str(port), "--log-level", "warning", "--no-access-log"], env, var / "http.log")
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as http:
            deadline = time.monotonic() + 60
            while True:
                try:
                    http.get("/jobs/warm")
                    break
                except httpx.TransportError:
                    if server.proc.poll() is not None or time.monotonic() > deadline:
                        raise SystemExit(f"the floor HTTP app did not start\n{server.tail()}") from None
                    time.sleep(0.2)

            def upload() -> None:
                response = http.post("/jobs", files={"file": ("a.pdf", BODY, "application/pdf")}, data={"task": "ocr"})
                assert response.status_code == 202, response.text

            def read() -> None:
                assert http.get("/jobs/abc").status_code == 200

            costs = []
            for call in (upload, read):
                for _ in range(50):
                    call()
                before = group_cpu_s(server.proc.pid)
                for _ in range(requests):
                    call()
                costs.append((group_cpu_s(server.proc.pid) - before) / requests * 1000)
            return costs[0], costs[1]
    finally:
        server.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=400, help="S3 calls of each kind")
    parser.add_argument("--tasks", type=int, default=2000, help="no-op Celery tasks per configuration")
    parser.add_argument("--requests", type=int, default=1000, help="HTTP requests of each kind")
    args = parser.parse_args(argv)
    with ExitStack() as cleanup:
        var = Path(cleanup.enter_context(tempfile.TemporaryDirectory(prefix="docproc-floor-")))
        put, get = s3_per_call(cleanup, args.calls)
        print(f"S3 (S3Storage, boto3 on moto over HTTP, 8 KiB): PUT {put:.2f}, GET {get:.2f} client CPU ms per call")
        costs = {}
        for events in (True, False):
            sender, worker, redis_cpu = celery_per_task(var, args.tasks, events=events)
            costs[events] = sender + worker + redis_cpu
            print(f"Celery (no-op task, docproc's configuration, task events {'on' if events else 'off'}): "
                  f"sender {sender:.2f} + worker {worker:.2f} + redis {redis_cpu:.2f} = {costs[events]:.2f} CPU ms per task")
        upload, read = http_per_request(var, args.requests)
        print(f"HTTP (FastAPI + uvicorn, empty routes): multipart upload of 8 KiB {upload:.2f}, JSON read {read:.2f} "
              "server CPU ms per request")
        s3 = put * 3 + get
        floor = s3 + costs[True] + upload + read
        print(f"floor per one-page job: S3 {s3:.1f} (3 PUT + 1 GET) + Celery {costs[True]:.1f} (1 task, events on) "
              f"+ HTTP {upload + read:.1f} (1 upload + 1 read) = {floor:.1f} CPU ms "
              f"({floor - costs[True] + costs[False]:.1f} with task events off)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
