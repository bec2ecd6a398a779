"""Signed webhooks (Standard Webhooks): events, signing, delivery with retries, the log.

Events: ``job.succeeded``, ``job.failed``, ``job.partial`` (the after-end step
:func:`job_event_step`; a canceled job sends nothing: its client canceled it), and any
other type through :func:`emit_event` (``batch.completed``, ``reprocess.completed``).
The body is small and fixed when the event is made::

    {"type": "job.succeeded", "timestamp": "2026-...Z", "data": {"job_id": ..., "state": ...,
     "pages_done": 3, "pages_failed": 0, "result_url": "/v1/jobs/<id>/result", ...}}

Every attempt is signed anew (Standard Webhooks, :mod:`docproc.delivery.signing`): ``webhook-id`` (the event id, the same
on every retry: receivers dedupe on it), ``webhook-timestamp`` (the attempt's Unix
time), ``webhook-signature: v1,<base64 HMAC-SHA256(key, "{id}.{timestamp}.{body}")>``
once per secret of the tenant (two during a rotation, space-separated). Secrets are
``whsec_`` + base64 of the key bytes, in ``settings.webhook_secrets``. Receivers check
with :func:`verify`.

Delivery (at least once, each attempt at most once): the first attempt is a
``docproc.webhook.deliver(event_id, attempt)`` task on the ``webhooks`` queue. An attempt
runs only if it is the next one (a claim in Redis: a redelivered task for an attempt
already recorded does nothing), re-checks the URL against the SSRF guard
(:mod:`docproc.delivery.ssrf`), connects to the checked address with no redirects, and records
its outcome. Only 2xx succeeds. Otherwise the next attempt is due after
``webhook_retry_schedule_s[n]`` (with jitter; a ``Retry-After`` longer than that wins),
and after the last one the event is dead-lettered. 410 Gone dead-letters the event at
once and disables the endpoint (tenant + URL): later events to it are recorded dead
without a request until :func:`enable_endpoint` (``POST /v1/webhooks/endpoints/enable``).

Every pending event sits in the ``due`` zset, scored by when it next needs attention;
retries due within ``webhook_countdown_max_s`` are also sent as Celery countdowns, later
ones wait there for the periodic tick (:func:`enqueue_due`), which also re-sends a
delivery whose task was lost (after ``webhook_lease_s``). So no countdown ever comes near
the broker's visibility timeout.

Redis layout::

    docproc:webhook:event:{id}             hash  doc (event JSON), state (pending|succeeded|dead),
                                                 attempts, base (attempts before the last
                                                 redeliver), dead_reason
    docproc:webhook:event:{id}:attempts    list  one JSON record per attempt
    docproc:webhook:event:{id}:claim       str   the attempt running now (expires)
    docproc:webhook:due                    zset  pending event id -> when it is next due (s)
    docproc:webhook:subject:{t}:{subject}  zset  event ids of a job (batch ...) -> created (ms)
    docproc:webhook:dead:{t}               zset  dead-lettered event ids -> when (ms)
    docproc:webhook:disabled:{t}           hash  sha256(url) -> {"url", "at", "event_id"}
"""

from __future__ import annotations

import email.utils
import functools
import hashlib
import json
import logging
import math
import random
import re
import ssl
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import certifi
import httpx
import redis
from pydantic import BaseModel, Field

from docproc.base import metrics, tracing
from docproc.base.broker import WEBHOOKS_QUEUE
from docproc.base.errors import (
    ConfigurationError,
    InvalidRequest,
    NotFound,
    WebhookEndpointDisabled,
    WebhookNotConfigured,
    WebhookUrlRefused,
)
from docproc.base.settings import Settings
from docproc.base.timestamps import UtcTime, iso
from docproc.delivery.deadline_transport import DeadlineTransport
from docproc.delivery.signing import generate_secret, sign_headers, signature, verify  # noqa: F401 - the public surface
from docproc.delivery.ssrf import resolve_target, split_url
from docproc.jobs import lifecycle
from docproc.jobs.store import Job

