"""Celery remote control for a process that is not a Celery worker (the model worker).

``celery -A workers.celery_app inspect ping -d gpu@host`` is how an operator (and the
container healthcheck) asks a worker whether it is alive, and Flower's worker page asks
``inspect stats``, ``active`` and the rest; Celery's own workers answer on their pidbox.
:class:`ControlNode` answers the same broadcasts for the model worker
(:class:`workers.model_worker.ModelWorker`), from a thread with its own broker
connection, so a long generate call on the GPU does not leave them unanswered. Commands:

* ``ping`` -> ``{"ok": "pong"}``; ``shutdown``: the worker finishes its batch and stops;
* ``stats`` (pid, uptime, pages done, pool, prefetch, broker, rusage), ``active`` (the
  pages of the batch in generate), ``reserved`` (held pages that are due), ``scheduled``
  (held pages waiting on an eta or a backoff), ``active_queues``, ``registered``,
  ``revoked`` (none: see below), ``conf`` (the batching settings, no secrets): in
  Celery's shapes, which Flower renders;
* ``enable_events`` / ``disable_events`` (Flower sends the first every few seconds): the
  model worker always sends its task events, so both answer that they are on.

Any other command (``revoke``, ``rate_limit``, ...) gets ``{"error": ...}`` back: the
model worker drops a canceled job's pages because the job is terminal, not by task id.
"""

from __future__ import annotations

import logging
import os
import resource
import threading
import time
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any

from docproc.base.broker import GPU_QUEUE, PAGE_TASK

logger = logging.getLogger(__name__)

RECONNECT_S = 1.0  # pause before a lost broker connection is opened again
POLL_S = 1.0  # drain timeout: how often the thread looks at its stop flag
CONF_SETTINGS = ("model", "device", "dtype", "attn_implementation", "batch_size", "batch_tile_budget",
                 "model_worker_prefetch", "model_worker_batch_window_s", "model_page_attempts", "lease_ttl_s")


# -- the commands: each takes the worker (the node's state) and Celery's arguments --


def _ping(worker: Any, **_: Any) -> dict[str, str]:  # noqa: ARG001 - kombu passes the node's state
    return {"ok": "pong"}


def _shutdown(worker: Any, **_: Any) -> dict[str, str]:
    logger.warning("remote control: shutdown asked for %s", worker.hostname)
    worker.stop()
    return {"ok": "shutting down after the current batch"}


def _request(worker: Any, delivery: Any) -> dict[str, Any]:
    """A held page message as Celery describes a task request."""
    return {
        "id": delivery.task_id, "name": PAGE_TASK, "type": PAGE_TASK,
        "args": [delivery.work.job_id, delivery.work.page], "kwargs": {},
        "hostname": worker.hostname, "time_start": None, "acknowledged": False,
        "delivery_info": {"exchange": GPU_QUEUE, "routing_key": GPU_QUEUE, "priority": None,
                          "redelivered": bool(delivery.message.delivery_info.get("redelivered"))},
        "worker_pid": os.getpid(),
    }


def _active(worker: Any, **_: Any) -> list[dict[str, Any]]:
    return [_request(worker, d) for d in worker.running]


def _reserved(worker: Any, **_: Any) -> list[dict[str, Any]]:
    now, running = time.time(), {id(d) for d in worker.running}
    return [_request(worker, d) for d in worker.holding() if d.not_before <= now and id(d) not in running]


def _scheduled(worker: Any, **_: Any) -> list[dict[str, Any]]:
    now = time.time()
    return [{"eta": datetime.fromtimestamp(d.not_before, timezone.utc).isoformat(), "priority": None,
             "request": _request(worker, d)} for d in worker.holding() if d.not_before > now]


def _stats(worker: Any, **_: Any) -> dict[str, Any]:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    conn = worker.app.connection_for_read()
    try:
        broker = {"transport": conn.transport_cls, "hostname": conn.hostname, "port": conn.port,
                  "virtual_host": conn.virtual_host}  # no credentials
    finally:
        conn.release()
    events = getattr(worker, "events", None)
    processed = events.processed if events is not None else 0
    return {
        "pid": os.getpid(), "clock": str(worker.app.clock.value), "uptime": int(time.time() - worker.started),
        "total": {PAGE_TASK: processed} if processed else {},
        "pool": {"implementation": "workers.model_worker (batched generate)",
                 "max-concurrency": worker.settings.batch_size, "processes": [os.getpid()]},
        "prefetch_count": worker.settings.model_worker_prefetch,
        "broker": broker,
        "rusage": {"utime": usage.ru_utime, "stime": usage.ru_stime, "maxrss": usage.ru_maxrss},
    }


def _active_queues(worker: Any, **_: Any) -> list[dict[str, Any]]:
    return [worker.app.amqp.queues[GPU_QUEUE].as_dict(recurse=True)]


def _registered(worker: Any, **_: Any) -> list[str]:  # noqa: ARG001
    return [PAGE_TASK]


def _revoked(worker: Any, **_: Any) -> list[str]:  # noqa: ARG001
    return []


def _events_on(worker: Any, **_: Any) -> dict[str, str]:  # noqa: ARG001
    return {"ok": "task events are always on for the model worker"}


def _conf(worker: Any, **_: Any) -> dict[str, Any]:
    return {name: getattr(worker.settings, name) for name in CONF_SETTINGS}


COMMANDS: dict[str, Callable[..., Any]] = {
    "ping": _ping, "shutdown": _shutdown, "stats": _stats, "active": _active, "reserved": _reserved,
    "scheduled": _scheduled, "active_queues": _active_queues, "registered": _registered,
    "revoked": _revoked, "conf": _conf, "enable_events": _events_on, "disable_events": _events_on,
}


class ControlNode:
    """Answers the Celery control broadcasts addressed to ``worker.hostname`` (all when none
    is named) until :meth:`close`; ``worker`` is the model worker the commands read."""

    def __init__(self, app: Any, worker: Any) -> None:
        self.app = app
        self.worker = worker
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="docproc-remote-control", daemon=True)

    def start(self) -> ControlNode:
        self._thread.start()
        return self

    def close(self) -> None:
        self._stop.set()
        self._thread.join(POLL_S * 3)

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                with self.app.connection_for_read() as conn:
                    node = self.app.control.mailbox.Node(self.worker.hostname, state=self.worker, handlers=COMMANDS)
                    node.channel = conn.channel()
                    consumer = node.listen(callback=self._on_message(node))
                    try:
                        while not self._stop.is_set():
                            try:
                                conn.drain_events(timeout=POLL_S)
                            except TimeoutError:
                                pass
                    finally:
                        consumer.cancel()
                        node.channel.close()
            except Exception as exc:  # noqa: BLE001 - a lost broker: connect again, never die
                logger.debug("remote control: %s; reconnecting", exc)
                self._stop.wait(RECONNECT_S)

    def _on_message(self, node: Any) -> Callable[[Any, Any], None]:
        def handle(body: Any, message: Any) -> None:
            self.app.clock.forward()
            try:
                node.handle_message(body, message)
            except Exception as exc:  # noqa: BLE001 - a bad control message must not stop the thread
                logger.warning("remote control: %s: %s", type(exc).__name__, exc)

        return handle
