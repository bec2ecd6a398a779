"""How long the re-process diff report takes for a large re-process.

    python benchmarks/reprocess_diff.py [--documents 2000]

Starts its own redis-server and moto's S3 server (a process of its own, so its work does
not share this process's GIL) on free loopback ports (stopped at the end) and stores, through the real ``JobStore``, ``BatchStore`` and S3 storage code,
DOCUMENTS original ``extract`` jobs and a re-process of them (a batch of kind
``reprocess`` whose jobs link ``reprocess_of``), each with its ``document.json`` in S3;
a third of the re-processed documents change a field.

As each re-processed job "ends", its after-end diff step runs
(:func:`docproc.submission.reprocess_diff.diff_step`, what a worker runs then): its cost per job is
printed. Then the report is built two ways and checked equal:

- baseline: computed when asked, one document after the other, two job loads and two S3
  reads each (the report before it was kept as jobs end);
- docproc: :func:`docproc.submission.reprocess_diff.diff_report` from the kept counts, reading only
  the listed changes' results (100 per field).

Printed: seconds for each and the ratio, and the time of a full rebuild from storage
(:func:`~docproc.submission.reprocess_diff.rebuild_diff`: chunks, ``batch_expand_threads`` reader
threads). moto answers from memory on loopback, so a real S3 (tens of ms per GET) makes
the baseline and the rebuild slower, the kept report barely. Needs the dev extra (moto).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import urllib.request
from contextlib import ExitStack
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(1, str(REPO / "benchmarks"))

from service import can_run, wait_for  # noqa: E402

from docproc.base.settings import Settings  # noqa: E402
from docproc.base.storage import document_result_key, open_storage  # noqa: E402
from docproc.cli.localservices import (  # noqa: E402
    DUMMY_AWS_ENV,
    LoggedProcess,
    RedisServer,
    free_port,
    make_bucket,
)
from docproc.housekeeping import after_end  # noqa: E402
from docproc.jobs.results import DocumentInfo, DocumentResult, PageResult  # noqa: E402
from docproc.jobs.store import JobRequest, JobStore, connect_redis  # noqa: E402
from docproc.submission import reprocess_diff
from docproc.submission.batches import BatchServices, new_batch  # noqa: E402

TENANT = "acme"


def _result(fields: dict) -> bytes:
    return DocumentResult(
        document=DocumentInfo(sha256="ab" * 32, size_bytes=1, media_type="application/pdf", page_count=1),
        task="extract", schema="invoice", schema_version="1", engine="internvl", status="succeeded",
        pages=[PageResult(page=1, status="succeeded", engine="internvl", fields=fields)], fields=fields,
    ).model_dump_json(by_alias=True).encode()


def _finished_job(svc: BatchServices, fields: dict, **links) -> str:
    job, _ = svc.store.create(TENANT, JobRequest(task="extract", schema="invoice"), input_key="inputs/x",
                              input_sha256="ab" * 32, size_bytes=1, filename="a.pdf", idempotency_key=None,
                              fingerprint="f", **links)
    svc.store.start(job.id, page_count=1, pages=[1], media_type="application/pdf")
    key = document_result_key(job.id)
    svc.storage.put_result(key, _result(fields))
    svc.store.finish(job.id, "succeeded", result_key=key)
    return job.id


def make_reprocess(svc: BatchServices, n: int) -> tuple[object, float]:
    """The re-process, and the seconds its jobs' after-end diff steps took in all."""
    batch = new_batch(TENANT, source="jobs", request=JobRequest(task="extract", schema="invoice@2"),
                      webhook_url=None, kind="reprocess")
    svc.batches.create(batch)
    ctx = after_end.context(settings=svc.settings, redis=svc.redis, store=svc.store, send=lambda *_: None,
                            storage=svc.storage)
    new_ids, step_s = [], 0.0
    for i in range(n):
        old = {"invoice_number": f"INV-{i}", "total": 100.0 + i, "vendor": {"name": "ACME", "iban": None}}
        new = {**old, "vendor": {"name": "ACME", "iban": "DE89370400440532013000" if i % 3 == 0 else None}}
        original = _finished_job(svc, old)
        new_ids.append(_finished_job(svc, new, batch_id=batch.id, reprocess_of=original))
        t0 = time.perf_counter()
        reprocess_diff.diff_step(svc.store.load(new_ids[-1]), ctx)
        step_s += time.perf_counter() - t0
    svc.batches.add_jobs(batch.id, enumerate(new_ids))
    svc.batches.mark_expanded(batch.id)
    return batch, step_s


