"""Signed webhooks against real parts: a real HTTP receiver on loopback (allow-listed),
the session's redis-server, the API over HTTP, and a real Celery worker subprocess.

Most tests drive :func:`docproc.delivery.webhooks.deliver` directly (the Celery task is a thin
wrapper around it): the ``send`` of the lifecycle context records the tasks that would
be enqueued, and :func:`drive` runs them, so retry schedules are checked exactly (the
delays are computed values, not measured ones) without waiting on a broker. The last
test runs the same code in a real worker, end to end from a job submission.
"""

from __future__ import annotations

import base64
import json
import logging
import sys
import time
from dataclasses import dataclass, field
from email.utils import formatdate
from typing import Any

import builders
import httpx
import pytest
from conftest import ServiceProcess, serving, settings_env, wait_until
from tls_certs import TestCA
from webhook_receiver import WebhookReceiver

from api.app import create_app
from docproc.base import metrics
from docproc.base.auth import hash_key
from docproc.base.errors import (
    WebhookEndpointDisabled,
    WebhookNotConfigured,
    WebhookSignatureInvalid,
    WebhookUrlRefused,
)
from docproc.base.settings import Settings
from docproc.delivery import webhooks
from docproc.delivery.ssrf import resolve_target
from docproc.housekeeping import after_end
from docproc.jobs import lifecycle
from docproc.jobs.store import JobRequest, JobStore

TENANT, OTHER = "acme", "globex"
KEYS = {TENANT: "dp_webhook-test-key-acme-000000000000000000", OTHER: "dp_webhook-test-key-globex-0000000000000000"}
# The Standard Webhooks reference test vector's secret, and a second one for rotations.
SECRET_A = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
SECRET_B = "whsec_" + base64.b64encode(b"docproc-test-secret-B-32-bytes!!").decode()
SCHEDULE = [0, 0.2, 0.4]  # compressed: three attempts


# ---------------------------------------------------------------------------
# fixtures and helpers
# ---------------------------------------------------------------------------


@dataclass
class Sent:
    """A lifecycle ``send`` that records the tasks instead of publishing them."""

    tasks: list[tuple[str, list[Any], str]] = field(default_factory=list)

    def __call__(self, name: str, args: list[Any], queue: str) -> None:
        self.tasks.append((name, list(args), queue))


@pytest.fixture
def wh_settings(redis_server, redis_client, tmp_path) -> Settings:
    return Settings(
        _env_file=None,
        redis_url=redis_server.url,
        storage_url=f"file://{tmp_path}/store",
        api_keys={t: hash_key(k) for t, k in KEYS.items()},
        webhook_secrets={TENANT: [SECRET_A], OTHER: [SECRET_B]},
        webhook_allow_hosts=["127.0.0.1/32"],
        webhook_retry_schedule_s=SCHEDULE,
        webhook_retry_jitter=0,
        webhook_timeout_s=2,
    )


def make_ctx(settings: Settings, redis_client) -> tuple[lifecycle.Context, Sent]:
    sent = Sent()
    return after_end.context(settings=settings, redis=redis_client, store=JobStore(redis_client, settings),
                             send=sent), sent


@pytest.fixture
def ctx(wh_settings, redis_client) -> tuple[lifecycle.Context, Sent]:
    return make_ctx(wh_settings, redis_client)


@pytest.fixture
def receiver():
    with WebhookReceiver() as rx:
        yield rx


def drive(ctx: lifecycle.Context, sent: Sent) -> list[webhooks.AttemptResult]:
    """Run every recorded delivery task, and the countdown retries they ask for, in order."""
    results = []
    while sent.tasks:
        name, (event_id, attempt), queue = sent.tasks.pop(0)
        assert (name, queue) == (webhooks.DELIVER_TASK, webhooks.WEBHOOKS_QUEUE)
        result = webhooks.deliver(ctx, event_id, attempt)
        results.append(result)
        if result.countdown is not None:
            sent.tasks.append((name, [event_id, attempt + 1], queue))
    return results


