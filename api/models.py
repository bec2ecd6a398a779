"""The API's request and response bodies (what the OpenAPI document shows)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from docproc.base.timestamps import UtcTime
from docproc.jobs.results import ErrorInfo, ResultWarning
from docproc.jobs.schemas import ExtractionSchema
from docproc.jobs.store import TERMINAL, Job, JobRequest, JobState, PageStatus


class JobSubmission(JobRequest):
    """``POST /v1/jobs`` as JSON: a document already in S3 plus the job's fields.

    Unknown fields are refused (422). For an upload, send ``multipart/form-data``
    with the document in ``file`` and these fields (``metadata`` as a JSON string).
    """

    source_uri: str = Field(
        description="s3://bucket/key of the document; the bucket must be on the service's allow-list."
    )


class Progress(BaseModel):
    total: int | None = Field(description="Pages selected for processing (known once intake ran).")
    succeeded: int
    failed: int


class Timings(BaseModel):
    queued_ms: float | None = Field(description="From submission to the start of intake.")
    running_ms: float | None = Field(description="From the start of intake to the end (or to now).")
    total_ms: float | None = Field(description="From submission to the end (or to now).")


class Links(BaseModel):
    self: str
    result: str | None = None


class JobSummary(BaseModel):
    """A job as listed."""

    id: str
    state: JobState
    task: str
    schema_name: str | None = Field(None, alias="schema")
    filename: str | None
    page_count: int | None
    created_at: UtcTime | None
    finished_at: UtcTime | None
    error: ErrorInfo | None
    metadata: dict[str, Any]

    model_config = ConfigDict(validate_by_name=True, validate_by_alias=True, serialize_by_alias=True)


class JobView(JobSummary):
    """A job in full: request, input, progress, per-page status, timings, outcome."""

    request: JobRequest
    input: dict[str, Any] = Field(description="sha256, size_bytes, media_type of the stored document.")
    progress: Progress
    pages: list[PageStatus]
    started_at: UtcTime | None
    timings: Timings
    schema_version: str | None
    batch_id: str | None = Field(None, description="The batch or re-process this job belongs to.")
    reprocess_of: str | None = Field(None, description="The job whose stored input this re-process job read again.")
    model: str | None
    waiting: str | None = Field(None, description="Why the job is not progressing, when docproc knows: e.g. "
                                "its model pages wait on the gpu queue and no model worker is online.")
    warnings: list[ResultWarning] = Field(default_factory=list, description="The document's warnings (repaired: "
                                          "a damaged PDF MuPDF repaired; pages: those that lost content).")
    links: Links


class JobList(BaseModel):
    jobs: list[JobSummary]
    next_cursor: str | None = Field(description="Pass as ?cursor= for the next page; null on the last page.")


class Version(BaseModel):
    """One version of a document: the first job on it, or a job that re-processed it."""

    job_id: str
    state: JobState
    task: str
    schema_name: str | None = Field(None, alias="schema", description="The schema the job asked for.")
    schema_version: str | None = Field(description="The version of it the job ran (extract).")
    engine: str
    model: str | None
    reprocess_of: str | None = Field(description="The job it re-processed (null for the first).")
    batch_id: str | None = Field(description="The batch or re-process it belongs to.")
    created_at: UtcTime
    finished_at: UtcTime | None
    result: str | None = Field(description="Its result, when it has one.")

    model_config = ConfigDict(validate_by_name=True, validate_by_alias=True, serialize_by_alias=True)


class VersionList(BaseModel):
    input_sha256: str = Field(description="The stored document every version read.")
    versions: list[Version] = Field(description="Oldest first.")


class SchemaSummary(BaseModel):
    name: str
    version: str
    title: str
    description: str


class SchemaView(SchemaSummary):
    key: str = Field(description="name@version")
    prompt_hints: list[str]
    json_schema: dict[str, Any] = Field(description="The JSON Schema the extracted fields follow.")


class SchemaList(BaseModel):
    schemas: list[SchemaSummary]


class ModelWorker(BaseModel):
    """A model worker serving the gpu queue (its heartbeat in Redis is alive)."""

    node: str
    model: str
    pid: int
    since: float = Field(description="Unix time it came online.")
    until: float = Field(description="Unix time its last heartbeat expires.")


class Health(BaseModel):
    status: str
    checks: dict[str, str] = Field(default_factory=dict)


class Readiness(Health):
    """``/readyz``: the checks, and the model workers the API sees (they do not make it unready)."""

    model_workers: list[ModelWorker] = Field(
        default_factory=list, description="The model workers online (their heartbeats in Redis are alive). None: "
        "work that needs the model is refused with 503 engine_unavailable and intake fails model pages with "
        "engine_unavailable.")


def _ms(start: datetime | None, end: datetime | None) -> float | None:
    if start is None or end is None:
        return None
    return round((end - start).total_seconds() * 1000.0, 1)


def job_links(job: Job) -> Links:
    base = f"/v1/jobs/{job.id}"
    return Links(self=base, result=f"{base}/result" if job.result_key else None)


def job_summary(job: Job) -> JobSummary:
    return JobSummary(
        id=job.id,
        state=job.state,
        task=job.request.task,
        schema_name=job.request.schema_,
        filename=job.filename,
        page_count=job.page_count,
        created_at=job.created_at,
        finished_at=job.finished_at,
        error=job.error,
        metadata=job.request.metadata,
    )


def version_list(jobs: list[Job]) -> VersionList:
    return VersionList(input_sha256=jobs[0].input_sha256, versions=[
        Version(job_id=job.id, state=job.state, task=job.request.task, schema_name=job.request.schema_,
                schema_version=job.schema_version, engine=job.request.engine, model=job.model,
                reprocess_of=job.reprocess_of, batch_id=job.batch_id, created_at=job.created_at,
                finished_at=job.finished_at, result=job_links(job).result)
        for job in jobs
    ])


def job_view(job: Job, pages: list[PageStatus], now: datetime, waiting: str | None = None) -> JobView:
    end = job.finished_at if job.state in TERMINAL else now
    return JobView(
        **job_summary(job).model_dump(by_alias=False),
        request=job.request,
        input={"sha256": job.input_sha256, "size_bytes": job.size_bytes, "media_type": job.media_type},
        progress=Progress(
            total=len(job.pages) if job.pages else None, succeeded=job.pages_done, failed=job.pages_failed
        ),
        pages=pages,
        started_at=job.started_at,
        timings=Timings(
            queued_ms=_ms(job.created_at, job.started_at or (None if job.state in TERMINAL else now)),
            running_ms=_ms(job.started_at, end),
            total_ms=_ms(job.created_at, end),
        ),
        schema_version=job.schema_version,
        batch_id=job.batch_id,
        reprocess_of=job.reprocess_of,
        model=job.model,
        waiting=waiting,
        warnings=job.warnings,
        links=job_links(job),
    )


def schema_summary(schema: ExtractionSchema) -> SchemaSummary:
    return SchemaSummary(name=schema.name, version=schema.version, title=schema.title, description=schema.description)


def schema_view(schema: ExtractionSchema) -> SchemaView:
    return SchemaView(
        **schema_summary(schema).model_dump(),
        key=schema.key,
        prompt_hints=list(schema.prompt_hints),
        json_schema=schema.json_schema,
    )
