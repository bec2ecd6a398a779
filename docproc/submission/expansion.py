"""Expanding a batch: its documents listed chunk by chunk, their jobs made and enqueued.

A list of ``s3://`` URIs, an S3 prefix or a re-process's selection of stored jobs
(:mod:`docproc.submission.reprocess`) is walked by :func:`expand_batch`, run by the
``docproc.batch.expand`` task on the ``bulk`` queue: one chunk (``settings.batch_chunk_size``)
at a time, it creates and enqueues that chunk's jobs and saves its cursor
(:class:`docproc.submission.batches.BatchStore`), so memory stays flat however long the
listing is, and a redelivered task resumes where the last one left off. The jobs are made
with the batch's idempotency keys (:func:`docproc.submission.batches.create_job`), so a
re-run of a chunk makes none twice.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from docproc.base.errors import DocprocError, InvalidRequest
from docproc.base.settings import Settings
from docproc.jobs.store import Job
from docproc.submission.batches import (
    Batch,
    BatchServices,
    Chunk,
    Item,
    add_document,
    enqueue_jobs,
    finish_listing,
    parse_source_prefix,
    reject_or_raise,
)
from docproc.submission.reprocess import reprocess_job, selection_chunks
from docproc.submission.submit import read_source, s3_client, source_error

logger = logging.getLogger(__name__)


def _uri_chunks(svc: BatchServices, batch: Batch, cursor: str | None, index: int) -> Iterator[Chunk]:
    size = svc.settings.batch_chunk_size
    while True:
        uris = svc.batches.sources(batch.id, index, size)
        items = [Item(index=index + i, source=uri) for i, uri in enumerate(uris)]
        index += len(items)
        yield items, str(index), len(uris) < size


def list_prefix(uri: str, settings: Settings, *, start_after: str | None,
                max_keys: int) -> tuple[str, list[str], bool]:
    """One page of the object keys under an ``s3://`` prefix after ``start_after`` (a key):
    (bucket, keys, more to come?). An unreadable prefix (no such bucket, access denied) is an
    InvalidRequest, a transient fault a StorageError, as for a single source_uri."""
    bucket, prefix = parse_source_prefix(uri, settings)
    params: dict[str, Any] = {"Bucket": bucket, "Prefix": prefix, "MaxKeys": max_keys}
    if start_after:
        params["StartAfter"] = start_after
    try:
        page = s3_client(settings.s3_endpoint_url, settings.s3_region).list_objects_v2(**params)
    except Exception as exc:
        raise source_error(exc, uri) from exc
    return bucket, [obj["Key"] for obj in page.get("Contents", [])], bool(page.get("IsTruncated"))


def _prefix_chunks(svc: BatchServices, batch: Batch, cursor: str | None, index: int) -> Iterator[Chunk]:
    """The objects under the prefix, listed one page (``batch_chunk_size`` keys) at a time;
    the cursor is the last key listed (S3's StartAfter)."""
    size = min(svc.settings.batch_chunk_size, 1000)
    while True:
        bucket, keys, more = list_prefix(batch.selector["source_prefix"], svc.settings, start_after=cursor,
                                         max_keys=size)
        documents = [k for k in keys if not k.endswith("/")]  # "folder" placeholder objects are no documents
        items = [Item(index=index + i, source=f"s3://{bucket}/{key}") for i, key in enumerate(documents)]
        index += len(items)
        cursor = keys[-1] if keys else cursor
        yield items, cursor, not more


def chunks(svc: BatchServices, batch: Batch, cursor: str | None, index: int) -> Iterator[Chunk]:
    """The batch's source from ``cursor`` on, chunk by chunk."""
    if batch.source == "uris":
        return _uri_chunks(svc, batch, cursor, index)
    if batch.source == "prefix":
        return _prefix_chunks(svc, batch, cursor, index)
    if batch.source == "jobs":
        return selection_chunks(svc, batch, cursor, index)
    raise InvalidRequest(f"a batch from {batch.source!r} is not expanded")


def expand_batch(svc: BatchServices, batch_id: str, *, slice_s: float | None = None) -> bool:
    """Create and enqueue the jobs of a listed batch from its saved cursor on.

    Returns True when the whole source is done (the batch is marked expanded), False
    when ``slice_s`` (default ``settings.batch_expand_slice_s``) ran out first: the
    caller sends the task again and the next one resumes from the cursor.
    """
    batch = svc.batches.load(batch_id)
    if svc.batches.counts(batch_id).state != "expanding":
        return True  # a redelivered task after the end: nothing left
    cursor, index = svc.batches.cursor(batch_id)
    deadline = time.monotonic() + (svc.settings.batch_expand_slice_s if slice_s is None else slice_s)
    made = 0
    with ThreadPoolExecutor(svc.settings.batch_expand_threads, thread_name_prefix="docproc-expand") as pool:
        for items, next_cursor, last in chunks(svc, batch, cursor or None, index):
            made += run_chunk(svc, batch, items, pool)
            index += len(items)
            svc.batches.save_cursor(batch_id, next_cursor, index)
            if last:
                break
            if time.monotonic() > deadline:
                logger.info("batch %s: expanded to %d; continuing in a new task", batch_id, index,
                            extra={"batch_id": batch_id})
                return False
    logger.info("batch %s: listed %d document(s) (%d jobs this run)", batch_id, index, made,
                extra={"batch_id": batch_id, "tenant": batch.tenant})
    return finish_listing(svc, batch)


def _item_job(svc: BatchServices, batch: Batch, item: Item) -> Job | None:
    if item.original is not None:
        return reprocess_job(svc, batch, item.index, item.original)
    try:
        data, filename = read_source(item.source, svc.settings)
    except DocprocError as exc:
        reject_or_raise(svc, batch, item.index, item.source, exc)
        return None
    return add_document(svc, batch, item.index, data, filename)


def run_chunk(svc: BatchServices, batch: Batch, items: list[Item], pool: ThreadPoolExecutor) -> int:
    """Create, list and enqueue the jobs of ``items`` (documents read ``pool``-wide at once)."""
    made = list(pool.map(lambda item: (item.index, _item_job(svc, batch, item)), items))
    jobs = [(index, job) for index, job in made if job is not None]
    enqueue_jobs(svc, batch, jobs, pool)
    return len(jobs)
