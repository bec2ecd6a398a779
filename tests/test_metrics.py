"""Metrics after a real end-to-end job: the API's /metrics and a prefork worker's endpoint.

The stack (tests/obs_stack.py): the session's redis-server, a fresh moto S3 bucket,
the API on a loopback port, a ``python -m workers -c 2`` subprocess with its
metrics endpoint on. Both endpoints are scraped before and after one 3-page job
and the counters/histograms must have moved by exactly what that job did. The
queue gauges are read from Redis at scrape time: a bulk job's intake waits in the
``bulk`` queue, which this worker does not consume.
"""

from __future__ import annotations

import json
import time

import builders
import pytest
import redis
from conftest import wait_until
from obs_stack import delta, fresh_text_stack, scrape, value

from docproc.base.broker import BULK_QUEUE, PERIODIC_QUEUE, QUEUES
from docproc.base.queue_depth import PUBLISHED_AT_HEADER, priority_keys, queue_stats
from docproc.base.settings import Settings
from workers.celery_app import create_app

pytestmark = pytest.mark.worker

TENANT = "metrics-tenant"
API_KEY = "dp_metrics-test-key-000000000000000000000000"
PAGES = 3


@pytest.fixture(scope="module")
def stack(redis_server, moto_server, tmp_path_factory):
    with fresh_text_stack(redis_server, moto_server, tmp_path_factory.mktemp("metrics-logs"),
                          tenant=TENANT, api_key=API_KEY) as running:
        yield running


def test_an_end_to_end_job_moves_the_counters_and_histograms_by_its_own_amounts(stack) -> None:
    api_before, worker_before = scrape(f"{stack.api_url}/metrics"), scrape(stack.worker_metrics_url)

    # one 3-page text job, followed to its end
    pdf = builders.multipage_text_pdf(PAGES)
    response = stack.api.post("/v1/jobs", files={"file": ("doc.pdf", pdf, "application/pdf")},
                              data={"task": "ocr", "engine": "text"})
    assert response.status_code == 202, response.text
    stack.polls = 0
    view = stack.wait_for_job(response.json()["id"])
    assert view["state"] == "succeeded", view
    # a refused upload: an error code, counted once
    refused = stack.api.post("/v1/jobs", files={"file": ("x.bin", b"\x7fELF....", "application/octet-stream")})
    assert refused.status_code == 415 and refused.json()["code"] == "unsupported_type"

    api_after, worker_after = scrape(f"{stack.api_url}/metrics"), scrape(stack.worker_metrics_url)

    # API: submitted, HTTP requests by route template, error codes
    assert delta(api_before, api_after, "docproc_jobs_submitted_total", task="ocr", schema="", priority="normal") == 1
    assert delta(api_before, api_after, "docproc_http_requests_total",
                 route="/v1/jobs", method="POST", status="202") == 1
    assert delta(api_before, api_after, "docproc_http_requests_total",
                 route="/v1/jobs/{job_id}", method="GET", status="200") == stack.polls
    assert delta(api_before, api_after, "docproc_http_request_seconds_count",
                 route="/v1/jobs/{job_id}", method="GET") == stack.polls
    assert delta(api_before, api_after, "docproc_errors_total", code="unsupported_type", stage="api") == 1
    # the worker (two prefork children, summed): finished, pages, stage histograms
    assert delta(worker_before, worker_after, "docproc_jobs_finished_total",
                 state="succeeded", task="ocr", schema="") == 1
    assert delta(worker_before, worker_after, "docproc_pages_processed_total", engine="text", status="succeeded") == PAGES
    for stage, observations in (("intake", 1), ("render", PAGES), ("infer", PAGES), ("store", PAGES)):
        assert delta(worker_before, worker_after, "docproc_stage_seconds_count", stage=stage) == observations, stage
        assert delta(worker_before, worker_after, "docproc_stage_seconds_sum", stage=stage) > 0, stage
        assert delta(worker_before, worker_after, "docproc_stage_seconds_bucket", stage=stage, le="+Inf") \
            == observations, stage
    assert delta(worker_before, worker_after, "docproc_stage_seconds_count", stage="tile") == 0  # no model page
    # nothing waits any more; no job is queued or running
    for queue in QUEUES:
        assert value(api_after, "docproc_queue_depth", queue=queue) == 0, queue
        assert value(api_after, "docproc_queue_oldest_age_seconds", queue=queue) == 0, queue
    assert value(api_after, "docproc_jobs_in_state", state="queued") == 0
    assert value(api_after, "docproc_jobs_in_state", state="running") == 0
    assert value(api_after, "docproc_redis_up") == 1
    # no tenant name or job id in any label
    body = stack.api.get("/metrics").text
    assert TENANT not in body and view["id"] not in body