logger = logging.getLogger(__name__)
# httpx logs every request's URL at INFO; a webhook URL may carry the receiver's token.
logging.getLogger("httpx").setLevel(logging.WARNING)

DELIVER_TASK = "docproc.webhook.deliver"
JOB_EVENTS: dict[str, str] = {"succeeded": "job.succeeded", "failed": "job.failed", "partial": "job.partial"}
EVENT_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,159}")
USER_AGENT = "docproc-webhooks/1"
EventState = Literal["pending", "succeeded", "dead"]
Outcome = Literal["success", "http_error", "timeout", "connection_error", "refused", "gone", "disabled"]

_DUE = "docproc:webhook:due"
_CLAIM_MARGIN_S = 30


def _event_key(event_id: str) -> str:
    return f"docproc:webhook:event:{event_id}"


def _attempts_key(event_id: str) -> str:
    return f"docproc:webhook:event:{event_id}:attempts"


def _claim_key(event_id: str) -> str:
    return f"docproc:webhook:event:{event_id}:claim"


def _subject_key(tenant: str, subject: str) -> str:
    return f"docproc:webhook:subject:{tenant}:{subject}"


def _dead_key(tenant: str) -> str:
    return f"docproc:webhook:dead:{tenant}"


def _disabled_key(tenant: str) -> str:
    return f"docproc:webhook:disabled:{tenant}"


def _url_hash(url: str) -> str:
    return hashlib.sha256(url.encode()).hexdigest()


# ---------------------------------------------------------------------------
# models
# ---------------------------------------------------------------------------


class WebhookEvent(BaseModel):
    """An event as made (immutable): what is sent, where, for whom."""

    id: str
    type: str
    tenant: str
    url: str
    body: str = Field(description="The exact JSON body sent (and signed) on every attempt.")
    created_at: UtcTime
    subject: str | None = Field(None, description="The job (batch ...) id the event is about.")
    request_id: str | None = None


class DeliveryAttempt(BaseModel):
    """One delivery attempt as logged."""

    attempt: int
    at: UtcTime
    outcome: Outcome
    status_code: int | None = None
    latency_ms: float | None = None
    response: str | None = Field(None, description="The start of the receiver's response body.")
    error: str | None = None
    next_attempt_at: UtcTime | None = None


class EventStatus(BaseModel):
    """An event, its state and every attempt so far."""

    id: str
    type: str
    url: str
    subject: str | None
    created_at: UtcTime
    state: EventState
    dead_reason: str | None = None
    attempts: list[DeliveryAttempt]
    next_attempt_at: UtcTime | None = None


# ---------------------------------------------------------------------------
# secrets of a tenant (signing and verifying: docproc.delivery.signing)
# ---------------------------------------------------------------------------


def tenant_secrets(settings: Settings, tenant: str) -> list[str]:
    """The tenant's signing secrets (newest first); WebhookNotConfigured when it has none."""
    found = [s for s in settings.webhook_secrets.get(tenant, []) if s]
    if not found:
        raise WebhookNotConfigured(f"tenant {tenant!r} has no webhook signing secret; ask the operator to set one")
    return found


def check_webhook(url: str | None, tenant: str, settings: Settings) -> None:
    """At submission: the URL passes the SSRF guard and the tenant can sign (or raise
    WebhookUrlRefused / WebhookNotConfigured; a URL that is not http(s) is refused first)."""
    if url is None:
        return
    split_url(url)
    tenant_secrets(settings, tenant)
    resolve_target(url, settings.webhook_allow_hosts)


# ---------------------------------------------------------------------------
# Lua
# ---------------------------------------------------------------------------

