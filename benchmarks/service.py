"""The whole queued service under load: jobs/s, submit-to-done latency, plumbing cost per page.

    python benchmarks/service.py [--jobs 500] [--concurrency 8] [--workers 2] [--task ocr|tables]
                                 [--rate JOBS_PER_S] [--timeout S] [--keep]

Starts everything on loopback, on free ports, and stops it all at the end (also on
Ctrl-C, SIGTERM or an error; the logs stay in a temp dir after a failed run):

    redis-server  broker + job state, its own temp dir, AOF everysec (as in production)
    moto S3       S3 over real HTTP (a thread of this process) with a fresh bucket
    API           ``python -m api`` (one uvicorn process), a generated API key, rate limit off
    CPU worker    ``python -m workers --queues intake,render -c WORKERS`` (Celery prefork)

Then, in order:

1. baseline: ``workers.pipeline.process_document`` (engine text) on the same PDFs in this
   process, before the stack starts (nothing competes for the CPU): CPU and wall ms per page;
2. warm-up: a few jobs through the stack (first-request and first-task costs), not counted;
3. the run: JOBS distinct one-page born-digital invoices (each with its own job number
   stamped on it, so no two inputs share a sha256) are POSTed to ``/v1/jobs`` (multipart,
   engine ``text``) by CONCURRENCY client threads, as fast as they can or paced at
   ``--rate``; the main thread follows the jobs with ``GET /v1/jobs/{id}``, oldest first (it
   sleeps ``--poll-interval`` only while the oldest unfinished job is still running), until
   every job is terminal or ``--timeout`` runs out (exit 1);
4. checks: ``GET /v1/jobs`` (state filter, cursor) lists every job terminal, and every job's
   ``/result`` describes its own input (sha256; for ocr the job number in the text).

Printed: jobs/s (JOBS / wall time from the first submit to the last job seen done, and
from the server's first ``created_at`` to its last ``finished_at``); submit-to-done latency
p50/p90/p99 from the server's timestamps (``created_at -> finished_at``) and as the client
saw it (POST start -> seen done); the POST round trip p50/p99; failed jobs (must be 0);
CPU ms per page of the workers, the API and Redis during the run (from /proc); the plumbing
cost per page = worker CPU per page minus the in-process CPU per page, and the same for the
whole stack. Unpaced, every job is queued within seconds, so the latencies are mostly the
wait behind the backlog (p50 ~ half the run); ``--rate`` below the throughput measures them
without one. moto's CPU lands in this process and is shown but not counted (it stands in
for S3); on a small machine it competes with the stack for the cores.

Exit status 1 when a job failed, a submit was refused or a result check failed; 130 on
Ctrl-C. Needs the dev extra (moto, httpx) and redis-server on PATH.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor, wait
from contextlib import ExitStack
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import httpx
import numpy as np
import pymupdf

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # docproc / workers from this checkout
sys.path.insert(1, str(REPO / "tests"))  # builders: the tests' real documents

import builders  # noqa: E402

from docproc.base.auth import generate_key, hash_key  # noqa: E402
from docproc.base.settings import Settings, get_settings  # noqa: E402
from docproc.cli.localservices import (  # noqa: E402
    DUMMY_AWS_ENV,
    LoggedProcess,
    MotoS3,
    RedisServer,
    free_port,
    make_bucket,
)
from docproc.jobs.store import TERMINAL  # noqa: E402

TENANT = "bench"
CLK_TCK = os.sysconf("SC_CLK_TCK")


class BenchmarkFailed(Exception):
    """The run could not finish or produced wrong results; the message says why."""


# ---------------------------------------------------------------------------
# documents and the in-process baseline
# ---------------------------------------------------------------------------


def make_pdfs(count: int, prefix: str) -> list[bytes]:
    """``count`` copies of the tests' born-digital invoice (text layer, ruled table), each
    stamped with its own job number ``Benchmark job {prefix}-000001``...: distinct bytes, so
    no two inputs share a sha256. Stamping a copy takes ~8 ms; building each invoice anew ~50."""
    template = builders.invoice_pdf()
    pdfs = []
    for i in range(count):
        with pymupdf.open(stream=template, filetype="pdf") as doc:
            doc[0].insert_text((56, 790), f"Benchmark job {job_number(prefix, i)}", fontsize=9)
            pdfs.append(doc.tobytes(garbage=3, deflate=True))
    return pdfs


def job_number(prefix: str, i: int) -> str:
    return f"{prefix}-{i + 1:06d}"


@dataclass
class Baseline:
    cpu_ms: float  # per page
    wall_ms: float


def measure_baseline(pdfs: list[bytes], task: str) -> Baseline:
    """``process_document`` (engine text) on every PDF in this process, after one warm-up call."""
    from workers.pipeline import Engines, process_document

    settings = get_settings()
    engines = Engines(settings)
    process_document(pdfs[0], filename="warmup.pdf", task=task, engine="text", settings=settings, engines=engines)
    cpu0, wall0 = time.process_time(), time.perf_counter()
    for i, pdf in enumerate(pdfs):
        result = process_document(pdf, filename=f"invoice-{i}.pdf", task=task, engine="text", settings=settings,
                                  engines=engines)  # fmt: skip
        if result.status != "succeeded":
            raise BenchmarkFailed(f"baseline: document {i} ended {result.status}: {result.error}")
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    return Baseline(cpu_ms=cpu / len(pdfs) * 1000, wall_ms=wall / len(pdfs) * 1000)


# ---------------------------------------------------------------------------
# the stack
# ---------------------------------------------------------------------------


class Child(LoggedProcess):
    """A named service subprocess of the benchmark (see :class:`LoggedProcess`)."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], log: Path) -> None:
        super().__init__(argv, env, log, name=name)

    def check_alive(self) -> None:
        if self.proc.poll() is not None:
            raise BenchmarkFailed(f"{self.name} exited with {self.proc.returncode}:\n{self.tail()}")


