"""One timestamp format for everything docproc shows: RFC 3339 in UTC, always with
microseconds and a ``Z`` (``2026-12-06T01:39:24.010000Z``).

Pydantic writes ``…24Z`` when a time has no fraction and ``…24.010000Z`` when it has one,
and ``datetime.isoformat()`` writes ``+00:00``: the API, the webhooks and the CLI mixed all
three. :data:`UtcTime` is the field type of every time in a response or an event; :func:`iso`
formats one by hand (a webhook's ``timestamp``, a Unix time).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

from pydantic import PlainSerializer


def iso(value: datetime | float) -> str:
    """``value`` (an aware datetime, a naive one taken as UTC, or Unix seconds) as
    ``YYYY-MM-DDTHH:MM:SS.ffffffZ``."""
    if isinstance(value, int | float):
        value = datetime.fromtimestamp(value, UTC)
    elif value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


UtcTime = Annotated[datetime, PlainSerializer(iso, return_type=str, when_used="json")]
"""A datetime field written as :func:`iso` in JSON (parsed as any ISO 8601 time)."""