def test_a_job_waiting_in_an_unconsumed_queue_shows_in_depth_age_and_jobs_queued(stack) -> None:
    before = time.time()
    response = stack.api.post("/v1/jobs", files={"file": ("doc.pdf", builders.multipage_text_pdf(1), "application/pdf")},
                              data={"task": "ocr", "engine": "text", "priority": "bulk"})
    assert response.status_code == 202, response.text
    try:
        samples = scrape(f"{stack.api_url}/metrics")
        assert value(samples, "docproc_queue_depth", queue=BULK_QUEUE) == 1
        age = value(samples, "docproc_queue_oldest_age_seconds", queue=BULK_QUEUE)
        assert 0 <= age <= time.time() - before
        assert value(samples, "docproc_jobs_in_state", state="queued") == 1
        assert value(samples, "docproc_jobs_in_state", state="running") == 0
    finally:
        canceled = stack.api.delete(f"/v1/jobs/{response.json()['id']}")
        assert canceled.status_code == 200
        with redis.Redis.from_url(stack.settings.redis_url) as client:
            client.delete(*priority_keys(BULK_QUEUE))
    samples = scrape(f"{stack.api_url}/metrics")
    assert value(samples, "docproc_jobs_in_state", state="queued") == 0


def test_the_worker_endpoint_has_no_queue_gauges_and_the_api_survives_redis_down(stack, redis_server) -> None:
    worker = scrape(stack.worker_metrics_url)
    assert not [k for k in worker if k[0].startswith("docproc_queue_")]  # only the API reads Redis for them
    redis_server.stop()
    try:
        samples = scrape(f"{stack.api_url}/metrics")
        assert value(samples, "docproc_redis_up") == 0
        assert not [k for k in samples if k[0] == "docproc_queue_depth"]
    finally:
        redis_server.start()


WORK_COUNTS = ("docproc_jobs_finished_total", "docproc_pages_processed_total", "docproc_stage_seconds_count",
               "docproc_jobs_submitted_total")


def settled_scrape(url: str) -> dict:
    """A scrape once the counts of earlier work have all arrived: a busy worker publishes
    every shared_metrics.MIN_GAP_S, so an earlier test's last task may still be on its way."""
    from docproc.base import shared_metrics

    def settled():
        first = scrape(url)
        time.sleep(shared_metrics.MIN_GAP_S + 0.25)
        second = scrape(url)
        same = all(first.get(k) == second.get(k) for k in {*first, *second} if k[0] in WORK_COUNTS)
        return second if same else None

    return wait_until(settled, 30, "the earlier work's counts on /metrics")


def test_the_api_scrape_shows_the_workers_counts_and_re_process_submissions(stack) -> None:
    """One scrape target for the whole service: what the worker's pool children counted (pages,
    finished jobs, stage histograms) shows on the API's /metrics, exactly once; so does a
    re-process submission."""
    url = f"{stack.api_url}/metrics"
    before = settled_scrape(url)
    pdf = builders.multipage_text_pdf(PAGES)
    response = stack.api.post("/v1/jobs", files={"file": ("doc.pdf", pdf, "application/pdf")},
                              data={"task": "ocr", "engine": "text"})
    assert response.status_code == 202, response.text
    assert stack.wait_for_job(response.json()["id"])["state"] == "succeeded"

    def arrived():  # each task's counts are published as it ends, the last one just after the job ended
        after = scrape(url)
        return after if delta(before, after, "docproc_stage_seconds_count", stage="store") >= PAGES else None

    after = wait_until(arrived, 20, "the worker's counts on the API's /metrics", [stack.worker])
    time.sleep(0.5)
    after = scrape(url)  # nothing arrives twice
    assert delta(before, after, "docproc_jobs_finished_total", state="succeeded", task="ocr", schema="") == 1
    assert delta(before, after, "docproc_pages_processed_total", engine="text", status="succeeded") == PAGES
    for stage, observations in (("intake", 1), ("render", PAGES), ("infer", PAGES), ("store", PAGES)):
        assert delta(before, after, "docproc_stage_seconds_count", stage=stage) == observations, stage
        assert delta(before, after, "docproc_stage_seconds_bucket", stage=stage, le="+Inf") == observations, stage
        assert delta(before, after, "docproc_stage_seconds_sum", stage=stage) > 0, stage
    assert delta(before, after, "docproc_jobs_submitted_total", task="ocr", schema="", priority="normal") == 1

    reprocess = stack.api.post("/v1/reprocess", json={"selector": {"state": "succeeded"}, "engine": "text"})
    assert reprocess.status_code == 202, reprocess.text
    try:
        counted = scrape(url)
        assert delta(after, counted, "docproc_batches_submitted_total", kind="reprocess", source="jobs") == 1
    finally:  # its expansion waits on bulk, which this worker does not consume
        with redis.Redis.from_url(stack.settings.redis_url) as client:
            client.delete(*priority_keys(BULK_QUEUE))
    assert Settings(_env_file=None).worker_metrics_host == "127.0.0.1"  # worker endpoints: loopback by default


