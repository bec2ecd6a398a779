"""No secret in the logs of the whole system, with every logger at DEBUG.

The API (``python -m api``, a subprocess, ``DOCPROC_LOG_LEVEL=DEBUG``) and a worker
(``celery worker --loglevel DEBUG`` consuming intake, render and webhooks) run one job
with a signed webhook to a loopback receiver; the client fetches the result through a
presigned URL and also sends a wrong key and the right key in odd places. Then both
logs are searched for the API key, the webhook secret, the S3 secret access key, the
presigned URL and its signature: none may appear, in any form.
"""

from __future__ import annotations

import base64
import json
import sys
from urllib.parse import parse_qs, urlparse

import builders
import httpx
import pytest
from conftest import ServiceProcess, free_port, settings_env, wait_for_http, wait_until
from webhook_receiver import WebhookReceiver

from docproc.base.auth import hash_key

from .conftest import API_KEY, TENANT

pytestmark = pytest.mark.reliability

WEBHOOK_SECRET = "whsec_" + base64.b64encode(b"reliability-webhook-secret-32by").decode()
S3_SECRET = "S3secretKEYreliability0123456789abcdefXYZ"


def test_no_secret_reaches_the_api_or_worker_logs(stack_settings, tmp_path, monkeypatch):
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", S3_SECRET)  # moto accepts any; boto3 signs with it
    settings = stack_settings(rate_limit_per_minute=0)
    receiver = WebhookReceiver().start()
    port = free_port()
    env = settings_env(settings, log_level="DEBUG", log_format="json", periodic_interval_s=1,
                       api_keys=json.dumps({TENANT: hash_key(API_KEY)}),
                       webhook_secrets=json.dumps({TENANT: [WEBHOOK_SECRET]}),
                       webhook_allow_hosts=json.dumps(["127.0.0.1"]))
    env["AWS_SECRET_ACCESS_KEY"] = S3_SECRET
    api_proc = ServiceProcess([sys.executable, "-m", "api", "--host", "127.0.0.1", "--port", str(port)], env,
                              tmp_path / "api.log")
    worker = ServiceProcess([sys.executable, "-m", "celery", "-A", "workers.celery_app", "worker", "-Q",
                             "intake,render,webhooks", "-P", "solo", "--loglevel", "DEBUG", "--without-gossip",
                             "--without-mingle", "-n", "redact@%h"], env, tmp_path / "worker.log")
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for_http(f"{base}/healthz", 60, "the API", [api_proc])
        client = httpx.Client(base_url=base, headers={"Authorization": f"Bearer {API_KEY}"}, timeout=30)
        response = client.post("/v1/jobs", files={"file": ("a.pdf", builders.multipage_text_pdf(1), "application/pdf")},
                               data={"task": "ocr", "engine": "text", "webhook_url": receiver.url})
        assert response.status_code == 202, response.text
        job_id = response.json()["id"]
        wait_until(lambda: client.get(f"/v1/jobs/{job_id}").json()["state"] == "succeeded", 90, "the job",
                   [api_proc, worker], interval=0.2)
        receiver.wait_for(1, timeout=60)
        assert receiver.requests[0].headers["webhook-signature"].startswith("v1,")
        presigned = client.get(f"/v1/jobs/{job_id}/result", params={"redirect": "true"}).headers["location"]
        assert httpx.get(presigned).status_code == 200
        signature = parse_qs(urlparse(presigned).query)["X-Amz-Signature"][0]
        # a wrong key, and the right key where no header belongs (the query string)
        assert httpx.get(f"{base}/v1/jobs", headers={"X-API-Key": API_KEY[:-2] + "zz"}).status_code == 401
        httpx.get(f"{base}/v1/jobs", params={"api_key": API_KEY}, headers={"X-API-Key": API_KEY})
        client.close()
    finally:
        worker.stop()
        api_proc.stop()
        receiver.stop()

    logs = {"api": api_proc.log(), "worker": worker.log()}
    assert "DEBUG" in logs["api"] and "DEBUG" in logs["worker"]  # the test ran at DEBUG
    assert job_id in logs["worker"]
    secrets = {"API key": API_KEY, "API key (tail)": API_KEY[3:], "webhook secret": WEBHOOK_SECRET,
               "webhook secret (key)": WEBHOOK_SECRET.removeprefix("whsec_"), "S3 secret key": S3_SECRET,
               "presigned URL": presigned, "presigned signature": signature}
    leaks = [f"{what} in the {name} log" for name, text in logs.items() for what, secret in secrets.items()
             if secret in text]
    assert not leaks, leaks
