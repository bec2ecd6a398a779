"""The whole service's counters in Redis, so one scrape target (the API's ``/metrics``) sees them.

Pages, finished jobs, webhook attempts, tokens ... are counted in worker processes (prefork
children, the model worker, the webhook threads, the scheduler's ticks), on other hosts than
the API. Every docproc process keeps counting in its own prometheus_client registry as
before, and :func:`publish` adds what its ``docproc_*`` counters and histograms gained since
its last publish to one Redis hash (``HINCRBYFLOAT``, one pipeline): the sums over every
process that ever ran, kept by Redis (AOF), so a process that exits or is killed loses at
most its last unpublished seconds and no total ever goes down.

Who publishes: a Celery task's process after each task (``task_postrun``, :func:`publish_soon`:
at once when its last publish is :data:`MIN_GAP_S` old, else its publisher thread does at
that gap, so a busy process publishes every two seconds instead of after every task; and
once more as the process exits), the model worker after each batch, the API before each
scrape, and in every process a daemon thread every :data:`INTERVAL_S` (what is counted outside
tasks). A Redis fault keeps the deltas for the next publish; it never reaches the work.

:class:`SharedCollector` (the API's ``/metrics``) turns the hash back into metric families
with the names, help and types of :mod:`docproc.base.metrics`. Gauges are per process and not in
the hash: ``docproc_model_workers`` is read from the model workers' heartbeats
(:mod:`docproc.base.model_workers`), ``docproc_gpu_memory_bytes`` from the gauges each model worker
publishes with its heartbeat-like lifetime, labelled by ``worker``.

Redis layout::

    docproc:metrics            hash  json [sample name, {labels}] -> value (float)
    docproc:metrics:gauges     hash  json [sample name, {labels}, worker] -> json [value, expires at]
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import redis

logger = logging.getLogger(__name__)

KEY = "docproc:metrics"
GAUGES_KEY = "docproc:metrics:gauges"
INTERVAL_S = 5.0
MIN_GAP_S = 2.0  # publish_soon: the shortest time between two publishes of a busy process (each one
# sends every changed sample, ~100 HINCRBYFLOATs with the stage histograms: 0.5 s cost 0.7 CPU ms a page)
GAUGE_LIFETIME_S = 3 * INTERVAL_S
PREFIX = "docproc_"
SHARED_TYPES = ("counter", "histogram")
HEARTBEAT_GAUGES = ("docproc_model_workers",)  # read from the model workers' heartbeats instead


_fields: dict[tuple[str, tuple[tuple[str, str], ...]], str] = {}


def _field(name: str, labels: dict[str, str]) -> str:
    """The hash field of a sample (JSON ``[name, {labels}]``), made once per sample."""
    key = (name, tuple(labels.items()))
    field = _fields.get(key)
    if field is None:
        field = _fields[key] = json.dumps([name, labels], sort_keys=True, separators=(",", ":"))
    return field


def _local_samples() -> Iterator[tuple[str, str, str, dict[str, str], float]]:
    """(family type, family name, sample name, labels, value) of this process's docproc metrics."""
    from prometheus_client import REGISTRY

    for family in REGISTRY.collect():
        if not family.name.startswith(PREFIX):
            continue
        for sample in family.samples:
            if sample.name.endswith("_created"):
                continue
            yield family.type, family.name, sample.name, dict(sample.labels), float(sample.value)


