"""Batches: many documents submitted (or re-processed) as one unit, counted to one event.

A batch is a record in Redis plus the ordered list of its job ids. Its documents come
from a multipart upload (the API creates each job as its part arrives), from a list of
``s3://`` URIs or an S3 prefix, or, for a re-process (:mod:`docproc.submission.reprocess`), from
jobs already stored. Lists, prefixes and selections are *expanded* chunk by chunk
(:mod:`docproc.submission.expansion`); this module holds the batch, its store, how one of its
jobs is made and enqueued, and its completion. Every job of a batch has priority ``bulk``.

Redis layout::

    docproc:batch:{id}           hash   doc (the batch as created, JSON), tenant, total (jobs
                                        in the batch), rejected, ended, n:{state} (ended jobs
                                        by state), expanded ("1" once every job is listed),
                                        cursor + next_index (expansion), finished_at
    docproc:batch:{id}:jobs      zset   job id scored by its index in the batch
    docproc:batch:{id}:counted   set    job ids whose end was counted (a job counts once)
    docproc:batch:{id}:rejected  hash   index -> {"source", "code", "message"} of documents
                                        refused at intake (no job was made for them)
    docproc:batch:{id}:sources   list   the s3:// URIs of a JSON batch, until expanded
    docproc:batch:{id}:diff...   a re-process's diff report, kept as its jobs end
                                        (:mod:`docproc.submission.reprocess_diff`)
    docproc:tenant:{t}:batches   zset   batch ids by creation time (ms)
    docproc:batches:uploading    zset   upload batches still receiving files -> time of the
                                        last file (ms); the watchdog ends the listing of one
                                        that stopped (its API process was lost mid-upload)

Idempotency: the job of document ``index`` is created with the Idempotency-Key
``batch:{id}:{index}`` (a re-run gets the same job back, never a second one), added
to the job list with ``ZADD NX`` and enqueued only when it has no task id yet.

Completion: :func:`count_ended_job` is an after-end step (:mod:`docproc.jobs.lifecycle`):
one Lua step counts a member job once and, when the batch is fully listed and every
job has ended, marks it finished. Whoever sees it finished emits ``batch.completed``
(``reprocess.completed``) with the event id ``evt_{batch id}_{kind}_completed``; the
webhook module keeps one event per id, so the receiver gets exactly one.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Literal

import redis
from pydantic import BaseModel, Field

from docproc.base.errors import (
    DocprocError,
    InvalidRequest,
    NotFound,
    ServiceUnavailable,
    UploadInterrupted,
)
from docproc.base.settings import Settings
from docproc.base.timestamps import UtcTime
from docproc.jobs.store import (
    TENANTS,
    TERMINAL,
    Job,
    JobRequest,
    JobStore,
    new_job_id,
    service_errors,
)

if TYPE_CHECKING:
    from celery import Celery

    from docproc.base.storage import Storage
    from docproc.jobs import lifecycle

logger = logging.getLogger(__name__)

BatchKind = Literal["batch", "reprocess"]
BatchSource = Literal["upload", "uris", "prefix", "jobs"]
BatchState = Literal["expanding", "running", "completed"]
EXPAND_TASK = "docproc.batch.expand"
UPLOADING = "docproc:batches:uploading"
MAX_PAGE = 1000  # job ids per GET page
# a batch's keys, BatchStore.key(id, part): its record, job ids, counted jobs, rejections,
# listing cursor, and a re-process's diff (docproc.submission.reprocess_diff)
DIFF_PARTS = ("diff", "diffed", "diff_changes")
PARTS = ("", "jobs", "counted", "rejected", "sources", *DIFF_PARTS)


class Batch(BaseModel):
    """What a batch is (written once at creation); its counters live beside it."""

    id: str
    tenant: str
    kind: BatchKind = "batch"
    source: BatchSource
    request: JobRequest = Field(description="What every document's job is asked to do (priority bulk).")
    webhook_url: str | None = Field(None, description="Where batch.completed / reprocess.completed goes.")
    selector: dict[str, Any] = Field(default_factory=dict, description="The prefix, or the re-process selector.")
    model: str | None = Field(None, description="re-process: the model asked for (the deployed one).")
    created_at: UtcTime


class BatchCounts(BaseModel):
    """A batch's progress: how many jobs, how many ended and how."""

    state: BatchState
    total: int = Field(description="Jobs in the batch so far (final once state is not expanding).")
    rejected: int = Field(description="Documents refused at intake (no job made; see rejections).")
    ended: int
    by_state: dict[str, int] = Field(description="Ended jobs by terminal state.")
    finished_at: UtcTime | None = None
    error: dict[str, Any] | None = Field(None, description="Why the listing stopped early (code, message), if it did.")


