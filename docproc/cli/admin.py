"""Operator tools: jobs across tenants and the Celery queues, on the service's own Redis.

    docproc jobs ls [--tenant T] [--state S] [--schema NAME] [--limit N] [--json]
    docproc jobs show ID [--json]        state, request, input, timings, pages, error
    docproc jobs retry ID [--force] [--json]
    docproc jobs cancel ID [--json]
    docproc queues [--json]              depth and oldest waiting message per queue

Operators run these with the service's settings (``DOCPROC_REDIS_URL``, and
``DOCPROC_STORAGE_URL`` for ``retry``). They cross tenants (``--tenant`` filters),
so they are never exposed over HTTP.

Semantics, chosen because terminal states never change:

* **retry** makes a *new* job from the original's stored input and request (no
  re-upload), linked to it by ``reprocess_of``, and enqueues its intake. Only an
  ended job is retried (``failed``, ``partial``, ``canceled``; ``succeeded`` with
  ``--force``); a queued or running one is ``job_state_conflict``. Retrying the same
  job again within ``idempotency_ttl_s`` answers the same new job (an operator's
  double run never doubles the work); to retry again, retry the new job.
* **cancel** is the API's ``DELETE /v1/jobs/{id}``: the JobStore's atomic cancel,
  a revoke of the job's Celery tasks, then the after-end steps
  (:func:`docproc.jobs.lifecycle.job_ended`). An already ended job is left as it is and
  answered with ``job_state_conflict``.

Exit status (``docproc.cli.commands``): 0 done, 1 a typed error (``not_found``,
``job_state_conflict``, ``service_unavailable`` ...), 2 a usage error.

The work is in plain functions taking the store, storage and Celery app; the
``cmd_*`` functions only open those from the settings and print. ``docproc.cli.commands``
imports this module for every command, so it imports nothing heavy at the top (above
all not prometheus_client: ``docproc worker`` must set up multiprocess metrics first).
"""

from __future__ import annotations

import argparse
import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import asdict
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import redis

from docproc.base.errors import JobStateConflict, NotFound, ServiceUnavailable
from docproc.base.settings import TENANT_RE, Settings, get_settings
from docproc.jobs import lifecycle
from docproc.jobs.store import (
    MAX_LIST_LIMIT,
    TENANTS,
    TERMINAL,
    Job,
    JobState,
    JobStore,
    PageStatus,
    connect_redis,
)

if TYPE_CHECKING:
    from celery import Celery

    from docproc.base.queue_depth import QueueStats
    from docproc.base.storage import Storage

logger = logging.getLogger(__name__)

RETRY_IDEMPOTENCY_PREFIX = "docproc-admin-retry:"
"""Idempotency key of a retry, per original job: a second retry answers the same new job."""



# ---------------------------------------------------------------------------
# the work
# ---------------------------------------------------------------------------


def tenants(client: redis.Redis) -> list[str]:
    """Every tenant that has made jobs or batches (the job store's tenant set), sorted."""
    names = (t.decode() if isinstance(t, bytes) else t for t in client.smembers(TENANTS))
    return sorted(t for t in names if TENANT_RE.fullmatch(t))


def list_jobs(
    client: redis.Redis,
    store: JobStore,
    *,
    tenant: str | None = None,
    state: str | None = None,
    schema: str | None = None,
    limit: int = 50,
) -> list[Job]:
    """The newest ``limit`` jobs of one tenant or of all, newest first, filtered.

    Across tenants, the newest N overall are among each tenant's newest N, so one
    page per tenant is merged; pages cut short by the store's scan cap are followed.
    """
    names = [tenant] if tenant is not None else _redis_call(tenants, client)
    found: list[Job] = []
    for name in names:
        cursor: str | None = None
        mine: list[Job] = []
        while True:
            jobs, cursor = store.list(name, state=state, schema=schema, cursor=cursor, limit=limit)
            mine += jobs
            if cursor is None or len(mine) >= limit:
                break
        found += mine[:limit]
    found.sort(key=lambda j: (j.created_at, j.id), reverse=True)
    return found[:limit]


def job_detail(store: JobStore, job_id: str) -> tuple[Job, list[PageStatus]]:
    """A job of any tenant and its pages; NotFound when there is none."""
    job = store.load(job_id)
    return job, store.pages(job_id)