def emit(ctx: lifecycle.Context, url: str, event_id: str = "evt_test_1", tenant: str = TENANT) -> str | None:
    return webhooks.emit_event(ctx, tenant=tenant, event_type="batch.completed", event_id=event_id, url=url,
                               data={"batch_id": "b1", "documents": 3})


JOB_METADATA = {"customer": "c-42", "batch": {"n": 1}}


def finished_job(store: JobStore, url: str | None, *, tenant: str = TENANT, state: str = "succeeded"):
    job, _ = store.create(tenant, JobRequest(task="ocr", webhook_url=url, metadata=JOB_METADATA), input_key="inputs/x",
                          input_sha256="0" * 64,
                          size_bytes=10, filename="a.pdf", idempotency_key=None, fingerprint="f",
                          request_id="req-webhook-test")
    store.start(job.id, page_count=1, pages=[1], media_type="application/pdf")
    assert store.finish(job.id, state, result_key=f"results/{job.id}/document.json")
    return store.load(job.id)


def counter(metric, **labels) -> float:
    return metric.labels(**labels)._value.get()


# ---------------------------------------------------------------------------
# signing and verifying
# ---------------------------------------------------------------------------


def test_signatures_match_the_standard_webhooks_reference_vector():
    # a receiver's Standard Webhooks / Svix library must accept what docproc sends
    body = b'{"test": 2432232314}'
    assert webhooks.signature(SECRET_A, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body) == \
        "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
    headers = {"Webhook-Id": "msg_p5jXN8AQM9LWM0D4loKWxJek", "Webhook-Timestamp": "1614265330",
               "Webhook-Signature": "v1,bm9wZQ== v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="}
    assert webhooks.verify(SECRET_A, headers, body, now=1614265330 + 10) == {"test": 2432232314}


def test_verify_refuses_tampered_old_future_unsigned_and_wrongly_signed_requests():
    now = int(time.time())
    body = b'{"type":"job.succeeded","data":{"job_id":"j1"}}'
    good = webhooks.sign_headers([SECRET_A], "evt_1", now, body)
    assert webhooks.verify(SECRET_A, good, body)["data"]["job_id"] == "j1"
    assert webhooks.verify([SECRET_B, SECRET_A], good, body.decode())["type"] == "job.succeeded"

    old = webhooks.sign_headers([SECRET_A], "evt_1", now - 301, body)
    future = webhooks.sign_headers([SECRET_A], "evt_1", now + 301, body)
    cases = {
        "tampered body": (SECRET_A, good, body.replace(b"j1", b"j2")),
        "wrong secret": (SECRET_B, good, body),
        "other id": (SECRET_A, {**good, "webhook-id": "evt_2"}, body),
        "old timestamp": (SECRET_A, old, body),
        "future timestamp": (SECRET_A, future, body),
        "timestamp moved": (SECRET_A, {**good, "webhook-timestamp": str(now + 1)}, body),
        "no signature": (SECRET_A, {k: v for k, v in good.items() if k != "webhook-signature"}, body),
        "other scheme": (SECRET_A, {**good, "webhook-signature": good["webhook-signature"].replace("v1,", "v2,")},
                         body),
    }
    for name, (secret, headers, payload) in cases.items():
        with pytest.raises(WebhookSignatureInvalid) as info:
            webhooks.verify(secret, headers, payload)
        assert info.value.code == "webhook_signature_invalid", name
    # the tolerance is the receiver's choice
    assert webhooks.verify(SECRET_A, old, body, tolerance_s=600)


def test_retry_after_parses_seconds_and_http_dates():
    now = time.time()
    assert webhooks.retry_after_s("120") == 120
    assert webhooks.retry_after_s(formatdate(now + 60, usegmt=True), now=now) == pytest.approx(60, abs=1)
    assert webhooks.retry_after_s("soon") is None and webhooks.retry_after_s(None) is None


# ---------------------------------------------------------------------------
# SSRF guard
# ---------------------------------------------------------------------------