# KEYS: event, due, dead, subject|""; ARGV: doc, id, due score, state, now ms, dead reason
# -> 1 created, 0 existed
_CREATE = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('HSET', KEYS[1], 'doc', ARGV[1], 'state', ARGV[4], 'attempts', 0, 'base', 0)
if ARGV[4] == 'pending' then
  redis.call('ZADD', KEYS[2], ARGV[3], ARGV[2])
else
  redis.call('HSET', KEYS[1], 'dead_reason', ARGV[6])
  redis.call('ZADD', KEYS[3], ARGV[5], ARGV[2])
end
if KEYS[4] ~= '' then redis.call('ZADD', KEYS[4], ARGV[5], ARGV[2]) end
return 1
"""

# KEYS: event, claim; ARGV: attempt, claim ttl s -> 1 claimed, 0 not the next attempt / taken, -1 missing
_CLAIM = """
local st = redis.call('HGET', KEYS[1], 'state')
if not st then return -1 end
if st ~= 'pending' then return 0 end
if tonumber(redis.call('HGET', KEYS[1], 'attempts')) ~= tonumber(ARGV[1]) - 1 then return 0 end
if not redis.call('SET', KEYS[2], ARGV[1], 'NX', 'EX', ARGV[2]) then return 0 end
return 1
"""

# KEYS: event, claim, attempts, due, dead; ARGV: attempt, record, state, due score, id, now ms, dead reason
# -> 1 recorded, 0 not the next attempt (a duplicate)
_RECORD = """
if tonumber(redis.call('HGET', KEYS[1], 'attempts')) ~= tonumber(ARGV[1]) - 1 then
  if redis.call('GET', KEYS[2]) == ARGV[1] then redis.call('DEL', KEYS[2]) end
  return 0
end
redis.call('RPUSH', KEYS[3], ARGV[2])
redis.call('HSET', KEYS[1], 'attempts', ARGV[1], 'state', ARGV[3])
if ARGV[3] == 'pending' then
  redis.call('ZADD', KEYS[4], ARGV[4], ARGV[5])
else
  redis.call('ZREM', KEYS[4], ARGV[5])
end
if ARGV[3] == 'dead' then
  redis.call('HSET', KEYS[1], 'dead_reason', ARGV[7])
  redis.call('ZADD', KEYS[5], ARGV[6], ARGV[5])
end
redis.call('DEL', KEYS[2])
return 1
"""

# KEYS: due; ARGV: now s, lease until s, limit -> ids due now, each pushed to the lease end
_TAKE_DUE = """
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[3]))
for _, id in ipairs(ids) do redis.call('ZADD', KEYS[1], ARGV[2], id) end
return ids
"""

# KEYS: event, due, dead; ARGV: id, due score -> attempts so far (the next is +1), -1 missing, -2 pending
_REDELIVER = """
local st = redis.call('HGET', KEYS[1], 'state')
if not st then return -1 end
if st == 'pending' then return -2 end
local n = redis.call('HGET', KEYS[1], 'attempts')
redis.call('HSET', KEYS[1], 'state', 'pending', 'base', n)
redis.call('HDEL', KEYS[1], 'dead_reason')
redis.call('ZREM', KEYS[3], ARGV[1])
redis.call('ZADD', KEYS[2], ARGV[2], ARGV[1])
return tonumber(n)
"""


# KEYS: subject, due, dead; ARGV: event key prefix, "1" to delete (else only count)
# -> events of the subject (deleted if asked), or -1 when one is still pending (kept)
_PURGE_SUBJECT = """
local ids = redis.call('ZRANGE', KEYS[1], 0, -1)
for _, id in ipairs(ids) do
  if redis.call('ZSCORE', KEYS[2], id) then return -1 end
end
if ARGV[2] == '1' then
  for _, id in ipairs(ids) do
    local key = ARGV[1] .. id
    redis.call('DEL', key, key .. ':attempts', key .. ':claim')
    redis.call('ZREM', KEYS[3], id)
  end
  redis.call('DEL', KEYS[1])