# ---------------------------------------------------------------------------
# Lua
# ---------------------------------------------------------------------------

# Shared tail: the batch is finished when it is fully listed and every job ended.
# ARGV[1] of the callers is "now" (ISO); returns 2 when this call finished it, 1 when it
# was finished before, 0 while it runs.
_FINISHED_CHECK = """
local function finished_check(batch, now)
  if redis.call('HGET', batch, 'finished_at') then return 1 end
  if redis.call('HGET', batch, 'expanded') ~= '1' then return 0 end
  local total = tonumber(redis.call('HGET', batch, 'total') or '0')
  local ended = tonumber(redis.call('HGET', batch, 'ended') or '0')
  if ended >= total then
    redis.call('HSET', batch, 'finished_at', now)
    return 2
  end
  return 0
end
"""

# KEYS: the batch's keys (PARTS), tenant batches, uploading; ARGV: id
# -> 1 purged, 0 kept (not finished). A batch whose record is gone just leaves the indexes.
_PURGE = """
if redis.call('EXISTS', KEYS[1]) == 1 and not redis.call('HGET', KEYS[1], 'finished_at') then return 0 end
redis.call('DEL', unpack(KEYS, 1, #KEYS - 2))
redis.call('ZREM', KEYS[#KEYS - 1], ARGV[1])
redis.call('ZREM', KEYS[#KEYS], ARGV[1])
return 1
"""

# KEYS: batch, counted; ARGV: now, job id, state -> {first count?, finished_check}
_COUNT_ENDED = _FINISHED_CHECK + """
if redis.call('EXISTS', KEYS[1]) == 0 then return {-1, 0} end
local first = redis.call('SADD', KEYS[2], ARGV[2])
if first == 1 then
  redis.call('HINCRBY', KEYS[1], 'n:' .. ARGV[3], 1)
  redis.call('HINCRBY', KEYS[1], 'ended', 1)
end
return {first, finished_check(KEYS[1], ARGV[1])}
"""

# KEYS: batch, jobs; ARGV: index, job id, ... -> jobs newly listed
_ADD_JOBS = """
local added = 0
for i = 1, #ARGV, 2 do
  added = added + redis.call('ZADD', KEYS[2], 'NX', ARGV[i], ARGV[i + 1])
end
if added > 0 then redis.call('HINCRBY', KEYS[1], 'total', added) end
return added
"""

# KEYS: batch, rejected; ARGV: index, record -> 1 recorded, 0 recorded before (counted once)
_REJECT = """
if redis.call('HSETNX', KEYS[2], ARGV[1], ARGV[2]) == 0 then return 0 end
redis.call('HINCRBY', KEYS[1], 'rejected', 1)
return 1
"""

# KEYS: batch; ARGV: now -> finished_check (the batch is fully listed now)
_EXPANDED = _FINISHED_CHECK + """
redis.call('HSET', KEYS[1], 'expanded', '1')
return finished_check(KEYS[1], ARGV[1])
"""


def _now() -> datetime:
    return datetime.now(UTC)


def _text(value: bytes | str | None) -> str | None:
    return value.decode() if isinstance(value, bytes) else value


# ---------------------------------------------------------------------------
# the store
# ---------------------------------------------------------------------------