def retry_job(store: JobStore, storage: Storage, celery: Celery, job_id: str, *, force: bool = False) -> tuple[Job, bool]:
    """A new job from an ended job's stored input and request, linked ``reprocess_of`` it,
    with its intake enqueued. Returns (the new job, created); ``created`` is False when
    this job was retried before (the same new job is returned, nothing is enqueued)."""
    from docproc.base import metrics
    from docproc.submission.submit import enqueue_intake, request_fingerprint

    job = store.load(job_id)
    if job.state not in TERMINAL:
        raise JobStateConflict(f"job {job_id} is {job.state}; only an ended job is retried (cancel it first)",
                               job_id=job_id, state=job.state)
    if job.state == "succeeded" and not force:
        raise JobStateConflict(f"job {job_id} succeeded; use --force to run it again", job_id=job_id,
                               state=job.state)
    if not storage.exists(job.input_key):
        raise NotFound(f"the stored input of job {job_id} is gone ({job.input_key})", job_id=job_id)
    new, created = store.create(
        job.tenant,
        job.request,
        input_key=job.input_key,
        input_sha256=job.input_sha256,
        size_bytes=job.size_bytes,
        filename=job.filename,
        idempotency_key=f"{RETRY_IDEMPOTENCY_PREFIX}{job.id}",
        fingerprint=request_fingerprint(job.input_sha256, job.request),
        media_type=job.media_type,
        reprocess_of=job.id,
    )
    if created:
        metrics.JOBS_SUBMITTED.labels(task=new.request.task, schema=metrics.schema_label(new.request.schema_),
                                      priority=new.request.priority).inc()
        logger.info("job %s: retried as %s", job.id, new.id, extra={"job_id": new.id, "tenant": new.tenant})
        try:
            enqueue_intake(celery, store, new)
        except Exception as exc:
            from docproc.jobs.results import ErrorInfo

            message = "the retry could not be queued (broker unreachable)"
            if store.finish(new.id, "failed", error=ErrorInfo(code="service_unavailable", message=message)):
                metrics.count_job_finished(new, "failed")
            raise ServiceUnavailable(message, job_id=new.id) from exc
        new = store.load(new.id)
    return new, created


def cancel_job(store: JobStore, celery: Celery, ctx: lifecycle.Context, job_id: str) -> Job:
    """Cancel a queued or running job of any tenant, as ``DELETE /v1/jobs/{id}`` does: the
    atomic cancel, a revoke of its tasks, its after-end steps. JobStateConflict if it had
    already ended (it is left unchanged)."""
    from docproc.base import metrics
    owner = store.load(job_id).tenant
    job, canceled = store.cancel(owner, job_id)
    if not canceled:
        raise JobStateConflict(f"job {job_id} already ended ({job.state}); nothing to cancel",
                               job_id=job_id, state=job.state)
    metrics.count_job_finished(job, "canceled")  # counted by whoever ended it, as the API does
    logger.info("job %s: canceled by an operator", job.id, extra={"job_id": job.id, "tenant": job.tenant})
    if job.task_ids:
        celery.control.revoke(job.task_ids)
    lifecycle.job_ended(job.id, ctx)
    return job


def queues_now(client: redis.Redis) -> list[QueueStats]:
    """Depth and oldest-message age of every docproc queue (``docproc.base.broker.QUEUES``)."""
    from docproc.base.broker import QUEUES
    from docproc.base.queue_depth import queue_stats

    return _redis_call(queue_stats, client, QUEUES)


def _redis_call(fn: Callable[..., Any], *args: Any) -> Any:
    try:
        return fn(*args)
    except redis.exceptions.RedisError as exc:
        raise ServiceUnavailable(f"Redis unavailable ({type(exc).__name__})") from exc


# ---------------------------------------------------------------------------
# views (what the commands print)
# ---------------------------------------------------------------------------


def _when(value: datetime | None) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S") if value is not None else "-"


def _seconds(start: datetime | None, end: datetime | None) -> float | None:
    return round((end - start).total_seconds(), 3) if start is not None and end is not None else None


def job_timings(job: Job, now: datetime) -> dict[str, float | None]:
    """Seconds queued (created -> started), running (started -> finished or now) and in all."""
    return {
        "queued_s": _seconds(job.created_at, job.started_at or (None if job.state in TERMINAL else now)),
        "running_s": _seconds(job.started_at, job.finished_at or (None if job.state in TERMINAL else now)),
        "total_s": _seconds(job.created_at, job.finished_at or (None if job.state in TERMINAL else now)),
    }


def job_row(job: Job) -> dict[str, Any]:
    """One line of ``jobs ls``."""
    total = len(job.pages) if job.pages else job.page_count
    return {
        "id": job.id,
        "tenant": job.tenant,
        "state": job.state,
        "task": job.request.task,
        "schema": job.request.schema_,
        "pages": f"{job.pages_done + job.pages_failed}/{total if total is not None else '?'}",
        "failed": job.pages_failed,
        "created": _when(job.created_at),
        "error": job.error.code if job.error else None,
    }