@dataclass
class Services:
    api_url: str
    key: str
    redis: RedisServer
    api: Child
    worker: Child
    var: Path


def tear_down(cleanup: ExitStack, var: Path, *, keep: bool) -> None:
    """Stop everything on ``cleanup`` (workers first: warm shutdown; then the API, S3, Redis;
    a second Ctrl-C cannot cut it short) and remove ``var`` unless its logs are to be kept."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    cleanup.close()
    if keep:
        print(f"service logs kept in {var}", file=sys.stderr)
    else:
        shutil.rmtree(var, ignore_errors=True)


def start_backing(cleanup: ExitStack, var: Path) -> tuple[RedisServer, str]:
    """A redis-server (data in ``var/redis``) and moto's S3 server; returns the Redis and the
    S3 endpoint URL. Both are registered on ``cleanup`` (S3 stops before Redis)."""
    (var / "redis").mkdir()
    redis_server = RedisServer(var / "redis")
    redis_server.start()
    cleanup.callback(redis_server.stop)
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # moto's server: no line per request
    moto = MotoS3()
    s3_url = moto.start()
    cleanup.callback(moto.stop)
    return redis_server, s3_url


def start_stack(cleanup: ExitStack, var: Path, *, workers: int, rate_limit: int) -> Services:
    """Redis, moto + bucket, the API and one CPU worker; each registered on ``cleanup`` to be
    stopped in reverse order (worker, API, S3, Redis)."""
    redis_server, s3_url = start_backing(cleanup, var)
    bucket = make_bucket(s3_url, "docproc-bench")

    key = generate_key()
    env = {k: v for k, v in os.environ.items() if k not in ("AWS_PROFILE", "AWS_ENDPOINT_URL")}
    env |= DUMMY_AWS_ENV | {
        "DOCPROC_REDIS_URL": redis_server.url,
        "DOCPROC_STORAGE_URL": f"s3://{bucket}/",
        "DOCPROC_S3_ENDPOINT_URL": s3_url,
        "DOCPROC_S3_REGION": "us-east-1",
        "DOCPROC_API_KEYS": json.dumps({TENANT: hash_key(key)}),
        "DOCPROC_RATE_LIMIT_PER_MINUTE": str(rate_limit),
        "PYTHONUNBUFFERED": "1",
    }
    port = free_port()
    api = Child("api", [sys.executable, "-m", "api", "--host", "127.0.0.1", "--port", str(port)], env,
                var / "api.log")  # fmt: skip
    cleanup.callback(api.stop)
    worker = Child("worker", [sys.executable, "-m", "workers", "--queues", "intake,render", "-c", str(workers),
                              "-n", "bench-cpu@%h"], env, var / "worker.log")  # fmt: skip
    cleanup.callback(worker.stop)

    api_url = f"http://127.0.0.1:{port}"
    wait_for(lambda: _ready(api_url), 60, "the API's /readyz", [api])
    from workers.celery_app import create_app

    celery = create_app(Settings(_env_file=None, redis_url=redis_server.url))
    try:
        wait_for(lambda: _pool_ready(celery, workers), 60, "the worker's pool", [worker])
    finally:
        celery.close()
    return Services(api_url=api_url, key=key, redis=redis_server, api=api, worker=worker, var=var)


def _ready(api_url: str) -> bool:
    try:
        return httpx.get(f"{api_url}/readyz", timeout=2).status_code == 200
    except httpx.TransportError:
        return False


def _pool_ready(celery, children: int) -> bool:
    """True once the worker answers ``inspect stats`` with ``children`` prefork processes."""
    replies = celery.control.inspect(timeout=1.0, limit=1).stats() or {}
    return any(len(s.get("pool", {}).get("processes", [])) >= children for s in replies.values())


def wait_for(predicate, timeout: float, what: str, children: list[Child]) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        for child in children:
            child.check_alive()
        if time.monotonic() > deadline:
            tails = "\n".join(c.tail() for c in children)
            raise BenchmarkFailed(f"timed out after {timeout:.0f} s waiting for {what}\n{tails}")
        time.sleep(0.2)


def group_cpu_s(pgid: int) -> float:
    """CPU seconds (user + system) of every live process in group ``pgid`` plus the children
    they reaped (a recycled prefork child's time lands in its parent's cutime)."""
    ticks = 0
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat") as f:
                raw = f.read()
        except OSError:  # exited meanwhile
            continue
        fields = raw[raw.rindex(")") + 2 :].split()  # fields[0] is field 3 (state) of proc(5)
        if int(fields[2]) == pgid:
            ticks += sum(int(x) for x in fields[11:15])  # utime, stime, cutime, cstime
    return ticks / CLK_TCK


@dataclass
class CpuSnapshot:
    worker: float
    api: float
    redis: float
    here: float  # this process: the HTTP clients and moto's S3 server

    @classmethod
    def take(cls, services: Services) -> CpuSnapshot:
        times = os.times()
        return cls(
            worker=group_cpu_s(services.worker.proc.pid),
            api=group_cpu_s(services.api.proc.pid),
            redis=group_cpu_s(services.redis.proc.pid),
            here=times.user + times.system,
        )

    def __sub__(self, other: CpuSnapshot) -> CpuSnapshot:
        return CpuSnapshot(self.worker - other.worker, self.api - other.api, self.redis - other.redis,
                           self.here - other.here)  # fmt: skip


# ---------------------------------------------------------------------------
# submitting and following jobs
# ---------------------------------------------------------------------------


@dataclass
class Record:
    index: int
    job_id: str
    submit_start: float  # perf_counter
    submit_s: float
    seen_done: float | None = None
    view: dict | None = None


@dataclass
class Batch:
    records: list[Record]
    errors: list[str]
    first_submit: float
    last_done: float


def run_batch(services: Services, pdfs: list[bytes], *, task: str, concurrency: int, poll_interval: float,
              timeout: float, children: list[Child], rate: float = 0.0) -> Batch:  # fmt: skip
    """POST every PDF with ``concurrency`` threads (job i not before ``i / rate`` s when
    ``rate`` > 0) while following the jobs oldest first; returns when every submitted job is
    terminal (BenchmarkFailed past ``timeout``)."""
    headers = {"Authorization": f"Bearer {services.key}"}
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    records: list[Record] = []
    errors: list[str] = []
    lock = threading.Lock()
    submitting_done = threading.Event()

    def submit(index: int, pdf: bytes, client: httpx.Client) -> None:
        if rate > 0:
            time.sleep(max(0.0, first_submit + index / rate - time.perf_counter()))
        started = time.perf_counter()
        try:
            response = client.post(
                "/v1/jobs",
                files={"file": (f"invoice-{index:06d}.pdf", pdf, "application/pdf")},
                data={"task": task, "engine": "text"},
            )
            took = time.perf_counter() - started
            job_id = response.json()["id"] if response.status_code == 202 else None
        except Exception as exc:  # noqa: BLE001 - counted as a failed submit and printed
            with lock:
                errors.append(f"job {index}: {type(exc).__name__}: {exc}")
            return
        with lock:
            if job_id is not None:
                records.append(Record(index, job_id, started, took))
            else:
                errors.append(f"job {index}: HTTP {response.status_code}: {response.text[:300]}")

    first_submit = time.perf_counter()
    deadline = time.monotonic() + timeout
    with (
        httpx.Client(base_url=services.api_url, headers=headers, limits=limits, timeout=60) as submit_client,
        httpx.Client(base_url=services.api_url, headers=headers, timeout=60) as poll_client,
        ThreadPoolExecutor(concurrency, thread_name_prefix="submit") as pool,
    ):
        futures = [pool.submit(submit, i, pdf, submit_client) for i, pdf in enumerate(pdfs)]
        threading.Thread(target=lambda: (wait(futures), submitting_done.set()), daemon=True).start()
        try:
            _follow(records, lock, submitting_done, poll_client, poll_interval=poll_interval, deadline=deadline,
                    timeout=timeout, total=len(pdfs), children=children)  # fmt: skip
        except BaseException:  # Ctrl-C, timeout, a dead service: do not send the rest
            pool.shutdown(wait=False, cancel_futures=True)
            raise
    last_done = max((r.seen_done for r in records), default=time.perf_counter())
    return Batch(records=sorted(records, key=lambda r: r.index), errors=errors, first_submit=first_submit,
                 last_done=last_done)  # fmt: skip


def _follow(records: list[Record], lock: threading.Lock, submitting_done: threading.Event, client: httpx.Client, *,
            poll_interval: float, deadline: float, timeout: float, total: int, children: list[Child]) -> None:
    """GET the oldest job not yet seen terminal (sleeping only while it is still running) until
    every submitted job is terminal; stamps ``seen_done`` and ``view`` on each record."""
    followed = 0
    while True:
        with lock:
            pending = records[followed] if followed < len(records) else None
        if pending is None:
            if submitting_done.is_set():
                with lock:
                    if followed >= len(records):
                        return
            time.sleep(0.005)
        else:
            response = client.get(f"/v1/jobs/{pending.job_id}")
            if response.status_code != 200:
                raise BenchmarkFailed(f"GET job {pending.job_id}: HTTP {response.status_code}: {response.text}")
            view = response.json()
            if view["state"] in TERMINAL:
                pending.seen_done, pending.view = time.perf_counter(), view
                followed += 1
                continue
            time.sleep(poll_interval)
        if time.monotonic() > deadline:
            raise BenchmarkFailed(_timeout_report(client, timeout, total, followed, children))
        for child in children:
            child.check_alive()


def _timeout_report(client: httpx.Client, timeout: float, total: int, done: int, children: list[Child]) -> str:
    counts = {state: len(list_jobs(client, state=state)) for state in ("queued", "running")}
    tails = "\n".join(c.tail(1500) for c in children)
    return (f"timed out after {timeout:.0f} s: {done} of {total} jobs seen done; still queued {counts['queued']}, "
            f"running {counts['running']}\n{tails}")  # fmt: skip


def list_jobs(client: httpx.Client, **filters: str) -> list[dict]:
    """Every job of the tenant through ``GET /v1/jobs``, following ``next_cursor``."""
    jobs: list[dict] = []
    params: dict[str, str | int] = {"limit": 200, **filters}
    while True:
        response = client.get("/v1/jobs", params=params)
        if response.status_code != 200:
            raise BenchmarkFailed(f"GET /v1/jobs: HTTP {response.status_code}: {response.text}")
        body = response.json()
        jobs += body["jobs"]
        if not body["next_cursor"]:
            return jobs
        params["cursor"] = body["next_cursor"]


def check_results(services: Services, batch: Batch, pdfs: list[bytes], *, task: str, prefix: str) -> list[str]:
    """Problems found: a job missing from the list endpoint or not terminal there, a job
    not succeeded, a result that is not its own document's."""
    problems: list[str] = []
    headers = {"Authorization": f"Bearer {services.key}"}
    with httpx.Client(base_url=services.api_url, headers=headers, timeout=60) as client:
        listed = {j["id"]: j["state"] for j in list_jobs(client)}
        by_state = {s: {j["id"] for j in list_jobs(client, state=s)} for s in ("succeeded", "queued", "running")}
        for record in batch.records:
            state = listed.get(record.job_id)
            if state is None or state not in TERMINAL:
                problems.append(f"job {record.index} ({record.job_id}) is listed as {state}")
            elif state != "succeeded":
                problems.append(f"job {record.index} ended {state}: {record.view.get('error')}")
                continue
            if record.job_id not in by_state["succeeded"]:
                problems.append(f"job {record.index} is missing from GET /v1/jobs?state=succeeded")
            response = client.get(f"/v1/jobs/{record.job_id}/result")
            if response.status_code != 200:
                problems.append(f"job {record.index}: GET result: HTTP {response.status_code}")
                continue
            result = response.json()
            if result["document"]["sha256"] != hashlib.sha256(pdfs[record.index]).hexdigest():
                problems.append(f"job {record.index}: the result is of another document")
            number = job_number(prefix, record.index)
            if task == "ocr" and f"Benchmark job {number}" not in (result["pages"][0].get("text") or ""):
                problems.append(f"job {record.index}: 'Benchmark job {number}' is not in its OCR text")
            if task == "tables" and not result["pages"][0].get("tables"):
                problems.append(f"job {record.index}: no table found")
        for state in ("queued", "running"):
            if by_state[state]:
                problems.append(f"{len(by_state[state])} jobs still {state} after the run")
    return problems


