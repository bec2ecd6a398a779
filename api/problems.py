"""Errors as RFC 9457 problem details (``application/problem+json``).

Every error the API answers with has the same shape::

    {"type": "urn:docproc:problem:file_too_large", "title": "File too large",
     "status": 413, "detail": "the file is ... bytes; the limit is ...",
     "code": "file_too_large", "instance": "urn:uuid:...", ...extension members}

- a :class:`~docproc.base.errors.DocprocError` maps by its ``http_status`` and ``code``;
  its details become extension members (``limit``, ``page_count`` ...);
- request validation errors are 422 ``invalid_request`` with ``errors``: one
  ``{"loc", "message", "type"}`` per field;
- Starlette's own HTTP errors (unknown route, wrong method) keep their status;
- Redis out of reach is 503 ``service_unavailable``;
- anything else is a 500 ``internal_error`` whose body says nothing about the cause
  (no traceback, no message); the log line carries the same ``instance`` id.

``instance`` is a fresh ``urn:uuid`` per occurrence, logged with the error, so an
operator can find the log line from what a client reports.
"""

from __future__ import annotations

import logging
import uuid
from http import HTTPStatus
from typing import Any

import redis
from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from docproc.base import metrics
from docproc.base.errors import DocprocError

log = logging.getLogger("docproc.api")

PROBLEM_MEDIA_TYPE = "application/problem+json"
TYPE_PREFIX = "urn:docproc:problem:"
# Members a DocprocError's details may not overwrite.
RESERVED = frozenset({"type", "title", "status", "detail", "code", "instance"})
# Codes for Starlette's own HTTP errors, by status.
HTTP_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    406: "not_acceptable",
    413: "content_too_large",
    415: "unsupported_media_type",
}


class Problem(BaseModel):
    """An RFC 9457 problem; extension members (``limit``, ``errors`` ...) may follow."""

    model_config = ConfigDict(extra="allow")

    type: str = Field(description="URI naming the problem type: urn:docproc:problem:<code>.")
    title: str = Field(description="Short summary of the problem type (the same for every occurrence).")
    status: int = Field(description="The HTTP status code.")
    detail: str = Field(description="What went wrong this time, for a human.")
    code: str = Field(description="Machine-readable error code; match on this.")
    instance: str = Field(description="Identifies this occurrence (also in the server's log).")


PROBLEM_REF = {"$ref": "#/components/schemas/Problem"}  # api.openapi adds Problem to the components


def title_for(code: str) -> str:
    """``"file_too_large"`` -> ``"File too large"``."""
    return code.replace("_", " ").capitalize()


def new_instance() -> str:
    """A fresh occurrence id for a problem's ``instance``."""
    return f"urn:uuid:{uuid.uuid4()}"


def problem_response(
    status: int,
    code: str,
    detail: str,
    *,
    extra: dict[str, Any] | None = None,
    headers: dict[str, str] | None = None,
    instance: str | None = None,
) -> JSONResponse:
    """A problem+json response; ``extra`` members never replace the standard ones."""
    body: dict[str, Any] = {
        "type": TYPE_PREFIX + code,
        "title": title_for(code),
        "status": status,
        "detail": detail,
        "code": code,
        "instance": instance or new_instance(),
    }
    for key, value in (extra or {}).items():
        if key not in RESERVED:
            body[key] = value
    metrics.ERRORS.labels(code=code, stage="api").inc()
    return JSONResponse(body, status_code=status, headers=headers, media_type=PROBLEM_MEDIA_TYPE)


def problem_for_error(exc: DocprocError) -> JSONResponse:
    """The response for a DocprocError: its status, code, message and details.

    ``RateLimited``'s ``retry_after`` and ``Unauthorized`` also set the
    ``Retry-After`` and ``WWW-Authenticate`` headers; any 503 (Redis or storage
    out of reach) says ``Retry-After: 5``, as the Redis handler below does.
    """
    headers: dict[str, str] = {}
    retry_after = getattr(exc, "retry_after", None)
    if retry_after is None and exc.http_status == 503:
        retry_after = 5
    if retry_after is not None:
        headers["Retry-After"] = str(max(1, int(retry_after)))
    if exc.http_status == 401:
        headers["WWW-Authenticate"] = 'Bearer realm="docproc"'
    instance = new_instance()
    if exc.http_status >= 500:
        log.error("%s: %s (%s)", exc.code, exc.message, instance)
    return problem_response(
        exc.http_status, exc.code, exc.message,
        extra=jsonable_encoder(exc.details), headers=headers, instance=instance,
    )


def field_errors(errors: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Pydantic's errors as ``{"loc", "message", "type"}`` (never the rejected input)."""
    return [
        {"loc": [str(part) for part in err.get("loc", ())], "message": err.get("msg", ""), "type": err.get("type", "")}
        for err in errors
    ]


def validation_problem(errors: list[dict[str, Any]]) -> JSONResponse:
    """422 ``invalid_request`` listing every field error."""
    listed = field_errors(errors)
    summary = "; ".join(f"{'.'.join(e['loc']) or 'body'}: {e['message']}" for e in listed[:5])
    return problem_response(422, "invalid_request", f"the request is invalid: {summary}", extra={"errors": listed})


async def _docproc_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, DocprocError)
    return problem_for_error(exc)


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    return validation_problem(list(exc.errors()))


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    status = exc.status_code
    code = HTTP_CODES.get(status, "http_error")
    try:
        default = HTTPStatus(status).phrase
    except ValueError:
        default = "HTTP error"
    detail = exc.detail if isinstance(exc.detail, str) else default
    return problem_response(status, code, detail, headers=dict(exc.headers or {}))


async def _redis_down(request: Request, exc: Exception) -> JSONResponse:
    instance = new_instance()
    log.error("redis unreachable on %s %s: %s (%s)", request.method, request.url.path, type(exc).__name__, instance)
    return problem_response(
        503, "service_unavailable", "the job store (Redis) is unreachable; retry later",
        headers={"Retry-After": "5"}, instance=instance,
    )


async def _unhandled(request: Request, exc: Exception) -> JSONResponse:
    instance = new_instance()
    # Starlette answers this outside the app's middleware: the request id (api.middleware)
    # is taken from the request's state, for the log line and the response header.
    request_id = getattr(request.state, "request_id", None)
    log.error(
        "unhandled error on %s %s (%s)", request.method, request.url.path, instance,
        exc_info=(type(exc), exc, exc.__traceback__), extra={"request_id": request_id},
    )
    headers = {"X-Request-Id": request_id} if request_id else None
    return problem_response(500, "internal_error", "internal server error", instance=instance, headers=headers)


def install_problem_handlers(app: FastAPI) -> None:
    """Answer every error of ``app`` as problem+json (see the module docstring)."""
    app.add_exception_handler(DocprocError, _docproc_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(redis.exceptions.ConnectionError, _redis_down)
    app.add_exception_handler(redis.exceptions.TimeoutError, _redis_down)
    app.add_exception_handler(Exception, _unhandled)


def problem_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` entries documenting problem+json bodies for ``statuses``."""
    out: dict[int | str, dict[str, Any]] = {}
    for status in statuses:
        try:
            description = HTTPStatus(status).phrase
        except ValueError:
            description = "Error"
        out[status] = {"description": description, "content": {PROBLEM_MEDIA_TYPE: {"schema": PROBLEM_REF}}}
    return out