# --------------------------------------------------------------------------- queue_stats


def test_queue_stats_reads_depth_and_the_oldest_message_of_each_queue(redis_client, redis_server) -> None:
    """Real publishes through Celery (nobody consumes them): the oldest is the right end."""
    app = create_app(Settings(_env_file=None, redis_url=redis_server.url))
    try:
        t0 = time.time()
        app.send_task("docproc.periodic.sweep_ended", queue=PERIODIC_QUEUE)
        time.sleep(0.05)
        app.send_task("docproc.periodic.sweep_ended", queue=PERIODIC_QUEUE)
        app.send_task("docproc.periodic.sweep_ended", queue=PERIODIC_QUEUE, priority=5)  # a priority sibling
        t1 = time.time()
    finally:
        app.close()
    oldest = json.loads(redis_client.lindex(PERIODIC_QUEUE, -1))["headers"][PUBLISHED_AT_HEADER]
    newest = json.loads(redis_client.lindex(PERIODIC_QUEUE, 0))["headers"][PUBLISHED_AT_HEADER]
    assert t0 <= oldest < newest <= t1  # kombu LPUSHes: the right end is the oldest

    stats = {s.name: s for s in queue_stats(redis_client, QUEUES, now=t1 + 10)}
    assert stats[PERIODIC_QUEUE].depth == 3
    assert stats[PERIODIC_QUEUE].oldest_age_s == pytest.approx(t1 + 10 - oldest)
    assert stats[BULK_QUEUE].depth == 0 and stats[BULK_QUEUE].oldest_age_s == 0.0

    redis_client.lpush(BULK_QUEUE, json.dumps({"headers": {}, "body": ""}))  # another client's message
    assert queue_stats(redis_client, [BULK_QUEUE])[0].oldest_age_s is None


def test_a_killed_processes_live_gauges_are_dropped_and_its_counters_kept(tmp_path) -> None:
    """Multiprocess mode as in a worker: a child that dies without its shutdown hook."""
    import os
    import subprocess
    import sys

    from prometheus_client import CollectorRegistry, generate_latest
    from prometheus_client.multiprocess import MultiProcessCollector

    from docproc.base.metrics import mark_dead_processes

    child = ("from docproc.base import metrics; import os; "
             "metrics.GPU_MEMORY_BYTES.labels(device='cuda:0', kind='allocated', worker='h:1').set(123); "
             "metrics.PAGES_PROCESSED.labels(engine='text', status='succeeded').inc(2); os._exit(0)")
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    subprocess.run([sys.executable, "-c", child], env=env, check=True, timeout=60)
    assert any(p.name.startswith("gauge_liveall_") for p in tmp_path.iterdir())

    dead = mark_dead_processes(str(tmp_path))
    assert len(dead) == 1
    assert not any(p.name.startswith("gauge_liveall_") for p in tmp_path.iterdir())
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=str(tmp_path))
    text = generate_latest(registry).decode()
    assert 'docproc_pages_processed_total{engine="text",status="succeeded"} 2.0' in text
    assert "docproc_gpu_memory_bytes{" not in text


def test_publish_soon_publishes_an_idle_process_at_once_and_a_busy_one_within_the_gap(redis_client) -> None:
    """After a task: the first count is in Redis as publish_soon returns; one counted right
    after it is left to the publisher thread, which publishes it within MIN_GAP_S; nothing
    is added twice."""
    from docproc.base import metrics, shared_metrics

    field = shared_metrics._field("docproc_pages_processed_total", {"engine": "soon-test", "status": "succeeded"})

    def shared() -> float:
        return float(redis_client.hget(shared_metrics.KEY, field) or 0)

    counter = metrics.PAGES_PROCESSED.labels(engine="soon-test", status="succeeded")
    state = shared_metrics._publisher()  # no publish of this process within the gap (its thread's included)
    wait_until(lambda: time.monotonic() - state.last >= shared_metrics.MIN_GAP_S,
               shared_metrics.INTERVAL_S + shared_metrics.MIN_GAP_S + 2, "a gap since this process's last publish")
    counter.inc()
    shared_metrics.publish_soon(redis_client)
    assert shared() == 1  # idle: published at once
    counter.inc()
    shared_metrics.publish_soon(redis_client)
    assert shared() == 1  # busy: left to the thread
    wait_until(lambda: shared() == 2, shared_metrics.MIN_GAP_S + 2, "the thread's publish")
    time.sleep(shared_metrics.MIN_GAP_S)
    shared_metrics.flush()
    assert shared() == 2
