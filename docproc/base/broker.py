"""The broker's shared rules: queue and task names, where each task goes, the Celery
configuration every client of the broker uses, and the stamp on every message sent.

The API and the operator commands (to send tasks by name), every worker, the scheduler and
Flower configure their Celery app with :func:`configure`, so all of them share one
configuration, the visibility timeout above all (kombu's shortest value among the clients of
a broker wins). :func:`client` is a Celery app that only sends; the workers' app, which
also registers the tasks, is :mod:`workers.celery_app`. Importing this module connects
the publish hook (:func:`_stamp_message`) in every process that sends tasks.

Queues::

    intake    docproc.intake: open the document, plan the pages     (CPU workers)
    render    docproc.page for pages the text engine reads            (CPU workers)
    gpu       docproc.page for pages the model reads                  (one model worker per GPU)
    webhooks  webhook deliveries                                      (a thread pool of its own)
    bulk      intake and text pages of priority=bulk jobs             (their own CPU workers)
    periodic  housekeeping ticks sent by the scheduler (celery beat):  (CPU workers)
              the ended-jobs sweep, webhook retries that are due, the stuck-job watchdog,
              the purge of expired data

There is no result backend: a job's state lives in docproc's JobStore (Redis).
"""

from __future__ import annotations

from typing import Any

from celery import Celery, signals
from kombu import Exchange, Queue

from docproc.base import logs, model_workers
from docproc.base.queue_depth import stamp_published
from docproc.base.settings import Settings, get_settings

INTAKE_QUEUE = "intake"
RENDER_QUEUE = "render"
GPU_QUEUE = model_workers.QUEUE  # "gpu"
WEBHOOKS_QUEUE = "webhooks"
BULK_QUEUE = "bulk"
PERIODIC_QUEUE = "periodic"
QUEUES: tuple[str, ...] = (INTAKE_QUEUE, RENDER_QUEUE, GPU_QUEUE, WEBHOOKS_QUEUE, BULK_QUEUE, PERIODIC_QUEUE)

INTAKE_TASK = "docproc.intake"
PAGE_TASK = "docproc.page"
# Housekeeping ticks (workers.periodic), sent by the scheduler every settings.periodic_interval_s.
SWEEP_ENDED_TASK = "docproc.periodic.sweep_ended"
WEBHOOKS_DUE_TASK = "docproc.periodic.webhooks_due"
WATCHDOG_TASK = "docproc.periodic.watchdog"
PURGE_EXPIRED_TASK = "docproc.periodic.purge_expired"
PERIODIC_TASKS: tuple[str, ...] = (SWEEP_ENDED_TASK, WEBHOOKS_DUE_TASK, WATCHDOG_TASK, PURGE_EXPIRED_TASK)

MODEL_LOAD_TIMEOUT_S = 900.0
"""How long a prefork child may spend in ``worker_process_init`` (loading the model
from disk or the Hub) before the pool kills it; Celery's default is 4 s."""


def intake_queue(priority: str) -> str:
    """Where a job's intake task goes: its own queue for bulk re-processing."""
    return BULK_QUEUE if priority == "bulk" else INTAKE_QUEUE


def page_queue(engine: str, priority: str) -> str:
    """Where a page task goes: model pages to ``gpu`` (only GPU workers hold the model),
    text-engine pages to ``render``, or to ``bulk`` for bulk jobs."""
    if engine == "internvl":
        return GPU_QUEUE
    return BULK_QUEUE if priority == "bulk" else RENDER_QUEUE


