"""docproc's Celery tasks: thin wrappers around :mod:`workers.jobflow`.

``docproc.intake(job_id)`` opens a job's document and enqueues its pages;
``docproc.page(job_id, page)`` processes one page and the last one finalises
the job. The work, and its idempotency, is in :mod:`workers.jobflow`.

Retries: transient faults (storage unreachable, Redis down, the broker refusing
a publish) retry with exponential backoff and jitter, capped below the
visibility timeout (a countdown message past it would be delivered twice).
Anything else, and retries exhausted, end in ``on_failure``: the job (intake)
or the page fails with the error's code; a task past its time limit fails the
page with ``timeout``.

Per process: settings, one Redis client, the JobStore, the storage and the
engines are made on first use, in the process that uses them (after fork).
The text engine is always there. The InternVL model is loaded once per
process, at start, by the ``worker_process_init`` handler below when the
worker consumes the ``gpu`` queue (solo pool: in the worker itself; prefork:
in each child); any other process loads it lazily on its first model page.
A worker that consumes ``gpu`` and cannot load the model stops at start
rather than failing every queued page.

Inference timeout: the solo pool enforces no time limit, so each engine call
runs under ``settings.inference_timeout_s`` (:func:`workers.jobflow.call_with_timeout`);
past it the page fails with ``timeout``. Python cannot stop the stuck call, so
a solo worker then shuts down warm after recording the page (its supervisor
starts a fresh one); prefork children are bounded by the pool's time limits.
"""

from __future__ import annotations

import logging
import os
import signal
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import redis
from billiard.process import current_process
from celery import Task, signals
from celery.exceptions import SoftTimeLimitExceeded, TimeLimitExceeded
from kombu.exceptions import OperationalError

from docproc.base import model_workers
from docproc.base.broker import GPU_QUEUE, INTAKE_TASK, PAGE_TASK
from docproc.base.errors import DocprocError, ServiceUnavailable, StorageError
from docproc.base.settings import Settings, get_settings
from docproc.base.storage import Storage, open_storage
from docproc.housekeeping import after_end
from docproc.jobs import lifecycle
from docproc.jobs.inputs import OpenedDocument
from docproc.jobs.leases import LeaseHeld, PageLeases
from docproc.jobs.results import ErrorInfo
from docproc.jobs.store import Job, JobStore, connect_redis
from workers import jobflow
from workers.celery_app import app
from workers.pipeline import Engines

logger = logging.getLogger(__name__)

TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (
    StorageError,  # only retryable ones get here: permanent ones are turned into PermanentFault
    ServiceUnavailable,
    redis.exceptions.ConnectionError,  # includes BusyLoadingError (Redis replaying its AOF)
    redis.exceptions.TimeoutError,
    OperationalError,  # kombu: the broker refused or lost a publish (enqueueing pages)
)
MAX_RETRIES = 10
RETRY_BACKOFF_MAX_S = max(1, min(600, get_settings().visibility_timeout_s // 2))
"""Longest retry countdown: 600 s, and always below the visibility timeout."""


class PermanentFault(Exception):
    """A fault a retry cannot fix (e.g. storage access denied), with its docproc code."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@contextmanager
def _permanent_faults_fail_fast() -> Iterator[None]:
    try:
        yield
    except StorageError as exc:
        if exc.retryable:
            raise
        raise PermanentFault(exc.code, exc.message) from exc


def failure_error(exc: BaseException, settings: Settings) -> ErrorInfo:
    """What a task that ended in ``exc`` tells the user."""
    if isinstance(exc, SoftTimeLimitExceeded | TimeLimitExceeded):
        limit = settings.task_soft_time_limit_s
        return ErrorInfo(code=jobflow.TIMEOUT, message=f"the task ran past its time limit ({limit} s)")
    if isinstance(exc, PermanentFault | DocprocError):
        return ErrorInfo(code=exc.code, message=exc.message)
    return ErrorInfo(code="internal_error", message=f"the worker failed ({type(exc).__name__}); see the worker log")


# ------------------------------------------------------------------ per-process resources


@dataclass
class Resources:
    """What one worker process uses: made lazily, in that process."""

    settings: Settings = field(default_factory=get_settings)

    @cached_property
    def redis(self) -> redis.Redis:
        return connect_redis(self.settings)

    @cached_property
    def store(self) -> JobStore:
        return JobStore(self.redis, self.settings)

    @cached_property
    def storage(self) -> Storage:
        return open_storage(self.settings)

    @cached_property
    def engines(self) -> Engines:
        return Engines(self.settings)

    @cached_property
    def leases(self) -> PageLeases:
        """This process's page leases (one heartbeat thread renews the held ones)."""
        return PageLeases.from_settings(self.redis, self.settings)

    @cached_property
    def lifecycle(self) -> lifecycle.Context:
        return after_end.context(settings=self.settings, redis=self.redis, store=self.store, send=send_task,
                                 storage=self.storage)

    def job_ended(self, job_id: str, job: Job | None = None) -> None:
        """Run a job's after-end steps (it just became terminal here; ``job``: as it ended)."""
        lifecycle.job_ended(job_id, self.lifecycle, job)


def send_task(name: str, args: list[Any], queue: str) -> None:
    """Enqueue a task by name (docproc.jobs.lifecycle's ``send``)."""
    app.send_task(name, args=args, queue=queue)


_resources: Resources | None = None
_resources_pid: int | None = None


def resources() -> Resources:
    """This process's resources (a forked child makes its own)."""
    global _resources, _resources_pid
    if _resources is None or _resources_pid != os.getpid():
        _resources, _resources_pid = Resources(), os.getpid()
    return _resources


# ------------------------------------------------------------------ worker signals

_consumed_queues: frozenset[str] = frozenset()
_node_name = ""
_beacon: model_workers.Beacon | None = None


@signals.worker_init.connect
def _remember_queues(sender: Any = None, **_: Any) -> None:
    """Note the queues this worker consumes (``-Q``; all declared queues without it)."""
    global _consumed_queues, _node_name
    queues = sender.app.amqp.queues
    _consumed_queues = frozenset(queues.consume_from or queues)
    _node_name = getattr(sender, "hostname", "") or ""


@signals.worker_process_init.connect
def _load_model_for_gpu_queue(**_: Any) -> None:
    """Load the model once in the process that will run ``gpu`` pages, before any task."""
    if GPU_QUEUE not in _consumed_queues:
        return
    global _beacon
    r = resources()
    try:
        engine = r.engines.internvl
    except DocprocError as exc:
        logger.critical("docproc worker: %s; this worker consumes %r and stops", exc, GPU_QUEUE)
        if current_process().name != "MainProcess":  # a prefork child: stop the whole worker
            os.kill(os.getppid(), signal.SIGTERM)
        raise SystemExit(3) from exc
    node = f"{_node_name or 'worker'}/{os.getpid()}"  # online for the API and intake (docproc.base.model_workers)
    _beacon = model_workers.Beacon(r.redis, node, engine.model_id, r.settings.model_worker_heartbeat_s).start()


@signals.worker_process_shutdown.connect
@signals.worker_shutdown.connect
def _withdraw_model_worker(**_: Any) -> None:
    global _beacon
    if _beacon is not None:
        _beacon.stop()
        _beacon = None


def _retire_after_timeout() -> None:
    """A timed-out engine call still runs in its thread: a solo worker shuts down warm
    once this task is done (its supervisor restarts it); a prefork child is bounded by
    the pool's time limits."""
    if current_process().name == "MainProcess":
        logger.error("docproc worker: inference timed out and is still running; shutting down after this task")
        os.kill(os.getpid(), signal.SIGTERM)


# ------------------------------------------------------------------ tasks


class IntakeTask(Task):
    def on_failure(self, exc, task_id, args, kwargs, einfo) -> None:  # noqa: ARG002 - Celery's signature
        job_id = args[0] if args else kwargs.get("job_id")
        r = resources()
        error = failure_error(exc, r.settings)
        logger.error("intake %s failed for good: %s", job_id, error.code)
        try:
            jobflow.end_job(job_id, "failed", store=r.store, on_ended=r.job_ended, error=error)
        except Exception:  # noqa: BLE001 - best effort: Redis may be what failed
            logger.exception("intake %s: could not record the failure", job_id)


class PageTask(Task):
    def on_failure(self, exc, task_id, args, kwargs, einfo) -> None:  # noqa: ARG002 - Celery's signature
        job_id = args[0] if args else kwargs.get("job_id")
        page = args[1] if len(args) > 1 else kwargs.get("page")
        _page_failed_for_good(job_id, page, exc)


def _page_failed_for_good(job_id: str, page: int, exc: BaseException) -> None:
    """Record a page whose run ended in ``exc`` (no retry left) as failed with its code."""
    r = resources()
    error = failure_error(exc, r.settings)
    logger.error("page %s/%s failed for good: %s", job_id, page, error.code)
    try:
        jobflow.fail_page(job_id, page, error.code, error.message, settings=r.settings, store=r.store,
                          storage=r.storage, on_ended=r.job_ended)
    except Exception:  # noqa: BLE001 - best effort: Redis or storage may be what failed
        logger.exception("page %s/%s: could not record the failure", job_id, page)


RETRY_OPTIONS = dict(
    autoretry_for=TRANSIENT_ERRORS,
    retry_backoff=True,  # 1, 2, 4, ... s
    retry_backoff_max=RETRY_BACKOFF_MAX_S,
    retry_jitter=True,
    max_retries=MAX_RETRIES,
)


def _enqueue_page(job_id: str, page: int, queue: str) -> str:
    return page_task.apply_async(args=[job_id, page], queue=queue).id


def _defer_page(job_id: str, page: int, queue: str, exc: LeaseHeld) -> str:
    """A live worker runs this page (this delivery came back past the visibility timeout,
    or the page's last owner died moments ago and its lease has not expired yet): send
    the page again for a little later and end this delivery without running it. The
    later one finds the result stored, or takes the page over once a dead owner's lease
    expired. The countdown stays well below the visibility timeout, so the deferred
    message is never handed out twice itself; it is a new message (retries 0), and
    deferrals count no attempt."""
    r = resources()
    countdown = max(0.5, min(r.settings.lease_ttl_s / 2, r.settings.visibility_timeout_s / 4))
    task_id = page_task.apply_async(args=[job_id, page], queue=queue, countdown=countdown).id
    r.store.add_task_ids(job_id, [task_id])
    logger.info("page %s/%s: %s; deferred %.1f s as task %s", job_id, page, exc, countdown, task_id,
                extra={"job_id": job_id, "page": page})
    return "deferred"


def _run_here(task: Task) -> jobflow.RunHere | None:
    """What the intake task may run itself: a one-page job's text page, when this worker
    consumes that page's queue (``render`` or ``bulk``). Model pages are always sent: the
    model worker batches them across jobs. Off with ``settings.intake_runs_single_page``."""
    queues = _consumed_queues - {GPU_QUEUE}
    if not queues or not resources().settings.intake_runs_single_page:
        return None

    def run(job_id: str, page: int, queue: str, doc: OpenedDocument) -> None:
        try:
            _run_page(task, job_id, page, queue=queue, doc=doc)
        except TRANSIENT_ERRORS:
            raise  # the intake retries, and its next delivery runs the page again
        except Exception as exc:  # noqa: BLE001 - as a page task's on_failure: the page fails, not the job
            _page_failed_for_good(job_id, page, exc)

    return jobflow.RunHere(queues=frozenset(queues), run=run)


def _run_page(task: Task, job_id: str, page: int, *, queue: str | None = None,
              doc: OpenedDocument | None = None) -> str | None:
    """The page task's body (also run by an intake for its one-page job, with the document
    it opened); returns the page's status. A page whose lease a live owner holds is sent
    again for later."""
    r = resources()
    try:
        with _permanent_faults_fail_fast():
            result = jobflow.run_page(job_id, page, settings=r.settings, store=r.store, storage=r.storage,
                                      engines=r.engines, retries=task.request.retries, on_ended=r.job_ended,
                                      leases=r.leases, doc=doc)
    except LeaseHeld as exc:
        queue = queue or (task.request.delivery_info or {}).get("routing_key") or GPU_QUEUE
        return _defer_page(job_id, page, queue, exc)
    if jobflow.inference_still_running():
        _retire_after_timeout()
    return result.status if result is not None else None


@app.task(name=INTAKE_TASK, bind=True, base=IntakeTask, **RETRY_OPTIONS)
def intake_task(self: Task, job_id: str) -> int:
    """Open the job's document, plan its pages, enqueue them (or run a one-page job's page
    here); returns the pages enqueued or run."""
    r = resources()
    with _permanent_faults_fail_fast():
        pages = jobflow.run_intake(job_id, settings=r.settings, store=r.store, storage=r.storage,
                                   enqueue=_enqueue_page, on_ended=r.job_ended, run_here=_run_here(self))
    return len(pages)


@app.task(name=PAGE_TASK, bind=True, base=PageTask, **RETRY_OPTIONS)
def page_task(self: Task, job_id: str, page: int) -> str | None:
    """Process one page of a job (the last one finalises it); returns the page's status."""
    return _run_page(self, job_id, page)
