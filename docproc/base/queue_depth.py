"""Queue depth and the age of the oldest waiting message, read straight from Redis.

kombu's Redis transport keeps each Celery queue as a Redis list: a publish is an
``LPUSH`` (the new message goes to the left end) and a worker takes messages with
``BRPOP``/``RPOP`` from the right end, so the *rightmost* element is the oldest
waiting message (a message restored after a lost worker is ``RPUSH``ed back to
the right end, first in line, and keeps its original timestamp). Messages sent
with a Celery priority other than 0 wait in sibling lists named
``{queue}\\x06\\x16{3|6|9}`` (kombu's ``sep`` and ``priority_steps``); they are
counted too. Delivered but unacknowledged messages are not waiting and are not
counted.

Celery messages carry no publish time, so every docproc client stamps one:
:func:`stamp_published` runs in Celery's ``before_task_publish`` signal (connected
in :mod:`workers.observability`) and writes :data:`PUBLISHED_AT_HEADER` (Unix
seconds) into the message headers. A message without it (sent by another client)
has an unknown age.

Used by the API's ``/metrics`` (``docproc_queue_depth``,
``docproc_queue_oldest_age_seconds``) and by ``docproc queues``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, MutableMapping
from dataclasses import dataclass
from typing import Any

import redis

PUBLISHED_AT_HEADER = "docproc_published_at"
"""Message header: when the message was published, Unix seconds (float)."""

KOMBU_PRIORITY_SEP = "\x06\x16"
KOMBU_PRIORITY_STEPS = (0, 3, 6, 9)


@dataclass(frozen=True)
class QueueStats:
    """One queue now: messages waiting, and the age in seconds of the oldest of them
    (0.0 for an empty queue, None when the oldest carries no publish timestamp)."""

    name: str
    depth: int
    oldest_age_s: float | None


def stamp_published(headers: MutableMapping[str, Any] | None, now: float | None = None) -> None:
    """Write the publish time into a message's headers (Celery's ``before_task_publish``)."""
    if headers is not None:
        headers[PUBLISHED_AT_HEADER] = time.time() if now is None else now


def priority_keys(queue: str) -> list[str]:
    """The Redis lists of ``queue``: the queue itself, then its priority siblings."""
    return [queue if pri == 0 else f"{queue}{KOMBU_PRIORITY_SEP}{pri}" for pri in KOMBU_PRIORITY_STEPS]


def published_at(raw: bytes | str | None) -> float | None:
    """The publish timestamp of one raw kombu message (JSON), or None when it has none."""
    if raw is None:
        return None
    try:
        message = json.loads(raw)
        value = message["headers"][PUBLISHED_AT_HEADER]
        return float(value)
    except (ValueError, TypeError, KeyError):
        return None


def queue_stats(client: redis.Redis, queues: Iterable[str], *, now: float | None = None) -> list[QueueStats]:
    """Depth and oldest-message age of each of ``queues``, in one Redis round trip.

    Raises redis errors as they come (the caller decides what "Redis down" means).
    """
    names = list(queues)
    pipe = client.pipeline(transaction=False)
    for name in names:
        for key in priority_keys(name):
            pipe.llen(key)
            pipe.lindex(key, -1)  # the right end: the next message out, the oldest
    replies = pipe.execute()
    now = time.time() if now is None else now
    out: list[QueueStats] = []
    per_queue = 2 * len(KOMBU_PRIORITY_STEPS)
    for i, name in enumerate(names):
        chunk = replies[i * per_queue:(i + 1) * per_queue]
        depth = sum(int(n) for n in chunk[0::2])
        ages: list[float | None] = [
            None if stamp is None else max(0.0, now - stamp)
            for length, raw in zip(chunk[0::2], chunk[1::2], strict=True)
            if int(length) > 0
            for stamp in [published_at(raw)]
        ]
        if not ages:
            oldest: float | None = 0.0
        elif any(age is None for age in ages):
            oldest = None
        else:
            oldest = max(a for a in ages if a is not None)
        out.append(QueueStats(name=name, depth=depth, oldest_age_s=oldest))
    return out