class BatchStore:
    """Batches in Redis (the same server as the jobs). Tenant reads answer another
    tenant's batch id with NotFound, exactly like a missing one."""

    def __init__(self, redis_client: redis.Redis) -> None:
        self._r = redis_client
        self._count_ended = redis_client.register_script(_COUNT_ENDED)
        self._add_jobs = redis_client.register_script(_ADD_JOBS)
        self._expanded = redis_client.register_script(_EXPANDED)
        self._reject = redis_client.register_script(_REJECT)
        self._purge = redis_client.register_script(_PURGE)

    @staticmethod
    def key(batch_id: str, part: str = "") -> str:
        return f"docproc:batch:{batch_id}" + (f":{part}" if part else "")

    @staticmethod
    def tenant_key(tenant: str) -> str:
        return f"docproc:tenant:{tenant}:batches"

    @service_errors
    def create(self, batch: Batch, sources: list[str] | None = None) -> None:
        pipe = self._r.pipeline(transaction=True)
        pipe.hset(self.key(batch.id), mapping={
            "doc": batch.model_dump_json(by_alias=True), "tenant": batch.tenant,
            "total": 0, "rejected": 0, "ended": 0, "expanded": 0, "next_index": 0,
        })
        if sources:
            pipe.rpush(self.key(batch.id, "sources"), *sources)
        pipe.zadd(self.tenant_key(batch.tenant), {batch.id: int(batch.created_at.timestamp() * 1000)})
        pipe.sadd(TENANTS, batch.tenant)
        if batch.source == "upload":
            pipe.zadd(UPLOADING, {batch.id: int(time.time() * 1000)})
        pipe.execute()
        from docproc.base import metrics
        metrics.BATCHES_SUBMITTED.labels(kind=batch.kind, source=batch.source).inc()

    @service_errors
    def upload_progressed(self, batch_id: str) -> None:
        """A file of an upload batch arrived (its listing is alive)."""
        self._r.zadd(UPLOADING, {batch_id: int(time.time() * 1000)}, xx=True)

    @service_errors
    def stalled_uploads(self, before_ms: int, limit: int = 100) -> list[str]:
        """Upload batches whose last file arrived before ``before_ms`` and whose listing is open."""
        return [_text(b) for b in self._r.zrangebyscore(UPLOADING, "-inf", before_ms, start=0, num=limit)]

    @service_errors
    def load(self, batch_id: str) -> Batch:
        """The batch, for workers (no tenant check)."""
        raw = self._r.hget(self.key(batch_id), "doc") if _is_batch_id(batch_id) else None
        if raw is None:
            raise NotFound(f"no batch {batch_id!r}")
        return Batch.model_validate_json(raw)

    def get(self, tenant: str, batch_id: str, kind: BatchKind | None = None) -> Batch:
        """The tenant's batch (of ``kind``, if given); anything else is NotFound."""
        batch = self.load(batch_id)
        if batch.tenant != tenant or (kind is not None and batch.kind != kind):
            raise NotFound(f"no {kind or 'batch'} {batch_id!r}")
        return batch

    @service_errors
    def counts(self, batch_id: str) -> BatchCounts:
        fields = {_text(k): _text(v) for k, v in self._r.hgetall(self.key(batch_id)).items()}
        finished = fields.get("finished_at")
        state: BatchState = "completed" if finished else ("running" if fields.get("expanded") == "1" else "expanding")
        return BatchCounts(
            state=state,
            total=int(fields.get("total", 0)),
            rejected=int(fields.get("rejected", 0)),
            ended=int(fields.get("ended", 0)),
            by_state={s: int(fields.get(f"n:{s}", 0)) for s in sorted(TERMINAL)},
            finished_at=datetime.fromisoformat(finished) if finished else None,
            error=json.loads(fields["error"]) if fields.get("error") else None,
        )

    # --- the job list ---------------------------------------------------------------
    @service_errors
    def add_jobs(self, batch_id: str, indexed: Iterable[tuple[int, str]]) -> int:
        args: list[Any] = []
        for index, job_id in indexed:
            args += [index, job_id]
        return int(self._add_jobs(keys=[self.key(batch_id), self.key(batch_id, "jobs")], args=args)) if args else 0

    @service_errors
    def job_page(self, batch_id: str, *, after: int = -1, limit: int = 100) -> list[tuple[int, str]]:
        """Up to ``limit`` (index, job id) of the batch with index > ``after``, in order."""
        rows = self._r.zrangebyscore(self.key(batch_id, "jobs"), f"({after}", "+inf", start=0, num=limit,
                                     withscores=True)
        return [(int(score), _text(member)) for member, score in rows]

    def job_ids(self, batch_id: str, chunk: int = 500) -> Iterator[tuple[int, str]]:
        """Every (index, job id) of the batch, read ``chunk`` at a time."""
        after = -1
        while True:
            rows = self.job_page(batch_id, after=after, limit=chunk)
            yield from rows
            if len(rows) < chunk:
                return
            after = rows[-1][0]

    # --- rejections and expansion state -------------------------------------------------
    @service_errors
    def reject(self, batch_id: str, index: int, source: str | None, error: DocprocError) -> None:
        """Record a document refused at intake, once per index."""
        record = json.dumps({"index": index, "source": source, "code": error.code, "message": error.message})
        self._reject(keys=[self.key(batch_id), self.key(batch_id, "rejected")], args=[index, record])

    @service_errors
    def rejections(self, batch_id: str, limit: int = 100) -> list[dict[str, Any]]:
        """Up to ``limit`` rejections, sorted by index."""
        found = []
        for _, value in zip(range(limit), self._r.hscan_iter(self.key(batch_id, "rejected"), count=limit)):
            found.append(json.loads(_text(value[1])))
        return sorted(found, key=lambda r: r["index"])

    @service_errors
    def cursor(self, batch_id: str) -> tuple[str | None, int]:
        cursor, index = self._r.hmget(self.key(batch_id), ["cursor", "next_index"])
        return _text(cursor), int(index or 0)

    @service_errors
    def save_cursor(self, batch_id: str, cursor: str | None, next_index: int) -> None:
        self._r.hset(self.key(batch_id), mapping={"cursor": cursor or "", "next_index": next_index})

    @service_errors
    def sources(self, batch_id: str, start: int, count: int) -> list[str]:
        return [_text(v) for v in self._r.lrange(self.key(batch_id, "sources"), start, start + count - 1)]

    @service_errors
    def mark_expanded(self, batch_id: str) -> bool:
        """Every job is listed; True when the batch is finished (now or before)."""
        self._r.delete(self.key(batch_id, "sources"))
        self._r.zrem(UPLOADING, batch_id)
        return int(self._expanded(keys=[self.key(batch_id)], args=[_now().isoformat()])) > 0

    @service_errors
    def set_error(self, batch_id: str, error: DocprocError) -> None:
        self._r.hset(self.key(batch_id), "error", json.dumps({"code": error.code, "message": error.message}))

    @service_errors
    def count_ended(self, batch_id: str, job_id: str, state: str) -> tuple[bool, int]:
        """Count a member job's end once: (counted by this call, finished_check)."""
        first, finished = self._count_ended(keys=[self.key(batch_id), self.key(batch_id, "counted")],
                                            args=[_now().isoformat(), job_id, state])
        return int(first) == 1, int(finished)

    # --- retention (docproc.housekeeping.retention) ---------------------------------------
    @service_errors
    def created_before(self, tenant: str, before_ms: int, *, start: int,
                       count: int) -> list[tuple[str, bool, datetime | None]]:
        """A slice (oldest first, from index ``start``) of the tenant's batches created
        before ``before_ms``: (id, whether its record exists, when it finished or None)."""
        ids = [_text(b) for b in self._r.zrangebyscore(self.tenant_key(tenant), "-inf", f"({before_ms}",
                                                         start=start, num=count)]
        pipe = self._r.pipeline(transaction=False)
        for batch_id in ids:
            pipe.hmget(self.key(batch_id), ["tenant", "finished_at"])
        rows = []
        for batch_id, (owner, finished) in zip(ids, pipe.execute(), strict=True):
            finished = _text(finished)
            rows.append((batch_id, owner is not None, datetime.fromisoformat(finished) if finished else None))
        return rows

    @service_errors
    def purge(self, tenant: str, batch_id: str) -> bool:
        """Delete a finished batch's records and index entries; False (kept) while it runs."""
        keys = [self.key(batch_id, part) for part in PARTS]
        return self._purge(keys=[*keys, self.tenant_key(tenant), UPLOADING], args=[batch_id]) == 1


