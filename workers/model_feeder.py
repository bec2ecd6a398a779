"""The model worker as an asynchronous feeder of a model server (``DOCPROC_MODEL_SERVER`` set).

The batched in-process worker (:class:`workers.model_worker.ModelWorker`) runs its
pages in generate calls that end with their longest page. A server with continuous
batching (vLLM) wants the opposite: many independent requests, each ending on its
own. :class:`FeederWorker` is the same kombu consumer on the ``gpu`` queue (Flower
events, remote control, ``docproc.page`` messages, late acks) with another loop:

* it holds up to ``model_server_in_flight`` pages (plus a quarter more unacked
  messages, so the next pages are at hand), and starts each due page as soon as a
  slot is free: no batch window, no batch barrier;
* each page runs as one coroutine on an asyncio loop in a thread of its own:
  :func:`~workers.jobflow.begin_page` (stale jobs, the stored result, the page lease,
  the attempt counter and ``too_many_attempts``) and
  :func:`~workers.jobflow.prepare_page` (render, route; text pages end here) run on a
  small thread pool, the streamed request (:class:`~workers.engines.served.ServedEngine`)
  on the loop, then :func:`~workers.jobflow.record_page` (write-once, counted once,
  the last page finalises) on the pool again;
* its outcome goes back to the consumer thread, which acks the message at once (kombu
  channels are not thread-safe, so only that thread acks);
* cancel check: every second the jobs of the pages in flight are looked up in one
  round trip; a page whose job ended (canceled, or failed by the watchdog) is aborted
  at the server and its message acked;
* the server away (restart, dropped connection, 5xx): the page's lease is released,
  nothing is recorded, and the message is kept and started again with backoff. These
  starts count as retries, not deliveries, so a server restart never turns into
  ``too_many_attempts``; after ``model_server_retries`` of them the page fails with
  ``engine_unavailable``. While the server does not answer its health check, no new
  page is started;
* SIGTERM: no new page starts; those in flight finish (at most two minutes) and are
  acked, then the worker stops and its other held messages go back to the queue;
* a worker killed with pages in flight: their messages come back after the visibility
  timeout; leases and write-once results keep every page recorded exactly once.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from docproc.base.broker import GPU_QUEUE
from docproc.base.errors import DocprocError, InferenceServerUnavailable
from docproc.jobs.leases import LeaseHeld
from docproc.jobs.results import PageResult
from workers import jobflow
from workers.engines.served import ServedEngine
from workers.jobflow import ModelPage, PageStart
from workers.model_batching import PageOutcome, PageWork, retry_outcome
from workers.model_server import ModelServer, server_for
from workers.model_worker import Delivery, ModelWorker
from workers.pipeline import finish_page

logger = logging.getLogger(__name__)

POLL_S = 0.02  # how long one turn waits for broker messages
CANCEL_CHECK_S = 1.0
HEALTH_CHECK_S = 2.0
BLOCKING_THREADS = 8  # Redis, S3 and rendering of the pages in flight
DRAIN_S = 120.0  # on SIGTERM, how long the pages in flight may take to finish before they are put back
ENGINE_UNAVAILABLE = "engine_unavailable"


class FeederWorker(ModelWorker):
    """The consumer loop that feeds a model server (see the module docstring)."""

    def __init__(self, resources: Any, *, hostname: str | None = None, server: ModelServer | None = None) -> None:
        super().__init__(resources, hostname=hostname)
        self.server = server
        self.engine: ServedEngine | None = None
        self.in_flight: dict[str, tuple[Delivery, Future]] = {}  # by task id
        self.finished: queue.SimpleQueue[tuple[Delivery, PageOutcome]] = queue.SimpleQueue()
        self._loop = asyncio.new_event_loop()
        self._loop_thread = threading.Thread(target=self._loop.run_forever, name="docproc-feeder", daemon=True)
        self._pool = ThreadPoolExecutor(max_workers=BLOCKING_THREADS, thread_name_prefix="docproc-feeder-io")
        self._next_cancel_check = 0.0
        self._next_health_check = 0.0
        self.server_ready = True
        self._drain_until: float | None = None  # set by stop(): no new pages, finish those in flight

    # -- engine --

    @property
    def prefetch(self) -> int:
        n = self.settings.model_server_in_flight
        return n + max(1, n // 4)

    def start_engine(self) -> str:
        s = self.settings
        self.server = self.server or server_for(s)
        if self.server is None:
            raise DocprocError("the feeder needs DOCPROC_MODEL_SERVER")
        logger.info("model worker %s: waiting for the %s server at %s", self.hostname, self.server.kind,
                    self.server.base_url)
        self.server.wait_ready(s)
        self._loop_thread.start()
        self.engine = ServedEngine(s, self.server.base_url, kind=self.server.kind)
        logger.info("model worker %s: %s served by %s at %s; queue %r, %d pages in flight", self.hostname,
                    self.engine.model_id, self.server.kind, self.server.base_url, GPU_QUEUE,
                    s.model_server_in_flight)
        return self.engine.model_id

    def stop_engine(self) -> None:
        for _, future in list(self.in_flight.values()):
            future.cancel()
        if self.engine is not None and self._loop.is_running():
            asyncio.run_coroutine_threadsafe(self.engine.aclose(), self._loop).result(timeout=10)
        if self._loop.is_running():
            self._loop.call_soon_threadsafe(self._loop.stop)
        self._pool.shutdown(wait=False, cancel_futures=True)
        if self.server is not None:
            self.server.close()

    def stop(self, *_: Any) -> None:
        """SIGTERM / remote shutdown: start no new page, let those in flight finish (at most
        :data:`DRAIN_S`), then stop; what is still unacked then goes back to the queue."""
        if self._drain_until is None:
            logger.info("model worker: stopping after the %d pages in flight", len(self.in_flight))
            self._drain_until = time.monotonic() + DRAIN_S
        if not self.in_flight or time.monotonic() >= self._drain_until:
            super().stop()

    # -- the loop --

    def step(self, conn: Any) -> None:
        """Take messages for a moment, settle finished pages, start due ones."""
        deadline = time.monotonic() + POLL_S
        while time.monotonic() < deadline:
            try:
                conn.drain_events(timeout=max(0.001, deadline - time.monotonic()))
            except TimeoutError:
                break
        self._settle_finished()
        self._check_cancels()
        self._check_health()
        if self._drain_until is not None:
            self.stop()  # stops for good once nothing is in flight, or the drain time is up
            return
        self._start_due()

    def _start_due(self) -> None:
        room = self.settings.model_server_in_flight - len(self.in_flight)
        if room <= 0 or not self.server_ready:
            return
        busy = {(x.job_id, x.page) for x in (d.work for d, _ in self.in_flight.values())}
        for d in self._due():
            if room <= 0:
                break
            if d.task_id in self.in_flight or (d.work.job_id, d.work.page) in busy:
                continue  # a duplicate of a page in flight waits for it (then finds its stored result)
            busy.add((d.work.job_id, d.work.page))
            self.events.send("task-started", uuid=d.task_id)
            future = asyncio.run_coroutine_threadsafe(self._run_page(d), self._loop)
            future.add_done_callback(lambda f, d=d: self.finished.put((d, _outcome_of(d, f))))
            self.in_flight[d.task_id] = (d, future)
            room -= 1
        self._publish_in_flight()

    def _settle_finished(self) -> None:
        while True:
            try:
                d, outcome = self.finished.get_nowait()
            except queue.Empty:
                break
            entry = self.in_flight.get(d.task_id)
            if entry is not None and entry[0] is d:
                del self.in_flight[d.task_id]
            server_away = outcome.state == "retry" and (outcome.error or "").startswith(ENGINE_UNAVAILABLE)
            if server_away and d.tries + 1 > self.settings.model_server_retries:
                outcome = self._give_up(d, outcome)
                server_away = False
            try:
                # a page in flight when the broker connection was lost: its ack goes with the channel,
                # and the redelivered message finds the stored result
                self._settle({d.work: [d]}, outcome)
            except Exception:  # noqa: BLE001 - an ack on a lost channel: the message comes back
                logger.warning("page %s/%d: ack failed; the message will be redelivered", d.work.job_id,
                               d.work.page, exc_info=True)
            if server_away:
                d.work = PageWork(d.work.job_id, d.work.page, d.work.retries + 1)  # a retry, not a delivery
        self._publish_in_flight()

    def _publish_in_flight(self) -> None:
        """What Flower's inspect calls (workers.remote_control) and the worker events report as running."""
        self.running = tuple(d for d, _ in self.in_flight.values())
        self.events.active = len(self.running)

    def _give_up(self, d: Delivery, outcome: PageOutcome) -> PageOutcome:
        """The server stayed away through every retry: the page fails engine_unavailable."""
        message = (f"the model server at {self.engine.base_url if self.engine else '?'} was unavailable for "
                   f"{self.settings.model_server_retries + 1} tries of this page")
        try:
            recorded = jobflow.fail_page(d.work.job_id, d.work.page, ENGINE_UNAVAILABLE, message,
                                         settings=self.settings, store=self.r.store, storage=self.r.storage,
                                         on_ended=self.r.job_ended)
        except Exception as exc:  # noqa: BLE001 - keep the message; try again later
            return retry_outcome(d.work, exc)
        return PageOutcome(d.work, "recorded" if recorded is not None else "skipped", result=recorded)

    def _check_cancels(self) -> None:
        now = time.monotonic()
        if now < self._next_cancel_check or not self.in_flight:
            return
        self._next_cancel_check = now + CANCEL_CHECK_S
        jobs = sorted({d.work.job_id for d, _ in self.in_flight.values()})
        try:
            ended = self.r.store.ended(jobs)
        except Exception:  # noqa: BLE001 - Redis away: the pages' own checks catch it
            return
        for d, future in list(self.in_flight.values()):
            if d.work.job_id in ended and not future.done():
                logger.info("page %s/%d: its job ended; aborting it", d.work.job_id, d.work.page)
                future.cancel()

    def _check_health(self) -> None:
        now = time.monotonic()
        if now < self._next_health_check or self.engine is None:
            return
        self._next_health_check = now + HEALTH_CHECK_S
        if self.server_ready:
            return  # looked at again only after a page found the server away
        try:
            ready = asyncio.run_coroutine_threadsafe(self.engine.ready(), self._loop).result(timeout=10)
        except Exception:  # noqa: BLE001
            ready = False
        if ready:
            logger.info("model server: answering again; resuming")
        self.server_ready = ready

    # -- one page (on the loop) --

    async def _run_page(self, d: Delivery) -> PageOutcome:
        work, s, r = d.work, self.settings, self.r
        loop = asyncio.get_running_loop()

        def blocking(fn, *args, **kwargs):
            return loop.run_in_executor(self._pool, lambda: fn(*args, **kwargs))

        try:
            begun = await blocking(jobflow.begin_page, work.job_id, work.page, settings=s, store=r.store,
                                   storage=r.storage, leases=r.leases, retries=work.retries, on_ended=r.job_ended)
        except LeaseHeld as exc:
            return PageOutcome(work, "leased", error=str(exc))
        if not isinstance(begun, PageStart):
            return PageOutcome(work, "recorded" if begun is not None else "skipped", result=begun)
        started = time.perf_counter()
        try:
            prepared = await blocking(jobflow.prepare_page, begun.job, work.page, settings=s, storage=r.storage,
                                      engines=r.engines)
            if isinstance(prepared, ModelPage):
                result = await self._infer(prepared)
            else:
                result = prepared
            result.timings_ms.setdefault("page", round((time.perf_counter() - started) * 1000.0, 3))
            recorded = await blocking(jobflow.record_page, work.job_id, result, attempts=begun.attempts,
                                      settings=s, store=r.store, storage=r.storage, on_ended=r.job_ended,
                                      lease=begun.lease)
            return PageOutcome(work, "recorded", result=recorded, batch=len(self.in_flight))
        finally:
            begun.lease.release()

    async def _infer(self, prepared: ModelPage) -> PageResult:
        assert self.engine is not None
        try:
            result, _ = await self.engine.read_page(prepared.rendered, prepared.task, prepared.schema)
        except InferenceServerUnavailable as exc:
            self.server_ready = False
            raise _ServerAway(str(exc)) from None
        return finish_page(prepared.rendered, result)  # render timings and warnings; strings made serialisable


class _ServerAway(Exception):
    """The server could not answer the page: put it back (a retry, not a delivery)."""


def _outcome_of(d: Delivery, future: Future) -> PageOutcome:
    """The outcome of a page's coroutine, its exceptions turned into outcomes."""
    if future.cancelled():
        return PageOutcome(d.work, "skipped", error="canceled: its job ended")
    exc = future.exception()
    if exc is None:
        return future.result()
    if isinstance(exc, _ServerAway):
        logger.warning("page %s/%d: %s; put back", d.work.job_id, d.work.page, exc,
                       extra={"job_id": d.work.job_id, "page": d.work.page})
        return PageOutcome(d.work, "retry", error=f"{ENGINE_UNAVAILABLE}: {exc}")
    return retry_outcome(d.work, exc)