REFUSED_URLS = [
    "http://10.1.2.3/hook", "http://172.16.0.1/hook", "http://192.168.1.10/hook",  # RFC 1918
    "http://127.0.0.1:8080/hook", "http://[::1]/hook", "http://localhost/hook",  # loopback, also by name
    "http://169.254.169.254/latest/meta-data/", "http://[fe80::1]/hook",  # link-local, cloud metadata
    "http://100.64.0.1/hook", "http://100.127.255.254/hook",  # CGNAT
    "http://[64:ff9b::a9fe:a9fe]/hook", "http://[64:ff9b::7f00:1]/hook",  # NAT64 of metadata / loopback
    "http://[::ffff:127.0.0.1]/hook", "http://[::ffff:8.8.8.8]/hook",  # IPv4-mapped
    "http://[fd00::1]/hook", "http://0.0.0.0/hook", "http://[::]/hook", "http://224.0.0.1/hook",
    "http://2130706433/hook", "http://0x7f.1/hook",  # loopback spelled as numbers
    "http://[2002:7f00:1::1]/hook",  # 6to4 of loopback
]


@pytest.mark.parametrize("url", REFUSED_URLS)
def test_ssrf_guard_refuses_non_public_addresses(url):
    with pytest.raises(WebhookUrlRefused) as info:
        resolve_target(url)
    assert info.value.code == "webhook_url_refused"


@pytest.mark.parametrize("url", ["http://[::169.254.169.254]/latest/meta-data/", "http://[::a9fe:a9fe]/",
                                 "http://[::10.0.0.1]/hook", "http://[::8.8.8.8]/hook"])
def test_ssrf_guard_refuses_ipv4_compatible_ipv6(url):
    """::/96 (deprecated IPv4-compatible IPv6) embeds an IPv4 address some stacks route to:
    refused like IPv4-mapped ones, whatever the embedded address."""
    with pytest.raises(WebhookUrlRefused) as info:
        resolve_target(url)
    assert info.value.details["reason"] == "address" and "IPv4-compatible" in info.value.message


@pytest.mark.parametrize("url", ["ftp://example.com/x", "file:///etc/passwd", "gopher://1.1.1.1/",
                                 "http://user:pw@93.184.215.14/", "http:///nohost", "http://[::1/"])
def test_ssrf_guard_refuses_other_schemes_and_malformed_urls(url):
    with pytest.raises(WebhookUrlRefused):
        resolve_target(url)


def test_ssrf_guard_allows_public_addresses_and_the_allow_list():
    target = resolve_target("https://93.184.215.14/hooks?a=1")  # a public literal: no DNS needed
    assert (target.ip, target.port, target.path) == ("93.184.215.14", 443, "/hooks?a=1")
    # loopback only when allow-listed, by network or by name; the connection goes to the checked IP
    local = resolve_target("http://localhost:9/x", ["127.0.0.0/8", "::1"])
    assert local.ip in ("127.0.0.1", "::1") and local.host_header == "localhost:9"
    assert resolve_target("http://localhost/x", ["LOCALHOST"]).connect_url.endswith(":80/x")
    with pytest.raises(WebhookUrlRefused):  # a network that does not cover the address
        resolve_target("http://10.0.0.1/x", ["10.1.0.0/16"])


def test_a_refused_webhook_url_is_a_422_at_submission_and_other_tenants_see_404(wh_settings, redis_client):
    settings = wh_settings.model_copy(update={"webhook_allow_hosts": []})
    pdf = builders.multipage_text_pdf(1)
    with serving(create_app(settings)) as base, httpx.Client(base_url=base, timeout=30) as http:
        for url in ("http://169.254.169.254/latest/meta-data/", "http://localhost:9/hook", "http://100.64.0.1/"):
            r = http.post("/v1/jobs", files={"file": ("a.pdf", pdf, "application/pdf")},
                          data={"task": "ocr", "webhook_url": url}, headers={"X-API-Key": KEYS[TENANT]})
            assert r.status_code == 422 and r.json()["code"] == "webhook_url_refused", r.text
        # a tenant without a signing secret cannot ask for webhooks
        no_secret = settings.model_copy(update={"webhook_secrets": {}})
        with pytest.raises(WebhookNotConfigured) as info:
            webhooks.check_webhook("https://93.184.215.14/", TENANT, no_secret)
        assert info.value.code == "webhook_not_configured"
        for path in ("/v1/webhooks/evt_nope", "/v1/jobs/" + "0" * 32 + "/deliveries"):
            assert http.get(path, headers={"X-API-Key": KEYS[TENANT]}).status_code == 404


