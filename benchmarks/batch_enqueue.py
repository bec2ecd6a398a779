"""How fast a batch of documents in S3 is accepted and enqueued, and with how much memory.

    python benchmarks/batch_enqueue.py [--documents 10000] [--concurrency 8] [--chunk 200] [--threads 8]

Starts on loopback, on free ports (stopped at the end, also on Ctrl-C or an error):

    redis-server  broker + job state (docproc.cli.localservices.RedisServer)
    moto S3       S3 over real HTTP (a thread of this process): a source bucket with DOCUMENTS
                  distinct one-page born-digital PDFs under ``in/``, and the result bucket
    API           ``python -m api`` (one uvicorn process), rate limit off
    bulk worker   ``python -m workers --queues bulk -P solo``: runs the ``docproc.batch.expand``
                  task (no intake or page is processed before the listing is done: the solo
                  worker holds one message at a time and the expand task comes first)

Then:

1. baseline: every document submitted alone, ``POST /v1/jobs`` with its ``source_uri``
   (CONCURRENCY client threads): documents/s, the API's peak RSS;
2. the batch: one ``POST /v1/batches`` with ``source_prefix`` (answered at once), then the
   time until ``GET /v1/batches/{id}`` shows every job created and enqueued (state leaves
   ``expanding``): documents/s, the API's RSS meanwhile, the expanding worker's RSS after 10 %
   of the listing and at its end (flat memory: they stay alike however long the listing).

Printed: both rates and their ratio (batch / single); the API's peak RSS (VmHWM) after the
baseline and its largest RSS sampled while the batch was listed; the worker's RSS. No intake
or page runs: this measures enqueueing only. Needs the dev extra (moto, httpx) and redis-server on PATH.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from pathlib import Path

import boto3
import httpx
import pymupdf

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(1, str(REPO / "benchmarks"))

from service import (  # noqa: E402
    BenchmarkFailed,
    Child,
    _ready,
    can_run,
    machine_line,
    start_backing,
    tear_down,
    wait_for,
)

from docproc.base.auth import generate_key, hash_key  # noqa: E402
from docproc.cli.localservices import DUMMY_AWS_ENV, free_port, make_bucket  # noqa: E402

TENANT = "bench"
PREFIX = "in/"


def distinct_pdf(i: int) -> bytes:
    """A small one-page born-digital PDF with its own number (distinct bytes and sha256)."""
    with pymupdf.open() as doc:
        page = doc.new_page(width=300, height=200)
        page.insert_text((20, 40), f"Batch benchmark document {i:06d}", fontsize=10)
        page.insert_text((20, 60), "Total due: 100.00 EUR. Thank you for your business.", fontsize=10)
        return doc.tobytes()


def rss_kib(pid: int, field: str = "VmHWM") -> int:
    """``VmHWM`` (peak resident set) or ``VmRSS`` of a process, KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def fill_bucket(s3_url: str, bucket: str, count: int, threads: int) -> None:
    s3 = boto3.client("s3", endpoint_url=s3_url, region_name="us-east-1")

    def put(i: int) -> None:
        s3.put_object(Bucket=bucket, Key=f"{PREFIX}{i:06d}.pdf", Body=distinct_pdf(i))

    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(put, range(count)))


def single_posts(client: httpx.Client, bucket: str, count: int, concurrency: int) -> float:
    """Every document as its own POST /v1/jobs (source_uri); returns the wall seconds."""
    errors: list[str] = []
    lock = threading.Lock()

    def submit(i: int) -> None:
        r = client.post("/v1/jobs", json={"source_uri": f"s3://{bucket}/{PREFIX}{i:06d}.pdf", "task": "ocr",
                                          "engine": "text"})
        if r.status_code != 202:
            with lock:
                errors.append(f"{r.status_code} {r.text[:200]}")

    t = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(submit, range(count)))
    elapsed = time.perf_counter() - t
    if errors:
        raise BenchmarkFailed(f"{len(errors)} single submits failed, e.g. {errors[0]}")
    return elapsed


def batch_run(client: httpx.Client, bucket: str, count: int, api: Child, worker: Child,
              timeout: float) -> tuple[float, float, int, int, int]:
    """POST /v1/batches with the prefix; (accept s, listed s, the API's largest RSS sampled
    meanwhile, the worker's RSS at 10 % listed and at the end), RSS in KiB."""
    t = time.perf_counter()
    r = client.post("/v1/batches", json={"source_prefix": f"s3://{bucket}/{PREFIX}", "task": "ocr",
                                         "engine": "text"})
    accepted = time.perf_counter() - t
    if r.status_code != 202:
        raise BenchmarkFailed(f"POST /v1/batches answered {r.status_code}: {r.text[:300]}")
    batch_id = r.json()["id"]
    early = api_max = 0
    deadline = time.monotonic() + timeout
    while True:
        view = client.get(f"/v1/batches/{batch_id}", params={"limit": 1}).json()
        api_max = max(api_max, rss_kib(api.proc.pid, "VmRSS"))
        if not early and view["counts"]["total"] >= count // 10:
            early = rss_kib(worker.proc.pid, "VmRSS")
        if view["state"] != "expanding":
            break
        for child in (api, worker):
            child.check_alive()
        if time.monotonic() > deadline:
            raise BenchmarkFailed(f"the batch was not listed within {timeout:.0f} s: {view['counts']}\n{worker.tail()}")
        time.sleep(0.1)
    listed = time.perf_counter() - t
    if view["counts"]["total"] != count or view["counts"]["rejected"]:
        raise BenchmarkFailed(f"the batch has {view['counts']} instead of {count} jobs")
    return accepted, listed, api_max, early, rss_kib(worker.proc.pid, "VmRSS")