end
return #ids
"""


def _script(client: redis.Redis, source: str):
    """A callable Lua script (EVALSHA, loaded on first use; registering is local and cheap)."""
    return client.register_script(source)


# ---------------------------------------------------------------------------
# making events
# ---------------------------------------------------------------------------


def _now() -> datetime:
    return datetime.now(UTC)


def emit_event(ctx: lifecycle.Context, *, tenant: str, event_type: str, event_id: str, url: str | None,
               data: dict) -> str | None:
    """Create the event once (idempotent on ``event_id``), record it and enqueue its first
    delivery; returns the event id, or None when ``url`` is None (nothing is sent).

    A second call with an existing ``event_id`` changes nothing and returns the id. ``data``
    is the payload's ``data`` object (keep it small: ids, counts, links); a ``job_id``,
    ``batch_id`` or ``reprocess_id`` in it files the event under that subject (see
    :func:`events_for_subject`). ``event_id``: 1-160 of ``[A-Za-z0-9_.:-]``, e.g.
    ``evt_<batch_id>_completed``.
    """
    return _emit(ctx, tenant=tenant, event_type=event_type, event_id=event_id, url=url, data=data)


def _emit(ctx: lifecycle.Context, *, tenant: str, event_type: str, event_id: str, url: str | None,
          data: dict, request_id: str | None = None) -> str | None:
    if url is None:
        return None
    if not EVENT_ID_RE.fullmatch(event_id):
        raise InvalidRequest(f"invalid webhook event id {event_id!r}")
    r = ctx.redis
    now = time.time()
    subject = next((str(data[k]) for k in ("job_id", "batch_id", "reprocess_id") if data.get(k)), None)
    body = json.dumps({"type": event_type, "timestamp": iso(now), "data": data}, separators=(",", ":"),
                      default=str)
    event = WebhookEvent(id=event_id, type=event_type, tenant=tenant, url=url, body=body,
                         created_at=datetime.fromtimestamp(now, UTC), subject=subject, request_id=request_id)
    disabled = r.hexists(_disabled_key(tenant), _url_hash(url))
    delay = _jittered(ctx.settings.webhook_retry_schedule_s[0], ctx.settings)
    score = now + ctx.settings.webhook_lease_s if delay <= 0 else now + delay  # a delayed first: the tick
    created = _script(r, _CREATE)(
        keys=[_event_key(event_id), _DUE, _dead_key(tenant), _subject_key(tenant, subject) if subject else ""],
        args=[event.model_dump_json(), event_id, score, "dead" if disabled else "pending", int(now * 1000),
              "endpoint_disabled"],
    )
    if not created:
        return event_id
    log_extra = {"event_id": event_id, "tenant": tenant, "job_id": data.get("job_id")}
    if disabled:
        logger.warning("webhook %s (%s) not sent: its endpoint is disabled (it answered 410)", event_id,
                       event_type, extra=log_extra)
        metrics.WEBHOOK_DEAD_LETTERS.labels(event=event_type).inc()
        return event_id
    logger.info("webhook %s (%s) created", event_id, event_type, extra=log_extra)
    if delay <= 0:
        _send_now(ctx, event_id, 1)
    return event_id


def _send_now(ctx: lifecycle.Context, event_id: str, attempt: int) -> None:
    """Enqueue attempt ``attempt`` now. A failed send is only logged: the event is in the due
    zset, and the periodic tick sends it once its lease ran out."""
    try:
        ctx.send(DELIVER_TASK, [event_id, attempt], WEBHOOKS_QUEUE)
    except Exception:  # noqa: BLE001 - the periodic tick enqueues it after the lease
        logger.warning("webhook %s: could not enqueue attempt %d; the periodic tick will", event_id, attempt,
                       extra={"event_id": event_id}, exc_info=True)


def job_event_id(job_id: str, state: str) -> str:
    """The one event id of a job's end: ``evt_<job_id>_<state>`` (stable across re-runs)."""
    return f"evt_{job_id}_{state}"


