"""Tracing hooks: OpenTelemetry spans per stage, off by default.

``with span("render", page=3): ...`` opens a span named ``docproc.render`` when
tracing is on and does nothing otherwise (also when opentelemetry is not
installed: it is the optional extra ``pip install .[otel]``). Every span gets the
request id and job id of the current log context (:mod:`docproc.base.logs`) as
attributes ``docproc.request_id`` / ``docproc.job_id``, plus the keyword
attributes given (``docproc.<name>``).

Stages (:data:`docproc.base.metrics.STAGES`): intake, render, tile, infer, postprocess,
store, webhook. Stages that run inside an engine call (tile, infer, postprocess)
are recorded after it from the page's ``timings_ms`` by :func:`stage_spans`, laid
end to end inside the engine's span.

Turning it on: ``DOCPROC_OTEL_ENABLED=true`` and an exporter: with
``opentelemetry-exporter-otlp-proto-http`` (or ``-grpc``) installed, spans go by
OTLP to ``OTEL_EXPORTER_OTLP_ENDPOINT`` (the exporter's own variable); without one
a warning is logged and tracing stays off. :func:`configure` takes a
``TracerProvider`` too (tests use the SDK's in-memory exporter).
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any, ParamSpec, TypeVar

from docproc.base import logs

logger = logging.getLogger(__name__)

SPAN_PREFIX = "docproc."
ENGINE_STAGES = ("tile", "infer", "postprocess")  # recorded from timings_ms after an engine call

P = ParamSpec("P")
R = TypeVar("R")

_tracer: Any = None  # an opentelemetry Tracer while tracing is on


def enabled() -> bool:
    return _tracer is not None


def configure(settings: Any, provider: Any = None) -> bool:
    """Turn tracing on (``settings.otel_enabled``) or off; True when it is on.

    ``provider``: the TracerProvider to use (default: a new SDK provider with an OTLP
    exporter, which also becomes the global one).
    """
    global _tracer
    if not getattr(settings, "otel_enabled", False):
        _tracer = None
        return False
    try:
        from opentelemetry import trace
    except ImportError:
        logger.warning("tracing: otel_enabled but opentelemetry is not installed (pip install .[otel]); off")
        _tracer = None
        return False
    if provider is None:
        provider = _default_provider(settings.otel_service_name)
        if provider is None:
            _tracer = None
            return False
        trace.set_tracer_provider(provider)
    _tracer = provider.get_tracer("docproc")
    return True


def _default_provider(service_name: str) -> Any:
    try:
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
    except ImportError:
        logger.warning("tracing: opentelemetry-sdk is not installed (pip install .[otel]); off")
        return None
    exporter = None
    for module in ("opentelemetry.exporter.otlp.proto.http.trace_exporter",
                   "opentelemetry.exporter.otlp.proto.grpc.trace_exporter"):
        try:
            exporter = __import__(module, fromlist=["OTLPSpanExporter"]).OTLPSpanExporter()
            break
        except ImportError:
            continue
    if exporter is None:
        logger.warning("tracing: no OTLP exporter installed (opentelemetry-exporter-otlp-proto-http); off")
        return None
    provider = TracerProvider(resource=Resource.create({"service.name": service_name}))
    provider.add_span_processor(BatchSpanProcessor(exporter))
    return provider


def _attributes(extra: Mapping[str, Any]) -> dict[str, Any]:
    attrs: dict[str, Any] = {}
    for name in ("request_id", "job_id", "page"):
        value = logs.current(name)
        if value is not None:
            attrs[SPAN_PREFIX + name] = value
    for name, value in extra.items():
        if value is None:
            continue
        attrs[SPAN_PREFIX + name] = value if isinstance(value, str | bool | int | float) else str(value)
    return attrs


@contextmanager
def span(name: str, **attributes: Any) -> Iterator[Any]:
    """A span ``docproc.<name>`` around the block (the current span is its parent); yields
    the span, or None when tracing is off. An exception is recorded and re-raised."""
    tracer = _tracer
    if tracer is None:
        yield None
        return
    with tracer.start_as_current_span(SPAN_PREFIX + name, attributes=_attributes(attributes)) as current:
        yield current


def stage_spans(timings_ms: Mapping[str, float], stages: tuple[str, ...] = ENGINE_STAGES,
                end_ns: int | None = None, **attributes: Any) -> None:
    """Spans for ``stages`` measured inside a call (``timings_ms`` of a page), laid end to
    end and ending at ``end_ns`` (default: now), as children of the current span."""
    tracer = _tracer
    if tracer is None:
        return
    durations = [(stage, float(timings_ms[stage])) for stage in stages if timings_ms.get(stage) is not None]
    end = time.time_ns() if end_ns is None else end_ns
    start = end - int(sum(ms for _, ms in durations) * 1_000_000)
    attrs = _attributes(attributes)
    for stage, ms in durations:
        stop = start + int(ms * 1_000_000)
        tracer.start_span(SPAN_PREFIX + stage, start_time=start, attributes=attrs).end(end_time=stop)
        start = stop


@contextmanager
def stage(name: str, **attributes: Any) -> Iterator[Any]:
    """:func:`span` plus one ``docproc_stage_seconds{stage=name}`` observation, for stages
    timed around a block (intake, store, webhook) rather than read from ``timings_ms``."""
    from docproc.base import metrics
    started = time.perf_counter()
    try:
        with span(name, **attributes) as current:
            yield current
    finally:
        metrics.STAGE_SECONDS.labels(stage=name).observe(time.perf_counter() - started)


def staged(name: str) -> Callable[[Callable[P, R]], Callable[P, R]]:
    """Decorator: the whole call is :func:`stage` ``name`` (span + stage histogram)."""

    def decorate(fn: Callable[P, R]) -> Callable[P, R]:
        @functools.wraps(fn)
        def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
            with stage(name):
                return fn(*args, **kwargs)

        return wrapper

    return decorate
