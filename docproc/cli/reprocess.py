"""``docproc reprocess``: bulk re-processing from the command line (an operator tool).

    docproc reprocess --tenant T [--schema invoice@2] [--task ...] [--engine ...] [--model M]
                      [--batch ID] [--select-schema NAME[@V]] [--state S] [--since DATE] [--until DATE]
                      [--input-prefix inputs/sha256/ab] [--webhook-url URL] [--dry-run] [--no-wait]
    docproc reprocess diff ID --tenant T [--limit N] [--json] [--rebuild [--fresh]]

It talks to Redis, storage and the broker directly (``DOCPROC_*`` settings), like the
workers, and runs the same functions as ``POST /v1/reprocess`` and ``GET
/v1/reprocess/{id}/diff`` (:mod:`docproc.submission.reprocess`, :mod:`docproc.submission.reprocess_diff`). Without ``--no-wait`` it follows
the re-process with a progress bar until every job ended.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from datetime import datetime

from pydantic import ValidationError

from docproc.base.errors import InvalidRequest
from docproc.base.settings import get_settings
from docproc.submission.batches import BatchServices
from docproc.submission.reprocess import ReprocessRequest, submit_reprocess
from docproc.submission.reprocess_diff import diff_report, rebuild_diff

POLL_S = 1.0


def add_parser(sub: argparse._SubParsersAction) -> None:
    """The ``reprocess`` subcommand (and its ``diff``) on the ``docproc`` parser."""
    r = sub.add_parser("reprocess", help="re-run stored documents with a new schema version, task or engine",
                       description="Select a tenant's stored jobs and re-process them (new jobs linked "
                       "reprocess_of the originals; old results stay untouched).")
    r.add_argument("--tenant", help="the tenant whose jobs are selected (required)")
    r.add_argument("--schema", help='the new schema, e.g. "invoice@2" (task extract unless --task says otherwise)')
    r.add_argument("--task", choices=["ocr", "tables", "extract"],
                   help="default: extract with --schema, else each job's own")
    r.add_argument("--engine", choices=["auto", "text", "internvl"], help="default: each job's own")
    r.add_argument("--model", help="must be the deployed model (recorded on the re-process)")
    r.add_argument("--batch", dest="batch_id", help="select the jobs of this batch")
    r.add_argument("--select-schema", help='select jobs that used this schema ("invoice": any version)')
    r.add_argument("--state", choices=["succeeded", "partial", "failed", "canceled"],
                   help="select jobs that ended so (default: succeeded or partial)")
    r.add_argument("--since", type=datetime.fromisoformat, help="select jobs created at or after (ISO date/time)")
    r.add_argument("--until", type=datetime.fromisoformat, help="select jobs created at or before (ISO date/time)")
    r.add_argument("--input-prefix", help='select jobs whose stored input key starts with this ("inputs/sha256/ab")')
    r.add_argument("--webhook-url", help="gets reprocess.completed")
    r.add_argument("--dry-run", action="store_true", help="only print how many documents would be re-processed")
    r.add_argument("--no-wait", action="store_true", help="print the re-process id and return at once")
    r.add_argument("--no-progress", action="store_true", help="no progress bar while waiting")
    rsub = r.add_subparsers(dest="reprocess_command", required=False)
    d = rsub.add_parser("diff", help="which fields changed between the original and the re-processed results")
    d.add_argument("reprocess_id")
    d.add_argument("--tenant", required=True)
    d.add_argument("--limit", type=int, default=20, help="changes listed per field (all are counted)")
    d.add_argument("--json", action="store_true", help="print the report as JSON")
    d.add_argument("--rebuild", action="store_true",
                   help="first compare, from storage, every re-processed document not counted yet "
                   "(a re-process made before the diff was kept as jobs end)")
    d.add_argument("--fresh", action="store_true", help="with --rebuild: forget the kept diff and count all again")


def _services() -> BatchServices:
    from docproc.base import broker
    from docproc.base.storage import open_storage
    from docproc.jobs.store import JobStore, connect_redis

    settings = get_settings()
    client = connect_redis(settings)
    return BatchServices(settings=settings, redis=client, store=JobStore(client, settings),
                         storage=open_storage(settings), celery=broker.client(settings))


def cmd_reprocess(args: argparse.Namespace) -> int:
    if args.reprocess_command == "diff":
        return cmd_diff(args)
    if not args.tenant:
        raise InvalidRequest("docproc reprocess needs --tenant")
    selector = {"batch_id": args.batch_id, "schema": args.select_schema, "state": args.state, "since": args.since,
                "until": args.until, "input_prefix": args.input_prefix}
    try:
        request = ReprocessRequest(selector=selector, task=args.task, schema=args.schema, engine=args.engine,
                                   model=args.model, webhook_url=args.webhook_url, dry_run=args.dry_run)
    except ValidationError as exc:
        raise InvalidRequest("; ".join(err["msg"] for err in exc.errors())) from None
    svc = _services()
    batch, count = submit_reprocess(svc, args.tenant, request)
    if batch is None:
        print(f"{count} document(s) would be re-processed")
        return 0
    print(f"reprocess {batch.id} started", file=sys.stderr)
    if not args.no_wait:
        follow(svc, batch.id, progress=not args.no_progress)
    counts = svc.batches.counts(batch.id)
    states = ", ".join(f"{n} {s}" for s, n in counts.by_state.items() if n)
    print(f"reprocess {batch.id}: {counts.state}, {counts.total} job(s)" + (f" ({states})" if states else "")
          + (f", {counts.rejected} refused" if counts.rejected else ""))
    if counts.state == "completed":
        print(f"diff: docproc reprocess diff {batch.id} --tenant {args.tenant}")
    return 0 if not counts.by_state.get("failed") else 1


def follow(svc: BatchServices, batch_id: str, *, progress: bool = True) -> None:
    """A progress bar (jobs ended / jobs listed) until the re-process completed."""
    from tqdm import tqdm

    with tqdm(total=0, unit="doc", desc="reprocess", disable=not progress, file=sys.stderr) as bar:
        while True:
            counts = svc.batches.counts(batch_id)
            bar.total = counts.total
            bar.n = counts.ended
            bar.refresh()
            if counts.state == "completed":
                return
            time.sleep(POLL_S)


def cmd_diff(args: argparse.Namespace) -> int:
    svc = _services()
    batch = svc.batches.get(args.tenant, args.reprocess_id, kind="reprocess")
    if args.rebuild:
        recorded = rebuild_diff(svc, batch, fresh=args.fresh)
        print(f"rebuilt: {recorded} document(s) compared from storage", file=sys.stderr)
    report = diff_report(svc, batch, limit=args.limit)
    if args.json:
        print(report.model_dump_json(indent=2))
        return 0
    print(f"reprocess {report.reprocess_id} ({report.state}): {report.compared} document(s) compared, "
          f"{report.pending} without both results")
    width = max([len(name) for name in report.fields] + [5])
    print(f"{'field':<{width}}  changed  unchanged")
    for name, diff in report.fields.items():
        print(f"{name:<{width}}  {diff.changed:>7}  {diff.unchanged:>9}")
    for name, diff in report.fields.items():
        for change in diff.changes:
            print(f"  {name}: {change['reprocess_of']} -> {change['job_id']}: "
                  f"{json.dumps(change['old'])[:80]} -> {json.dumps(change['new'])[:80]}")
    return 0
