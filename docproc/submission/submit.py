"""Submitting a job: check the input at once, store it, create the job, enqueue its intake.

The API's ``POST /v1/jobs`` is a thin wrapper around :func:`submit_job`; the CLI and
bulk re-processing call it too. Order of work, so a bad request costs nothing:

0. a ``webhook_url`` passes the SSRF guard and the tenant has a signing secret
   (:func:`docproc.delivery.webhooks.check_webhook`: ``webhook_url_refused``, ``webhook_not_configured``);
1. the request (task, engine, schema) is checked (:func:`docproc.jobs.requests.resolve_request`);
2. the document is opened the way the worker will open it
   (:func:`docproc.jobs.inputs.open_document`): the typed 4xx (``unsupported_type``,
   ``encrypted_document``, ``too_many_pages`` ...) comes back at once;
3. the page selection is checked against the page count (``invalid_page_range``); work
   that certainly needs the model is refused with 503 ``engine_unavailable`` when no model
   worker is online (:mod:`docproc.base.model_workers`);
4. the bytes are stored once, content-addressed (``Storage.put_input``);
5. the job is created, with the task id its intake will be sent under (recorded for
   cancellation); an ``Idempotency-Key`` seen before with the same fingerprint
   returns that job instead, with another fingerprint ``IdempotencyConflict``;
6. a new job's ``docproc.intake`` task is sent by name to ``intake`` (``bulk`` for
   priority=bulk) under that id.

No FastAPI here, and no torch: the worker modules imported are the torch-free ones.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlparse

from docproc.base import logs, metrics, model_workers
from docproc.base.errors import (
    FileTooLarge,
    InvalidRequest,
    ServiceUnavailable,
    StorageError,
)
from docproc.base.settings import Settings
from docproc.delivery.webhooks import check_webhook
from docproc.jobs.requests import parse_page_range, resolve_request
from docproc.jobs.results import ErrorInfo
from docproc.jobs.store import Job, JobRequest, JobStore

if TYPE_CHECKING:
    from celery import Celery

    from docproc.base.storage import Storage

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Submitted:
    """The job a submission produced; ``created`` is False for an idempotent replay."""

    job: Job
    created: bool


def request_fingerprint(input_sha256: str, request: JobRequest) -> str:
    """sha256 of the input's sha256 and the request fields as canonical JSON.

    Two submissions with the same Idempotency-Key are "the same request" exactly
    when this is equal.
    """
    fields = request.model_dump(mode="json", by_alias=True)
    canonical = json.dumps(fields, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(f"{input_sha256}\n{canonical}".encode()).hexdigest()


@dataclass(frozen=True)
class CheckedInput:
    """What the API-side intake check learned about a document."""

    sha256: str
    media_type: str
    page_count: int


def check_input(data: bytes, request: JobRequest, *, filename: str | None, settings: Settings) -> CheckedInput:
    """Run the worker's request and intake checks on ``data`` now; raises their typed errors."""
    from docproc.jobs.inputs import open_document

    resolve_request(request.task, request.schema_, request.engine, settings)
    with open_document(data, filename=filename, settings=settings) as doc:
        parse_page_range(request.pages, doc.page_count)  # invalid_page_range now, not at the worker
        return CheckedInput(sha256=doc.sha256, media_type=str(doc.media_type), page_count=doc.page_count)


def enqueue_intake(celery: Celery, store: JobStore, job: Job, task_id: str | None = None) -> str:
    """Send ``docproc.intake(job.id)`` to the job's intake queue; records and returns the task id.
    ``task_id``: the id to send it under; one the job already lists (recorded when it was
    created) is not recorded again."""
    from docproc.base.broker import INTAKE_TASK, intake_queue

    result = celery.send_task(INTAKE_TASK, args=[job.id], queue=intake_queue(job.request.priority), task_id=task_id)
    if result.id not in job.task_ids:
        store.add_task_ids(job.id, [result.id])
    return result.id


