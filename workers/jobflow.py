"""The work of the queued service, as plain functions: intake, one page, finalise.

The Celery tasks in :mod:`workers.tasks` only call these; tests call them with a
real Redis and storage and no broker. Delivery is at least once (late acks, a
killed worker's message comes back), so every step is idempotent:

* a page's result is written once (``results/{job}/pages/{n:05d}.json``); a
  redelivered page that finds it stored records the stored result again (a
  page's first delivery, whose lease and attempt are taken in one step with
  :meth:`JobStore.first_start`, has no predecessor and looks up nothing);
* :meth:`JobStore.page_finished` counts a page once, atomically; whoever sees
  0 pages remaining finalises. A duplicate that finds every page recorded and
  the job still running (the finaliser died) finalises again, which finds
  ``document.json`` stored, if it was, and only completes the job's state;
* a delivery runs its page only while it holds the page's lease
  (:mod:`docproc.jobs.leases`, renewed while the page runs, released in the step
  that records it): a second delivery of a running page (past the visibility timeout)
  raises ``LeaseHeld`` and is kept for later instead of running it again;
* every start of a page counts an attempt; a page delivered more than
  ``settings.max_attempts`` times (retries after transient faults aside) fails
  with ``too_many_attempts`` instead of crashing workers forever.

Errors: a typed input error ends the job (intake) or the page as ``failed`` with
its code. A transient fault (a retryable :class:`StorageError`, Redis down)
propagates so the task retries.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from contextlib import ExitStack, nullcontext
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, TypeVar

from docproc.base import metrics, model_workers, tracing
from docproc.base.broker import GPU_QUEUE, page_queue
from docproc.base.errors import DocprocError, NotFound, ServiceUnavailable, StorageError
from docproc.base.settings import Settings
from docproc.base.storage import Storage, document_result_key, page_result_key
from docproc.jobs.inputs import OpenedDocument, open_document
from docproc.jobs.leases import Lease, LeaseHeld, PageLeases, lease_key, new_owner_token
from docproc.jobs.requests import parse_page_range, resolve_request
from docproc.jobs.results import DocumentInfo, DocumentResult, ErrorInfo, PageResult
from docproc.jobs.schemas import ExtractionSchema
from docproc.jobs.store import PAGE_DUPLICATE, TERMINAL, Job, JobStore, PageStatus
from workers.engines.text import TEXT_TASKS
from workers.pages import RenderedPage
from workers.pipeline import (
    Engines,
    assemble_document,
    document_warnings,
    drawn_for,
    finish_page,
    page_stage_totals,
    render_or_fail,
    route,
)
from workers.repair import page_damage
from workers.text_routing import text_layer_issue

logger = logging.getLogger(__name__)

Enqueue = Callable[[str, int, str], "str | None"]
"""``enqueue(job_id, page, queue)`` sends one page task and returns its task id (or None)."""

T = TypeVar("T")

# Page codes this module gives (listed in errors.PAGE_ERROR_CODES).
TIMEOUT = "timeout"
TOO_MANY_ATTEMPTS = "too_many_attempts"
ENGINE_UNAVAILABLE = "engine_unavailable"  # a model page with no model worker online to run it


INFERENCE_THREAD = "docproc-inference"
_abandoned: list[threading.Thread] = []  # engine calls that timed out and still run


class InferenceTimeout(Exception):
    """An engine call ran past ``settings.inference_timeout_s``."""


def is_transient(exc: BaseException) -> bool:
    """True for faults a retry can fix: a retryable StorageError, a backing service down."""
    if isinstance(exc, StorageError):
        return exc.retryable
    return isinstance(exc, ServiceUnavailable)


def _error(exc: DocprocError) -> ErrorInfo:
    return ErrorInfo(code=exc.code, message=exc.message)


OnEnded = Callable[..., object]
"""``on_ended(job_id, job=None)``: the job just became terminal (``job``: as it ended, read
in the same step); run its after-end steps (:func:`docproc.jobs.lifecycle.job_ended`). None:
leave them to the periodic sweep."""


def end_job(job_id: str, state: str, *, store: JobStore, on_ended: OnEnded | None, **fields: Any) -> bool:
    """The one way a worker ends a job: :meth:`JobStore.finish` (``finish_loaded``: the
    ended job comes back in the same step), then, if this call ended it, the job's
    after-end steps. False when the job was terminal already."""
    job = store.finish_loaded(job_id, state, **fields)
    if job is None:
        return False
    _count_finished(job, state, fields.get("error"))
    if on_ended is not None:
        on_ended(job_id, job=job)
    return True


def _count_finished(job: Job, state: str, error: ErrorInfo | None) -> None:
    """Metrics and the log line of a job this process just ended (finish said True: once)."""
    job_id = job.id
    try:
        metrics.count_job_finished(job, state)
        if error is not None:
            metrics.ERRORS.labels(code=error.code, stage="job").inc()
        took = _ms_between(job.created_at, job.finished_at)
        logger.info("job %s: ended %s", job_id, state,
                    extra={"job_id": job_id, "tenant": job.tenant, "stage": "job",
                           "duration_ms": round(took, 3) if took is not None else None})
    except Exception:  # noqa: BLE001 - observability never fails the job flow
        logger.warning("job %s: finish not counted in metrics", job_id, exc_info=True)


# ------------------------------------------------------------------ intake


def planned_engine(doc: OpenedDocument, number: int, task: str, engine: str, settings: Settings) -> str:
    """The engine page ``number`` will go to, decided without rendering it for the model.

    The same rule as :func:`workers.pipeline.route` (the page task routes the
    rendered page again): ``auto`` sends ocr/tables pages whose text layer can be
    trusted (:func:`workers.text_routing.text_layer_issue`, as render judges it)
    to the text engine, everything else to the model. A page whose text cannot be
    read goes to the text engine, whose render will report the page's error
    without taking a GPU; so does a page of a repaired PDF that lost its content
    (:mod:`workers.repair`: it fails ``corrupt_document`` at render).
    """
    if engine != "auto":
        return engine
    if task not in TEXT_TASKS or doc.pdf is None:
        return "internvl"
    try:
        issue = text_layer_issue(doc.pdf.load_page(number - 1), settings.min_text_chars)
    except Exception:  # noqa: BLE001 - render reports the page's own error
        return "text"
    if issue is None:
        return "text"
    return "text" if doc.repaired and page_damage(doc.pdf, number) is not None else "internvl"


@dataclass(frozen=True)
class RunHere:
    """Where intake runs a page itself instead of sending it: the page of a one-page job
    whose queue is one of ``queues`` (those the intake's worker consumes) runs through
    ``run(job_id, page, queue, doc)`` in the intake's process, once the intake is recorded:
    no second task, download or parse. ``run`` is the page task's body (lease, attempts,
    recording); ``queue`` is where the page would have gone; ``doc`` is the document intake
    opened, still open."""

    queues: frozenset[str]
    run: Callable[[str, int, str, OpenedDocument], object]


def run_intake(
    job_id: str, *, settings: Settings, store: JobStore, storage: Storage, enqueue: Enqueue,
    on_ended: OnEnded | None = None, run_here: RunHere | None = None,
) -> list[int]:
    """Open the job's document, plan its pages and enqueue one page task per page (or run
    a one-page job's page here, see :class:`RunHere`).

    Returns the pages enqueued or run: ``[]`` when the job was canceled or finished, or
    when its input is bad (the job then ends ``failed`` with the error's code).
    A redelivered intake of a running job enqueues its unfinished pages again.
    """
    with ExitStack() as opened:  # the document stays open for a page run here
        numbers, here = _plan_and_send(job_id, settings=settings, store=store, storage=storage, enqueue=enqueue,
                                       on_ended=on_ended, run_here=run_here, opened=opened)
        if here is not None and run_here is not None:
            run_here.run(job_id, *here)
    return numbers


@tracing.staged("intake")
def _plan_and_send(
    job_id: str, *, settings: Settings, store: JobStore, storage: Storage, enqueue: Enqueue,
    on_ended: OnEnded | None, run_here: RunHere | None, opened: ExitStack,
) -> tuple[list[int], tuple[int, str, OpenedDocument] | None]:
    """The intake stage: plan the pages, send their tasks; returns the pages and the one
    kept to run here with its queue and document (None: every page was sent). The document
    is open until ``opened`` closes."""
    job = store.load(job_id)
    if job.state in TERMINAL:
        logger.info("intake %s: job is %s; nothing to do", job_id, job.state)
        return [], None
    request = job.request
    try:
        resolve_request(request.task, request.schema_, request.engine, settings)
        data = read_input(storage, job.input_key)
        doc = opened.enter_context(open_document(data, filename=job.filename, settings=settings))
        numbers = parse_page_range(request.pages, doc.page_count)
        queues = {
            n: page_queue(planned_engine(doc, n, request.task, request.engine, settings), request.priority)
            for n in numbers
        }
        page_count, media_type = doc.page_count, str(doc.media_type)
        warnings = document_warnings(doc, numbers)
    except DocprocError as exc:
        if is_transient(exc):
            raise
        logger.info("intake %s: failed: %s", job_id, exc)
        end_job(job_id, "failed", store=store, on_ended=on_ended, error=_error(exc))
        return [], None
    one_page = len(numbers) == 1
    model_offline = any(q == GPU_QUEUE for q in queues.values()) and not model_workers.online(store.redis)
    if job.state == "queued":
        if not store.start(job_id, page_count=page_count, pages=numbers, media_type=media_type, warnings=warnings):
            logger.info("intake %s: job was canceled before it started", job_id)
            return [], None
    else:  # running: a redelivered intake; the pages already recorded need no task
        done = {p.page for p in store.pages(job_id) if p.state in ("succeeded", "failed")}
        numbers = [n for n in numbers if n not in done]
    # model pages with no model worker online would wait for hours: they fail now instead
    stranded = {n for n in numbers if queues[n] == GPU_QUEUE} if model_offline else set()
    to_send = [n for n in numbers if n not in stranded]
    here = None
    if run_here is not None and one_page and to_send and queues[to_send[0]] in run_here.queues:
        page = to_send.pop()
        here = page, queues[page], doc
    ids = [i for i in (enqueue(job_id, n, queues[n]) for n in to_send) if i]
    if ids:  # kept with the intake's id, for revoking on cancel
        store.add_task_ids(job_id, ids)
    if stranded:
        message = model_workers.NONE_ONLINE.format(ttl=model_workers.LIFETIMES * settings.model_worker_heartbeat_s)
        logger.warning("intake %s: %d model page(s) failed: %s", job_id, len(stranded), message,
                       extra={"job_id": job_id})
        for n in stranded:  # the last one recorded ends the job, as any page does
            record_page(job_id, failed_page(n, ENGINE_UNAVAILABLE, message, engine="internvl"), attempts=0,
                        settings=settings, store=store, storage=storage, on_ended=on_ended)
    return numbers, here


# ------------------------------------------------------------------ pages


def call_with_timeout(fn: Callable[[], T], timeout_s: float) -> T:
    """``fn()`` run in a daemon thread; InferenceTimeout when it is not done in ``timeout_s``.

    Python cannot stop a thread: a timed-out call goes on in the background and
    its result is dropped. The caller decides what to do with the busy process
    (:mod:`workers.tasks` shuts a solo worker down once the page is recorded).
    """
    box: dict[str, Any] = {}
    done = threading.Event()

    def target() -> None:
        try:
            box["value"] = fn()
        except BaseException as exc:  # noqa: BLE001 - handed to the caller
            box["error"] = exc
        finally:
            done.set()

    thread = threading.Thread(target=target, name=INFERENCE_THREAD, daemon=True)
    thread.start()
    if not done.wait(timeout_s):
        _abandoned.append(thread)
        raise InferenceTimeout(f"the engine did not finish within {timeout_s} s")
    if "error" in box:
        raise box["error"]
    return box["value"]


def inference_still_running() -> bool:
    """True while an engine call that timed out still runs in this process."""
    _abandoned[:] = [t for t in _abandoned if t.is_alive()]
    return bool(_abandoned)


INPUT_CACHE_MAX_BYTES = 256 * 1024 * 1024
_input_cache: dict[str, bytes] = {}  # the last input read by this process, by content key


def read_input(storage: Storage, key: str) -> bytes:
    """The job's input; the last one read is kept, so a worker doing the pages of one
    document in a row downloads it once. Keys are content-addressed (sha256), so a key
    always names the same bytes."""
    data = _input_cache.get(key)
    if data is None:
        data = storage.get(key)
        _input_cache.clear()
        if len(data) <= INPUT_CACHE_MAX_BYTES:
            _input_cache[key] = data
    return data


def failed_page(page: int, code: str, message: str, engine: str = "worker") -> PageResult:
    return PageResult(page=page, status="failed", engine=engine, error=ErrorInfo(code=code, message=message))


@dataclass
class ModelPage:
    """A rendered page that still needs the model, with its job's task and schema."""

    rendered: RenderedPage
    task: str
    schema: ExtractionSchema | None


def prepare_page(job: Job, page: int, *, settings: Settings, storage: Storage, engines: Engines,
                 doc: OpenedDocument | None = None) -> PageResult | ModelPage:
    """Render page ``page`` of the job's stored input and route it: a PageResult when it is
    done without the model (text engine, render failure, a typed error), else a ModelPage.
    ``doc``: the input, already open (intake's); else it is read and opened here.

    Transient faults raise (the caller retries).
    """
    request = job.request
    try:
        schema = resolve_request(request.task, request.schema_, request.engine, settings)
        opened = nullcontext(doc) if doc is not None else open_document(  # a given doc: its opener closes it
            read_input(storage, job.input_key), filename=job.filename, settings=settings)
        with opened as doc:
            with tracing.span("render", page=page):
                rendered = render_or_fail(doc, page, settings, draw=drawn_for(request.task, request.engine))
            if isinstance(rendered, PageResult):
                return rendered
            if route(rendered, request.task, request.engine) != "text":
                return ModelPage(rendered, request.task, schema)
            with tracing.span("infer", engine="text", page=page):
                result = engines.text.process(doc, [rendered], request.task)[0]
            return finish_page(rendered, result)
    except DocprocError as exc:
        if is_transient(exc):
            raise
        return failed_page(page, exc.code, exc.message)


def process_page(job: Job, page: int, *, settings: Settings, storage: Storage, engines: Engines,
                 doc: OpenedDocument | None = None) -> PageResult:
    """Render page ``page`` of the job's stored input and run the engine it routes to.

    Page-level failures (render, model output, a typed error, the inference
    timeout) come back as a failed PageResult; transient faults raise.
    """
    prepared = prepare_page(job, page, settings=settings, storage=storage, engines=engines, doc=doc)
    if isinstance(prepared, PageResult):
        return prepared
    try:
        name = route(prepared.rendered, prepared.task, job.request.engine)  # internvl or openai
        model = engines.model(name)  # loads once per process, outside the timeout
        with tracing.span("engine", engine=name, page=page):
            try:
                result = call_with_timeout(
                    lambda: model.process([prepared.rendered], prepared.task, prepared.schema)[0],
                    settings.inference_timeout_s,
                )
            except InferenceTimeout as exc:
                result = failed_page(page, TIMEOUT, str(exc), engine=name)
            tracing.stage_spans(result.timings_ms, page=page)  # tile, infer, postprocess inside the call
    except DocprocError as exc:
        if is_transient(exc):
            raise
        return failed_page(page, exc.code, exc.message)
    return finish_page(prepared.rendered, result)


def _get_or_none(storage: Storage, key: str) -> bytes | None:
    """The stored object, or None when there is none (one GET, no HEAD first)."""
    try:
        return storage.get(key)
    except NotFound:
        return None


def _stored_page(storage: Storage, job_id: str, page: int) -> PageResult | None:
    data = _get_or_none(storage, page_result_key(job_id, page))
    return None if data is None else PageResult.model_validate_json(data)


def _write_once(storage: Storage, key: str, data: bytes) -> bytes | None:
    """Write ``data`` under ``key`` once; returns the bytes another writer stored first, if any."""
    try:
        storage.put_result(key, data)
        return None
    except StorageError as exc:
        if exc.retryable:
            raise
        stored = _get_or_none(storage, key)
        if stored is None:
            raise
        return stored  # a concurrent or earlier delivery won: its result stands


def record_page(
    job_id: str, result: PageResult, *, attempts: int, settings: Settings, store: JobStore, storage: Storage,
    on_ended: OnEnded | None = None, lease: Lease | None = None,
) -> PageResult:
    """Store the page result (first writer wins), count the page once, finalise on the last.

    ``lease``: the page's lease this delivery holds; the step that counts the page releases
    it (before the finalise, which write-once and :meth:`JobStore.finish` keep single).
    Returns the result that is stored (another delivery's, when it got there first).
    """
    data = result.model_dump_json().encode()
    with tracing.stage("store", page=result.page):
        stored = _write_once(storage, page_result_key(job_id, result.page), data)
    if stored is not None:
        result = PageResult.model_validate_json(stored)
    status = PageStatus(
        page=result.page,
        state=result.status,
        engine=result.engine,
        error=result.error,
        timings_ms=result.timings_ms,
        attempts=attempts,
    )
    remaining, job = store.page_finished_loaded(job_id, status, lease=lease)  # the job comes with the last page
    if remaining != PAGE_DUPLICATE:  # counted once per page, not per delivery
        _count_page(job_id, result)
    if remaining == 0 or (remaining == PAGE_DUPLICATE and _every_page_recorded(store, job_id)):
        # A duplicate finalises too when every page is in but the job is still running:
        # the delivery that recorded the last page died before finishing the job.
        finalise_job(job_id, settings=settings, store=store, storage=storage, written={result.page: result},
                     first=remaining == 0, on_ended=on_ended, job=job)
    return result


def _count_page(job_id: str, result: PageResult) -> None:
    """Metrics and the log line of a page recorded for the first time."""
    try:
        metrics.PAGES_PROCESSED.labels(engine=result.engine or "unknown", status=result.status).inc()
        metrics.observe_stages(result.timings_ms)
        if result.error is not None:
            metrics.ERRORS.labels(code=result.error.code, stage="page").inc()
    except Exception:  # noqa: BLE001 - observability never fails the job flow
        logger.warning("page %s/%d: not counted in metrics", job_id, result.page, exc_info=True)
    logger.info("page %s/%d: %s (%s)", job_id, result.page, result.status, result.engine,
                extra={"job_id": job_id, "page": result.page, "stage": "page",
                       "duration_ms": result.timings_ms.get("page")})


def _every_page_recorded(store: JobStore, job_id: str) -> bool:
    job = store.load(job_id)
    return job.state not in TERMINAL and job.pages_done + job.pages_failed >= len(job.pages)


@dataclass
class PageStart:
    """A delivery that runs its page: the job, the page's attempt count, the held lease."""

    job: Job
    page: int
    attempts: int
    lease: Lease


def begin_page(
    job_id: str, page: int, *, settings: Settings, store: JobStore, storage: Storage, leases: PageLeases,
    retries: int = 0, on_ended: OnEnded | None = None,
) -> PageStart | PageResult | None:
    """The checks before a delivery runs its page; whoever gets a PageStart runs the page,
    records it and releases ``lease``.

    None: the job was canceled or has ended (a stale delivery). A PageResult: the page
    needed no run (its result was stored already and is recorded again, or the page
    was delivered more than ``max_attempts`` times and is recorded failed). Raises
    :class:`~docproc.jobs.leases.LeaseHeld` when a live owner is running the page (a
    delivery past the visibility timeout): the caller keeps the message for later.

    ``retries`` is how many times the task was retried after a transient fault
    (Celery's ``request.retries``): those starts are bounded by the task's
    ``max_retries`` and do not count towards the poison guard, whose
    ``max_attempts`` is for deliveries lost with their worker.
    """
    token = new_owner_token()
    job, first = store.first_start(job_id, page, lease_key=lease_key(job_id, page), token=token,
                                   ttl_ms=leases.ttl_ms)
    if job.state in TERMINAL:
        logger.info("page %s/%d: job is %s; skipped", job_id, page, job.state)
        return None
    if first == -1:
        raise LeaseHeld(job_id, page, leases.owner(job_id, page))
    if first == 1:  # the page's first start, lease and attempt taken in one step: no earlier
        # delivery ran it, so none can have stored its result (nothing to look up)
        return PageStart(job=job, page=page, attempts=1, lease=leases.adopt(job_id, page, token))
    lease = leases.acquire(job_id, page)
    try:
        # Looked up under the lease: an earlier delivery (or the previous owner) may have stored it.
        stored = _stored_page(storage, job_id, page)
        if stored is not None:  # redelivered after the result was written: just (re)count it
            logger.info("page %s/%d: result already stored; recording it", job_id, page)
            return record_page(job_id, stored, attempts=0, settings=settings, store=store, storage=storage,
                               on_ended=on_ended, lease=lease)
        attempts = store.page_started(job_id, page)
        deliveries = attempts - retries
        if deliveries > settings.max_attempts:
            logger.warning("page %s/%d: delivery %d > max_attempts %d; failing the page", job_id, page,
                           deliveries, settings.max_attempts)
            result = failed_page(
                page, TOO_MANY_ATTEMPTS,
                f"the page was delivered {deliveries} times (max_attempts={settings.max_attempts}); "
                "every earlier delivery was lost with its worker (killed, out of memory)",
            )
            try:
                return record_page(job_id, result, attempts=attempts, settings=settings, store=store,
                                   storage=storage, on_ended=on_ended, lease=lease)
            finally:
                lease.release()  # when the record failed (else a no-op)
    except BaseException:
        lease.release()
        raise
    return PageStart(job=job, page=page, attempts=attempts, lease=lease)


def run_page(
    job_id: str,
    page: int,
    *,
    settings: Settings,
    store: JobStore,
    storage: Storage,
    engines: Engines,
    retries: int = 0,
    on_ended: OnEnded | None = None,
    leases: PageLeases | None = None,
    doc: OpenedDocument | None = None,
) -> PageResult | None:
    """Process one page of a job: the body of the ``docproc.page`` task.

    :func:`begin_page` decides whether this delivery runs the page (and takes its
    lease; :class:`~docproc.jobs.leases.LeaseHeld` propagates); the lease is released
    once the result is recorded. ``leases``: the process's (default: one for this
    call, on the store's Redis). ``doc``: the job's input, already open (an intake
    running its one-page job's page); else it is read and opened.

    Returns the page's recorded result, or None when the job was canceled or had
    already ended (a stale redelivery).
    """
    leases = leases or PageLeases.from_settings(store.redis, settings)
    begun = begin_page(job_id, page, settings=settings, store=store, storage=storage, leases=leases,
                       retries=retries, on_ended=on_ended)
    if not isinstance(begun, PageStart):
        return begun
    try:
        started = time.perf_counter()
        result = process_page(begun.job, page, settings=settings, storage=storage, engines=engines, doc=doc)
        result.timings_ms.setdefault("page", round((time.perf_counter() - started) * 1000.0, 3))
        return record_page(job_id, result, attempts=begun.attempts, settings=settings, store=store,
                           storage=storage, on_ended=on_ended, lease=begun.lease)
    finally:
        begun.lease.release()  # the page was not recorded (else a no-op)


def fail_page(
    job_id: str, page: int, code: str, message: str, *, settings: Settings, store: JobStore, storage: Storage,
    on_ended: OnEnded | None = None,
) -> PageResult | None:
    """Record page ``page`` as failed with ``code`` (a task that ended without a result:
    time limit, retries exhausted), unless a result is stored already."""
    job = store.load(job_id)
    if job.state in TERMINAL:
        return None
    result = _stored_page(storage, job_id, page) or failed_page(page, code, message)
    return record_page(job_id, result, attempts=0, settings=settings, store=store, storage=storage,
                       on_ended=on_ended)


# ------------------------------------------------------------------ finalise


def _ms_between(a: datetime | None, b: datetime | None) -> float | None:
    if a is None or b is None:
        return None
    return (b - a).total_seconds() * 1000.0


def build_document(job: Job, pages: list[PageResult], *, settings: Settings) -> DocumentResult:
    """The job's document result from its page results (the same rules as the CLI's)."""
    request = job.request
    schema = resolve_request(request.task, request.schema_, request.engine, settings)
    info = DocumentInfo(
        filename=job.filename,
        sha256=job.input_sha256,
        size_bytes=job.size_bytes,
        media_type=job.media_type or "application/octet-stream",
        page_count=job.page_count if job.page_count is not None else len(pages),
    )
    now = datetime.now(timezone.utc)
    timings: dict[str, float] = {}
    queued = _ms_between(job.created_at, job.started_at)
    if queued is not None:
        timings["queued"] = queued
    timings.update(page_stage_totals(pages))
    total = _ms_between(job.created_at, now)
    if total is not None:
        timings["total"] = total
    return assemble_document(
        info, pages, task=request.task, schema=schema, engine=request.engine,
        model_id=(settings.openai_model or settings.model) if request.engine == "openai" else settings.model,
        timings_ms=timings, warnings=job.warnings,
    )


def finalise_job(
    job_id: str,
    *,
    settings: Settings,
    store: JobStore,
    storage: Storage,
    written: dict[int, PageResult] | None = None,
    first: bool = False,
    on_ended: OnEnded | None = None,
    job: Job | None = None,
) -> DocumentResult | None:
    """Merge the job's page results into ``results/{job}/document.json`` (written once)
    and end the job ``succeeded``, ``partial`` or ``failed``.

    Idempotent: when the document is stored already (a crash after writing it),
    the stored one completes the job. None when the job was canceled meanwhile
    (or failed because its document could not be built).

    ``written``: the page results this process has in hand, as stored (not read back).
    ``first``: the caller counted the job's last page (``page_finished`` gave 0), so no
    finaliser ran before and the document is not looked up; one that runs concurrently
    is still caught by the write-once. ``job``: the job as that last record left it
    (read in the same step), else it is loaded.
    """
    if job is None:
        job = store.load(job_id)
    if job.state == "canceled":
        return None
    key = document_result_key(job_id)
    stored = None if first else _get_or_none(storage, key)
    if stored is not None:
        document = DocumentResult.model_validate_json(stored)
    else:
        written = written or {}
        pages = [
            written.get(n) or PageResult.model_validate_json(storage.get(page_result_key(job_id, n)))
            for n in job.pages
        ]
        try:
            document = build_document(job, pages, settings=settings)
        except DocprocError as exc:  # e.g. the schema file was removed while the job ran
            if is_transient(exc):
                raise
            end_job(job_id, "failed", store=store, on_ended=on_ended, error=_error(exc))
            return None
        stored = _write_once(storage, key, document.model_dump_json(by_alias=True).encode())
        if stored is not None:
            document = DocumentResult.model_validate_json(stored)
    if end_job(
        job_id,
        document.status,
        store=store,
        on_ended=on_ended,
        error=document.error,
        result_key=key,
        model=document.model,
        schema_version=document.schema_version,
    ):
        logger.info("job %s: %s (%d pages)", job_id, document.status, len(document.pages))
    return document