def job_payload(job: Job) -> dict[str, Any]:
    """The ``data`` of a job event: ids, state, counts, links, timestamps; never the result."""
    return {
        "job_id": job.id,
        "state": job.state,
        "task": job.request.task,
        "schema": job.request.schema_,
        "schema_version": job.schema_version,
        "model": job.model,
        "page_count": job.page_count,
        "pages_done": job.pages_done,
        "pages_failed": job.pages_failed,
        "error": job.error.model_dump(mode="json") if job.error is not None else None,
        "result_url": f"/v1/jobs/{job.id}/result" if job.result_key else None,
        "job_url": f"/v1/jobs/{job.id}",
        "created_at": iso(job.created_at),
        "finished_at": iso(job.finished_at) if job.finished_at else None,
        "metadata": job.request.metadata,
    }


def job_event_step(job: Job, ctx: lifecycle.Context) -> None:
    """After-end step: a job that ended succeeded/failed/partial with a webhook URL gets its
    one event (idempotent: the id is derived from the job id and state)."""
    event_type = JOB_EVENTS.get(job.state)
    if event_type is None or not job.request.webhook_url:
        return
    _emit(ctx, tenant=job.tenant, event_type=event_type, event_id=job_event_id(job.id, job.state),
          url=job.request.webhook_url, data=job_payload(job), request_id=getattr(job, "request_id", None))


# ---------------------------------------------------------------------------
# delivering
# ---------------------------------------------------------------------------


def _jittered(delay: float, settings: Settings) -> float:
    j = settings.webhook_retry_jitter
    return max(0.0, delay * (1 + random.uniform(-j, j))) if delay > 0 and j > 0 else max(0.0, delay)


def retry_after_s(value: str | None, now: float | None = None) -> float | None:
    """Seconds from a ``Retry-After`` header (delta-seconds or an HTTP date); None if absent/bad."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def load_event(r: redis.Redis, event_id: str) -> tuple[WebhookEvent, dict[str, str]]:
    """The event and its state fields; NotFound if there is none."""
    if not EVENT_ID_RE.fullmatch(event_id or ""):
        raise NotFound(f"no webhook event {event_id!r}")
    raw = r.hgetall(_event_key(event_id))
    if not raw or "doc" not in raw:
        raise NotFound(f"no webhook event {event_id!r}")
    return WebhookEvent.model_validate_json(raw["doc"]), raw


@functools.lru_cache(maxsize=4)
def _tls_context(ca_file: Path | None) -> ssl.SSLContext:
    """How https receivers are checked: their certificate must chain to ``ca_file`` (or the
    public bundle) and name the URL's host, which goes as SNI while the connection goes to
    the address the SSRF guard checked. Made once per CA file: building one reads the bundle."""
    return ssl.create_default_context(cafile=str(ca_file) if ca_file else certifi.where())


def _post(event: WebhookEvent, settings: Settings, attempt: int) -> DeliveryAttempt:
    """Make one HTTP attempt (SSRF-checked, signed); never raises for the receiver's faults."""
    started = time.time()
    record = DeliveryAttempt(attempt=attempt, at=datetime.fromtimestamp(started, UTC), outcome="refused")
    try:
        target = resolve_target(event.url, settings.webhook_allow_hosts)
        keys = tenant_secrets(settings, event.tenant)
        body = event.body.encode()
        headers = {
            "Host": target.host_header,
            "Content-Type": "application/json",
            "User-Agent": USER_AGENT,
            **sign_headers(keys, event.id, int(started), body),
        }
        if event.request_id:
            headers["X-Request-Id"] = event.request_id
    except (WebhookUrlRefused, WebhookNotConfigured, ConfigurationError) as exc:
        record.error = f"{exc.code}: {exc.message}"
        return record
    limit = settings.webhook_response_max_bytes
    # One deadline for the whole attempt, headers included: a receiver trickling its
    # status line or headers byte by byte cannot hold the worker past webhook_timeout_s.
    deadline = time.monotonic() + settings.webhook_timeout_s
    transport = DeadlineTransport(deadline, _tls_context(settings.webhook_ca_file))
    try:
        with httpx.Client(transport=transport, timeout=settings.webhook_timeout_s, follow_redirects=False,
                          trust_env=False) as client:
            with client.stream("POST", target.connect_url, content=body, headers=headers,
                               extensions={"sni_hostname": target.host}) as response:
                record.status_code = response.status_code
                retry_after = response.headers.get("retry-after")
                chunks, size = [], 0
                try:
                    for chunk in response.iter_bytes():
                        chunks.append(chunk)
                        size += len(chunk)
                        if size >= limit:
                            break
                except httpx.TimeoutException:
                    pass  # the body was cut at the deadline; the status line stands
                record.response = b"".join(chunks)[:limit].decode("utf-8", "replace")
        code = record.status_code
        record.outcome = "success" if 200 <= code < 300 else "gone" if code == 410 else "http_error"
        if record.outcome == "http_error":
            record.error = f"HTTP {code}"
            seconds = retry_after_s(retry_after)
            if seconds is not None:
                record.next_attempt_at = datetime.fromtimestamp(time.time() + seconds, UTC)  # a floor, see deliver
    except httpx.TimeoutException:
        record.outcome, record.error = "timeout", f"no answer within {settings.webhook_timeout_s} s"
    except httpx.HTTPError as exc:
        record.outcome, record.error = "connection_error", type(exc).__name__
    record.latency_ms = round((time.time() - started) * 1000, 1)
    return record


