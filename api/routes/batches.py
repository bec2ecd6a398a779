"""``/v1/batches`` and ``/v1/reprocess``: many documents as one unit, and re-running stored ones.

Thin routes over :mod:`docproc.submission.batches` and :mod:`docproc.submission.reprocess`. Every route is
scoped to the caller's tenant: another tenant's batch id answers 404 like a missing one.

``POST /v1/batches`` as multipart streams: each ``file`` part is spooled (memory up to
1 MiB, disk beyond), and its job created and enqueued as soon as the part ends, so a
request holds one document at a time. The form fields (task, schema, engine, pages,
metadata, webhook_url) must come before the first file. A document refused at intake
(or over ``max_file_bytes``) is a per-file rejection in the batch; the others go on.
As JSON (``source_uris`` or ``source_prefix``) the batch is answered at once and its
jobs are made by the ``docproc.batch.expand`` task on the ``bulk`` queue.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from tempfile import SpooledTemporaryFile
from typing import Annotated, Any

from fastapi import APIRouter, Path, Query, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, Field, ValidationError, model_validator
from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header

from api.deps import Services, ServicesDep, TenantDep
from api.openapi import json_body
from api.problems import problem_responses
from api.uploads import (
    FILE_FIELD,
    MAX_FIELDS,
    SPOOL_BYTES,
    MultipartReader,
    body_chunks,
    content_type,
    declared_length,
    invalid_body,
    multipart_boundary,
    read_json,
    request_from_form,
    unsupported_content_type,
)
from docproc.base.errors import (
    DocprocError,
    FileTooLarge,
    InvalidRequest,
    NotFound,
    ServiceUnavailable,
)
from docproc.base.timestamps import UtcTime
from docproc.delivery.webhooks import check_webhook
from docproc.jobs.results import ErrorInfo
from docproc.jobs.store import JobRequest
from docproc.submission import batches, expansion, reprocess
from docproc.submission.batches import Batch, BatchCounts, BatchServices
from docproc.submission.reprocess import ReprocessRequest
from docproc.submission.reprocess_diff import DiffReport, diff_report
from docproc.submission.submit import parse_source_uri

router = APIRouter(tags=["batches"])

BatchId = Annotated[str, Path(description="The id returned by POST /v1/batches or /v1/reprocess.", max_length=64)]
COMMON_ERRORS = (401, 422, 429)


class BatchSubmission(JobRequest):
    """``POST /v1/batches`` as JSON: documents already in S3 and what to do with each."""

    source_uris: list[str] | None = Field(None, description="s3://bucket/key of each document (allow-listed buckets).")
    source_prefix: str | None = Field(None, description="s3://bucket/prefix/: every object under it.")

    @model_validator(mode="after")
    def _one_source(self) -> BatchSubmission:
        if (self.source_uris is None) == (self.source_prefix is None):
            raise ValueError("give exactly one of source_uris and source_prefix")
        if self.source_uris is not None and not self.source_uris:
            raise ValueError("source_uris is empty")
        return self


class BatchLinks(BaseModel):
    self: str
    results: str
    diff: str | None = None


class BatchJob(BaseModel):
    index: int
    job_id: str


class BatchView(BaseModel):
    """A batch: what it runs, its counts by state and a page of its job ids."""

    id: str
    kind: str
    source: str
    task: str
    schema_name: str | None = Field(None, alias="schema")
    selector: dict[str, Any] = Field(description="A prefix batch: its source_prefix; a re-process: its selector.")
    changes: dict[str, Any] | None = Field(None, description="A re-process: the task, schema and engine it runs "
                                           "instead (null: each job's own).")
    model: str | None = Field(description="A re-process: the model it asked for (null when it named none; "
                              "each job records the model that ran it).")
    created_at: UtcTime
    state: str
    progress: float = Field(description="Ended jobs / jobs (1.0 once completed).")
    counts: BatchCounts
    jobs: list[BatchJob]
    next_cursor: str | None = Field(description="Pass as ?cursor= for the next page of job ids; null at the end.")
    rejections: list[dict[str, Any]] = Field(description="Documents refused at intake (up to 100): index, source, "
                                             "code, message.")
    links: BatchLinks


class DryRun(BaseModel):
    dry_run: bool = True
    documents: int = Field(description="How many documents the re-process would run.")


def _svc(services: Services) -> BatchServices:
    return BatchServices(settings=services.settings, redis=services.redis, store=services.store,
                         storage=services.storage, celery=services.celery)


def _view(svc: BatchServices, batch: Batch, *, cursor: str | None = None, limit: int = 100) -> BatchView:
    try:
        after = int(cursor) if cursor else -1
    except ValueError:
        raise InvalidRequest("invalid cursor") from None
    rows = svc.batches.job_page(batch.id, after=after, limit=limit + 1)
    counts = svc.batches.counts(batch.id)
    more = len(rows) > limit
    rows = rows[:limit]
    base = f"/v1/{'reprocess' if batch.kind == 'reprocess' else 'batches'}/{batch.id}"
    selector, changes = reprocess.split_selector(batch)
    return BatchView(
        id=batch.id, kind=batch.kind, source=batch.source, task=batch.request.task, schema=batch.request.schema_,
        selector=selector, changes=changes, model=batch.model, created_at=batch.created_at, state=counts.state,
        progress=1.0 if counts.state == "completed" else (counts.ended / counts.total if counts.total else 0.0),
        counts=counts, jobs=[BatchJob(index=i, job_id=j) for i, j in rows],
        next_cursor=str(rows[-1][0]) if more else None, rejections=svc.batches.rejections(batch.id),
        links=BatchLinks(self=base, results=f"/v1/batches/{batch.id}/results",
                    diff=f"/v1/reprocess/{batch.id}/diff" if batch.kind == "reprocess" else None),
    )


# ---------------------------------------------------------------------------
# multipart: many file parts, each handled as it ends
# ---------------------------------------------------------------------------


class _BatchReader(MultipartReader):
    """python-multipart callbacks for many ``file`` parts: fields first, then files; each
    finished file is queued in ``done`` as (spooled file, filename, error or None)."""

    def __init__(self, max_file_bytes: int, max_files: int) -> None:
        super().__init__(max_file_bytes)
        self.file.close()
        self.max_files = max_files
        self.files = 0
        self.done: list[tuple[SpooledTemporaryFile, str | None, DocprocError | None]] = []
        self._too_large = False

    def on_headers_finished(self) -> None:
        _, options = parse_options_header(self._disposition)
        if b"name" not in options:
            raise InvalidRequest("a multipart part has no name (Content-Disposition)")
        self._name = options[b"name"].decode("utf-8", "replace")
        self._is_file = b"filename" in options or self._name == FILE_FIELD
        if not self._is_file:
            if self.files:
                raise InvalidRequest(f"send the form field {self._name!r} before the first file")
            if self._name in self.fields:
                raise InvalidRequest(f"the form field {self._name!r} is given twice")
            if len(self.fields) >= MAX_FIELDS:
                raise InvalidRequest(f"too many form fields (at most {MAX_FIELDS})")
            return
        if self._name != FILE_FIELD:
            raise InvalidRequest(f"send each document in a form field {FILE_FIELD!r}, not {self._name!r}")
        self.files += 1
        if self.files > self.max_files:
            raise InvalidRequest(f"too many documents in one request (at most {self.max_files})",
                                 limit=self.max_files)
        raw = options.get(b"filename")
        self.filename = raw.decode("utf-8", "replace") if raw else None
        self.file = SpooledTemporaryFile(max_size=SPOOL_BYTES)
        self.size = 0
        self._too_large = False

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        if not self._is_file:
            return super().on_part_data(data, start, end)
        if self._too_large:
            return None
        self.size += end - start
        if self.size > self.max_file_bytes:  # this document is refused; the rest of the part is skipped
            self._too_large = True
            self.file.close()
            return None
        self.file.write(data[start:end])
        return None

    def on_part_end(self) -> None:
        if not self._is_file:
            return super().on_part_end()
        error = FileTooLarge(f"the document is larger than the limit of {self.max_file_bytes} bytes",
                             limit=self.max_file_bytes) if self._too_large else None
        self.done.append((self.file, self.filename, error))
        return None


def _add_upload(svc: BatchServices, batch: Batch, index: int, file: SpooledTemporaryFile, filename: str | None,
                error: DocprocError | None) -> None:
    """One finished file part: its job created and enqueued, or its rejection recorded."""
    svc.batches.upload_progressed(batch.id)
    try:
        if error is not None:
            svc.batches.reject(batch.id, index, filename, error)
            return
        file.seek(0)
        data = file.read()
    finally:
        file.close()
    job = batches.add_document(svc, batch, index, data, filename)
    if job is None:
        return
    try:
        batches.enqueue_jobs(svc, batch, [(index, job)])
    except Exception as exc:  # broker down: the job must not sit queued forever (as POST /v1/jobs)
        message = "the job could not be queued (broker unreachable); submit the document again"
        svc.store.finish(job.id, "failed", error=ErrorInfo(code="service_unavailable", message=message))
        raise ServiceUnavailable(message, job_id=job.id) from exc


async def _stream_upload(request: Request, svc: BatchServices, tenant: str) -> Batch:
    settings = svc.settings
    boundary = multipart_boundary(request)
    declared_length(request)
    reader = _BatchReader(settings.max_file_bytes, settings.batch_max_files)
    parser = MultipartParser(boundary, reader.callbacks())
    batch: Batch | None = None
    index = 0

    async def drain() -> None:
        nonlocal batch, index
        while reader.done:
            file, filename, error = reader.done.pop(0)
            if batch is None:
                batch = await run_in_threadpool(_create_upload_batch, svc, tenant, reader.fields)
            await run_in_threadpool(_add_upload, svc, batch, index, file, filename, error)
            index += 1

    try:
        async for chunk in body_chunks(request, settings.request_body_timeout_s):
            parser.write(chunk)
            await drain()
        parser.finalize()
        await drain()
        if not reader.ended:
            raise InvalidRequest("the multipart body ended before its closing boundary")
        if batch is None:
            raise InvalidRequest(f"no documents: send them in multipart form fields named {FILE_FIELD!r}")
    except FormParserError as exc:
        _close(reader)
        if batch is not None:
            batches.fail_listing(svc, batch.id, InvalidRequest("the upload was cut short"))
        raise InvalidRequest(f"the multipart body is malformed: {exc}") from None
    except Exception as exc:  # a client that went away, a refused request: the listing ends here
        _close(reader)
        if batch is not None:
            error = exc if isinstance(exc, DocprocError) else InvalidRequest("the upload was cut short")
            await run_in_threadpool(batches.fail_listing, svc, batch.id, error)
        raise
    await run_in_threadpool(batches.finish_listing, svc, batch)
    return batch


def _close(reader: _BatchReader) -> None:
    for file, _, _ in reader.done:
        file.close()
    reader.file.close()


def _create_upload_batch(svc: BatchServices, tenant: str, fields: dict[str, str]) -> Batch:
    values = dict(fields)
    webhook_url = values.pop("webhook_url", None)
    values.pop("priority", None)
    try:
        job_request = request_from_form(values)
        if webhook_url is not None:
            JobRequest(webhook_url=webhook_url)  # a job's limits on the field (its length); the URL: _create_batch
    except ValidationError as exc:
        raise invalid_body(exc) from None
    return _create_batch(svc, tenant, job_request, webhook_url, source="upload")


def _create_batch(svc: BatchServices, tenant: str, job_request: JobRequest, webhook_url: str | None, *,
                  source: batches.BatchSource, selector: dict[str, Any] | None = None,
                  sources: list[str] | None = None) -> Batch:
    from docproc.jobs.requests import resolve_request

    resolve_request(job_request.task, job_request.schema_, job_request.engine, svc.settings)
    check_webhook(webhook_url, tenant, svc.settings)
    batch = batches.new_batch(tenant, source=source, request=job_request, webhook_url=webhook_url, selector=selector)
    svc.batches.create(batch, sources)
    return batch


async def _json_batch(request: Request, svc: BatchServices, tenant: str) -> Batch:
    body = await read_json(request, timeout_s=svc.settings.request_body_timeout_s,
                           max_bytes=svc.settings.batch_json_max_bytes)
    try:
        submission = BatchSubmission.model_validate(body)
    except ValidationError as exc:
        raise invalid_body(exc) from None
    if submission.source_uris is not None and len(submission.source_uris) > svc.settings.batch_max_files * 100:
        raise InvalidRequest("too many source_uris; use a source_prefix", limit=svc.settings.batch_max_files * 100)
    for i, uri in enumerate(submission.source_uris or []):
        try:
            parse_source_uri(uri, svc.settings)
        except InvalidRequest as exc:
            raise InvalidRequest(f"source_uris[{i}]: {exc.message}", index=i) from None
    selector = {}
    if submission.source_prefix is not None:
        batches.parse_source_prefix(submission.source_prefix, svc.settings)
        selector = {"source_prefix": submission.source_prefix}
    job_request = JobRequest.model_validate(
        submission.model_dump(by_alias=True, exclude={"source_uris", "source_prefix", "webhook_url"}))

    def create() -> Batch:
        if submission.source_prefix is not None:  # unreadable (no such bucket, denied): 422 now, not in the task
            expansion.list_prefix(submission.source_prefix, svc.settings, start_after=None, max_keys=1)
        batch = _create_batch(svc, tenant, job_request, submission.webhook_url,
                              source="uris" if submission.source_uris else "prefix", selector=selector,
                              sources=submission.source_uris)
        batches.start_expansion(svc, batch)
        return batch

    return await run_in_threadpool(create)


_MULTIPART_SCHEMA = {
    "type": "object",
    "required": ["file"],
    "properties": {
        **JobRequest.model_json_schema(by_alias=True)["properties"],
        "metadata": {"type": "string", "description": "A JSON object, echoed back on every job (<= 16 KiB)."},
        "webhook_url": {"type": "string", "description": "Gets batch.completed (jobs of a batch send no job events)."},
        "file": {"type": "array", "items": {"type": "string", "format": "binary"},
                 "description": "The documents, one part each, after the other fields."},
    },
}


@router.post(
    "/v1/batches",
    status_code=202,
    response_model=BatchView,
    response_model_by_alias=True,
    summary="Submit many documents as one batch",
    description=(
        "multipart/form-data with many `file` parts (fields first; each document's job is created as its "
        "part arrives), or JSON with `source_uris` (a list of s3:// URIs) or `source_prefix` (every object "
        "under an s3:// prefix). One task/schema/webhook for all; jobs run at priority `bulk`. 202 with the "
        "batch; `batch.completed` is sent to `webhook_url` once every job ended."
    ),
    openapi_extra=json_body(BatchSubmission, multipart=_MULTIPART_SCHEMA),
    responses=problem_responses(400, *COMMON_ERRORS, 408, 413, 415, 503),
)
async def submit_batch(request: Request, response: Response, tenant: TenantDep, services: ServicesDep) -> BatchView:
    svc = _svc(services)
    kind = content_type(request)
    if kind == "multipart/form-data":
        batch = await _stream_upload(request, svc, tenant)
    elif kind == "application/json":
        batch = await _json_batch(request, svc, tenant)
    else:
        raise unsupported_content_type(
            request, "documents as multipart/form-data (fields 'file') or JSON with source_uris or source_prefix")
    response.headers["Location"] = f"/v1/batches/{batch.id}"
    return await run_in_threadpool(_view, svc, batch)


Cursor = Annotated[str | None, Query(description="next_cursor of the previous page.", max_length=32)]
Limit = Annotated[int, Query(ge=1, le=batches.MAX_PAGE, description="Job ids per page.")]


@router.get("/v1/batches/{batch_id}", response_model=BatchView, response_model_by_alias=True,
            summary="A batch's counts, progress and job ids", responses=problem_responses(*COMMON_ERRORS, 404))
def get_batch(batch_id: BatchId, tenant: TenantDep, services: ServicesDep, cursor: Cursor = None,
              limit: Limit = 100) -> BatchView:
    svc = _svc(services)
    return _view(svc, svc.batches.get(tenant, batch_id), cursor=cursor, limit=limit)


def _result_lines(svc: BatchServices, batch: Batch) -> Iterator[bytes]:
    """One JSON line per job, in batch order, each result read from storage as it is sent."""
    for index, job_id in svc.batches.job_ids(batch.id):
        try:
            job = svc.store.load(job_id)
        except NotFound:  # purged with the batch (docproc.housekeeping.retention) while this export ran
            gone = {"code": "not_found", "message": "the job's record is gone (past its retention)"}
            yield json.dumps({"index": index, "job_id": job_id, "state": None, "error": gone,
                              "result": None}, separators=(",", ":")).encode() + b"\n"
            continue
        head = {"index": index, "job_id": job.id, "filename": job.filename, "state": job.state,
                "reprocess_of": job.reprocess_of, "error": job.error.model_dump() if job.error else None}
        prefix = json.dumps(head, separators=(",", ":"))[:-1]
        result = svc.storage.get(job.result_key) if job.result_key else b"null"
        yield prefix.encode() + b',"result":' + result + b"}\n"


@router.get(
    "/v1/batches/{batch_id}/results",
    summary="Every document result of a batch, as JSON Lines",
    description="Streamed, one line per job in batch order: index, job_id, filename, state, error, result "
                "(the document JSON, or null while the job runs or when it ended without one).",
    responses={200: {"content": {"application/x-ndjson": {}}}, **problem_responses(*COMMON_ERRORS, 404)},
)
def batch_results(batch_id: BatchId, tenant: TenantDep, services: ServicesDep) -> StreamingResponse:
    svc = _svc(services)
    batch = svc.batches.get(tenant, batch_id)
    return StreamingResponse(_result_lines(svc, batch), media_type="application/x-ndjson")


# ---------------------------------------------------------------------------
# re-processing
# ---------------------------------------------------------------------------


@router.post(
    "/v1/reprocess",
    status_code=202,
    response_model=BatchView | DryRun,
    response_model_by_alias=True,
    summary="Re-process stored documents with a new schema version, task or engine",
    description=(
        "Select stored jobs (a batch, a filter on schema/state/since/until, or a stored-input key prefix) and "
        "run them again: new jobs linked `reprocess_of` the originals read the inputs already stored. Old "
        "results stay untouched. `model` must be the deployed model (else 422 `model_not_deployed`). "
        "With `dry_run`: 200 with how many documents would run."
    ),
    openapi_extra=json_body(ReprocessRequest),
    responses={200: {"model": DryRun, "description": "Dry run."},
               **problem_responses(*COMMON_ERRORS, 404, 408, 415, 503)},
)
async def submit_reprocess(request: Request, response: Response, tenant: TenantDep,
                           services: ServicesDep) -> BatchView | DryRun:
    body = await read_json(request, timeout_s=services.settings.request_body_timeout_s)
    try:
        req = ReprocessRequest.model_validate(body)
    except ValidationError as exc:
        raise invalid_body(exc) from None
    svc = _svc(services)
    batch, count = await run_in_threadpool(reprocess.submit_reprocess, svc, tenant, req)
    if batch is None:
        response.status_code = 200
        return DryRun(documents=count or 0)
    response.headers["Location"] = f"/v1/reprocess/{batch.id}"
    return await run_in_threadpool(_view, svc, batch)


@router.get("/v1/reprocess/{batch_id}", response_model=BatchView, response_model_by_alias=True,
            summary="A re-process's counts, progress and job ids", responses=problem_responses(*COMMON_ERRORS, 404))
def get_reprocess(batch_id: BatchId, tenant: TenantDep, services: ServicesDep, cursor: Cursor = None,
                  limit: Limit = 100) -> BatchView:
    svc = _svc(services)
    return _view(svc, svc.batches.get(tenant, batch_id, kind="reprocess"), cursor=cursor, limit=limit)


@router.get(
    "/v1/reprocess/{batch_id}/diff",
    response_model=DiffReport,
    summary="Which fields changed value between the original and the re-processed results",
    description=(
        "Kept as the re-processed jobs end (each is compared with its original once), so the report costs "
        "the same for any size of re-process: counts per field, and `limit` changes per field (in the "
        "order the jobs ended) with their old and new values."
    ),
    responses=problem_responses(*COMMON_ERRORS, 404),
)
def reprocess_diff(
    batch_id: BatchId, tenant: TenantDep, services: ServicesDep,
    limit: Annotated[int, Query(ge=0, le=10_000, description="Changes listed per field (all are counted).")] = 100,
) -> DiffReport:
    svc = _svc(services)
    return diff_report(svc, svc.batches.get(tenant, batch_id, kind="reprocess"), limit=limit)


__all__ = ["router"]