# ---------------------------------------------------------------------------
# report
# ---------------------------------------------------------------------------


def _ts(value: str | None) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def pct(values: list[float], *qs: float) -> str:
    arr = np.asarray(values, dtype=float)
    return "  ".join(f"p{q:g} {np.percentile(arr, q):7.1f}" for q in qs) + f"  max {arr.max():7.1f}"


def machine_line() -> str:
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    usable = len(os.sched_getaffinity(0))
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    return (f"machine: {usable} usable CPU cores ({os.cpu_count()} online) {model}; {platform.system()} "
            f"{platform.release()}; Python {platform.python_version()}; load average at start {load}")  # fmt: skip


def report(args, baseline: Baseline, batch: Batch, cpu: CpuSnapshot, warmup: int) -> int:
    n = len(batch.records)
    if n == 0:
        raise BenchmarkFailed(f"no job was accepted: {batch.errors[:3]}")
    views = [r.view for r in batch.records]
    failed = sum(v["state"] != "succeeded" for v in views) + len(batch.errors)
    wall = batch.last_done - batch.first_submit
    created = [_ts(v["created_at"]) for v in views]
    finished = [_ts(v["finished_at"]) for v in views]
    server_wall = (max(finished) - min(created)).total_seconds()
    server_latency = [(f - c).total_seconds() * 1000 for c, f in zip(created, finished, strict=True)]
    queued = [(_ts(v["started_at"]) - c).total_seconds() * 1000 for c, v in zip(created, views, strict=True)
              if v.get("started_at")]  # a job refused at intake never started
    client_latency = [(r.seen_done - r.submit_start) * 1000 for r in batch.records]
    submit_ms = [r.submit_s * 1000 for r in batch.records]

    per_page = {name: getattr(cpu, name) / n * 1000 for name in ("worker", "api", "redis", "here")}
    stack_cpu = per_page["worker"] + per_page["api"] + per_page["redis"]
    print(f"results ({n} jobs measured after {warmup} warm-up jobs):")
    print(f"  jobs: {args.jobs} submitted, {n} accepted, "
          f"{sum(v['state'] == 'succeeded' for v in views)} succeeded; failed {failed} (must be 0)")
    print(f"  throughput: {n / wall:.2f} jobs/s ({n} jobs in {wall:.1f} s, first submit -> last job seen done); "
          f"server side {n / server_wall:.2f} jobs/s (first created_at -> last finished_at, {server_wall:.1f} s)")
    print(f"  submit -> done, server (created_at -> finished_at), ms:  {pct(server_latency, 50, 90, 99)}")
    print(f"  submit -> done, client (POST start -> seen done), ms:    {pct(client_latency, 50, 90, 99)}")
    if queued:
        print(f"  queued before intake (created_at -> started_at), ms:     {pct(queued, 50, 90, 99)}")
    print(f"  submit (POST round trip, {args.concurrency} clients), ms:              {pct(submit_ms, 50, 99)}")
    print("cost per page (CPU ms per job during the measured run, from /proc):")
    print(f"  worker {per_page['worker']:.1f}  API {per_page['api']:.1f}  redis {per_page['redis']:.1f}  "
          f"(this process: HTTP clients + moto S3 {per_page['here']:.1f}, not counted: S3 stands in for AWS)")
    print(f"  in-process baseline (process_document, same PDFs): {baseline.cpu_ms:.1f} CPU ms/page, "
          f"{baseline.wall_ms:.1f} wall ms/page ({1000 / baseline.wall_ms:.1f} pages/s on one core)")
    print(f"  plumbing cost per page, workers: {per_page['worker']:.1f} - {baseline.cpu_ms:.1f} = "
          f"{per_page['worker'] - baseline.cpu_ms:.1f} CPU ms ({per_page['worker'] / baseline.cpu_ms:.2f}x in-process)")
    print(f"  plumbing cost per page, stack (workers + API + redis): {stack_cpu:.1f} - {baseline.cpu_ms:.1f} = "
          f"{stack_cpu - baseline.cpu_ms:.1f} CPU ms ({stack_cpu / baseline.cpu_ms:.2f}x in-process)")
    paced = f" (paced at {args.rate:g} jobs/s: the arrivals set it)" if args.rate else ""
    print(f"  wall per page: stack {wall / n * 1000:.1f} ms ({args.workers} worker children){paced} vs in-process "
          f"{baseline.wall_ms:.1f} ms (one process): {wall / n * 1000 / baseline.wall_ms:.2f}x")
    for error in batch.errors[:5]:
        print(f"  submit error: {error}")
    return 1 if failed else 0