# ---------------------------------------------------------------------------
# delivery
# ---------------------------------------------------------------------------


def test_a_job_event_is_signed_sent_once_and_idempotent(ctx, receiver, redis_client):
    context, sent = ctx
    job = finished_job(context.store, receiver.url)
    attempts_before = counter(metrics.WEBHOOK_ATTEMPTS, event="job.succeeded", outcome="success")
    for _ in range(2):  # after-end steps run at least once: a second run makes no second event
        context.redis.zadd("docproc:outbox:ended", {job.id: 0})
        assert lifecycle.job_ended(job.id, context)
    assert len(sent.tasks) == 1
    sent.tasks.append(sent.tasks[0])  # the broker delivers the task twice
    results = drive(context, sent)
    assert [r.outcome for r in results] == ["success", "skipped"]
    (request,) = receiver.wait_for(1)
    assert request.headers["webhook-id"] == webhooks.job_event_id(job.id, "succeeded")
    assert request.headers["content-type"] == "application/json"
    assert request.headers["host"] == f"127.0.0.1:{receiver.port}"
    assert request.headers["x-request-id"] == "req-webhook-test"  # the submitting request's id
    payload = webhooks.verify(SECRET_A, request.headers, request.body)
    assert payload["type"] == "job.succeeded"
    data = payload["data"]
    assert (data["job_id"], data["state"], data["pages_done"]) == (job.id, "succeeded", 0)
    assert data["result_url"] == f"/v1/jobs/{job.id}/result" and "text" not in data
    assert data["metadata"] == JOB_METADATA  # the client's own data comes back with the event
    assert payload["timestamp"].endswith("Z") and data["created_at"].endswith("Z")
    assert "+00:00" not in request.body.decode()
    assert counter(metrics.WEBHOOK_ATTEMPTS, event="job.succeeded", outcome="success") == attempts_before + 1
    status = webhooks.event_status(redis_client, TENANT, request.headers["webhook-id"])
    assert status.state == "succeeded" and [a.status_code for a in status.attempts] == [200]
    # a canceled job and a job without a URL send nothing
    assert webhooks.emit_event(context, tenant=TENANT, event_type="x.y", event_id="evt_none", url=None, data={}) is None
    assert lifecycle.job_ended(finished_job(context.store, receiver.url, state="canceled").id, context)
    assert lifecycle.job_ended(finished_job(context.store, None).id, context)
    assert sent.tasks == [] and len(receiver.requests) == 1


def test_rotation_sends_both_signatures_and_either_secret_verifies(receiver, wh_settings, redis_client, caplog):
    settings = wh_settings.model_copy(update={"webhook_secrets": {TENANT: [SECRET_B, SECRET_A]}})
    context, sent = make_ctx(settings, redis_client)
    caplog.set_level(logging.DEBUG)
    emit(context, receiver.url_for("/hook?token=receiver-token-123"))
    drive(context, sent)
    (request,) = receiver.wait_for(1)
    assert request.path == "/hook?token=receiver-token-123"
    for secret_text in ("receiver-token-123", SECRET_A.removeprefix("whsec_"), SECRET_B.removeprefix("whsec_"),
                        request.headers["webhook-signature"].split()[0][3:]):
        assert secret_text not in caplog.text  # secrets, signatures and URL tokens are never logged
    assert len(request.headers["webhook-signature"].split()) == 2
    for secret in (SECRET_A, SECRET_B):  # a receiver on the old or the new secret accepts it
        assert webhooks.verify(secret, request.headers, request.body)["data"]["batch_id"] == "b1"
    with pytest.raises(WebhookSignatureInvalid):
        webhooks.verify(webhooks.generate_secret(), request.headers, request.body)


