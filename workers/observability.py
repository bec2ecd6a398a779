"""Celery's side of observability in the workers: logs, request ids, worker metrics.

Imported by :mod:`workers.celery_app` (the publish hook that stamps every message's
publish time and request id is :mod:`docproc.base.broker`'s, connected in every sender):

* ``task_prerun`` / ``task_postrun`` (workers): bind the message's request id, the
  task's name and id and, for docproc's job tasks, the job id and page to every log
  line the task writes (:func:`docproc.base.logs.bind`), and to the tasks it sends;
* ``after_setup_logger`` / ``after_setup_task_logger``: Celery's log handlers get
  docproc's JSON (or redacting text) formatter, ``settings.log_format``;
* metrics: after each task (a busy process: every ``shared_metrics.MIN_GAP_S``), and as the
  process exits, what it counted is added to the service-wide counters in Redis
  that the API's ``/metrics`` serves (:mod:`docproc.base.shared_metrics`); with
  ``settings.worker_metrics_port`` set, :func:`prepare_worker_metrics`
  (called by ``python -m workers`` before prometheus_client is imported) puts the
  worker in prometheus_client's multiprocess mode in a fresh directory, the main
  process serves the sum over its pool children at ``/metrics`` once the worker is
  ready, and a child that exits marks its live gauges dead.

This module stays light (no prometheus_client at import, no torch).
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
import tempfile
from typing import Any

from celery import signals

from docproc.base import logs
from docproc.base.broker import REQUEST_ID_HEADER
from docproc.base.settings import get_settings

logger = logging.getLogger(__name__)

JOB_TASKS = ("docproc.intake", "docproc.page")  # first argument: the job id (then the page)

_tokens: dict[str, Any] = {}  # task id -> the log-context token set by prerun


# ------------------------------------------------------------------ workers: tasks


def message_request_id(task: Any) -> str | None:
    """The request id a task's message carries, if any."""
    request = getattr(task, "request", None)
    value = getattr(request, REQUEST_ID_HEADER, None)
    if value is None:
        value = (getattr(request, "headers", None) or {}).get(REQUEST_ID_HEADER)
    return value if isinstance(value, str) else None


@signals.task_prerun.connect
def _bind_task_context(task_id: str | None = None, task: Any = None, args: Any = None, **_: Any) -> None:
    fields: dict[str, Any] = {"request_id": message_request_id(task), "task": getattr(task, "name", None),
                              "task_id": task_id}
    if getattr(task, "name", None) in JOB_TASKS and args:
        fields["job_id"] = args[0] if isinstance(args[0], str) else None
        if len(args) > 1 and isinstance(args[1], int):
            fields["page"] = args[1]
    if task_id is not None:
        _tokens[task_id] = logs.set_context(**fields)


@signals.task_postrun.connect
def _unbind_task_context(task_id: str | None = None, **_: Any) -> None:
    logs.reset_context(_tokens.pop(task_id, None) if task_id is not None else None)


@signals.task_postrun.connect
def _publish_metrics(**_: Any) -> None:
    """What the task counted goes to the service-wide counters the API's /metrics reads
    (docproc.base.shared_metrics): at once, or within ``MIN_GAP_S`` in a busy process; a thread
    publishes the rest every few seconds."""
    from docproc.base import shared_metrics
    from workers.tasks import resources

    shared_metrics.publish_soon(resources().redis)


@signals.worker_process_shutdown.connect
@signals.worker_shutdown.connect
def _flush_metrics(**_: Any) -> None:
    """A process that ran tasks publishes what it has not yet as it exits (a recycled
    prefork child, a solo worker stopping)."""
    from docproc.base import shared_metrics

    shared_metrics.flush()


# ------------------------------------------------------------------ workers: logging


@signals.after_setup_logger.connect
@signals.after_setup_task_logger.connect
def _format_logs(logger: logging.Logger | None = None, **_: Any) -> None:
    if logger is not None:
        logs.restyle(logger, get_settings().log_format)
    logs.quiet_secret_loggers()


# ------------------------------------------------------------------ workers: metrics


def prepare_worker_metrics(port: int | None = None) -> str | None:
    """Before prometheus_client is imported: with a metrics port, put this worker in
    multiprocess mode in an empty directory (``PROMETHEUS_MULTIPROC_DIR`` if set, which
    must then belong to this worker alone, else a fresh temporary one); returns it."""
    port = get_settings().worker_metrics_port if port is None else port
    if not port:
        return None
    path = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if "prometheus_client" in sys.modules and not path:
        logger.warning("worker metrics: prometheus_client was imported before the multiprocess directory "
                       "was set; pool children's metrics will be missing")
    if path:
        os.makedirs(path, exist_ok=True)
        for name in os.listdir(path):  # a previous run's files would add to this run's sums
            if name.endswith(".db"):
                os.unlink(os.path.join(path, name))
    else:
        path = tempfile.mkdtemp(prefix="docproc-metrics-")
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = path
    return path


_server: Any = None


@signals.worker_ready.connect
def _serve_worker_metrics(**_: Any) -> None:
    """The worker's main process serves ``/metrics`` once its pool is up."""
    global _server
    settings = get_settings()
    if not settings.worker_metrics_port or _server is not None:
        return
    from prometheus_client import start_http_server

    from docproc.base import metrics
    if metrics.multiprocess_dir() is None:
        logger.warning("worker metrics: not in multiprocess mode (start the worker with `python -m workers`); "
                       "only the main process's metrics are served")
    try:
        _server, _ = start_http_server(settings.worker_metrics_port, addr=settings.worker_metrics_host,
                                       registry=metrics.scrape_registry())
    except OSError as exc:
        logger.error("worker metrics: cannot listen on %s:%d: %s", settings.worker_metrics_host,
                     settings.worker_metrics_port, exc)
        return
    logger.info("worker metrics on http://%s:%d/metrics", settings.worker_metrics_host, settings.worker_metrics_port)


@signals.worker_shutdown.connect
def _stop_worker_metrics(**_: Any) -> None:
    global _server
    if _server is not None:
        _server.shutdown()
        _server = None
        path = os.environ.get("PROMETHEUS_MULTIPROC_DIR", "")
        if os.path.basename(path).startswith("docproc-metrics-"):  # the temporary one we made
            shutil.rmtree(path, ignore_errors=True)


@signals.worker_process_shutdown.connect
def _child_exits(pid: int | None = None, **_: Any) -> None:
    """A pool child's live gauges stop counting when it exits."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid or os.getpid())


# ------------------------------------------------------------------ workers: tracing


@signals.worker_init.connect
def _start_tracing(**_: Any) -> None:
    """Spans per stage when ``settings.otel_enabled`` (pool children inherit the provider;
    the SDK restarts its export thread after a fork)."""
    from docproc.base import tracing
    tracing.configure(get_settings())