class _Publisher:
    """This process's last published values (per process: a forked child starts anew from the
    copy it inherited, which its parent already published, so nothing is counted twice)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.published: dict[str, float] = {}
        self.pid = os.getpid()
        self.thread: threading.Thread | None = None
        self.client: redis.Redis | None = None
        self.worker = f"{socket.gethostname()}:{os.getpid()}"
        self.last = 0.0  # time.monotonic() of the last publish
        self.wake = threading.Event()  # publish_soon: the thread publishes at last + MIN_GAP_S
        self.pending = False  # publish_soon left counts for the thread to publish


_state = _Publisher()


def _publisher() -> _Publisher:
    global _state
    if _state.pid != os.getpid():  # a forked child: its own lock, thread and client
        inherited = _state.published
        _state = _Publisher()
        _state.published = dict(inherited)
    return _state


def publish(client: redis.Redis) -> int:
    """Add this process's counter/histogram gains since its last publish to the shared hash,
    and refresh its live gauges; returns how many samples moved. Never raises."""
    state = _publisher()
    with state.lock:
        state.last = time.monotonic()
        state.pending = False
        gains: dict[str, float] = {}
        current: dict[str, float] = {}
        gauges: dict[str, str] = {}
        until = time.time() + GAUGE_LIFETIME_S
        for kind, family, name, labels, value in _local_samples():
            if kind in SHARED_TYPES:
                field = _field(name, labels)
                current[field] = value
                if value != state.published.get(field, 0.0):
                    gains[field] = value - state.published.get(field, 0.0)
            elif kind == "gauge" and family not in HEARTBEAT_GAUGES:  # per process: labelled by worker
                gauges[json.dumps([name, labels, state.worker], sort_keys=True)] = json.dumps([value, until])
        if not gains and not gauges:
            return 0
        try:
            pipe = client.pipeline(transaction=False)
            for field, gain in gains.items():
                pipe.hincrbyfloat(KEY, field, gain)
            if gauges:
                pipe.hset(GAUGES_KEY, mapping=gauges)
            pipe.execute()
        except redis.RedisError as exc:
            logger.debug("metrics: not published (%s); kept for the next publish", type(exc).__name__)
            state.pending = True  # the publisher thread tries again MIN_GAP_S after this one
            return 0
        state.published.update(current)
        return len(gains)


def publish_soon(client: redis.Redis) -> None:
    """:func:`publish` after a unit of work (a Celery task): at once when this process's last
    publish is at least :data:`MIN_GAP_S` old, else by its publisher thread (:func:`start`)
    that long after the last one. An idle process's counts arrive as the task ends; a busy
    one publishes every :data:`MIN_GAP_S`, not after every task. Never raises."""
    state = _publisher()
    start(client)
    if time.monotonic() - state.last >= MIN_GAP_S:
        publish(client)
    else:
        state.pending = True
        state.wake.set()


def flush() -> None:
    """As the process exits: publish now what :func:`publish_soon` left to the thread."""
    state = _state
    if state.pid == os.getpid() and state.client is not None and state.pending:
        publish(state.client)


def start(client: redis.Redis) -> None:
    """Publish every :data:`INTERVAL_S` from a daemon thread of this process (one per process;
    a later call only points it at ``client``)."""
    state = _publisher()
    with state.lock:
        state.client = client
        if state.thread is not None:
            return
        state.thread = threading.Thread(target=_loop, args=(state,), name="docproc-metrics-publisher", daemon=True)
        state.thread.start()


def _loop(state: _Publisher) -> None:
    while True:
        woken = state.wake.wait(INTERVAL_S)
        if state.pid != os.getpid():
            return
        if woken:  # publish_soon: at MIN_GAP_S after the last publish
            state.wake.clear()
            delay = state.last + MIN_GAP_S - time.monotonic()
            if delay > 0:
                time.sleep(delay)
        if state.client is not None:
            publish(state.client)
            if state.pending:  # it failed (Redis away), or publish_soon asked again meanwhile
                state.wake.set()


# ---------------------------------------------------------------------------
# the API's side: read it back
# ---------------------------------------------------------------------------


def _sort_key(sample: tuple[str, dict[str, str], float]) -> tuple:
    name, labels, _ = sample
    le = labels.get("le")
    bucket = float("inf") if le == "+Inf" else float(le) if le is not None else -1.0
    rest = sorted((k, v) for k, v in labels.items() if k != "le")
    return (rest, name.endswith("_bucket") is False, bucket, name)


class SharedCollector:
    """The service-wide docproc metrics from Redis, as families named and typed like this
    process's (:mod:`docproc.base.metrics`); model workers from their heartbeats. Raises redis errors."""

    def __init__(self, client: redis.Redis) -> None:
        self._client = client

    def collect(self) -> Iterator[Any]:
        from prometheus_client import REGISTRY
        from prometheus_client.metrics_core import Metric

        from docproc.base import model_workers
        pipe = self._client.pipeline(transaction=False)
        pipe.hgetall(KEY)
        pipe.hgetall(GAUGES_KEY)
        counters, gauges = pipe.execute()
        by_family: dict[str, list[tuple[str, dict[str, str], float]]] = {}
        for field, value in counters.items():
            name, labels = json.loads(field)
            by_family.setdefault(_family_of(name), []).append((name, labels, float(value)))
        now, expired = time.time(), []
        for field, raw in gauges.items():
            name, labels, worker = json.loads(field)
            value, until = json.loads(raw)
            if until < now:
                expired.append(field)
            else:
                by_family.setdefault(name, []).append((name, {"worker": worker, **labels}, float(value)))
        if expired:
            self._client.hdel(GAUGES_KEY, *expired)
        workers: dict[str, int] = {}
        for entry in model_workers.online(self._client):
            workers[entry["model"]] = workers.get(entry["model"], 0) + 1
        by_family["docproc_model_workers"] = [("docproc_model_workers", {"model": m}, n) for m, n in workers.items()]
        for family in REGISTRY.collect():
            if family.name.startswith(PREFIX) and family.name in by_family:
                metric = Metric(family.name, family.documentation, family.type)
                for name, labels, value in sorted(by_family[family.name], key=_sort_key):
                    metric.add_sample(name, labels, value)
                yield metric


def _family_of(sample: str) -> str:
    for suffix in ("_total", "_bucket", "_count", "_sum"):
        if sample.endswith(suffix):
            return sample[: -len(suffix)]
    return sample
