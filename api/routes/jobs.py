"""``/v1/jobs``: submit, inspect, list, cancel jobs and fetch their results.

Every route is scoped to the caller's tenant: another tenant's job id answers 404,
exactly like an id that never existed.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timezone
from typing import Annotated

from fastapi import APIRouter, Depends, Header, Path, Query, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import RedirectResponse
from pydantic import ValidationError

from api.deps import (
    CeleryDep,
    ServicesDep,
    SettingsDep,
    StorageDep,
    StoreDep,
    TenantDep,
)
from api.models import (
    JobList,
    JobSubmission,
    JobView,
    VersionList,
    job_summary,
    job_view,
    version_list,
)
from api.openapi import json_body
from api.problems import problem_responses
from api.uploads import (
    SPOOL_BYTES,
    content_type,
    invalid_body,
    read_json,
    read_multipart,
    request_from_form,
    unsupported_content_type,
)
from docproc.base import metrics, model_workers
from docproc.base.errors import NotFound, ResultNotReady
from docproc.base.settings import Settings
from docproc.base.storage import page_result_key
from docproc.jobs import lifecycle
from docproc.jobs.results import DocumentResult, PageResult
from docproc.jobs.store import TERMINAL, Job, JobRequest, JobState, JobStore
from docproc.submission.reprocess import newest_version
from docproc.submission.submit import Submitted, read_source, submit_job

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])

JobId = Annotated[str, Path(description="The job id returned by POST /v1/jobs.", max_length=64)]
IDEMPOTENCY_KEY_CHARS = 255
COMMON_ERRORS = (401, 422, 429)  # every route: key, parameters, rate

# The request body of POST /v1/jobs, documented by hand: the route reads it itself
# (streaming, size-limited), so FastAPI cannot derive it from a parameter. The form
# fields are JobRequest's, with metadata sent as a JSON string.
_MULTIPART_SCHEMA = {
    "type": "object",
    "required": ["file"],
    "properties": {
        "file": {"type": "string", "format": "binary", "description": "The document (PDF, PNG, JPEG, TIFF, WEBP)."},
        **JobRequest.model_json_schema(by_alias=True)["properties"],
        "metadata": {"type": "string", "description": "A JSON object, echoed back on the job (<= 16 KiB)."},
    },
    "additionalProperties": False,
}


class StoredJson:
    """A route's answer with a stored JSON object: its body, or with ``?redirect=true`` and
    S3 storage a 307 to a short-lived presigned URL of it."""

    def __init__(
        self,
        storage: StorageDep,
        settings: SettingsDep,
        redirect: Annotated[bool, Query(description="307 to a presigned S3 URL instead of the body.")] = False,
    ) -> None:
        self.storage = storage
        self.expires_s = settings.presign_expiry_s
        self.redirect = redirect

    def response(self, key: str, *, missing: Callable[[], Exception] | None = None) -> Response:
        """The object at ``key``; if it is not stored, ``missing()`` is raised (given) or NotFound.

        ``?redirect=true`` on storage that cannot presign (local disk) answers the body, with
        the header :data:`NOT_REDIRECTED` saying why it did not redirect."""
        headers = None
        try:
            if self.redirect:
                url = self.storage.presign(key, self.expires_s)
                if url is not None:
                    if missing is not None and not self.storage.exists(key):
                        raise NotFound(f"no stored object {key!r}")
                    return RedirectResponse(url, status_code=307)
                headers = {NOT_REDIRECTED: NOT_REDIRECTED_REASON}
            return Response(self.storage.get(key), media_type="application/json", headers=headers)
        except NotFound:
            if missing is None:
                raise
            raise missing() from None


StoredJsonDep = Annotated[StoredJson, Depends()]
NOT_REDIRECTED = "Docproc-Redirect"
NOT_REDIRECTED_REASON = "not-redirected; the storage is local and has no presigned URLs, so the body follows"
_BODY_HEADERS = {NOT_REDIRECTED: {"description": "Only with redirect=true on local storage: why the body "
                                  "came instead of a 307.", "schema": {"type": "string"}}}


async def _read_submission(request: Request, settings: Settings) -> tuple[JobRequest, bytes, str | None]:
    """The job fields, document bytes and file name of a multipart upload or a JSON source_uri."""
    kind = content_type(request)
    if kind == "multipart/form-data":
        upload = await read_multipart(request, max_file_bytes=settings.max_file_bytes,
                                      timeout_s=settings.request_body_timeout_s)
        try:
            try:
                job_request = request_from_form(upload.fields)
            except ValidationError as exc:
                raise invalid_body(exc) from None
            # a file within the spool is in memory: read it here, not through a thread-pool hop
            data = upload.read() if upload.size <= SPOOL_BYTES else await run_in_threadpool(upload.read)
            return job_request, data, upload.filename
        finally:
            upload.close()
    if kind == "application/json":
        body = await read_json(request, timeout_s=settings.request_body_timeout_s)
        try:
            submission = JobSubmission.model_validate(body)
        except ValidationError as exc:
            raise invalid_body(exc) from None
        job_request = JobRequest.model_validate(submission.model_dump(by_alias=True, exclude={"source_uri"}))
        data, filename = await run_in_threadpool(read_source, submission.source_uri, settings)
        return job_request, data, filename
    raise unsupported_content_type(
        request, "the document as multipart/form-data (field 'file') or JSON with an s3:// source_uri")


@router.post(
    "",
    status_code=202,
    response_model=JobView,
    summary="Submit a document",
    description=(
        "Upload a document (multipart/form-data, field `file`) or name one in S3 (JSON with "
        "`source_uri`). The document is checked at once: a bad one is refused with its typed "
        "4xx before any job exists. 202 with the new job and a `Location` header; with an "
        "`Idempotency-Key` that was used before for the same document and fields, 200 with "
        "that job; for different ones, 409 `idempotency_conflict`."
    ),
    openapi_extra=json_body(JobSubmission, multipart=_MULTIPART_SCHEMA),
    responses={
        200: {"description": "Idempotent replay: the job this Idempotency-Key created before.", "model": JobView},
        **problem_responses(400, *COMMON_ERRORS, 408, 409, 413, 415, 503),
    },
)
async def submit(
    request: Request,
    response: Response,
    tenant: TenantDep,
    settings: SettingsDep,
    store: StoreDep,
    storage: StorageDep,
    celery: CeleryDep,
    idempotency_key: Annotated[
        str | None,
        Header(max_length=IDEMPOTENCY_KEY_CHARS, description="Same key + same request: the same job, never a second one."),
    ] = None,
) -> JobView:
    job_request, data, filename = await _read_submission(request, settings)

    def work() -> tuple[Submitted, JobView]:
        submitted = submit_job(
            store=store,
            storage=storage,
            celery=celery,
            settings=settings,
            tenant=tenant,
            request=job_request,
            data=data,
            filename=filename,
            idempotency_key=idempotency_key,
        )
        return submitted, _view(store, submitted.job)

    submitted, view = await run_in_threadpool(work)
    response.status_code = 202 if submitted.created else 200
    response.headers["Location"] = f"/v1/jobs/{view.id}"
    return view


@router.get(
    "",
    response_model=JobList,
    summary="List jobs",
    description="The tenant's jobs, newest first, filtered; follow `next_cursor` for more.",
    responses=problem_responses(*COMMON_ERRORS),
)
def list_jobs(
    tenant: TenantDep,
    store: StoreDep,
    state: Annotated[JobState | None, Query(description="Only jobs in this state.")] = None,
    schema: Annotated[str | None, Query(description="Only jobs extracting with this schema name.")] = None,
    created_from: Annotated[datetime | None, Query(description="Created at or after (ISO 8601).")] = None,
    created_to: Annotated[datetime | None, Query(description="Created at or before (ISO 8601).")] = None,
    cursor: Annotated[str | None, Query(description="next_cursor of the previous page.", max_length=256)] = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
) -> JobList:
    jobs, next_cursor = store.list(
        tenant,
        state=state,
        schema=schema,
        created_from=created_from,
        created_to=created_to,
        cursor=cursor,
        limit=limit,
    )
    return JobList(jobs=[job_summary(job) for job in jobs], next_cursor=next_cursor)


@router.get(
    "/{job_id}",
    response_model=JobView,
    summary="A job's state and progress",
    responses=problem_responses(*COMMON_ERRORS, 404),
)
def get_job(job_id: JobId, tenant: TenantDep, store: StoreDep, settings: SettingsDep) -> JobView:
    job, pages = store.get_with_pages(tenant, job_id)  # one Redis round trip
    waiting = None
    if job.state not in TERMINAL and job.request.engine in ("auto", "internvl"):
        not_done = sum(p.state in ("queued", "running") for p in pages)
        waiting = model_workers.waiting_reason(store.redis, settings.model_worker_heartbeat_s, pages_not_done=not_done)
    return job_view(job, pages, datetime.now(timezone.utc), waiting)


@router.delete(
    "/{job_id}",
    response_model=JobView,
    summary="Cancel a job",
    description=(
        "A queued or running job becomes `canceled`; its queued tasks are revoked and running "
        "ones stop at their next check. A job that already ended is returned unchanged."
    ),
    responses=problem_responses(*COMMON_ERRORS, 404),
)
def cancel_job(
    job_id: JobId, tenant: TenantDep, store: StoreDep, celery: CeleryDep, services: ServicesDep
) -> JobView:
    job, canceled = store.cancel(tenant, job_id)
    if canceled:
        metrics.count_job_finished(job, "canceled")
        if job.task_ids:
            celery.control.revoke(job.task_ids)
        lifecycle.job_ended(job.id, services.lifecycle)
    return _view(store, job)


def _view(store: JobStore, job: Job) -> JobView:
    pages = store.pages(job.id) if job.pages else []  # no pages selected yet (queued): none to read
    return job_view(job, pages, datetime.now(timezone.utc))


@router.get(
    "/{job_id}/result",
    summary="A finished job's document result",
    description=(
        "The document JSON of a job that ended `succeeded`, `partial` or `failed` with a result. "
        "With `?redirect=true` and S3 storage: 307 to a short-lived presigned URL instead (local storage has "
        "none: the body, with a `Docproc-Redirect` header saying so). "
        "409 `result_not_ready` while the job runs. With `?schema=invoice@2`: the result of the document's "
        "newest version that ran that schema (this job or a re-process of it), 404 if none has one."
    ),
    responses={
        200: {"model": DocumentResult, "description": "The document result.", "headers": _BODY_HEADERS},
        307: {"description": "Redirect to a presigned URL of the result (redirect=true, S3 storage)."},
        **problem_responses(*COMMON_ERRORS, 404, 409),
    },
)
def get_result(
    job_id: JobId,
    tenant: TenantDep,
    store: StoreDep,
    stored: StoredJsonDep,
    schema: Annotated[str | None, Query(
        max_length=128, description='The result of this document\'s newest version that ran this schema ("invoice@2"; '
        '"invoice": any version): the job itself or one that re-processed it (GET /v1/jobs/{id}/versions).',
    )] = None,
) -> Response:
    if schema is not None:
        version = newest_version(store.versions(tenant, job_id), schema)
        if version is None:
            raise NotFound(f"no version of job {job_id} ran {schema} and has a result", schema=schema)
        return stored.response(version.result_key)
    job = store.get(tenant, job_id)
    if job.result_key is None:
        if job.state not in TERMINAL:
            raise ResultNotReady(f"job {job.id} is {job.state}; its result is not ready yet", state=job.state)
        raise NotFound(f"job {job.id} ended {job.state} without a result", state=job.state)
    return stored.response(job.result_key)


@router.get(
    "/{job_id}/versions",
    response_model=VersionList,
    summary="Every version of a job's document",
    description=(
        "The first job on this job's stored document and every job that re-processed it (POST /v1/reprocess), "
        "oldest first, each with the schema version, engine and model it ran and its result URL. "
        "Old results are never overwritten: each version keeps its own."
    ),
    responses=problem_responses(*COMMON_ERRORS, 404),
)
def get_versions(job_id: JobId, tenant: TenantDep, store: StoreDep) -> VersionList:
    return version_list(store.versions(tenant, job_id))


@router.get(
    "/{job_id}/pages/{page}",
    summary="One page's result",
    responses={
        200: {"model": PageResult, "description": "The page result.", "headers": _BODY_HEADERS},
        307: {"description": "Redirect to a presigned URL of the page result (redirect=true, S3 storage)."},
        **problem_responses(*COMMON_ERRORS, 404, 409),
    },
)
def get_page(
    job_id: JobId,
    page: Annotated[int, Path(ge=1, description="1-based page number in the document.")],
    tenant: TenantDep,
    store: StoreDep,
    stored: StoredJsonDep,
) -> Response:
    job = store.get(tenant, job_id)
    if job.pages and page not in job.pages:
        raise NotFound(f"page {page} is not part of job {job.id}", page=page)

    def missing() -> Exception:
        if job.state in TERMINAL:
            return NotFound(f"job {job.id} ended {job.state} without a result for page {page}", page=page)
        return ResultNotReady(f"page {page} of job {job.id} is not finished yet", page=page, state=job.state)

    return stored.response(page_result_key(job.id, page), missing=missing)


__all__ = ["router"]
