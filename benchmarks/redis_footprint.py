"""Redis memory per retained job, and what the retention purge gives back.

    python benchmarks/redis_footprint.py [--jobs 2000] [--pages 1]

Starts its own redis-server on a free loopback port (stopped at the end) and, through
the real ``JobStore`` and ``docproc.jobs.lifecycle`` code, makes JOBS ``extract`` jobs that
run to ``succeeded`` like a worker records them (start, page records with timings, task
ids, an Idempotency-Key, the finish and its after-end steps), half of them with a webhook
event. Then it runs the retention purge (``docproc.housekeeping.retention``) with the clock moved past
``retention_s``, as the scheduler would.

Printed: Redis ``used_memory`` per retained job (KiB; the number to size Redis with:
``jobs per day x retention days x this``), the memory left after the purge, and the ratio
of used memory before / after the purge (the baseline is the empty database measured in
the same run). Needs redis-server on PATH.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import redis

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.service import can_run  # noqa: E402
from docproc.base.settings import Settings  # noqa: E402
from docproc.cli.localservices import RedisServer  # noqa: E402
from docproc.housekeeping import after_end, retention
from docproc.jobs import lifecycle  # noqa: E402
from docproc.jobs.store import JobRequest, JobStore, PageStatus  # noqa: E402

TENANT = "acme"
SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
TIMINGS_MS = {"render": 12.5, "tile": 3.1, "infer": 850.2, "postprocess": 1.2, "store": 20.4}


def used_memory(r: redis.Redis) -> int:
    return int(r.info("memory")["used_memory"])


def make_jobs(ctx: lifecycle.Context, n: int, pages: int) -> None:
    """``n`` jobs recorded as a worker records them; every second one has a webhook event."""
    store = ctx.store
    for i in range(n):
        hook = "https://erp.example.com/hooks/docproc" if i % 2 else None
        job, _ = store.create(TENANT, JobRequest(task="extract", schema="invoice", webhook_url=hook),
                              input_key="inputs/sha256/ab/" + "ab" * 32, input_sha256="ab" * 32, size_bytes=123_456,
                              filename=f"invoice-2026-{i:05d}.pdf", idempotency_key=f"erp-{i}", fingerprint="f" * 64,
                              request_id=f"req-{i:032x}")
        store.start(job.id, page_count=pages, pages=list(range(1, pages + 1)), media_type="application/pdf")
        store.add_task_ids(job.id, [f"{i:08x}-0000-4000-8000-{p:012x}" for p in range(pages + 1)])
        for p in range(1, pages + 1):
            store.page_started(job.id, p)
            store.page_finished(job.id, PageStatus(page=p, state="succeeded", engine="internvl", timings_ms=TIMINGS_MS))
        store.finish(job.id, "succeeded", result_key=f"results/{job.id}/document.json",
                     model="OpenGVLab/InternVL3-1B-hf", schema_version="1")
        lifecycle.job_ended(job.id, ctx)


def deliver_events(r: redis.Redis) -> None:
    """Mark the webhook events delivered (as a 200 answer would), so the purge may take them."""
    for event_id in r.zrange("docproc:webhook:due", 0, -1):
        r.hset(f"docproc:webhook:event:{event_id}", mapping={"state": "succeeded", "attempts": 1})
        r.rpush(f"docproc:webhook:event:{event_id}:attempts",
                '{"attempt":1,"status_code":200,"latency_ms":41.2,"response":"ok"}')
    r.delete("docproc:webhook:due")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=2000)
    parser.add_argument("--pages", type=int, default=1, help="pages per job")
    args = parser.parse_args(argv)
    if not can_run("redis_footprint.py"):
        return 2
    with tempfile.TemporaryDirectory() as tmp:
        server = RedisServer(Path(tmp))
        server.start()
        try:
            r = redis.Redis.from_url(server.url, decode_responses=True)
            settings = Settings(_env_file=None, redis_url=server.url, webhook_secrets={TENANT: [SECRET]})
            ctx = after_end.context(settings=settings, redis=r, store=JobStore(r, settings), send=lambda *_: None)
            empty = used_memory(r)
            t0 = time.perf_counter()
            make_jobs(ctx, args.jobs, args.pages)
            made_s = time.perf_counter() - t0
            deliver_events(r)
            full = used_memory(r)
            t0 = time.perf_counter()
            out = retention.purge_expired(ctx, now=time.time() + settings.retention_s + 60, limit=retention.UNLIMITED)
            purge_s = time.perf_counter() - t0
            after = used_memory(r)
            left = {k.split(":")[1] for k in r.scan_iter("docproc:*", count=1000)}
        finally:
            server.stop()
    per_job = (full - empty) / args.jobs
    print(f"{args.jobs} jobs x {args.pages} page(s), half with a webhook event ({made_s:.1f} s to record)")
    print(f"  Redis used_memory: empty {empty / 2**20:.2f} MiB, retained {full / 2**20:.2f} MiB "
          f"-> {per_job / 1024:.2f} KiB per job")
    print(f"  purge: {out.jobs} jobs, {out.events} webhook events in {purge_s:.2f} s "
          f"({out.jobs / purge_s:.0f} jobs/s); left {after / 2**20:.2f} MiB")
    print(f"  ratio retained / after purge: {full / after:.1f}x (after purge vs empty: "
          f"+{(after - empty) / 1024:.0f} KiB in keys of kinds {sorted(left)}; idem keys expire by themselves "
          f"after idempotency_ttl_s)")
    print(f"  sizing: 100,000 jobs a day kept 30 days ~ {per_job * 100_000 * 30 / 2**30:.1f} GiB")
    return 0 if out.jobs == args.jobs else 1


if __name__ == "__main__":
    raise SystemExit(main())
