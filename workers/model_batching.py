"""Cross-job batching on the model worker, as plain functions: many pages, one batched generate.

:func:`run_pages` is the batched counterpart of :func:`workers.jobflow.run_page`: it
takes page requests of any number of jobs (``docproc.page`` messages the model
worker pulled from the ``gpu`` queue, :mod:`workers.model_worker`), applies the same
per-page rules (:func:`~workers.jobflow.begin_page`: stale and already-stored pages,
the page lease, the attempt counter and its poison guard), renders every page,
reads all model pages with one :meth:`InternVLEngine.process_pages` call (the
engine buckets them by tile count and prompt length, mixes tasks and schemas, and
splits a batch that raises), then records each page to its own job
(:func:`~workers.jobflow.record_page`: write-once, counted once, the last page
finalises) and releases its lease. Each page's outcome goes to ``on_outcome`` as
soon as it is final, so the caller acks that page's message right after it is
recorded.

Isolation: a page that fails (render, model, postprocess, timeout) fails alone; a
transient fault (storage or Redis away) on one page leaves that page for a retry
and the others go on. A page delivered before (its earlier worker was lost, perhaps
because of this very page) is a suspect: it runs in a batch of its own, so a page
that kills its worker cannot take its batch-mates' attempts with it.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal

import redis

from docproc.base.settings import Settings
from docproc.base.storage import Storage
from docproc.jobs.leases import LeaseHeld, PageLeases
from docproc.jobs.results import PageResult
from docproc.jobs.store import JobStore
from workers import jobflow
from workers.jobflow import ModelPage, OnEnded, PageStart
from workers.pipeline import Engines, finish_page

logger = logging.getLogger(__name__)

OutcomeState = Literal["recorded", "skipped", "leased", "retry"]
TRANSIENT_REDIS = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError)


@dataclass(frozen=True)
class PageWork:
    """One page request: a ``docproc.page`` message's ``[job_id, page]`` and its retry count."""

    job_id: str
    page: int
    retries: int = 0


@dataclass
class PageOutcome:
    """What became of one PageWork.

    ``recorded``: its result is stored and counted (ack the message); ``skipped``: the
    job had ended, or a permanent fault (``error``) gave the page up (ack); ``leased``: a live owner runs the page, keep the message and
    look again later; ``retry``: a transient fault, keep the message and retry later.
    """

    work: PageWork
    state: OutcomeState
    result: PageResult | None = None
    error: str | None = None
    batch: int = 0  # model pages read in the same engine call (0: none)

    @property
    def final(self) -> bool:
        return self.state in ("recorded", "skipped")


@dataclass
class _Running:
    index: int
    start: PageStart
    started: float = field(default_factory=time.perf_counter)
    result: PageResult | None = None


def run_pages(
    works: Sequence[PageWork],
    *,
    settings: Settings,
    store: JobStore,
    storage: Storage,
    engines: Engines,
    leases: PageLeases,
    on_ended: OnEnded | None = None,
    on_outcome: Callable[[PageOutcome], None] | None = None,
) -> list[PageOutcome]:
    """Run the pages of ``works`` (any jobs) with batched inference; one outcome each, in order."""
    outcomes: list[PageOutcome | None] = [None] * len(works)

    def settle(i: int, outcome: PageOutcome) -> None:
        outcomes[i] = outcome
        if on_outcome is not None:
            on_outcome(outcome)

    running: list[_Running] = []
    for i, work in enumerate(works):
        try:
            begun = jobflow.begin_page(work.job_id, work.page, settings=settings, store=store, storage=storage,
                                       leases=leases, retries=work.retries, on_ended=on_ended)
        except LeaseHeld as exc:
            logger.info("page %s/%d: leased by %s; kept for later", work.job_id, work.page, exc.owner,
                        extra={"job_id": work.job_id, "page": work.page})
            settle(i, PageOutcome(work, "leased", error=str(exc)))
            continue
        except Exception as exc:  # noqa: BLE001 - transient or not, the others go on
            settle(i, retry_outcome(work, exc))
            continue
        if isinstance(begun, PageStart):
            running.append(_Running(i, begun))
        else:
            settle(i, PageOutcome(work, "recorded" if begun is not None else "skipped", result=begun))

    model: list[tuple[_Running, ModelPage]] = []
    for run in list(running):
        work = works[run.index]
        try:
            prepared = jobflow.prepare_page(run.start.job, work.page, settings=settings, storage=storage,
                                            engines=engines)
        except Exception as exc:  # noqa: BLE001 - transient (prepare_page turns the rest into results)
            run.start.lease.release()
            running.remove(run)
            settle(run.index, retry_outcome(work, exc))
            continue
        if isinstance(prepared, PageResult):
            run.result = prepared
        else:
            model.append((run, prepared))

    batch_sizes = _infer(model, settings=settings, engines=engines)

    for run in running:
        work = works[run.index]
        result = run.result
        result.timings_ms.setdefault("page", round((time.perf_counter() - run.started) * 1000.0, 3))
        try:
            recorded = jobflow.record_page(work.job_id, result, attempts=run.start.attempts, settings=settings,
                                           store=store, storage=storage, on_ended=on_ended, lease=run.start.lease)
        except Exception as exc:  # noqa: BLE001 - the result is not counted: retry the page later
            settle(run.index, retry_outcome(work, exc))
        else:
            settle(run.index, PageOutcome(work, "recorded", result=recorded, batch=batch_sizes.get(run.index, 0)))
        finally:
            run.start.lease.release()
    return [o for o in outcomes if o is not None]