@dataclass(frozen=True)
class AttemptResult:
    """What :func:`deliver` did. ``countdown`` set: the caller (the Celery task) sends attempt
    ``attempt + 1`` with that countdown; None: nothing to send (done, or the tick sends it)."""

    outcome: str  # an Outcome, or "skipped"
    countdown: float | None = None


SKIPPED = AttemptResult("skipped")


def deliver(ctx: lifecycle.Context, event_id: str, attempt: int) -> AttemptResult:
    """Run delivery attempt ``attempt`` of an event (the task ``docproc.webhook.deliver``).

    The outcome is ``"skipped"`` when this is not the event's next attempt (a duplicate
    task: already recorded, or running elsewhere) or the event is gone; nothing is sent then.
    """
    settings, r = ctx.settings, ctx.redis
    claim_ttl = int(math.ceil(settings.webhook_timeout_s)) + _CLAIM_MARGIN_S
    claimed = _script(r, _CLAIM)(keys=[_event_key(event_id), _claim_key(event_id)], args=[attempt, claim_ttl])
    if claimed != 1:
        return SKIPPED
    event, fields = load_event(r, event_id)
    log_extra = {"event_id": event_id, "tenant": event.tenant, "job_id": event.subject}
    if r.hexists(_disabled_key(event.tenant), _url_hash(event.url)):
        record = DeliveryAttempt(attempt=attempt, at=_now(), outcome="disabled",
                                 error="the endpoint is disabled (it answered 410 Gone)")
    else:
        with tracing.span("webhook", event_id=event_id, event=event.type, attempt=attempt):
            record = _post(event, settings, attempt)
        metrics.WEBHOOK_ATTEMPTS.labels(event=event.type, outcome=record.outcome).inc()
        if record.latency_ms is not None:
            metrics.STAGE_SECONDS.labels(stage="webhook").observe(record.latency_ms / 1000)

    now = time.time()
    schedule = settings.webhook_retry_schedule_s
    done_in_round = attempt - int(fields.get("base", 0))
    state, dead_reason, due = "pending", "", now
    if record.outcome == "success":
        state = "succeeded"
    elif record.outcome in ("gone", "disabled"):
        state, dead_reason = "dead", "endpoint_gone" if record.outcome == "gone" else "endpoint_disabled"
    elif done_in_round >= len(schedule):
        state, dead_reason = "dead", "retries_exhausted"
    else:
        delay = _jittered(schedule[done_in_round], settings)
        if record.next_attempt_at is not None:  # the receiver's Retry-After, honoured up to a cap
            asked = min(record.next_attempt_at.timestamp() - now, settings.webhook_retry_after_max_s)
            delay = max(delay, asked)
        due = now + delay
        record.next_attempt_at = datetime.fromtimestamp(due, UTC)
    if state != "pending":
        record.next_attempt_at = None
    soon = state == "pending" and due - now <= settings.webhook_countdown_max_s
    score = due + settings.webhook_lease_s if soon else due
    recorded = _script(r, _RECORD)(
        keys=[_event_key(event_id), _claim_key(event_id), _attempts_key(event_id), _DUE, _dead_key(event.tenant)],
        args=[attempt, record.model_dump_json(), state, score, event_id, int(now * 1000), dead_reason],
    )
    if not recorded:
        return SKIPPED
    if record.outcome == "gone":
        r.hset(_disabled_key(event.tenant), _url_hash(event.url),
               json.dumps({"url": event.url, "at": iso(now), "event_id": event_id}))
        logger.warning("webhook %s: endpoint answered 410 Gone; disabled for tenant %s", event_id, event.tenant,
                       extra=log_extra)
    if state == "dead":
        metrics.WEBHOOK_DEAD_LETTERS.labels(event=event.type).inc()
        logger.warning("webhook %s (%s) dead-lettered after attempt %d: %s", event_id, event.type, attempt,
                       dead_reason, extra=log_extra)
    else:
        logger.info("webhook %s attempt %d: %s %s", event_id, attempt, record.outcome, record.status_code or "",
                    extra={**log_extra, "duration_ms": record.latency_ms})
    return AttemptResult(record.outcome, max(0.0, due - now) if soon else None)


