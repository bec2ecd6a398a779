"""Which model workers serve the ``gpu`` queue now: heartbeats in Redis.

A worker that consumes ``gpu`` (the batched model worker, or a Celery solo worker with
``gpu`` among its queues) announces itself once its model is loaded and every
``model_worker_heartbeat_s`` after that (:class:`Beacon`, a thread); it withdraws when it
stops. An announcement lives ``3 x model_worker_heartbeat_s``: a worker killed without a
word, or one that cannot load its model and restarts in a loop, is never online.

What reads it:

* ``POST /v1/jobs`` (:func:`docproc.submission.submit.submit_job`) refuses work that needs the model
  at once with 503 ``engine_unavailable`` when none is online (:func:`require_online`);
* intake (:func:`workers.jobflow.run_intake`) fails the pages it would put on ``gpu`` with
  the page error ``engine_unavailable`` instead of leaving them queued for hours;
* ``/readyz`` reports the model workers it sees, and ``GET /v1/jobs/{id}`` says why a job
  with model pages still queued waits (:func:`waiting_reason`);
* the watchdog tick fails the pages left on ``gpu`` once no model worker has been online for
  ``model_worker_grace_s`` (:func:`offline_for`, ``workers/stranded_pages.py``).

Redis layout::

    docproc:model-workers             hash  node name -> {"node", "model", "pid", "since", "until"} (JSON)
    docproc:model-workers:last-seen   str   when one last announced itself (Unix seconds)
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from typing import Any

import redis

from docproc.base.errors import EngineUnavailable

logger = logging.getLogger(__name__)

KEY = "docproc:model-workers"
LAST_SEEN = "docproc:model-workers:last-seen"  # when a model worker last announced itself (Unix s)
QUEUE = "gpu"
"""The queue model workers consume (``docproc.base.broker.GPU_QUEUE`` is this name)."""
LIFETIMES = 3  # an announcement outlives this many missed heartbeats


def announce(client: redis.Redis, node: str, model: str, heartbeat_s: float, since: float | None = None) -> None:
    """Say that ``node`` serves ``gpu`` with ``model`` for the next ``LIFETIMES`` heartbeats."""
    now = time.time()
    pipe = client.pipeline(transaction=False)
    pipe.hset(KEY, node, json.dumps({"node": node, "model": model, "pid": os.getpid(), "since": since or now,
                                     "until": now + LIFETIMES * heartbeat_s}))
    pipe.set(LAST_SEEN, now)
    pipe.execute()


def withdraw(client: redis.Redis, node: str) -> None:
    client.hdel(KEY, node)


def online(client: redis.Redis, now: float | None = None) -> list[dict[str, Any]]:
    """The model workers whose announcement is still alive, by node name (expired ones are dropped)."""
    now = time.time() if now is None else now
    alive, expired = [], []
    for node, raw in client.hgetall(KEY).items():
        try:
            entry = json.loads(raw)
            live = float(entry["until"]) > now
        except (ValueError, KeyError, TypeError):
            live = False
        if live:
            alive.append(entry)
        else:
            expired.append(node)
    if expired:
        client.hdel(KEY, *expired)
    return sorted(alive, key=lambda e: e["node"])


def offline_for(client: redis.Redis, now: float | None = None) -> float | None:
    """Seconds since a model worker was last online; None while one is (infinite: never seen)."""
    now = time.time() if now is None else now
    if online(client, now):
        return None
    seen = client.get(LAST_SEEN)
    return now - float(seen) if seen else float("inf")


NONE_ONLINE = ("no model worker serves the gpu queue (none has announced itself in the last "
               "{ttl:.0f} s: not started, or its model cannot be loaded)")


def require_online(client: redis.Redis, heartbeat_s: float) -> None:
    """EngineUnavailable (503, with Retry-After) when no model worker is online."""
    if not online(client):
        raise EngineUnavailable(NONE_ONLINE.format(ttl=LIFETIMES * heartbeat_s)
                                + "; work that needs the model is refused until one is")


def needs_model(task: str, engine: str, media_type: str | None) -> bool:
    """Whether a job certainly sends pages to the model worker: engine ``internvl``, or
    ``auto`` for ``extract`` or for an image (no text layer). (``auto`` ocr/tables of a PDF
    is decided per page at intake.)"""
    return engine == "internvl" or (engine == "auto" and (task == "extract" or media_type != "application/pdf"))


def waiting_reason(client: redis.Redis, heartbeat_s: float, *, pages_not_done: int) -> str | None:
    """Why a job with pages not done waits: no model worker online while model pages sit on
    the gpu queue; None otherwise."""
    if pages_not_done <= 0 or online(client):
        return None
    waiting = int(client.llen(QUEUE))
    if not waiting:
        return None
    return (NONE_ONLINE.format(ttl=LIFETIMES * heartbeat_s)
            + f"; this job has {pages_not_done} page(s) not done and {waiting} model page(s) wait on the "
            f"{QUEUE} queue until one is")


class Beacon:
    """A thread that announces ``node`` every ``heartbeat_s`` until :meth:`stop` (which withdraws it).
    A Redis fault skips a beat (logged), never stops the worker."""

    def __init__(self, client: redis.Redis, node: str, model: str, heartbeat_s: float) -> None:
        self._client, self._node, self._model, self._every = client, node, model, heartbeat_s
        self._since = time.time()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="docproc-model-worker-beacon", daemon=True)

    def start(self) -> Beacon:
        self._beat()
        self._thread.start()
        return self

    def _beat(self) -> None:
        try:
            announce(self._client, self._node, self._model, self._every, since=self._since)
        except redis.RedisError as exc:
            logger.warning("model worker %s: heartbeat not written (%s)", self._node, type(exc).__name__)

    def _run(self) -> None:
        while not self._stop.wait(self._every):
            self._beat()

    def stop(self) -> None:
        self._stop.set()
        try:
            withdraw(self._client, self._node)
        except redis.RedisError:
            pass  # it expires by itself