def retry_outcome(work: PageWork, exc: BaseException) -> PageOutcome:
    """A transient fault: retry the page later. Anything else (the job is gone, storage
    refuses access): the page is given up, logged, and its message acked."""
    extra = {"job_id": work.job_id, "page": work.page}
    if jobflow.is_transient(exc) or isinstance(exc, TRANSIENT_REDIS):
        logger.warning("page %s/%d: %s: %s; will retry", work.job_id, work.page, type(exc).__name__, exc, extra=extra)
        return PageOutcome(work, "retry", error=f"{type(exc).__name__}: {exc}")
    logger.error("page %s/%d: %s: %s; given up", work.job_id, work.page, type(exc).__name__, exc, extra=extra)
    return PageOutcome(work, "skipped", error=f"{type(exc).__name__}: {exc}")


def _infer(model: list[tuple[_Running, ModelPage]], *, settings: Settings, engines: Engines) -> dict[int, int]:
    """Read the model pages: suspects (delivered before) one per call, the rest in one call.
    Sets each run's result; returns page index -> pages in its engine call."""
    if not model:
        return {}
    fresh = [m for m in model if m[0].start.attempts <= 1]
    groups = ([fresh] if fresh else []) + [[m] for m in model if m[0].start.attempts > 1]
    sizes: dict[int, int] = {}
    for group in groups:
        jobs = {run.start.job.id for run, _ in group}
        logger.info("model batch: %d pages of %d jobs", len(group), len(jobs), extra={"stage": "infer"})
        for run, result in zip((r for r, _ in group), _read(group, settings=settings, engines=engines)):
            run.result = result
            sizes[run.index] = len(group)
    return sizes


def _read(group: list[tuple[_Running, ModelPage]], *, settings: Settings, engines: Engines) -> list[PageResult]:
    """One engine call for ``group`` under the inference timeout (scaled by the generate calls
    it needs); a call that raises outside the engine's own isolation is re-run page by page."""
    engine = engines.internvl  # loaded at worker start, outside the timeout
    items = [(m.rendered, m.task, m.schema) for _, m in group]
    timeout = settings.inference_timeout_s * max(1, math.ceil(len(items) / settings.batch_size))
    try:
        results = jobflow.call_with_timeout(lambda: engine.process_pages(items), timeout)
    except jobflow.InferenceTimeout as exc:
        results = [jobflow.failed_page(m.rendered.number, jobflow.TIMEOUT, str(exc), engine="internvl")
                   for _, m in group]
    except Exception:  # noqa: BLE001 - isolate the page that broke the call
        if len(group) == 1:
            logger.exception("model batch: the page raised")
            m = group[0][1]
            results = [jobflow.failed_page(m.rendered.number, "inference_error",
                                           "the engine raised on this page; see the worker log", engine="internvl")]
        else:
            logger.exception("model batch: the call raised; reading its %d pages one by one", len(group))
            return [r for one in group for r in _read([one], settings=settings, engines=engines)]  # finished there
    return [finish_page(m.rendered, result) for (_, m), result in zip(group, results)]
