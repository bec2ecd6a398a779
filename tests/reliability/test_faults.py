"""Backing services failing under a running stack: Redis restarted, S3 down for a while.

The stack: this test's own redis-server (AOF ``everysec``) and moto S3 on a fixed port,
the API under uvicorn, one real Celery worker subprocess (``intake,render``, solo pool).
Jobs are text PDFs of :data:`PAGES` pages on the text engine (no model), submitted over
HTTP; everything is checked over HTTP too, as a client sees it.
"""

from __future__ import annotations

import time

import builders
import httpx
import pytest
from conftest import wait_until

from .conftest import OTHER_KEY

pytestmark = pytest.mark.reliability

PAGES = 12
JOBS = 4
TERMINAL = {"succeeded", "partial", "failed", "canceled"}


def submit(api: httpx.Client, n: int) -> list[str]:
    ids = []
    for i in range(n):
        data = builders.multipage_text_pdf(PAGES, lines_per_page=12 + i)  # distinct inputs
        response = api.post("/v1/jobs", files={"file": (f"doc{i}.pdf", data, "application/pdf")},
                            data={"task": "ocr", "engine": "text"})
        assert response.status_code == 202, response.text
        ids.append(response.json()["id"])
    return ids


def states(api: httpx.Client, ids: list[str]) -> dict[str, dict]:
    out = {}
    for job_id in ids:
        response = api.get(f"/v1/jobs/{job_id}")
        assert response.status_code == 200, response.text
        out[job_id] = response.json()
    return out


def pages_done(api: httpx.Client, ids: list[str]) -> int:
    return sum(job["progress"]["succeeded"] for job in states(api, ids).values())


def assert_complete(api: httpx.Client, job_id: str) -> None:
    """The job succeeded with every page, and its stored result says the same."""
    job = api.get(f"/v1/jobs/{job_id}").json()
    assert job["state"] == "succeeded", job
    assert job["progress"]["succeeded"] == PAGES and job["progress"]["failed"] == 0
    result = api.get(f"/v1/jobs/{job_id}/result")
    assert result.status_code == 200, result.text
    document = result.json()
    assert document["status"] == "succeeded" and [p["page"] for p in document["pages"]] == list(range(1, PAGES + 1))
    assert all(p["status"] == "succeeded" for p in document["pages"])


def test_redis_restarted_while_jobs_are_queued_and_running(own_redis, stack_settings, serve_api, start_worker):
    """Redis goes down mid-run (SIGTERM: AOF flushed) and comes back on the same port and
    data directory. Meanwhile the API answers 503 ``service_unavailable`` with Retry-After;
    afterwards it answers again by itself, and every job finishes, each exactly once."""
    # A short visibility timeout: pages the worker had in hand when the broker vanished
    # (canceled on connection loss, still unacked in Redis) come back after it.
    settings = stack_settings(visibility_timeout_s=5, rate_limit_per_minute=0)
    api = serve_api(settings)
    worker = start_worker(settings, "intake,render")
    ids = submit(api, JOBS)
    wait_until(lambda: pages_done(api, ids) >= 3, 120, "the first pages", [worker], interval=0.2)
    before = states(api, ids)
    assert any(j["state"] != "succeeded" for j in before.values()), "all done before the fault: use more pages"

    own_redis.stop()
    down = api.get(f"/v1/jobs/{ids[0]}")
    assert down.status_code == 503 and down.json()["code"] == "service_unavailable", down.text
    assert down.headers["content-type"].startswith("application/problem+json") and down.headers["Retry-After"]
    posted = api.post("/v1/jobs", files={"file": ("x.pdf", builders.multipage_text_pdf(1), "application/pdf")})
    assert posted.status_code == 503 and posted.json()["code"] == "service_unavailable", posted.text
    assert api.get("/v1/jobs").status_code == 503
    ready = api.get("/readyz")
    assert ready.status_code == 503 and ready.json()["checks"]["redis"] != "ok"
    time.sleep(3)  # the worker's tasks fail over to retries, its consumer reconnects in a loop
    own_redis.start()

    wait_until(lambda: api.get("/readyz").status_code == 200, 30, "the API to recover by itself")
    wait_until(lambda: all(j["state"] in TERMINAL for j in states(api, ids).values()), 180,
               "every job to end after the restart", [worker], interval=0.3)
    for job_id in ids:
        assert_complete(api, job_id)
    # nothing lost: every job the API accepted before the fault is still listed
    listed = {j["id"] for j in api.get("/v1/jobs", params={"limit": 200}).json()["jobs"]}
    assert set(ids) <= listed
    log = worker.log()
    assert "Connection to broker lost" in log and log.count("Connected to redis://") >= 2  # it did reconnect
    assert sum(log.count(f"job {job_id}: succeeded") for job_id in ids) == len(ids)  # one finalisation each


def test_s3_unavailable_for_a_while(own_s3, stack_settings, serve_api, start_worker):
    """S3 refuses connections for ~8 s mid-run, then returns with its objects. Writes retry
    with backoff and every job completes; while it is down no job is shown ``succeeded``
    unless its whole result was stored, and the result routes answer a typed 503."""
    settings = stack_settings(rate_limit_per_minute=0)
    api = serve_api(settings)
    worker = start_worker(settings, "intake,render")
    ids = submit(api, JOBS)
    wait_until(lambda: pages_done(api, ids) >= 3, 120, "the first pages", [worker], interval=0.2)

    own_s3.stop()
    seen_succeeded: set[str] = set()
    outage_answers: set[tuple[int, str]] = set()
    deadline = time.monotonic() + 8
    while time.monotonic() < deadline:
        for job_id, job in states(api, ids).items():
            assert job["state"] in {"queued", "running", "succeeded"}, job  # nothing failed by the outage
            if job["state"] == "succeeded":
                seen_succeeded.add(job_id)
                answer = api.get(f"/v1/jobs/{job_id}/result")
                outage_answers.add((answer.status_code, answer.json()["code"]))
        time.sleep(0.3)
    posted = api.post("/v1/jobs", files={"file": ("x.pdf", builders.multipage_text_pdf(1), "application/pdf")})
    assert posted.status_code == 503 and posted.json()["code"] == "storage_error", posted.text
    own_s3.start()

    wait_until(lambda: all(j["state"] in TERMINAL for j in states(api, ids).values()), 180,
               "every job to end after S3 came back", [worker], interval=0.3)
    for job_id in ids:  # including each one seen succeeded during the outage: complete
        assert_complete(api, job_id)
    assert outage_answers <= {(503, "storage_error")}, outage_answers
    log = worker.log()
    assert "Retry in" in log  # the tasks retried with backoff (Celery's countdown)
    assert sum(log.count(f"job {job_id}: succeeded") for job_id in ids) == len(ids)
    # another tenant still sees none of these jobs
    other = httpx.get(f"{api.base_url}/v1/jobs/{ids[0]}", headers={"X-API-Key": OTHER_KEY})
    assert other.status_code == 404 and other.json()["code"] == "not_found"