def baseline_report(svc: BatchServices, batch, limit: int = 100) -> reprocess_diff.DiffReport:
    """The report computed when asked, one document at a time."""
    fields: dict[str, reprocess_diff.FieldDiff] = {}
    compared = pending = 0
    for _, job_id in svc.batches.job_ids(batch.id):
        job = svc.store.load(job_id)
        original = svc.store.load(job.reprocess_of)
        if job.result_key is None or original.result_key is None:
            pending += 1
            continue
        new = reprocess_diff.comparable_fields(DocumentResult.model_validate_json(svc.storage.get(job.result_key)))
        old = reprocess_diff.comparable_fields(DocumentResult.model_validate_json(svc.storage.get(original.result_key)))
        compared += 1
        for name in sorted(set(old) | set(new)):
            diff = fields.setdefault(name, reprocess_diff.FieldDiff())
            if old.get(name) == new.get(name):
                diff.unchanged += 1
            else:
                diff.changed += 1
                if len(diff.changes) < limit:
                    diff.changes.append({"job_id": job.id, "reprocess_of": original.id,
                                         "old": old.get(name), "new": new.get(name)})
    return reprocess_diff.DiffReport(reprocess_id=batch.id, state=svc.batches.counts(batch.id).state,
                                compared=compared, pending=pending, fields=fields)


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1):
            return True
    except OSError:
        return False


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--documents", type=int, default=2000)
    args = parser.parse_args(argv)
    if not can_run("reprocess_diff.py"):
        return 2
    os.environ.update(DUMMY_AWS_ENV)
    with tempfile.TemporaryDirectory() as tmp, ExitStack() as cleanup:
        redis_server = RedisServer(Path(tmp))
        redis_server.start()
        cleanup.callback(redis_server.stop)
        port = free_port()
        moto = LoggedProcess([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                             dict(os.environ), Path(tmp) / "moto.log")
        cleanup.callback(moto.stop)
        s3_url = f"http://127.0.0.1:{port}"
        wait_for(lambda: _answers(s3_url), 30, "moto's S3 server", [])
        make_bucket(s3_url, "docproc-bench")
        settings = Settings(_env_file=None, redis_url=redis_server.url, storage_url="s3://docproc-bench",
                            s3_endpoint_url=s3_url, s3_region="us-east-1")
        client = connect_redis(settings)
        svc = BatchServices(settings=settings, redis=client, store=JobStore(client, settings),
                            storage=open_storage(settings), celery=None)
        t0 = time.perf_counter()
        batch, step_s = make_reprocess(svc, args.documents)
        print(f"{args.documents} original + {args.documents} re-processed jobs stored in "
              f"{time.perf_counter() - t0:.1f} s; the after-end diff step: {1000 * step_s / args.documents:.1f} ms "
              "per re-processed job")
        timings = {}
        reports = {}
        for name, build in (("baseline", baseline_report), ("docproc", reprocess_diff.diff_report)):
            t0 = time.perf_counter()
            reports[name] = build(svc, batch)
            timings[name] = time.perf_counter() - t0
        t0 = time.perf_counter()
        rebuilt = reprocess_diff.rebuild_diff(svc, batch, fresh=True)
        rebuild_s = time.perf_counter() - t0
        same_rebuilt = reprocess_diff.diff_report(svc, batch) == reports["docproc"]
        client.close()
    same = reports["baseline"] == reports["docproc"]
    iban = reports["docproc"].fields["vendor.iban"]
    print(f"  baseline (computed when asked, one document at a time): {timings['baseline']:.2f} s")
    print(f"  docproc  (kept as jobs end; reads the 100 listed changes per field): {timings['docproc']:.3f} s")
    print(f"  ratio: {timings['baseline'] / timings['docproc']:.1f}x; reports identical: {same} "
          f"(vendor.iban changed in {iban.changed}, unchanged in {iban.unchanged})")
    print(f"  rebuild from storage ({rebuilt} documents, chunks, {settings.batch_expand_threads} reader threads): "
          f"{rebuild_s:.2f} s; same report: {same_rebuilt}")
    return 0 if same and same_rebuilt and rebuilt == args.documents else 1


if __name__ == "__main__":
    raise SystemExit(main())
