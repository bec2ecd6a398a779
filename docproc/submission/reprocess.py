"""Bulk re-processing: run a new schema version (task, engine) over documents already stored.

A re-process is a batch of kind ``reprocess`` (:mod:`docproc.submission.batches`) whose documents
are *selected jobs* of the tenant: the jobs of a batch, a job filter (schema, created
since/until, state) or the jobs whose stored input key starts with a prefix
(``inputs/sha256/ab``). Each selected job gets a new job that reads the same stored
input (same ``input_key``: nothing is uploaded again), linked by ``reprocess_of``; the
old job and its results are never touched (results are keyed by job id and the new
job records its schema version). The selection is walked by the ``bulk`` expand task,
one chunk at a time.

Models: a deployment serves one model (``settings.model``). A re-process may name it
(recorded on the batch, so a data team sees which model produced the new results);
any other model is refused with ``model_not_deployed``: run the re-process on a
deployment that serves that model instead.

The diff report (:mod:`docproc.submission.reprocess_diff`) compares each re-processed document's
result with its original's, field by field, as the jobs end.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from docproc.base.errors import DocprocError, InvalidRequest, ModelNotDeployed, NotFound
from docproc.jobs.results import EngineName, Task
from docproc.jobs.store import MAX_LIST_LIMIT, Job, JobRequest, JobState
from docproc.submission.batches import (
    Batch,
    BatchServices,
    Chunk,
    Item,
    create_job,
    new_batch,
    reject_or_raise,
)

if TYPE_CHECKING:
    from docproc.base.settings import Settings

logger = logging.getLogger(__name__)



class Selector(BaseModel):
    """Which stored documents to re-process (every given condition must hold)."""

    model_config = ConfigDict(extra="forbid", validate_by_name=True, validate_by_alias=True, serialize_by_alias=True)

    batch_id: str | None = Field(None, max_length=64, description="The jobs of this batch (or re-process).")
    schema_: str | None = Field(None, alias="schema", max_length=128,
                                description='Jobs that used this schema: "invoice" (any version) or "invoice@1".')
    state: JobState | None = Field(None, description="Jobs that ended in this state (default: succeeded or partial).")
    since: datetime | None = Field(None, description="Jobs created at or after this time.")
    until: datetime | None = Field(None, description="Jobs created at or before this time (default: now).")
    input_prefix: str | None = Field(None, max_length=512,
                                     description='Jobs whose stored input key starts with this ("inputs/sha256/ab").')

    def matches(self, job: Job) -> bool:
        if self.state is not None:
            if job.state != self.state:
                return False
        elif job.state not in ("succeeded", "partial"):
            return False
        if self.schema_ is not None:
            name, _, version = self.schema_.partition("@")
            used_name, _, asked_version = (job.request.schema_ or "").partition("@")
            if used_name != name:
                return False
            if version and version != (job.schema_version or asked_version):  # the version it ran
                return False
        if self.since is not None and job.created_at < _utc(self.since):
            return False
        if self.until is not None and job.created_at > _utc(self.until):
            return False
        return self.input_prefix is None or job.input_key.startswith(self.input_prefix)


def newest_version(versions: list[Job], schema: str) -> Job | None:
    """The newest of a document's versions (:meth:`JobStore.versions`) that ran ``schema``
    (``"invoice@2"``; ``"invoice"``: any version) and ended with a result."""
    selector = Selector(schema=schema)
    return next((job for job in reversed(versions) if job.result_key and selector.matches(job)), None)


class ReprocessRequest(BaseModel):
    """``POST /v1/reprocess``: a selector and what to run instead."""

    model_config = ConfigDict(extra="forbid", validate_by_name=True, validate_by_alias=True, serialize_by_alias=True)

    selector: Selector
    task: Task | None = Field(None, description='Default: "extract" when a schema is given, else each job\'s own task.')
    schema_: str | None = Field(None, alias="schema", max_length=128, description='The new schema, e.g. "invoice@2".')
    engine: EngineName | None = Field(None, description="Default: each job's own engine.")
    model: str | None = Field(None, max_length=512, description="Must be the deployed model (recorded on the batch).")
    webhook_url: str | None = Field(None, max_length=2048, description="Gets reprocess.completed.")
    dry_run: bool = Field(False, description="Only count the documents that would be re-processed.")

    @model_validator(mode="after")
    def _something_to_select(self) -> ReprocessRequest:
        s = self.selector
        if not any((s.batch_id, s.schema_, s.state, s.since, s.until, s.input_prefix)):
            raise ValueError("the selector is empty: give a batch_id, schema, state, since/until or input_prefix")
        return self

    def changes(self) -> dict[str, Any]:
        task = self.task or ("extract" if self.schema_ else None)
        return {"task": task, "schema": self.schema_, "engine": self.engine}


def split_selector(batch: Batch) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """A batch's (selector, changes) as shown: a re-process keeps both in ``batch.selector``
    (``{"selector": ..., "changes": ...}``); another batch has no changes."""
    if batch.kind != "reprocess":
        return batch.selector, None
    return batch.selector.get("selector", {}), batch.selector.get("changes")


def _utc(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value


def new_request(original: JobRequest, changes: dict[str, Any], schema_version: str | None = None) -> JobRequest:
    """The original job's request with the re-process's changes; bulk, no per-job webhook.

    Without a new schema an extract keeps the original's, pinned to the version it ran
    (``schema_version``): a re-run with another engine or model compares like with like
    even after a newer version of the schema shipped."""
    task = changes.get("task") or original.task
    schema = changes.get("schema") if task == "extract" else None
    if task == "extract" and schema is None:
        schema = original.schema_
        if schema and "@" not in schema and schema_version:
            schema = f"{schema}@{schema_version}"
    engine = changes.get("engine") or original.engine
    if task == "extract" and engine == "text" and not changes.get("engine"):
        engine = "auto"  # an ocr job read by the text engine, now extracted: the model reads it
    return original.model_copy(update={
        "task": task, "schema_": schema, "engine": engine, "priority": "bulk", "webhook_url": None,
    })


def check_request(req: ReprocessRequest, settings: Settings) -> None:
    """Refuse at once what no selected job could run: an unknown schema, a bad task/engine
    pair, another model than the deployed one (``model_not_deployed``)."""
    from docproc.jobs.requests import resolve_request

    if req.model is not None and req.model != settings.model:
        raise ModelNotDeployed(
            f"this deployment serves {settings.model!r}, not {req.model!r}; re-process on a deployment "
            "that serves it", model=req.model, deployed=settings.model)
    if req.model is not None and req.engine == "text":
        raise InvalidRequest("the text engine runs no model: leave out the model, or choose a model engine",
                             model=req.model, engine=req.engine)
    changes = req.changes()
    if changes["task"] is not None:
        resolve_request(changes["task"], changes["schema"], changes["engine"] or "auto", settings)


# ---------------------------------------------------------------------------
# the selection
# ---------------------------------------------------------------------------


def _selected(svc: BatchServices, tenant: str, selector: Selector, cursor: str | None,
              size: int) -> Iterator[tuple[list[Job], str | None, bool]]:
    """(matching jobs, cursor after them, last?) pages of the tenant's selected jobs."""
    if selector.batch_id is not None:
        svc.batches.get(tenant, selector.batch_id)  # another tenant's batch: NotFound
        after = int(cursor) if cursor else -1
        while True:
            rows = svc.batches.job_page(selector.batch_id, after=after, limit=size)
            jobs = []
            for _, job_id in rows:
                try:
                    job = svc.store.load(job_id)
                except NotFound:
                    continue
                if job.tenant == tenant and selector.matches(job):
                    jobs.append(job)
            after = rows[-1][0] if rows else after
            yield jobs, str(after), len(rows) < size
            if len(rows) < size:
                return
    while True:
        page, cursor = svc.store.list(tenant, state=selector.state, created_from=selector.since,
                                      created_to=selector.until, cursor=cursor, limit=min(size, MAX_LIST_LIMIT))
        yield [job for job in page if selector.matches(job)], cursor, cursor is None
        if cursor is None:
            return