def job_document(job: Job, pages: list[PageStatus], now: datetime) -> dict[str, Any]:
    """``jobs show --json``: the job as stored, its pages and its timings."""
    return {
        "job": job.model_dump(mode="json", by_alias=True),
        "timings": job_timings(job, now),
        "pages": [p.model_dump(mode="json") for p in pages],
    }


def table(rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> str:
    """Rows as a plain aligned text table with upper-case headers; None prints as ``-``."""
    cells = [[c.upper() for c in columns]] + [["-" if r.get(c) is None else str(r[c]) for c in columns] for r in rows]
    widths = [max(len(line[i]) for line in cells) for i in range(len(columns))]
    return "\n".join("  ".join(v.ljust(w) for v, w in zip(line, widths, strict=True)).rstrip() for line in cells)


def _show_text(job: Job, pages: list[PageStatus], now: datetime) -> str:
    req = job.request
    t = job_timings(job, now)
    lines = [
        f"job       {job.id}",
        f"tenant    {job.tenant}",
        f"state     {job.state}" + (f"  error {job.error.code}: {job.error.message}" if job.error else ""),
        f"request   task={req.task} schema={req.schema_ or '-'} engine={req.engine} priority={req.priority} "
        f"pages={req.pages or 'all'} webhook={'yes' if req.webhook_url else 'no'}",
        f"input     {job.filename or '-'}  {job.media_type or '-'}  {job.size_bytes} bytes  {job.input_key}",
        f"times     created {_when(job.created_at)}  started {_when(job.started_at)}  finished {_when(job.finished_at)}",
        f"durations queued {_fmt_s(t['queued_s'])}  running {_fmt_s(t['running_s'])}  total {_fmt_s(t['total_s'])}",
        f"result    {job.result_key or '-'}" + (f"  (schema {job.schema_version})" if job.schema_version else "")
        + (f"  model {job.model}" if job.model else ""),
    ]
    links = [f"{name} {value}" for name, value in (("reprocess_of", job.reprocess_of), ("batch", job.batch_id)) if value]
    if links:
        lines.append(f"links     {'  '.join(links)}")
    lines.append(f"pages     {len(pages)} selected of {job.page_count if job.page_count is not None else '?'}: "
                 f"{job.pages_done} done, {job.pages_failed} failed")
    if pages:
        rows = [{
            "page": p.page, "state": p.state, "engine": p.engine, "attempts": p.attempts,
            "timings_ms": " ".join(f"{k}={v:.0f}" for k, v in p.timings_ms.items()) or None,
            "error": f"{p.error.code}: {p.error.message}" if p.error else None,
        } for p in pages]
        lines += ["", table(rows, ["page", "state", "engine", "attempts", "timings_ms", "error"])]
    return "\n".join(lines)


def _fmt_s(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}s"


def _age(value: float | None, depth: int) -> str:
    if depth == 0:
        return "-"
    return "unknown" if value is None else f"{value:.1f}s"


# ---------------------------------------------------------------------------
# the commands (docproc.cli.commands dispatches here)
# ---------------------------------------------------------------------------


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """``jobs ls|show|retry|cancel`` and ``queues``, on docproc's subcommand parser."""
    as_json = argparse.ArgumentParser(add_help=False)
    as_json.add_argument("--json", action="store_true", help="print JSON instead of a table")

    j = sub.add_parser("jobs", help="operator view of jobs across tenants: ls, show, retry, cancel")
    jsub = j.add_subparsers(dest="jobs_command", required=True)
    ls = jsub.add_parser("ls", parents=[as_json], help="the newest jobs, newest first")
    ls.add_argument("--tenant", help="only this tenant's jobs (default: every tenant)")
    ls.add_argument("--state", choices=JobState.__args__)
    ls.add_argument("--schema", help="only jobs that asked for this schema")
    ls.add_argument("--limit", type=int, default=50, help=f"at most this many (1..{MAX_LIST_LIMIT}; default 50)")
    show = jsub.add_parser("show", parents=[as_json], help="one job: state, request, timings, pages, error")
    show.add_argument("job_id")
    retry = jsub.add_parser("retry", parents=[as_json],
                            help="run an ended job again as a new job (same stored input and request)")
    retry.add_argument("job_id")
    retry.add_argument("--force", action="store_true", help="also retry a job that succeeded")
    cancel = jsub.add_parser("cancel", parents=[as_json], help="cancel a queued or running job (as the API does)")
    cancel.add_argument("job_id")

    sub.add_parser("queues", parents=[as_json], help="messages waiting and the oldest one's age, per queue")
    purge = sub.add_parser("purge", parents=[as_json],
                           help="delete the Redis records of work that ended more than retention_s ago now "
                                "(the scheduler does it every tick; see docproc/housekeeping/retention.py)")
    purge.add_argument("--dry-run", action="store_true", help="only count what would be deleted")


def _emit(args: argparse.Namespace, data: Any, text: str) -> None:
    print(json.dumps(data, indent=2) if args.json else text)


def cmd_jobs(args: argparse.Namespace, settings: Settings | None = None) -> int:
    """``docproc jobs ...``; raises the typed errors docproc.cli.commands turns into exit status 1."""
    settings = settings or get_settings()
    client = connect_redis(settings)
    try:
        store = JobStore(client, settings)
        now = datetime.now(UTC)
        if args.jobs_command == "ls":
            jobs = list_jobs(client, store, tenant=args.tenant, state=args.state, schema=args.schema, limit=args.limit)
            rows = [job_row(j) for j in jobs]
            _emit(args, rows, table(rows, ["id", "tenant", "state", "task", "schema", "pages", "failed", "created",
                                           "error"]) if rows else "no jobs")
        elif args.jobs_command == "show":
            job, pages = job_detail(store, args.job_id)
            _emit(args, job_document(job, pages, now), _show_text(job, pages, now))
        else:
            _run_with_celery(args, settings, client, store)
    finally:
        client.close()
    return 0


def _run_with_celery(args: argparse.Namespace, settings: Settings, client: redis.Redis, store: JobStore) -> None:
    from docproc.base import broker
    from docproc.housekeeping import after_end  # the steps import prometheus_client

    celery = broker.client(settings)
    try:
        if args.jobs_command == "retry":
            from docproc.base.storage import open_storage

            new, created = retry_job(store, open_storage(settings), celery, args.job_id, force=args.force)
            note = "retried as" if created else "already retried as"
            _emit(args, {"job_id": args.job_id, "new_job_id": new.id, "created": created, "state": new.state},
                  f"job {args.job_id} {note} {new.id} ({new.state})")
        else:
            def send(name: str, task_args: list[Any], queue: str) -> None:
                celery.send_task(name, args=task_args, queue=queue)

            ctx = after_end.context(settings=settings, redis=client, store=store, send=send)
            job = cancel_job(store, celery, ctx, args.job_id)
            _emit(args, {"job_id": job.id, "state": job.state, "revoked": job.task_ids},
                  f"job {job.id} canceled ({len(job.task_ids)} task(s) revoked)")
    finally:
        celery.close()


def cmd_queues(args: argparse.Namespace, settings: Settings | None = None) -> int:
    """``docproc queues``: depth and the oldest waiting message's age per Celery queue."""
    settings = settings or get_settings()
    client = connect_redis(settings)
    try:
        stats = queues_now(client)
    finally:
        client.close()
    data = [{"queue": s.name, "depth": s.depth, "oldest_age_s": s.oldest_age_s} for s in stats]
    rows = [{"queue": s.name, "depth": s.depth, "oldest": _age(s.oldest_age_s, s.depth)} for s in stats]
    _emit(args, data, table(rows, ["queue", "depth", "oldest"]))
    return 0


def cmd_purge(args: argparse.Namespace, settings: Settings | None = None) -> int:
    """``docproc purge [--dry-run]``: the retention purge over the whole backlog, in one pass."""
    from docproc.housekeeping import after_end, retention  # the steps import prometheus_client
    settings = settings or get_settings()
    client = connect_redis(settings)
    try:
        ctx = after_end.context(settings=settings, redis=client, store=JobStore(client, settings),
                                send=lambda *_: None)  # a purge sends no task
        out = retention.purge_expired(ctx, dry_run=args.dry_run, limit=retention.UNLIMITED)
    finally:
        client.close()
    if not settings.retention_s:
        text = "retention_s is 0: records are kept forever; nothing purged"
    else:
        text = (f"{'would purge' if args.dry_run else 'purged'} {out.jobs} jobs, {out.batches} batches and "
                f"{out.events} webhook events that ended more than {settings.retention_s / 86400:g} days ago; "
                f"kept {out.kept} older jobs still in flight")
    _emit(args, {**asdict(out), "dry_run": args.dry_run, "retention_s": settings.retention_s}, text)
    return 0