def configure(app: Celery, settings: Settings) -> Celery:
    """Apply docproc's broker, queue and delivery settings to ``app``; returns it."""
    visibility = settings.visibility_timeout_s
    app.conf.update(
        # --- broker ----------------------------------------------------------------
        broker_url=settings.redis_url,  # the same Redis as the JobStore (AOF on, noeviction)
        broker_connection_retry_on_startup=True,  # a worker started before Redis waits for it
        broker_transport_options={
            # A delivered, unacked message is handed out again once it is this old
            # (counted from delivery). Above the hard time limit, so a running task is
            # never delivered twice; retry countdowns stay below it (workers.tasks).
            "visibility_timeout": visibility,
            # A publish on a dead connection (failover, NAT timeout) fails instead of
            # hanging; BRPOP has its own 1 s timeout, well below this.
            "socket_timeout": 30.0,
            "socket_connect_timeout": 10.0,
            "socket_keepalive": True,
        },
        # kombu also reads the bare setting in places (e.g. ETA messages); keep both equal.
        visibility_timeout=visibility,
        # --- results -----------------------------------------------------------------
        result_backend=None,  # job state lives in the JobStore, not in Celery results
        task_ignore_result=True,
        # --- serialisation (no pickle from the network) -----------------------------
        task_serializer="json",
        accept_content=["json"],
        # --- delivery: at least once, tasks are idempotent (workers.jobflow) ----------
        task_acks_late=True,  # ack after the task ran: a crash mid-page re-delivers it
        worker_prefetch_multiplier=1,  # a worker holds only the message it runs
        task_reject_on_worker_lost=True,  # a child killed by the OS (OOM) re-queues its
        # message; the per-page attempt counter in the JobStore stops a poison page
        # after settings.max_attempts instead of looping forever.
        task_acks_on_failure_or_timeout=True,  # a task that raised is done (its failure
        # is recorded on the job by the task's on_failure), not redelivered
        worker_cancel_long_running_tasks_on_connection_loss=True,  # their messages come
        # back after a broker reconnect; running them on would do the page twice
        # --- limits (prefork; the solo pool enforces none, see workers.tasks) ---------
        task_soft_time_limit=settings.task_soft_time_limit_s,  # raises in the task: page fails "timeout"
        task_time_limit=settings.task_time_limit_s,  # kills the child after the soft limit
        worker_proc_alive_timeout=MODEL_LOAD_TIMEOUT_S,  # the model loads in worker_process_init
        worker_max_tasks_per_child=500,  # prefork children are recycled (renderer memory)
        # --- monitoring (Flower) ------------------------------------------------------
        worker_send_task_events=True,
        task_send_sent_event=True,  # Flower sees tasks while they wait in a queue
        # --- queues and routes -------------------------------------------------------
        task_queues=[Queue(name, Exchange(name, type="direct"), routing_key=name) for name in QUEUES],
        task_default_queue=INTAKE_QUEUE,
        task_create_missing_queues=False,  # a typo in a queue name fails loudly
        task_routes={
            INTAKE_TASK: {"queue": INTAKE_QUEUE},  # bulk jobs: queue=bulk at send time
            PAGE_TASK: {"queue": RENDER_QUEUE},  # gpu/bulk pages: queue given at send time
            "docproc.webhook*": {"queue": WEBHOOKS_QUEUE},
            "docproc.periodic.*": {"queue": PERIODIC_QUEUE},
            "docproc.batch.*": {"queue": BULK_QUEUE},  # expanding batch listings (workers.batch_tasks)
        },
        beat_schedule=beat_schedule(settings),
        # --- misc ----------------------------------------------------------------------
        enable_utc=True,
        timezone="UTC",
    )
    return app


def beat_schedule(settings: Settings) -> dict[str, dict]:
    """The scheduler's ticks: each housekeeping task every ``periodic_interval_s``; a tick
    not taken before the next one is due expires (a backed-up queue gets no pile of them)."""
    interval = settings.periodic_interval_s
    return {
        name.rsplit(".", 1)[-1]: {"task": name, "schedule": interval,
                                  "options": {"queue": PERIODIC_QUEUE, "expires": interval}}
        for name in PERIODIC_TASKS
    }


def client(settings: Settings | None = None) -> Celery:
    """A Celery app that sends docproc's tasks by name (it registers none): the API's and the
    operator commands'."""
    return configure(Celery("docproc"), settings or get_settings())


# ------------------------------------------------------------------ every publisher

REQUEST_ID_HEADER = "docproc_request_id"
"""Task message header: the request id of the API request the work descends from."""


@signals.before_task_publish.connect
def _stamp_message(headers: dict[str, Any] | None = None, **_: Any) -> None:
    """Publish time and request id into the message headers (protocol 2: ``headers``)."""
    if headers is None:
        return
    stamp_published(headers)
    request_id = logs.request_id()
    if request_id is not None:
        headers.setdefault(REQUEST_ID_HEADER, request_id)