def _is_batch_id(value: str) -> bool:
    return isinstance(value, str) and len(value) == 32 and all(c in "0123456789abcdef" for c in value)


def new_batch_id() -> str:
    """Same shape as a job id (sorts by creation time)."""
    return new_job_id()


# ---------------------------------------------------------------------------
# completion (an after-end step) and its event
# ---------------------------------------------------------------------------


def completed_event_id(batch: Batch) -> str:
    """Deterministic: every emitter of one batch's completion names the same event."""
    return f"evt_{batch.id}_{batch.kind}_completed"


def emit_completed(batch: Batch, store: BatchStore, ctx: lifecycle.Context) -> str | None:
    """``batch.completed`` / ``reprocess.completed``: ids, counts, links; idempotent on its id."""
    from docproc.delivery.webhooks import emit_event

    counts = store.counts(batch.id)
    data: dict[str, Any] = {
        "batch_id": batch.id,
        "kind": batch.kind,
        "state": counts.state,
        "total": counts.total,
        "rejected": counts.rejected,
        "counts": counts.by_state,
        "results_url": f"/v1/batches/{batch.id}/results",
    }
    if batch.kind == "reprocess":
        data["diff_url"] = f"/v1/reprocess/{batch.id}/diff"
    event_id = emit_event(ctx, tenant=batch.tenant, event_type=f"{batch.kind}.completed",
                          event_id=completed_event_id(batch), url=batch.webhook_url, data=data)
    logger.info("batch %s completed", batch.id, extra={"batch_id": batch.id, "tenant": batch.tenant})
    return event_id


