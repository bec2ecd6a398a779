"""Structured logs: JSON lines (or text), secrets redacted, the request id on every line.

A JSON line holds ``time`` (ISO 8601 UTC), ``level``, ``logger``, ``message`` and,
when present, the fields a call site gives in ``extra=`` (:data:`FIELDS`: job_id,
tenant, page, stage, duration_ms, event_id, batch_id, request_id), the Celery
``task``/``task_id`` and ``exc`` (the traceback). Fields bound to the current
context with :func:`bind` (the API middleware binds the request id, a worker
binds the request id and job id of the task it runs) are added to every line
that does not set them itself.

Redaction runs on the whole formatted line, text or JSON: API keys (``dp_...``),
webhook secrets (``whsec_...``), the value of ``Authorization``/``X-API-Key``
headers and the query string of presigned URLs (``X-Amz-Signature`` ...). It is
a safety net: never log secrets in the first place.

Configured by the service processes (``log_format``: json | text, from
:class:`~docproc.base.settings.Settings`): the API through :func:`dict_config` handed
to uvicorn, workers through Celery's logging signals (:mod:`workers.observability`).
The CLI keeps its human output.
"""

from __future__ import annotations

import contextvars
import json
import logging
import re
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

FIELDS = ("job_id", "tenant", "page", "stage", "duration_ms", "event_id", "batch_id", "request_id")
"""The structured fields of a log line (``logger.info(..., extra={"job_id": ...})``)."""

_context: contextvars.ContextVar[dict[str, Any] | None] = contextvars.ContextVar("docproc_log_context", default=None)

# --------------------------------------------------------------------------- request ids

REQUEST_ID_HEADER = "X-Request-Id"
_REQUEST_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:@/+=-]{0,127}")


def new_request_id() -> str:
    """A fresh request id (32 hex characters)."""
    return uuid.uuid4().hex


def sane_request_id(value: str | None) -> str | None:
    """``value`` when it is a usable request id (1-128 printable ASCII characters from a
    safe set, no spaces, not a secret), else None: the caller then makes a new one."""
    if not value or not _REQUEST_ID_RE.fullmatch(value) or redact(value) != value:
        return None
    return value


def current(name: str) -> Any:
    """A field bound to the current context (``current("request_id")``), or None."""
    return (_context.get() or {}).get(name)


def request_id() -> str | None:
    """The request id of the current context (API request or Celery task), if any."""
    return current("request_id")


@contextmanager
def bind(**fields: Any) -> Iterator[None]:
    """Add ``fields`` (None values are skipped) to every log line in this context."""
    token = _context.set({**(_context.get() or {}), **{k: v for k, v in fields.items() if v is not None}})
    try:
        yield
    finally:
        _context.reset(token)


def set_context(**fields: Any) -> contextvars.Token:
    """Like :func:`bind` for code with separate start and end hooks (Celery's prerun and
    postrun); hand the token to :func:`reset_context`."""
    return _context.set({k: v for k, v in fields.items() if v is not None})


def reset_context(token: contextvars.Token | None) -> None:
    if token is None:
        _context.set(None)
        return
    try:
        _context.reset(token)
    except ValueError:  # made in another context (a thread): just clear
        _context.set(None)


# --------------------------------------------------------------------------- redaction

_REDACTIONS: tuple[tuple[re.Pattern[str], str], ...] = (
    # Authorization: Bearer xyz / "authorization": "Basic xyz" / X-API-Key: xyz
    (re.compile(r"(?i)((?:authorization|x-api-key|api[_-]?key|secret)[\"']?\s*[:=]\s*[\"']?)"
                r"(?:(?:bearer|basic|token)\s+)?[^\s\"',;}]+"), r"\1***"),
    (re.compile(r"\bdp_[A-Za-z0-9_\-]{4,}"), "dp_***"),  # docproc API keys
    (re.compile(r"\bwhsec_[A-Za-z0-9+/=_\-]{4,}"), "whsec_***"),  # webhook secrets
    # presigned URLs (SigV4 and SigV2 query auth): keep the path, drop the query
    (re.compile(r"(?i)(https?://[^\s?\"']+)\?[^\s\"']*(?:x-amz-signature|x-amz-credential|x-amz-security-token|"
                r"signature=|awsaccesskeyid)[^\s\"']*"), r"\1?***"),
    (re.compile(r"(?i)\b(x-amz-signature|x-amz-credential|x-amz-security-token)=[^&\s\"']+"), r"\1=***"),
)


# Every ASCII text one of _REDACTIONS can match holds one of these once lower-cased (for
# ASCII, lower() is exactly the patterns' case-insensitivity): an ASCII text without any
# is returned as it is, without the five regex scans. Other texts always take them.
_SECRET_MARKS = ("authorization", "api_key", "api-key", "apikey", "secret", "dp_", "whsec_", "x-amz-", "signature=",
                 "awsaccesskeyid")