def submit_job(
    *,
    store: JobStore,
    storage: Storage,
    celery: Celery,
    settings: Settings,
    tenant: str,
    request: JobRequest,
    data: bytes,
    filename: str | None = None,
    idempotency_key: str | None = None,
) -> Submitted:
    """Check, store, create and enqueue one job (see the module docstring for the order).

    A job whose intake cannot be enqueued (broker down) is marked failed with
    ``service_unavailable`` and the error re-raised, so it never sits queued forever.
    """
    check_webhook(request.webhook_url, tenant, settings)  # SSRF guard + signing secret: 422 now, not at the end
    checked = check_input(data, request, filename=filename, settings=settings)
    if model_workers.needs_model(request.task, request.engine, checked.media_type):
        # no model worker online: 503 engine_unavailable now, not a job queued for hours
        model_workers.require_online(store.redis, settings.model_worker_heartbeat_s)
    key = storage.put_input(data)
    intake_id = str(uuid.uuid4())  # recorded with the job, so its sending adds no write
    job, created = store.create(
        tenant,
        request,
        input_key=key,
        input_sha256=checked.sha256,
        size_bytes=len(data),
        filename=filename,
        idempotency_key=idempotency_key,
        fingerprint=request_fingerprint(checked.sha256, request),
        media_type=checked.media_type,
        request_id=logs.request_id(),  # the API request's (api.middleware), for logs and webhooks
        task_ids=[intake_id],
    )
    if created:
        metrics.JOBS_SUBMITTED.labels(task=request.task, schema=metrics.schema_label(request.schema_),
                                      priority=request.priority).inc()
        log.info("job %s: submitted", job.id, extra={"job_id": job.id, "tenant": tenant})
        try:
            enqueue_intake(celery, store, job, task_id=intake_id)
        except Exception as exc:
            log.error("job %s: enqueue failed: %s", job.id, type(exc).__name__)
            message = "the job could not be queued (broker unreachable); submit it again with a new Idempotency-Key"
            if store.finish(job.id, "failed", error=ErrorInfo(code="service_unavailable", message=message)):
                metrics.count_job_finished(job, "failed")
            raise ServiceUnavailable(message, job_id=job.id) from exc
    return Submitted(job=job, created=created)  # as stored: not read back


# ---------------------------------------------------------------------------
# s3:// sources
# ---------------------------------------------------------------------------


def parse_source_uri(uri: str, settings: Settings) -> tuple[str, str]:
    """``s3://bucket/key`` -> ``(bucket, key)``; only buckets in ``settings.source_buckets``.

    Anything else (file://, http(s)://, a bucket not on the list) is an InvalidRequest:
    the service never reads a location a client picks freely.
    """
    parsed = urlparse(uri)
    if parsed.scheme != "s3":
        raise InvalidRequest(f"source_uri must be an s3:// URI, not {parsed.scheme or 'a bare path'!r}")
    bucket, key = parsed.netloc, unquote(parsed.path.lstrip("/"))
    if not bucket or not key or parsed.query or parsed.fragment:
        raise InvalidRequest("source_uri must look like s3://bucket/key")
    if bucket not in settings.source_buckets:
        raise InvalidRequest(f"bucket {bucket!r} is not an allowed source", bucket=bucket)
    return bucket, key


def read_source(uri: str, settings: Settings) -> tuple[bytes, str]:
    """The bytes of an allowed ``s3://`` source (at most ``max_file_bytes``) and its file name.

    A missing or unreadable object is an InvalidRequest (the client named it); an
    object over the limit is FileTooLarge, decided from its size before any byte is read.
    """
    bucket, key = parse_source_uri(uri, settings)
    client = s3_client(settings.s3_endpoint_url, settings.s3_region)
    limit = settings.max_file_bytes
    try:
        head = client.head_object(Bucket=bucket, Key=key)
        size = int(head["ContentLength"])
        if size > limit:
            raise FileTooLarge(f"the source is {size} bytes; the limit is {limit} bytes", size_bytes=size, limit=limit)
        if size == 0:
            return b"", key.rsplit("/", 1)[-1]
        body = client.get_object(Bucket=bucket, Key=key, Range=f"bytes=0-{limit}")["Body"]
        data = body.read(limit + 1)
    except (FileTooLarge, InvalidRequest):
        raise
    except Exception as exc:
        raise source_error(exc, uri) from exc
    if len(data) > limit:  # the object grew after the HEAD
        raise FileTooLarge(f"the source is larger than the limit of {limit} bytes", limit=limit)
    return data, key.rsplit("/", 1)[-1]


@functools.lru_cache(maxsize=8)
def s3_client(endpoint_url: str | None, region: str) -> Any:
    """One client per endpoint and region, made on first use and shared (boto3 clients are
    thread-safe); making one loads the S3 service model, too slow to repeat per request."""
    import boto3
    from botocore.config import Config

    config = Config(
        region_name=region,
        retries={"max_attempts": 3, "mode": "standard"},
        connect_timeout=5,
        read_timeout=60,
        s3={"addressing_style": "path"} if endpoint_url else {},
    )
    return boto3.session.Session().client("s3", endpoint_url=endpoint_url, config=config)


def source_error(exc: BaseException, uri: str) -> Exception:
    from botocore.exceptions import ClientError

    if isinstance(exc, ClientError):
        code = str(exc.response.get("Error", {}).get("Code", ""))
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0
        if code in ("NoSuchKey", "NoSuchBucket", "NotFound", "404") or status == 404:
            return InvalidRequest(f"source_uri {uri!r} does not exist", source_uri=uri)
        if code in ("AccessDenied", "403") or status == 403:
            return InvalidRequest(f"source_uri {uri!r} is not readable by the service", source_uri=uri)
        return StorageError(f"reading source_uri failed: S3 answered {code or status}", retryable=status >= 500)
    return StorageError(f"reading source_uri failed: {type(exc).__name__}")
