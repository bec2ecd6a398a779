"""The API's request middleware: request id, HTTP metrics and the access log line.

Every request gets one request id: the client's ``X-Request-Id`` when it is sane
(:func:`docproc.base.logs.sane_request_id`), else a new one. It is bound to the log
context for the request (every log line carries it, a job created by it stores
it, the Celery tasks sent for it carry it in their headers) and returned in the
response's ``X-Request-Id`` header.

Metrics are labelled by the matched route's *template* (``/v1/jobs/{job_id}``),
never the raw path, so ids and scanners cannot blow up the label set; a request
that matched no route counts as ``unmatched``.

A plain ASGI middleware (not ``BaseHTTPMiddleware``): no extra task per request,
and the context it binds is the one the route runs in.
"""

from __future__ import annotations

import logging
import time

from starlette.datastructures import Headers, MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from docproc.base import logs, metrics

logger = logging.getLogger("docproc.api.access")

METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
QUIET_ROUTES = frozenset({"/healthz", "/readyz", "/metrics"})  # probes and scrapes: access log at DEBUG


class RequestObservability:
    """Request id in and out, ``docproc_http_*`` metrics, one access log line per request."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = logs.sane_request_id(Headers(scope=scope).get(logs.REQUEST_ID_HEADER)) or logs.new_request_id()
        scope.setdefault("state", {})["request_id"] = request_id
        status = 500
        started = time.perf_counter()

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                MutableHeaders(scope=message)[logs.REQUEST_ID_HEADER] = request_id
            await send(message)

        with logs.bind(request_id=request_id):
            try:
                await self.app(scope, receive, send_with_id)
            finally:
                self._record(scope, status, time.perf_counter() - started)

    @staticmethod
    def _record(scope: Scope, status: int, seconds: float) -> None:
        route = getattr(scope.get("route"), "path", None) or "unmatched"
        method = scope.get("method", "GET") if scope.get("method") in METHODS else "other"
        try:
            metrics.HTTP_REQUESTS.labels(route=route, method=method, status=str(status)).inc()
            metrics.HTTP_REQUEST_SECONDS.labels(route=route, method=method).observe(seconds)
        except Exception:  # noqa: BLE001 - metrics never fail a request
            logger.exception("http metrics not recorded")
        level = logging.DEBUG if route in QUIET_ROUTES and status < 400 else logging.INFO
        tenant = (scope.get("state") or {}).get("tenant")  # set by api.deps.get_tenant
        logger.log(level, "%s %s %d", method, route, status,
                   extra={"duration_ms": round(seconds * 1000.0, 3), "stage": "api", "tenant": tenant})