def test_retries_follow_the_schedule_with_a_stable_id(ctx, redis_client):
    context, sent = ctx
    with WebhookReceiver(fail_times=2, fail_status=503) as rx:
        emit(context, rx.url)
        results = drive(context, sent)
        requests = rx.wait_for(3)
    assert [r.outcome for r in results] == ["http_error", "http_error", "success"]
    assert [r.countdown for r in results[:2]] == [pytest.approx(SCHEDULE[1]), pytest.approx(SCHEDULE[2])]
    assert {r.headers["webhook-id"] for r in requests} == {"evt_test_1"}  # one id for every retry
    assert len({r.body for r in requests}) == 1  # the same body, signed anew each time
    for r in requests:
        webhooks.verify(SECRET_A, r.headers, r.body)
    status = webhooks.event_status(redis_client, TENANT, "evt_test_1")
    for attempt, delay in zip(status.attempts, SCHEDULE[1:], strict=False):  # each retry due after its delay
        assert attempt.next_attempt_at.timestamp() - attempt.at.timestamp() >= delay
    assert [(a.attempt, a.status_code, a.outcome) for a in status.attempts] == [
        (1, 503, "http_error"), (2, 503, "http_error"), (3, 200, "success")]
    assert all(a.latency_ms is not None and a.response == "ok" for a in status.attempts)
    assert status.attempts[0].next_attempt_at is not None and status.attempts[2].next_attempt_at is None


def test_jitter_spreads_retries_within_its_bounds(wh_settings, redis_client):
    settings = wh_settings.model_copy(update={"webhook_retry_schedule_s": [0, 10], "webhook_retry_jitter": 0.5})
    context, sent = make_ctx(settings, redis_client)
    with WebhookReceiver(status=500) as rx:
        countdowns = []
        for i in range(6):
            emit(context, rx.url, event_id=f"evt_jitter_{i}")
            countdowns.append(drive(context, sent)[0].countdown)
    assert all(5 <= c <= 15 for c in countdowns) and len(set(countdowns)) > 1


def test_retry_after_is_honoured_and_long_waits_go_through_the_periodic_tick(wh_settings, redis_client):
    settings = wh_settings.model_copy(update={"webhook_countdown_max_s": 5})
    context, sent = make_ctx(settings, redis_client)
    with WebhookReceiver(fail_times=1, fail_status=429, retry_after=30) as rx:
        emit(context, rx.url)
        first = drive(context, sent)
        assert [r.outcome for r in first] == ["http_error"]
        assert first[0].countdown is None  # 30 s > countdown limit: waits in Redis, no ETA message
        status = webhooks.event_status(redis_client, TENANT, "evt_test_1")
        assert status.state == "pending"
        assert status.next_attempt_at.timestamp() - status.attempts[0].at.timestamp() >= 30
        now = time.time()
        assert webhooks.enqueue_due(context, now=now + 20) == 0  # not due yet (Retry-After beats 0.2 s)
        assert webhooks.enqueue_due(context, now=now + 31) == 1
        assert sent.tasks == [(webhooks.DELIVER_TASK, ["evt_test_1", 2], webhooks.WEBHOOKS_QUEUE)]
        assert webhooks.enqueue_due(context, now=now + 32) == 0  # taken: leased until the attempt is recorded
        assert [r.outcome for r in drive(context, sent)] == ["success"]
        assert len(rx.wait_for(2)) == 2
    assert webhooks.enqueue_due(context, now=now + 10_000) == 0  # nothing left once it succeeded