def redact(text: str) -> str:
    """``text`` with API keys, webhook secrets, auth header values and presigned query strings masked."""
    if text.isascii():
        lowered = text.lower()
        if not any(mark in lowered for mark in _SECRET_MARKS):
            return text
    for pattern, replacement in _REDACTIONS:
        text = pattern.sub(replacement, text)
    return text


# --------------------------------------------------------------------------- formatters

class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, the structured fields
    (string values redacted)."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": redact(record.getMessage()),
        }
        bound = _context.get() or {}
        for name in FIELDS:
            value = getattr(record, name, None)
            if value is None:
                value = bound.get(name)
            if value is not None:
                entry[name] = redact(value) if isinstance(value, str) else value
        for name in ("task", "task_id"):
            value = getattr(record, name, None) or bound.get(name)
            if value is not None and isinstance(value, str):
                entry[name] = value
        if record.exc_info:
            entry["exc"] = redact(self.formatException(record.exc_info))
        elif record.exc_text:
            entry["exc"] = redact(record.exc_text)
        if record.stack_info:
            entry["stack"] = redact(self.formatStack(record.stack_info))
        # values are redacted before encoding, so the line stays valid JSON
        return json.dumps(entry, default=str, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    """A plain text formatter (or a wrapped one, e.g. Celery's) whose lines are redacted;
    the request id and job id of the context follow the message."""

    def __init__(self, fmt: str | None = None, *, wrapped: logging.Formatter | None = None, **kwargs: Any) -> None:
        super().__init__(fmt or "%(asctime)s %(levelname)s %(name)s: %(message)s", **kwargs)
        self._wrapped = wrapped

    def format(self, record: logging.LogRecord) -> str:
        line = self._wrapped.format(record) if self._wrapped is not None else super().format(record)
        tags = []
        for name in ("request_id", "job_id"):
            value = getattr(record, name, None) or current(name)
            if value is not None and f"{name}=" not in line:
                tags.append(f"{name}={value}")
        if tags:
            first, sep, rest = line.partition("\n")
            line = f"{first} [{' '.join(tags)}]{sep}{rest}"
        return redact(line)


def formatter(log_format: str) -> logging.Formatter:
    """The formatter for ``log_format`` (json | text)."""
    return JsonFormatter() if log_format == "json" else TextFormatter()


SECRET_LOGGING_LIBRARIES = ("botocore", "boto3", "s3transfer", "urllib3")
"""At DEBUG these log request signatures and headers (botocore.auth writes a presigned
URL's signature); they never log below INFO, whatever the process's level."""


def quiet_secret_loggers() -> None:
    """Keep :data:`SECRET_LOGGING_LIBRARIES` at INFO or above (for processes whose logging
    someone else configured, e.g. Celery's)."""
    for name in SECRET_LOGGING_LIBRARIES:
        library = logging.getLogger(name)
        if library.getEffectiveLevel() < logging.INFO:
            library.setLevel(logging.INFO)


def dict_config(log_format: str = "json", level: str | int = "INFO") -> dict[str, Any]:
    """A :func:`logging.config.dictConfig` for a service process: one stderr handler on
    the root logger with docproc's formatter; uvicorn's loggers propagate to it."""
    level = logging.getLevelName(level) if isinstance(level, int) else level.upper()
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"docproc": {"()": "docproc.base.logs.formatter", "log_format": log_format}},
        "handlers": {"stderr": {"class": "logging.StreamHandler", "formatter": "docproc", "stream": "ext://sys.stderr"}},
        "root": {"handlers": ["stderr"], "level": level},
        "loggers": {
            **{name: {"handlers": [], "propagate": True, "level": level}
               for name in ("uvicorn", "uvicorn.error", "uvicorn.access")},
            **{name: {"handlers": [], "propagate": True, "level": "INFO" if level == "DEBUG" else level}
               for name in SECRET_LOGGING_LIBRARIES},
        },
    }


def configure(log_format: str = "json", level: str | int = "INFO") -> None:
    """Configure this process's logging for a service (see :func:`dict_config`)."""
    import logging.config

    logging.config.dictConfig(dict_config(log_format, level))


def restyle(logger: logging.Logger, log_format: str) -> None:
    """Give every handler of ``logger`` docproc's formatter (json), or wrap its own
    formatter with redaction (text): for handlers someone else made (Celery's)."""
    for handler in logger.handlers:
        if log_format == "json":
            if not isinstance(handler.formatter, JsonFormatter):
                handler.setFormatter(JsonFormatter())
        elif not isinstance(handler.formatter, TextFormatter):
            handler.setFormatter(TextFormatter(wrapped=handler.formatter or logging.Formatter()))
