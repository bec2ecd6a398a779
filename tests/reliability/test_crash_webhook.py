"""A worker SIGKILLed mid-page: the page is delivered again, the job finishes once, and
the client's webhook receiver gets one ``job.succeeded`` event (one ``webhook-id``).

The stack: this test's Redis and S3, the API under uvicorn, a loopback webhook receiver
(allow-listed for the SSRF guard), and real Celery workers running the tiny InternVL
with long generations, so a page is still running when the worker is killed. The second
worker also runs the scheduler with a 1 s ended-jobs sweep, so a duplicate after-end
step would have every chance to send a second event.
"""

from __future__ import annotations

import base64
import json
import time

import builders
import pytest
import redis as redis_lib
from conftest import wait_until
from webhook_receiver import WebhookReceiver

from docproc.base import model_workers
from docproc.jobs.store import ENDED_OUTBOX, JobStore

from .conftest import TENANT

pytestmark = [pytest.mark.reliability, pytest.mark.worker]

SECRET = "whsec_" + base64.b64encode(b"crash-test-webhook-secret-32byte").decode()
VISIBILITY_S = 2


def test_sigkill_mid_page_finishes_once_with_one_succeeded_webhook(stack_settings, serve_api, start_worker,
                                                                    tiny_settings):
    receiver = WebhookReceiver().start()
    settings = stack_settings(
        visibility_timeout_s=VISIBILITY_S, model=tiny_settings.model, device="cpu", rate_limit_per_minute=0,
        webhook_secrets={TENANT: [SECRET]}, webhook_allow_hosts=["127.0.0.1"],
        periodic_interval_s=1, ended_sweep_after_s=1,
    )
    webhook_env = {"webhook_secrets": json.dumps(settings.webhook_secrets),
                   "webhook_allow_hosts": json.dumps(settings.webhook_allow_hosts)}
    slow = dict(max_new_tokens_ocr=150, max_new_tokens_per_tile=150, repetition_guard_span=0)
    api = serve_api(settings)
    client = redis_lib.Redis.from_url(settings.redis_url, decode_responses=True)
    store = JobStore(client, settings)
    try:
        first = start_worker(settings, "intake,gpu,webhooks", **webhook_env, **slow)
        # model work is accepted once a model worker is online (its model loaded)
        wait_until(lambda: model_workers.online(client), 120, "the worker's model to load", [first])
        response = api.post("/v1/jobs", files={"file": ("scan.tiff", builders.tiff_multipage(2), "image/tiff")},
                            data={"task": "ocr", "engine": "internvl", "webhook_url": receiver.url})
        assert response.status_code == 202, response.text
        job_id = response.json()["id"]

        def running_page():
            pages = store.pages(job_id) if store.load(job_id).pages else []
            return next((p.page for p in pages if p.state == "running" and p.attempts >= 1), None)

        victim = wait_until(running_page, 120, "a page to start", [first], interval=0.1)
        first.kill()  # SIGKILL to the worker's process group, mid-page
        assert store.load(job_id).state == "running"
        time.sleep(VISIBILITY_S + 0.5)  # the unacked page message is due again
        second = start_worker(settings, "intake,gpu,webhooks,periodic", beat=True, **webhook_env, **slow)
        wait_until(lambda: store.load(job_id).state in ("succeeded", "partial", "failed"), 180, "the job to end",
                   [second], interval=0.2)
        assert store.load(job_id).state == "succeeded"
        assert {p.page: p.attempts for p in store.pages(job_id)}[victim] >= 2  # it was delivered again
        receiver.wait_for(1, timeout=60)
        # let the sweep and any redelivery run a few ticks before counting
        wait_until(lambda: client.zscore(ENDED_OUTBOX, job_id) is None, 30, "the after-end steps", [second])
        time.sleep(4)
        events = [r for r in receiver.requests if r.json().get("type") == "job.succeeded"]
        assert len({r.headers["webhook-id"] for r in events}) == 1, [r.headers for r in events]
        assert len(events) == 1, "a second delivery of the one event (it should have been acked with 200)"
        assert events[0].json()["data"]["job_id"] == job_id
        assert second.log().count(f"job {job_id}: succeeded") + first.log().count(f"job {job_id}: succeeded") == 1
    finally:
        receiver.stop()
        client.close()