def test_a_lost_delivery_task_is_sent_again_by_the_tick_after_its_lease(ctx, receiver):
    context, sent = ctx
    emit(context, receiver.url)
    sent.tasks.clear()  # the task was lost (broker restart, worker killed before it ran)
    now = time.time()
    assert webhooks.enqueue_due(context, now=now) == 0  # within the lease: maybe still queued
    assert webhooks.enqueue_due(context, now=now + context.settings.webhook_lease_s + 1) == 1
    assert [r.outcome for r in drive(context, sent)] == ["success"]
    assert len(receiver.wait_for(1)) == 1


def test_a_slow_receiver_times_out_and_is_retried(wh_settings, redis_client):
    settings = wh_settings.model_copy(update={"webhook_timeout_s": 0.3, "webhook_retry_schedule_s": [0]})
    context, sent = make_ctx(settings, redis_client)
    with WebhookReceiver(delay_s=1.5) as rx:
        emit(context, rx.url)
        assert [r.outcome for r in drive(context, sent)] == ["timeout"]
        rx.wait_for(1)
    status = webhooks.event_status(redis_client, TENANT, "evt_test_1")
    assert status.state == "dead" and status.dead_reason == "retries_exhausted"
    assert "no answer within" in status.attempts[0].error and status.attempts[0].status_code is None


def test_a_receiver_trickling_its_headers_is_cut_at_the_attempt_deadline(wh_settings, redis_client):
    """httpx's timeouts are per read: headers sent one byte every 0.2 s never trip a 1 s
    read timeout. The attempt has one total deadline, headers included."""
    settings = wh_settings.model_copy(update={"webhook_timeout_s": 1.0, "webhook_retry_schedule_s": [0]})
    context, sent = make_ctx(settings, redis_client)
    with WebhookReceiver(trickle_s=0.2) as rx:  # ~110 header bytes: 22 s if nothing cut it
        emit(context, rx.url)
        started = time.monotonic()
        assert [r.outcome for r in drive(context, sent)] == ["timeout"]
        took = time.monotonic() - started
        rx.wait_for(1)
    assert took < 2.5, f"the attempt took {took:.1f} s with a 1 s timeout"
    attempt = webhooks.event_status(redis_client, TENANT, "evt_test_1").attempts[0]
    assert attempt.status_code is None and attempt.latency_ms < 1500 and "no answer within" in attempt.error


def test_https_goes_to_the_checked_address_with_the_host_name_as_sni_and_certificate_name(
    wh_settings, redis_client, tmp_path
):
    """The connection goes to the address the SSRF guard checked; TLS still says and checks
    the URL's host name: a certificate for that name verifies, one for another name or from
    an untrusted CA gets no request through."""
    ca = TestCA()
    settings = wh_settings.model_copy(update={"webhook_ca_file": ca.write_pem(tmp_path / "ca.pem"),
                                              "webhook_retry_schedule_s": [0]})
    context, sent = make_ctx(settings, redis_client)
    with WebhookReceiver(tls=ca.server_context("localhost"), url_host="localhost") as rx:
        emit(context, rx.url, event_id="evt_tls_ok")
        assert [r.outcome for r in drive(context, sent)] == ["success"]
        [request] = rx.requests
        assert request.headers["host"] == f"localhost:{rx.port}" and rx.sni == ["localhost"]
        webhooks.verify(SECRET_A, request.headers, request.body)

    with WebhookReceiver(tls=ca.server_context("elsewhere.test"), url_host="localhost") as rx:
        emit(context, rx.url, event_id="evt_tls_wrong_name")
        assert [r.outcome for r in drive(context, sent)] == ["connection_error"]
        assert rx.requests == [] and rx.sni == ["localhost"]

    public_only, sent = make_ctx(wh_settings.model_copy(update={"webhook_retry_schedule_s": [0]}), redis_client)
    with WebhookReceiver(tls=ca.server_context("localhost"), url_host="localhost") as rx:
        emit(public_only, rx.url, event_id="evt_tls_untrusted_ca")
        assert [r.outcome for r in drive(public_only, sent)] == ["connection_error"]
        assert rx.requests == []
    status = webhooks.event_status(redis_client, TENANT, "evt_tls_untrusted_ca")
    assert status.state == "dead" and "ConnectError" in status.attempts[0].error