def enqueue_due(ctx: lifecycle.Context, *, now: float | None = None, limit: int = 1000) -> int:
    """The periodic tick: send the next attempt of every event due by ``now``; returns how many.

    Each taken event is pushed to ``now + webhook_lease_s`` first, so it is sent once per
    lease even if its task is lost (the next tick after the lease sends it again).
    """
    now = time.time() if now is None else now
    r = ctx.redis
    ids = _script(r, _TAKE_DUE)(keys=[_DUE], args=[now, now + ctx.settings.webhook_lease_s, limit])
    sent = 0
    for event_id in ids:
        attempts = r.hget(_event_key(event_id), "attempts")
        if attempts is None:  # the event is gone
            r.zrem(_DUE, event_id)
            continue
        try:
            ctx.send(DELIVER_TASK, [event_id, int(attempts) + 1], WEBHOOKS_QUEUE)
            sent += 1
        except Exception:  # noqa: BLE001 - the broker is down: the next tick after the lease
            logger.warning("webhook %s: could not enqueue its due attempt", event_id, extra={"event_id": event_id})
    if sent:
        logger.info("webhooks: %d due attempt(s) enqueued", sent)
    return sent


# ---------------------------------------------------------------------------
# reading and operating (the API's /v1/webhooks routes)
# ---------------------------------------------------------------------------


