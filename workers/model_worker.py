"""The model worker: one process per GPU that reads ``gpu`` pages of many jobs in batches.

``python -m workers --queues gpu`` (or ``docproc worker -Q gpu``) runs :func:`run`.
Why not a Celery solo worker: a solo pool runs one ``docproc.page`` at a time, so
the GPU sees batch 1. This process is a kombu consumer on the same broker and queue,
with the same Celery configuration (one visibility timeout for all clients):

* messages are the ``docproc.page`` tasks the API and intake already send
  (Celery protocol 2, args ``[job_id, page]``); nothing upstream changes, and a
  Celery worker consuming ``gpu`` (e.g. ``--queues intake,render,gpu``, which keeps
  the solo pool and batch 1) can run the same messages;
* ``prefetch_count = model_worker_prefetch``: it holds up to that many unacked page
  messages; after the first arrives it waits ``model_worker_batch_window_s`` for
  more, then runs them all with :func:`workers.model_batching.run_pages` (the engine
  buckets them by tile count and prompt length into generate calls);
* late acks: each message is acked right after its page is recorded. A page whose
  lease a live owner holds, or that met a transient fault, stays unacked and is
  looked at again later; a task's ``eta`` (Celery retry countdowns, deferrals) is
  honoured; an expired one is dropped;
* a killed model worker's unacked messages come back after the visibility timeout
  (a graceful stop puts them back at once); the per-page attempt counter still
  stops a poison page, and a page delivered before runs in a batch of its own;
* Flower: it sends Celery's task events (received, started, succeeded/failed) and
  worker heartbeats under its node name (``gpu@host``), so Flower lists the worker
  and its tasks. Celery's remote control (:mod:`workers.remote_control`): ``ping``
  (``celery inspect ping -d gpu@host`` is its health check), ``shutdown``, and the
  ``inspect`` calls Flower's worker page makes (stats, active, reserved, scheduled,
  queues, registered, conf); not ``revoke``: a canceled job's pages are dropped because
  the job is terminal;
* SIGTERM/SIGINT: finish the current batch, then stop;
* Celery's ``worker_init``, ``worker_ready`` and ``worker_shutdown`` signals are sent
  (with this object as sender, ``.app`` and ``.hostname``), so the worker-wide hooks
  (metrics endpoint, tracing) run as in a Celery worker.

The model is loaded before the first message is taken; device, dtype and
attention are logged then. A model that cannot be loaded stops the worker.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from celery import signals
from kombu import Consumer, Message
from kombu.exceptions import OperationalError

from docproc.base import metrics, model_workers, shared_metrics
from docproc.base.broker import GPU_QUEUE, PAGE_TASK
from docproc.base.errors import DocprocError
from workers.jobflow import inference_still_running
from workers.model_batching import PageOutcome, PageWork, run_pages
from workers.remote_control import ControlNode

logger = logging.getLogger(__name__)

HEARTBEAT_S = 2.0
RECHECK_S = 1.0  # how soon a leased page or a transient fault is looked at again (at most)


@dataclass
class Delivery:
    """One message held unacked, with the PageWork it asks for."""

    message: Message
    work: PageWork
    task_id: str
    not_before: float = 0.0  # time.time() before which it must not run (eta, backoff)
    tries: int = 0  # transient-fault retries here


def parse_page_message(message: Message) -> tuple[PageWork, str, float, float | None]:
    """``(work, task id, eta, expires)`` of a ``docproc.page`` message (protocol 2, or 1);
    ValueError for anything else. Times are epoch seconds (0 / None: none)."""
    headers = message.headers or {}
    body = message.decode()
    if "task" in headers:  # protocol 2: body is [args, kwargs, embed]
        name, task_id = headers.get("task"), headers.get("id", "")
        args, kwargs = (body[0], body[1]) if isinstance(body, list | tuple) and len(body) >= 2 else (body, {})
        retries, eta, expires = headers.get("retries") or 0, headers.get("eta"), headers.get("expires")
    elif isinstance(body, dict) and "task" in body:  # protocol 1
        name, task_id = body["task"], body.get("id", "")
        args, kwargs = body.get("args", []), body.get("kwargs", {})
        retries, eta, expires = body.get("retries") or 0, body.get("eta"), body.get("expires")
    else:
        raise ValueError("not a Celery task message")
    if name != PAGE_TASK:
        raise ValueError(f"task {name!r} is not {PAGE_TASK}")
    args = list(args or [])
    job_id = args[0] if args else kwargs.get("job_id")
    page = args[1] if len(args) > 1 else kwargs.get("page")
    if not isinstance(job_id, str) or not isinstance(page, int) or isinstance(page, bool):
        raise ValueError(f"bad {PAGE_TASK} arguments {args!r} {kwargs!r}")
    return PageWork(job_id, page, int(retries)), task_id, _epoch(eta) or 0.0, _epoch(expires)


def _epoch(value: Any) -> float | None:
    if not value:
        return None
    if isinstance(value, int | float):
        return float(value)
    moment = datetime.fromisoformat(str(value))
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return moment.timestamp()


class Events:
    """Celery task and worker events for Flower, from one dispatcher on its own connection
    (the heartbeat thread and the loop share it under a lock)."""

    def __init__(self, app: Any, hostname: str) -> None:
        self.app = app
        self.hostname = hostname
        self._conn: Any = None
        self._dispatcher: Any = None
        self._lock = threading.Lock()
        self.active = 0
        self.processed = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name="docproc-worker-heartbeat", daemon=True)

    def send(self, type_: str, **fields: Any) -> None:
        """Send one event (the dispatcher adds hostname, pid, timestamp); never raises."""
        try:
            with self._lock:
                if self._dispatcher is None:  # (re)connect lazily: the broker may have been away
                    self._conn = self.app.connection_for_write()
                    self._dispatcher = self.app.events.Dispatcher(self._conn, hostname=self.hostname, enabled=True)
                self._dispatcher.send(type_, **fields)
        except Exception as exc:  # noqa: BLE001 - monitoring must never stop the work
            logger.debug("event %s not sent: %s", type_, exc)
            self._drop()

    def _drop(self) -> None:
        with self._lock:
            for close in (getattr(self._dispatcher, "close", None), getattr(self._conn, "release", None)):
                try:
                    if close is not None:
                        close()
                except Exception:  # noqa: BLE001
                    pass
            self._dispatcher = self._conn = None

    def _worker(self, type_: str) -> None:
        from celery.worker.state import SOFTWARE_INFO

        self.send(type_, freq=HEARTBEAT_S, active=self.active, processed=self.processed,
                  loadavg=list(os.getloadavg()), **SOFTWARE_INFO)

    def start(self) -> None:
        self._worker("worker-online")
        self._thread.start()

    def _beat(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            self._worker("worker-heartbeat")

    def close(self) -> None:
        self._stop.set()
        self._worker("worker-offline")
        self._drop()


class ModelWorker:
    """The consumer loop (see the module docstring); :meth:`run` until :meth:`stop`."""

    def __init__(self, resources: Any, *, hostname: str | None = None) -> None:
        from workers.celery_app import app

        self.app = app
        self.r = resources
        self.settings = resources.settings
        self.hostname = (hostname or "gpu@%h").replace("%h", socket.gethostname())
        self.held: dict[str, Delivery] = {}  # by task id (a redelivered duplicate replaces nothing)
        self._extra: list[Delivery] = []  # duplicates of a held task id
        self.running: tuple[Delivery, ...] = ()  # the batch in generate now (read by remote control)
        self.started = time.time()
        self._stopping = threading.Event()

    def stop(self, *_: Any) -> None:
        if not self._stopping.is_set():
            logger.info("model worker: stopping after the current batch")
        self._stopping.set()

    # -- messages --

    def _on_message(self, body: Any, message: Message) -> None:  # noqa: ARG002 - kombu's signature
        try:
            work, task_id, eta, expires = parse_page_message(message)
        except Exception as exc:  # noqa: BLE001 - not ours: drop it loudly, never crash
            logger.error("model worker: dropping a message on %r that is no %s: %s", GPU_QUEUE, PAGE_TASK, exc)
            message.ack()
            return
        if expires is not None and expires < time.time():
            logger.info("page %s/%d: task %s expired; dropped", work.job_id, work.page, task_id)
            message.ack()
            return
        delivery = Delivery(message, work, task_id, not_before=eta)
        if task_id in self.held:
            self._extra.append(delivery)
        else:
            self.held[task_id] = delivery
        self.events.send("task-received", uuid=task_id, name=PAGE_TASK, args=repr([work.job_id, work.page]),
                         kwargs="{}", retries=work.retries)

    def holding(self) -> list[Delivery]:
        """Every delivery held, as a new list (the remote control's thread reads it too: the
        copy is made in one step under the GIL)."""
        return [*self.held.values(), *self._extra]

    def _due(self) -> list[Delivery]:
        now = time.time()
        return [d for d in self.holding() if d.not_before <= now]

    def _settle(self, deliveries: dict[PageWork, list[Delivery]], outcome: PageOutcome) -> None:
        """Ack the page's message(s) once it is recorded; keep them for later otherwise."""
        for d in deliveries.get(outcome.work, []):
            if outcome.final:
                d.message.ack()
                if self.held.get(d.task_id) is d:
                    del self.held[d.task_id]
                else:
                    self._extra = [x for x in self._extra if x is not d]
                self.events.processed += 1
                if outcome.result is not None and outcome.result.status == "failed":
                    error = outcome.result.error
                    self.events.send("task-failed", uuid=d.task_id,
                                     exception=f"{error.code}: {error.message}" if error else "failed")
                else:
                    self.events.send("task-succeeded", uuid=d.task_id,
                                     result=repr(outcome.result.status if outcome.result else None),
                                     runtime=(outcome.result.timings_ms.get("page", 0) / 1000.0
                                              if outcome.result else 0.0))
            else:
                d.tries += 1 if outcome.state == "retry" else 0
                wait = RECHECK_S if outcome.state == "leased" else min(60.0, RECHECK_S * 2 ** min(d.tries, 6))
                d.not_before = time.time() + min(wait, self.settings.lease_ttl_s / 3)

    def run_batch(self, due: list[Delivery]) -> list[PageOutcome]:
        """Run the due deliveries (one per page) as one batched call; ack as pages are recorded."""
        by_work: dict[PageWork, list[Delivery]] = {}
        for d in due:
            key = PageWork(d.work.job_id, d.work.page, d.work.retries)
            by_work.setdefault(key, []).append(d)
        works = list(by_work)
        for d in due:
            self.events.send("task-started", uuid=d.task_id)
        self.events.active = len(works)
        self.running = tuple(due)
        try:
            return run_pages(works, settings=self.settings, store=self.r.store, storage=self.r.storage,
                             engines=self.r.engines, leases=self.r.leases, on_ended=self.r.job_ended,
                             on_outcome=lambda o: self._settle(by_work, o))
        finally:
            shared_metrics.publish(self.r.redis)  # the batch's pages and tokens, service-wide
            self.events.active = 0
            self.running = ()
            if inference_still_running():  # a timed-out generate still holds the model
                logger.error("model worker: inference timed out and is still running; stopping (the "
                             "supervisor starts a fresh worker)")
                self.stop()

    # -- the loop --

    def _fill(self, conn: Any) -> None:
        """Wait for page messages: until ``prefetch`` are held, or the batching window after the
        first due one has passed, or (nothing due) a second went by."""
        s = self.settings
        window_end: float | None = None
        while not self._stopping.is_set():
            if self._due() and window_end is None:
                window_end = time.monotonic() + s.model_worker_batch_window_s
            held = len(self.held) + len(self._extra)
            if window_end is not None and (held >= s.model_worker_prefetch or time.monotonic() >= window_end):
                return
            timeout = RECHECK_S if window_end is None else max(0.001, window_end - time.monotonic())
            try:
                conn.drain_events(timeout=timeout)
            except TimeoutError:
                if window_end is None:
                    return  # let the caller look at leased / backed-off deliveries again

    def start_engine(self) -> str:
        """Load the model (device, dtype and attention are logged once); returns its id.
        DocprocError when it cannot be loaded."""
        s = self.settings
        engine = self.r.engines.internvl
        logger.info("model worker %s: %s on %s (dtype=%s, attention=%s); queue %r, prefetch %d, window %.3f s, "
                    "batch size %d, tile budget %d", self.hostname, engine.model_id, engine.device,
                    str(engine.dtype).removeprefix("torch."), engine.attn_implementation, GPU_QUEUE,
                    s.model_worker_prefetch, s.model_worker_batch_window_s, s.batch_size, engine.tile_budget())
        return engine.model_id

    def stop_engine(self) -> None:
        """Release what :meth:`start_engine` started (the in-process model stays with the process)."""

    @property
    def prefetch(self) -> int:
        """Page messages held unacked at once."""
        return self.settings.model_worker_prefetch

    def step(self, conn: Any) -> None:
        """One turn of the consumer loop: gather a batch, run it."""
        self._fill(conn)
        due = self._due()
        if due:
            self.run_batch(due)

    def on_connection_lost(self) -> None:
        """The held messages come back after the visibility timeout; forget them here."""
        self.held.clear()
        self._extra.clear()

    def run(self) -> int:
        """Start the engine, then consume until stopped. 0 on a clean stop; 3 when the model
        cannot be loaded (or its server cannot be reached)."""
        signals.worker_init.send(sender=self)  # what a Celery worker's start runs (tracing, ...)
        try:
            model_id = self.start_engine()
        except DocprocError as exc:
            logger.critical("model worker: %s; stopping", exc)
            self.stop_engine()
            return 3
        metrics.MODEL_WORKERS.labels(model=model_id).set(1)
        beacon = model_workers.Beacon(self.r.redis, self.hostname, model_id,
                                      self.settings.model_worker_heartbeat_s).start()  # online for the API and intake
        shared_metrics.start(self.r.redis)
        self.events = Events(self.app, self.hostname)
        self.events.start()
        control = ControlNode(self.app, self).start()
        signals.worker_ready.send(sender=self)  # e.g. the worker's /metrics (workers.observability)
        queue = self.app.amqp.queues[GPU_QUEUE]
        try:
            while not self._stopping.is_set():
                self._consume(queue)
        finally:
            beacon.stop()
            metrics.MODEL_WORKERS.labels(model=model_id).set(0)
            control.close()
            self.events.close()
            self.stop_engine()
            signals.worker_shutdown.send(sender=self)
        logger.info("model worker %s: stopped (%d pages done)", self.hostname, self.events.processed)
        return 0

    def _consume(self, queue: Any) -> None:
        """Consume on one broker connection until stopped or the connection is lost."""
        with self.app.connection_for_read() as conn:
            try:
                conn.ensure_connection(max_retries=1)
                with Consumer(conn, queues=[queue], callbacks=[self._on_message], accept=["json"],
                              prefetch_count=self.prefetch):
                    logger.info("model worker %s: ready", self.hostname)
                    while not self._stopping.is_set():
                        self.step(conn)
                # closing the channel puts the messages still held back on the queue
            except (*conn.connection_errors, OperationalError) as exc:
                # the held messages come back after the visibility timeout; leases and
                # write-once results make a second run of their pages harmless
                logger.warning("model worker: broker connection lost (%s); reconnecting", exc)
                self.on_connection_lost()
                self._stopping.wait(1.0)


def run(*, hostname: str | None = None, install_signals: bool = True,
        resources_factory: Callable[[], Any] | None = None) -> int:
    """``python -m workers --queues gpu``: the model worker in this process: the batched
    in-process engine, or the feeder of a model server when ``DOCPROC_MODEL_SERVER`` is set."""
    from workers.tasks import resources

    r = (resources_factory or resources)()
    if r.settings.model_server.strip():
        from workers.model_feeder import FeederWorker

        worker: ModelWorker = FeederWorker(r, hostname=hostname)
    else:
        worker = ModelWorker(r, hostname=hostname)
    if install_signals:
        signal.signal(signal.SIGTERM, worker.stop)
        signal.signal(signal.SIGINT, worker.stop)
    return worker.run()