def test_410_disables_the_endpoint_until_it_is_enabled_again(ctx, redis_client):
    context, sent = ctx
    with WebhookReceiver(status=410) as rx:
        emit(context, rx.url, event_id="evt_gone_1")
        assert [r.outcome for r in drive(context, sent)] == ["gone"]  # no retries after 410
        first = webhooks.event_status(redis_client, TENANT, "evt_gone_1")
        assert (first.state, first.dead_reason) == ("dead", "endpoint_gone")
        emit(context, rx.url, event_id="evt_gone_2")  # a later event to it is recorded, not sent
        assert sent.tasks == []
        second = webhooks.event_status(redis_client, TENANT, "evt_gone_2")
        assert (second.state, second.dead_reason, second.attempts) == ("dead", "endpoint_disabled", [])
        with pytest.raises(WebhookEndpointDisabled):
            webhooks.redeliver(context, TENANT, "evt_gone_2")
        assert [e["url"] for e in webhooks.disabled_endpoints(redis_client, TENANT)] == [rx.url]
        assert webhooks.disabled_endpoints(redis_client, OTHER) == []  # per tenant

        rx.status = 200
        assert webhooks.enable_endpoint(redis_client, TENANT, rx.url)
        webhooks.redeliver(context, TENANT, "evt_gone_2")
        assert [r.outcome for r in drive(context, sent)] == ["success"]
        assert [r.headers["webhook-id"] for r in rx.wait_for(2)] == ["evt_gone_1", "evt_gone_2"]


def test_delivery_rechecks_the_url_so_a_rebound_or_refused_host_gets_nothing(ctx, wh_settings, redis_client, receiver):
    context, sent = ctx
    emit(context, receiver.url)
    # between submission and delivery the address stopped passing the guard (here: the
    # allow-list changed; in the wild: DNS now answers with a private address)
    strict, _ = make_ctx(wh_settings.model_copy(update={"webhook_allow_hosts": []}), redis_client)
    name, (event_id, attempt), _ = sent.tasks.pop()
    result = webhooks.deliver(strict, event_id, attempt)
    assert result.outcome == "refused" and receiver.requests == []
    status = webhooks.event_status(redis_client, TENANT, event_id)
    assert status.attempts[0].error.startswith("webhook_url_refused")


def test_dead_letters_deliveries_and_redelivery_over_the_api(wh_settings, redis_client):
    context, sent = make_ctx(wh_settings, redis_client)
    dead_before = counter(metrics.WEBHOOK_DEAD_LETTERS, event="job.failed")
    with WebhookReceiver(status=500) as rx:
        job = finished_job(context.store, rx.url, state="failed")
        assert lifecycle.job_ended(job.id, context)
        assert [r.outcome for r in drive(context, sent)] == ["http_error"] * len(SCHEDULE)
        event_id = webhooks.job_event_id(job.id, "failed")
        assert counter(metrics.WEBHOOK_DEAD_LETTERS, event="job.failed") == dead_before + 1

        with serving(create_app(wh_settings)) as base, httpx.Client(base_url=base, timeout=30) as http:
            acme, globex = {"X-API-Key": KEYS[TENANT]}, {"X-API-Key": KEYS[OTHER]}
            r = http.get(f"/v1/jobs/{job.id}/deliveries", headers=acme)
            assert r.status_code == 200, r.text
            (event,) = r.json()["events"]
            assert (event["id"], event["type"], event["state"], event["dead_reason"]) == (
                event_id, "job.failed", "dead", "retries_exhausted")
            assert [a["status_code"] for a in event["attempts"]] == [500, 500, 500]
            assert all(a["response"] == "ok" and a["latency_ms"] >= 0 for a in event["attempts"])

            dead = http.get("/v1/webhooks/dead-letters", headers=acme).json()
            assert [e["id"] for e in dead["events"]] == [event_id] and dead["total"] == 1
            assert http.get("/v1/webhooks/dead-letters", headers=globex).json()["events"] == []
            for method, path in (("GET", f"/v1/jobs/{job.id}/deliveries"), ("GET", f"/v1/webhooks/{event_id}"),
                                 ("POST", f"/v1/webhooks/{event_id}/redeliver")):
                other = http.request(method, path, headers=globex)  # another tenant's: 404 like a missing one
                assert other.status_code == 404 and other.json()["code"] == "not_found"

            rx.status = 200
            r = http.post(f"/v1/webhooks/{event_id}/redeliver", headers=acme)
            assert r.status_code == 202 and r.json()["state"] == "pending", r.text
            assert http.get("/v1/webhooks/dead-letters", headers=acme).json()["events"] == []
            # the API enqueued attempt 4 on the broker; run it as the worker would
            attempt = int(redis_client.hget(f"docproc:webhook:event:{event_id}", "attempts")) + 1
            assert webhooks.deliver(context, event_id, attempt).outcome == "success"
            event = http.get(f"/v1/webhooks/{event_id}", headers=acme).json()
            assert event["state"] == "succeeded" and [a["status_code"] for a in event["attempts"]] == [500] * 3 + [200]
    (last,) = [r for r in rx.requests if r.status == 200]
    assert last.headers["webhook-id"] == event_id and webhooks.verify(SECRET_A, last.headers, last.body)