# ---------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python benchmarks/service.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=500, help="one-page jobs to measure (default %(default)s)")
    parser.add_argument("--concurrency", type=int, default=8, help="client threads POSTing (default %(default)s)")
    parser.add_argument("--workers", type=int, default=2, help="prefork children of the CPU worker (-c)")
    parser.add_argument("--task", choices=("ocr", "tables"), default="ocr")
    parser.add_argument("--warmup", type=int, default=None, help="jobs before the measured run (default 2 x workers)")
    parser.add_argument("--rate", type=float, default=0.0,
                        help="submit at most this many jobs/s (default 0: as fast as the clients can)")
    parser.add_argument("--poll-interval", type=float, default=0.1, help="s between GETs of an unfinished job")
    parser.add_argument("--timeout", type=float, default=600, help="most seconds the measured run may take")
    parser.add_argument("--rate-limit", type=int, default=0,
                        help="DOCPROC_RATE_LIMIT_PER_MINUTE for the API (default 0: off; the service default is 600)")
    parser.add_argument("--keep", action="store_true", help="keep the temp dir with the service logs")
    args = parser.parse_args(argv)
    if args.jobs < 1 or args.concurrency < 1 or args.workers < 1:
        parser.error("--jobs, --concurrency and --workers must be at least 1")
    args.warmup = 2 * args.workers if args.warmup is None else args.warmup
    return args