def event_status(r: redis.Redis, tenant: str, event_id: str) -> EventStatus:
    """The tenant's event with its attempts; another tenant's id is NotFound like a missing one."""
    event, fields = load_event(r, event_id)
    if event.tenant != tenant:
        raise NotFound(f"no webhook event {event_id!r}")
    pipe = r.pipeline(transaction=False)
    pipe.lrange(_attempts_key(event_id), 0, -1)
    pipe.zscore(_DUE, event_id)
    raw_attempts, due = pipe.execute()
    attempts = [DeliveryAttempt.model_validate_json(a) for a in raw_attempts]
    next_at = attempts[-1].next_attempt_at if attempts else None
    if fields.get("state") == "pending" and next_at is None and due is not None:
        next_at = datetime.fromtimestamp(min(float(due), time.time()), UTC)
    return EventStatus(
        id=event.id, type=event.type, url=event.url, subject=event.subject, created_at=event.created_at,
        state=fields.get("state", "pending"), dead_reason=fields.get("dead_reason") or None, attempts=attempts,
        next_attempt_at=next_at if fields.get("state") == "pending" else None,
    )


def events_for_subject(r: redis.Redis, tenant: str, subject: str) -> list[EventStatus]:
    """Every event about one job (batch ...) of the tenant, oldest first, with their attempts."""
    out = []
    for event_id in r.zrange(_subject_key(tenant, subject), 0, -1):
        try:
            out.append(event_status(r, tenant, event_id))
        except NotFound:  # expired or deleted
            continue
    return out


def purge_subject(r: redis.Redis, tenant: str, subject: str, *, delete: bool = True) -> int | None:
    """Delete every event about one job (batch ...) with its attempt log and dead-letter
    entry (docproc.housekeeping.retention); returns how many, or None (nothing deleted) while one of
    them is still pending. ``delete=False`` only counts."""
    n = _script(r, _PURGE_SUBJECT)(keys=[_subject_key(tenant, subject), _DUE, _dead_key(tenant)],
                                   args=[_event_key(""), "1" if delete else "0"])
    return None if n == -1 else int(n)


def dead_letters(r: redis.Redis, tenant: str, *, limit: int = 50, offset: int = 0) -> tuple[list[EventStatus], int]:
    """The tenant's dead-lettered events, newest first; returns (page, total)."""
    if not 1 <= limit <= 1000 or offset < 0:
        raise InvalidRequest("limit must be 1..1000 and offset >= 0")
    key = _dead_key(tenant)
    ids = r.zrevrange(key, offset, offset + limit - 1)
    page = []
    for event_id in ids:
        try:
            page.append(event_status(r, tenant, event_id))
        except NotFound:
            continue
    return page, int(r.zcard(key))


def redeliver(ctx: lifecycle.Context, tenant: str, event_id: str) -> EventStatus:
    """Send an ended event (succeeded or dead) again, with a fresh retry schedule.

    A pending event is left as it is; an endpoint disabled by 410 refuses
    (WebhookEndpointDisabled) until :func:`enable_endpoint`.
    """
    r = ctx.redis
    event = event_status(r, tenant, event_id)  # tenant check
    url = load_event(r, event_id)[0].url
    if r.hexists(_disabled_key(tenant), _url_hash(url)):
        raise WebhookEndpointDisabled("the endpoint is disabled (it answered 410 Gone); enable it first",
                                      event_id=event_id)
    now = time.time()
    result = _script(r, _REDELIVER)(
        keys=[_event_key(event_id), _DUE, _dead_key(tenant)], args=[event_id, now + ctx.settings.webhook_lease_s]
    )
    if result == -1:
        raise NotFound(f"no webhook event {event_id!r}")
    if result >= 0:
        logger.info("webhook %s: redelivery asked", event_id, extra={"event_id": event_id, "tenant": tenant})
        _send_now(ctx, event_id, int(result) + 1)
        return event_status(r, tenant, event_id)
    return event


def enable_endpoint(r: redis.Redis, tenant: str, url: str) -> bool:
    """Re-enable an endpoint disabled by a 410 answer; True if it was disabled."""
    return bool(r.hdel(_disabled_key(tenant), _url_hash(url)))


def disabled_endpoints(r: redis.Redis, tenant: str) -> list[dict[str, str]]:
    """The tenant's disabled endpoints: ``{"url", "at", "event_id"}`` each."""
    return [json.loads(v) for v in r.hvals(_disabled_key(tenant))]