# ---------------------------------------------------------------------------
# end to end: a job through a real Celery worker
# ---------------------------------------------------------------------------


@pytest.mark.worker
def test_a_job_through_a_real_worker_ends_in_exactly_one_signed_job_succeeded(wh_settings, redis_client, tmp_path):
    from docproc.base.storage import open_storage
    from docproc.submission.submit import submit_job
    from workers.celery_app import create_app as create_celery_app

    settings = wh_settings.model_copy(update={"webhook_retry_schedule_s": [0, 0.5, 5]})
    store = JobStore(redis_client, settings)
    with WebhookReceiver(fail_times=1, fail_status=503) as rx:
        env = settings_env(settings, webhook_secrets=json.dumps(settings.webhook_secrets),
                           webhook_allow_hosts=json.dumps(settings.webhook_allow_hosts),
                           webhook_retry_schedule_s=json.dumps(settings.webhook_retry_schedule_s),
                           webhook_retry_jitter=0, webhook_timeout_s=5)
        worker = ServiceProcess([sys.executable, "-m", "workers", "--queues", "intake,render,webhooks", "-c", "1"],
                                env, tmp_path / "worker.log")
        try:
            celery = create_celery_app(settings)
            try:
                job = submit_job(store=store, storage=open_storage(settings), celery=celery, settings=settings,
                                 tenant=TENANT, request=JobRequest(task="ocr", webhook_url=rx.url),
                                 data=builders.multipage_text_pdf(1), filename="a.pdf").job
            finally:
                celery.close()
            # the first attempt gets 503, the retry (a countdown in the worker) succeeds
            wait_until(lambda: len(rx.requests) >= 2, 60, "two webhook requests", [worker])
            event_id = webhooks.job_event_id(job.id, "succeeded")
            wait_until(lambda: webhooks.event_status(redis_client, TENANT, event_id).state == "succeeded", 20,
                       "the delivery recorded", [worker])
            time.sleep(1.0)  # room for a wrong extra delivery to show up
        finally:
            worker.stop()
    requests = rx.requests
    assert [r.status for r in requests] == [503, 200], worker.tail()
    assert {r.headers["webhook-id"] for r in requests} == {event_id}
    payload = webhooks.verify(SECRET_A, requests[1].headers, requests[1].body)
    assert payload["type"] == "job.succeeded" and payload["data"]["job_id"] == job.id
    assert payload["data"]["state"] == "succeeded" and payload["data"]["pages_done"] == 1
    assert redis_client.zscore("docproc:outbox:ended", job.id) is None  # the after-end step completed