def can_run(script: str) -> bool:
    """Whether a benchmark that starts services can run here (redis-server on PATH; says why
    not). SIGTERM then stops it like Ctrl-C, so everything it started is stopped."""
    if shutil.which("redis-server") is None:
        print(f"{script}: redis-server is not on PATH", file=sys.stderr)
        return False

    def on_term(signum, frame):  # noqa: ARG001 - signal handler signature
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    return True


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not can_run("benchmarks/service.py"):
        return 2
    redis_version = subprocess.run(["redis-server", "--version"], capture_output=True, text=True).stdout.split()
    redis_version = next((w.removeprefix("v=") for w in redis_version if w.startswith("v=")), "?")
    print("docproc service benchmark")
    print(machine_line())
    print(f"settings: {args.jobs} one-page jobs, task {args.task}, engine text; {args.concurrency} client threads; "
          f"CPU worker: 1 process, prefork -c {args.workers}, queues intake,render; API: 1 uvicorn process; "
          f"redis-server {redis_version} (AOF everysec); S3: moto over HTTP in this process; "
          f"submit rate {f'{args.rate:g} jobs/s' if args.rate else 'unpaced'}; poll interval {args.poll_interval} s; "
          f"API rate limit {args.rate_limit or 'off'}")

    var = Path(tempfile.mkdtemp(prefix="docproc-bench-"))
    cleanup = ExitStack()
    code = 1
    try:
        t = time.perf_counter()
        pdfs = make_pdfs(args.jobs, "BENCH")
        warm_pdfs = make_pdfs(args.warmup, "WARM")
        print(f"built {args.jobs + args.warmup} distinct invoice PDFs in {time.perf_counter() - t:.1f} s "
              f"({len(pdfs[0])} bytes each)")
        baseline = measure_baseline(pdfs, args.task)
        print(f"baseline: process_document in-process on the {args.jobs} PDFs: {baseline.cpu_ms:.1f} CPU ms/page, "
              f"{baseline.wall_ms:.1f} wall ms/page")

        t = time.perf_counter()
        services = start_stack(cleanup, var, workers=args.workers, rate_limit=args.rate_limit)
        children = [services.api, services.worker]
        print(f"stack up in {time.perf_counter() - t:.1f} s ({services.api_url}; logs in {var})", flush=True)
        options = dict(task=args.task, concurrency=args.concurrency, poll_interval=args.poll_interval,
                       children=children)  # fmt: skip
        if args.warmup:
            warm = run_batch(services, warm_pdfs, timeout=120, **options)
            if warm.errors or any(r.view["state"] != "succeeded" for r in warm.records):
                raise BenchmarkFailed(f"warm-up jobs failed: {warm.errors or [r.view for r in warm.records]}")
        before = CpuSnapshot.take(services)
        batch = run_batch(services, pdfs, timeout=args.timeout, rate=args.rate, **options)
        cpu = CpuSnapshot.take(services) - before
        code = report(args, baseline, batch, cpu, args.warmup)
        problems = check_results(services, batch, pdfs, task=args.task, prefix="BENCH")
        if problems:
            print(f"result checks: {len(problems)} problems", *problems[:10], sep="\n  ")
            code = 1
        else:
            print(f"result checks: all {len(batch.records)} jobs listed succeeded (GET /v1/jobs, cursor), "
                  f"every result is its own document's")
    except BenchmarkFailed as exc:
        print(f"benchmark failed: {exc}", file=sys.stderr)
        code = 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        code = 130
    finally:
        print("stopping the stack ...", file=sys.stderr, flush=True)
        tear_down(cleanup, var, keep=code != 0 or args.keep)
    return code


if __name__ == "__main__":
    raise SystemExit(main())