def count_ended_job(job: Job, ctx: lifecycle.Context) -> None:
    """After-end step: count a batch member's end; the last one completes the batch.

    At least once: a second run finds the job counted and changes no counter, but
    emits the completion again if the batch is finished (the event id dedupes it), in
    case the first run died between counting and emitting.
    """
    if job.batch_id is None:
        return
    store = BatchStore(ctx.redis)
    try:
        batch = store.load(job.batch_id)
    except NotFound:  # the batch record is gone: nothing to count
        return
    first, finished = store.count_ended(batch.id, job.id, job.state)
    if finished == 2 or (finished == 1 and not first):
        emit_completed(batch, store, ctx)


# ---------------------------------------------------------------------------
# creating the jobs of a batch
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class BatchServices:
    """What creating a batch's jobs needs (the API's services, or a worker's resources)."""

    settings: Settings
    redis: redis.Redis
    store: JobStore
    storage: Storage
    celery: Celery

    @property
    def batches(self) -> BatchStore:
        return BatchStore(self.redis)

    def lifecycle_context(self) -> lifecycle.Context:
        """A lifecycle context on these services (for emitting the completion event)."""
        from docproc.jobs import lifecycle
        def send(name: str, args: list[Any], queue: str) -> None:
            self.celery.send_task(name, args=args, queue=queue)

        return lifecycle.Context(settings=self.settings, redis=self.redis, store=self.store, send=send,
                                 storage=self.storage)


@dataclass(frozen=True)
class Item:
    """One document of a batch: its index and where it comes from."""

    index: int
    source: str | None = None  # an s3:// URI (uris, prefix)
    original: Job | None = None  # re-process: the job whose stored input is read again


Chunk = tuple[list[Item], "str | None", bool]
"""(items, cursor after them, last chunk?)"""


def idempotency_key(batch_id: str, index: int) -> str:
    return f"batch:{batch_id}:{index}"


def reject_or_raise(svc: BatchServices, batch: Batch, index: int, source: str | None, exc: DocprocError) -> None:
    """A document's own error becomes its rejection; a transient service fault (Redis,
    storage down) propagates, so the request fails or the task retries the chunk."""
    if isinstance(exc, ServiceUnavailable) and getattr(exc, "retryable", True):
        raise exc
    svc.batches.reject(batch.id, index, source, exc)


def add_document(svc: BatchServices, batch: Batch, index: int, data: bytes, filename: str | None) -> Job | None:
    """Check, store and create the job of one document (not yet enqueued); a document
    refused at intake is recorded as a rejection and None returned."""
    from docproc.submission.submit import check_input

    try:
        checked = check_input(data, batch.request, filename=filename, settings=svc.settings)
    except DocprocError as exc:
        reject_or_raise(svc, batch, index, filename, exc)
        return None
    key = svc.storage.put_input(data)
    return create_job(svc, batch, index, batch.request, input_key=key, input_sha256=checked.sha256,
                      size_bytes=len(data), filename=filename, media_type=checked.media_type)