def count_selected(svc: BatchServices, tenant: str, selector: Selector) -> int:
    """How many documents a re-process with ``selector`` would run (the dry run)."""
    if selector.until is None:
        selector = selector.model_copy(update={"until": datetime.now(UTC)})
    return sum(len(jobs) for jobs, _, _ in _selected(svc, tenant, selector, None, svc.settings.batch_chunk_size))


def selection_chunks(svc: BatchServices, batch: Batch, cursor: str | None, index: int) -> Iterator[Chunk]:
    """The expand task's chunks of a re-process: the selected original jobs, in order."""
    selector = Selector.model_validate(batch.selector["selector"])
    for jobs, next_cursor, last in _selected(svc, batch.tenant, selector, cursor, svc.settings.batch_chunk_size):
        items = [Item(index=index + i, original=job) for i, job in enumerate(jobs)]
        index += len(items)
        yield items, next_cursor, last


def reprocess_job(svc: BatchServices, batch: Batch, index: int, original: Job) -> Job | None:
    """The new job of one selected document: its stored input, the new request, linked
    ``reprocess_of`` the original; idempotent per (batch, index)."""
    from docproc.jobs.requests import resolve_request

    request = new_request(original.request, batch.selector["changes"], original.schema_version)
    try:
        resolve_request(request.task, request.schema_, request.engine, svc.settings)
    except DocprocError as exc:
        reject_or_raise(svc, batch, index, original.id, exc)
        return None
    return create_job(svc, batch, index, request, input_key=original.input_key, input_sha256=original.input_sha256,
                      size_bytes=original.size_bytes, filename=original.filename, media_type=original.media_type,
                      reprocess_of=original.id)


def submit_reprocess(svc: BatchServices, tenant: str, req: ReprocessRequest) -> tuple[Batch | None, int | None]:
    """Check the request; a dry run returns (None, how many), else (the new re-process batch,
    None) whose selection the ``bulk`` expand task walks."""
    from docproc.delivery.webhooks import check_webhook
    from docproc.submission.batches import start_expansion

    check_request(req, svc.settings)
    check_webhook(req.webhook_url, tenant, svc.settings)
    if req.selector.batch_id is not None:
        svc.batches.get(tenant, req.selector.batch_id)  # 404 now, not in the task
    if req.dry_run:
        return None, count_selected(svc, tenant, req.selector)
    now = datetime.now(UTC)
    until = min(_utc(req.selector.until), now) if req.selector.until is not None else now
    selector = req.selector.model_copy(update={"until": until})  # the jobs this makes are never selected
    changes = req.changes()
    schema = changes["schema"] if changes["task"] == "extract" else None
    template = JobRequest(task=changes["task"] or "ocr", schema=schema, engine=changes["engine"] or "auto")
    batch = new_batch(tenant, source="jobs", request=template, webhook_url=req.webhook_url, kind="reprocess",
                      selector={"selector": selector.model_dump(mode="json", by_alias=True), "changes": changes},
                      model=req.model)  # only a model the client named: whether one runs, each job records
    svc.batches.create(batch)
    start_expansion(svc, batch)
    logger.info("reprocess %s created (%s)", batch.id, changes, extra={"batch_id": batch.id, "tenant": tenant})
    return batch, None


__all__ = ["ReprocessRequest", "Selector", "newest_version", "submit_reprocess", "count_selected"]