def _pinged(env: dict[str, str]) -> bool:
    """True once a worker answers ``celery.control.ping`` on the benchmark's broker."""
    from docproc.base.settings import Settings
    from workers.celery_app import create_app

    celery = create_app(Settings(_env_file=None, redis_url=env["DOCPROC_REDIS_URL"]))
    try:
        return bool(celery.control.ping(timeout=0.5))
    finally:
        celery.close()


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--documents", type=int, default=10_000)
    p.add_argument("--concurrency", type=int, default=8, help="client threads of the single-POST baseline")
    p.add_argument("--chunk", type=int, default=200, help="settings.batch_chunk_size")
    p.add_argument("--threads", type=int, default=8, help="settings.batch_expand_threads")
    p.add_argument("--timeout", type=float, default=3600)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not can_run("benchmarks/batch_enqueue.py"):
        return 2
    print("docproc batch enqueue benchmark")
    print(machine_line())
    print(f"settings: {args.documents} one-page PDFs in S3 (moto, this process); baseline {args.concurrency} "
          f"client threads; batch chunk {args.chunk}, {args.threads} expand threads; API 1 uvicorn process; "
          "bulk worker 1 solo process", flush=True)
    os.environ.update(DUMMY_AWS_ENV)  # moto takes any credentials; never real AWS
    for name in ("AWS_PROFILE", "AWS_ENDPOINT_URL"):
        os.environ.pop(name, None)
    var = Path(tempfile.mkdtemp(prefix="docproc-batch-bench-"))
    cleanup = ExitStack()
    code = 1
    try:
        redis_server, s3_url = start_backing(cleanup, var)
        source = make_bucket(s3_url, "bench-source")
        results = make_bucket(s3_url, "bench-results")
        t = time.perf_counter()
        fill_bucket(s3_url, source, args.documents, 8)
        print(f"uploaded {args.documents} distinct PDFs to s3://{source}/{PREFIX} in {time.perf_counter() - t:.1f} s",
              flush=True)

        key = generate_key()
        env = {k: v for k, v in os.environ.items() if k not in ("AWS_PROFILE", "AWS_ENDPOINT_URL")}
        env |= DUMMY_AWS_ENV | {
            "DOCPROC_REDIS_URL": redis_server.url, "DOCPROC_STORAGE_URL": f"s3://{results}/",
            "DOCPROC_S3_ENDPOINT_URL": s3_url, "DOCPROC_S3_REGION": "us-east-1",
            "DOCPROC_API_KEYS": json.dumps({TENANT: hash_key(key)}), "DOCPROC_RATE_LIMIT_PER_MINUTE": "0",
            "DOCPROC_SOURCE_BUCKETS": json.dumps([source]), "DOCPROC_BATCH_CHUNK_SIZE": str(args.chunk),
            "DOCPROC_BATCH_EXPAND_THREADS": str(args.threads), "DOCPROC_BATCH_EXPAND_SLICE_S": str(args.timeout),
            "PYTHONUNBUFFERED": "1",
        }
        port = free_port()
        api = Child("api", [sys.executable, "-m", "api", "--host", "127.0.0.1", "--port", str(port)], env,
                    var / "api.log")
        cleanup.callback(api.stop)
        url = f"http://127.0.0.1:{port}"
        wait_for(lambda: _ready(url), 60, "the API's /readyz", [api])

        with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=120,
                          limits=httpx.Limits(max_connections=args.concurrency + 2)) as client:
            single_s = single_posts(client, source, min(20, args.documents), 2)  # warm-up (not counted)
            single_s = single_posts(client, source, args.documents, args.concurrency)
            api_single_peak = rss_kib(api.proc.pid)
            single_rate = args.documents / single_s
            print(f"baseline: {args.documents} x POST /v1/jobs (source_uri) in {single_s:.1f} s = "
                  f"{single_rate:.0f} documents/s; API peak RSS {api_single_peak / 1024:.0f} MiB", flush=True)

            # The bulk worker starts only now: the baseline's jobs wait on ``intake``, which nothing consumes.
            worker = Child("worker", [sys.executable, "-m", "celery", "-A", "workers.celery_app", "worker", "-Q",
                                      "bulk", "-P", "solo", "-n", "bench-bulk@%h", "--loglevel", "WARNING"], env,
                           var / "worker.log")
            cleanup.callback(worker.stop)
            wait_for(lambda: "ready" in worker.log_path.read_text(errors="replace") or _pinged(env), 60,
                     "the bulk worker", [worker])
            accepted, listed, api_batch_max, early_rss, end_rss = batch_run(client, source, args.documents, api,
                                                                            worker, args.timeout)
            worker_peak = rss_kib(worker.proc.pid)
        batch_rate = args.documents / listed
        print(f"batch: POST /v1/batches (source_prefix) answered in {accepted * 1000:.0f} ms; all {args.documents} "
              f"jobs created and enqueued after {listed:.1f} s = {batch_rate:.0f} documents/s")
        print(f"memory: API RSS at most {api_batch_max / 1024:.0f} MiB while the batch was listed (sampled every "
              f"0.1 s; peak {api_single_peak / 1024:.0f} MiB over the baseline); expanding worker RSS "
              f"{early_rss / 1024:.0f} MiB at 10 % listed, {end_rss / 1024:.0f} MiB at the end "
              f"(peak {worker_peak / 1024:.0f} MiB)")
        print(f"ratio: batch enqueue rate / single-POST rate = {batch_rate / single_rate:.2f}x")
        code = 0
    except BenchmarkFailed as exc:
        print(f"benchmark failed: {exc}", file=sys.stderr)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        code = 130
    finally:
        tear_down(cleanup, var, keep=code != 0)
    return code


if __name__ == "__main__":
    raise SystemExit(main())