def create_job(svc: BatchServices, batch: Batch, index: int, request: JobRequest, **input_fields: Any) -> Job:
    """Create (or, re-run, find) the job of document ``index`` of the batch; counted in
    ``docproc_jobs_submitted_total`` when new."""
    from docproc.base import logs, metrics
    from docproc.submission.submit import request_fingerprint

    job, created = svc.store.create(
        batch.tenant, request, idempotency_key=idempotency_key(batch.id, index),
        fingerprint=request_fingerprint(input_fields["input_sha256"], request), batch_id=batch.id,
        request_id=logs.request_id(), **input_fields,
    )
    if created:
        metrics.JOBS_SUBMITTED.labels(task=request.task, schema=metrics.schema_label(request.schema_),
                                      priority=request.priority).inc()
    return job


def enqueue_jobs(svc: BatchServices, batch: Batch, jobs: list[tuple[int, Job]],
                 pool: ThreadPoolExecutor | None = None) -> None:
    """List the jobs in the batch, then send each intake not sent before (a re-run of a
    chunk finds their task ids and sends nothing twice); sends overlap on ``pool``."""
    from docproc.submission.submit import enqueue_intake

    svc.batches.add_jobs(batch.id, [(index, job.id) for index, job in jobs])
    todo = [job for _, job in jobs if not job.task_ids and job.state == "queued"]
    list((pool.map if pool is not None else map)(lambda job: enqueue_intake(svc.celery, svc.store, job), todo))


def finish_listing(svc: BatchServices, batch: Batch) -> bool:
    """Mark the batch fully listed; if every job already ended, it completes here."""
    if svc.batches.mark_expanded(batch.id):
        emit_completed(batch, svc.batches, svc.lifecycle_context())
    return True


def fail_listing(svc: BatchServices, batch_id: str, error: DocprocError) -> None:
    """The listing cannot go on (e.g. the prefix is unreadable): keep the error, end the
    listing with the jobs made so far, so the batch still completes."""
    batch = svc.batches.load(batch_id)
    svc.batches.set_error(batch_id, error)
    finish_listing(svc, batch)


def end_stalled_uploads(svc: BatchServices, *, now: float | None = None) -> list[str]:
    """End the listing of upload batches that received no file for ``batch_upload_stall_s``
    (the API process that read the upload was lost): the batch keeps the error
    ``upload_interrupted`` and completes with the jobs made so far. Returns their ids."""
    now = time.time() if now is None else now
    ended = []
    for batch_id in svc.batches.stalled_uploads(int((now - svc.settings.batch_upload_stall_s) * 1000)):
        fail_listing(svc, batch_id, UploadInterrupted(
            f"no file arrived for {svc.settings.batch_upload_stall_s:.0f} s; the upload was lost with the "
            "API process that read it; the documents received before are processed"))
        logger.warning("batch %s: upload stopped; listing ended with the jobs made so far", batch_id,
                       extra={"batch_id": batch_id, "stage": "watchdog"})
        ended.append(batch_id)
    return ended


def parse_source_prefix(uri: str, settings: Settings) -> tuple[str, str]:
    """``s3://bucket/some/prefix/`` -> ``(bucket, "some/prefix/")``, bucket on the allow-list
    (the same rule as a single source_uri); ``s3://bucket/`` lists the whole bucket."""
    from docproc.submission.submit import parse_source_uri

    if not isinstance(uri, str) or not uri.startswith("s3://"):
        raise InvalidRequest("source_prefix must look like s3://bucket/prefix/")
    bucket, _, prefix = uri[len("s3://"):].partition("/")
    parse_source_uri(f"s3://{bucket}/{prefix or '_'}", settings)  # bucket allowed, URI well formed
    return bucket, prefix


def start_expansion(svc: BatchServices, batch: Batch) -> None:
    """Send the batch's expand task to the ``bulk`` queue (a listing or a selection)."""
    from docproc.base.broker import BULK_QUEUE

    svc.celery.send_task(EXPAND_TASK, args=[batch.id], queue=BULK_QUEUE)


def new_batch(tenant: str, *, source: BatchSource, request: JobRequest, webhook_url: str | None,
              kind: BatchKind = "batch", selector: dict[str, Any] | None = None, model: str | None = None) -> Batch:
    """A batch record (not stored yet); its jobs get priority ``bulk`` and no per-job webhook."""
    job_request = request.model_copy(update={"priority": "bulk", "webhook_url": None})
    return Batch(id=new_batch_id(), tenant=tenant, kind=kind, source=source, request=job_request,
                 webhook_url=webhook_url, selector=selector or {}, model=model, created_at=_now())
