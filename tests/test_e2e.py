"""The whole service end to end: HTTP in, a real Celery worker, S3 out, Flower watching.

One module-wide stack: the API (uvicorn in a thread, on a free loopback port), one
worker subprocess consuming ``intake,render,gpu`` (``python -m workers``: the solo
pool, the tiny InternVL loaded once), Flower with basic auth, the session's
redis-server and a fresh bucket on moto's S3 server. Everything a client sees goes
over real HTTP (httpx); the S3 layout is checked with boto3 on the moto endpoint.

The worker's budgets: ``ocr`` pages generate a few tokens (quick jobs); ``tables``
pages on the model generate long (:data:`SLOW_TABLE_TOKENS`, no repetition guard),
which gives the cancel test a page that is still running when DELETE arrives.
"""

from __future__ import annotations

import ast
import hashlib
import json
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass

import boto3
import builders
import httpx
import pytest
import redis
from conftest import (
    ServiceProcess,
    free_port,
    make_bucket,
    serving,
    settings_env,
    wait_until,
)

from api.app import create_app
from docproc.base.auth import hash_key
from docproc.base.settings import Settings
from docproc.base.storage import document_result_key, input_key, page_result_key
from docproc.jobs.store import TERMINAL

pytestmark = pytest.mark.worker

TENANT = "e2e-tenant"
API_KEY = "dp_e2e-test-key-0000000000000000000000000000"
FLOWER_AUTH = ("flower-user", "flower-pw")
WORKER_QUEUES = ("intake", "render", "gpu")
OCR_TOKENS = 16
SLOW_TABLE_TOKENS = 200
JOB_TIMEOUT_S = 60


# ---------------------------------------------------------------------------
# the stack, once per module
# ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def e2e_settings(redis_server, moto_server, tiny_settings) -> Settings:
    """The service's settings: the session's Redis (emptied of earlier modules' jobs and
    queued tasks), a fresh bucket, one tenant's API key, the tiny model on the CPU."""
    if redis_server.proc is None or redis_server.proc.poll() is not None:
        redis_server.start()
    with redis.Redis.from_url(redis_server.url) as client:
        client.flushdb()
    return Settings(
        _env_file=None,
        redis_url=redis_server.url,
        storage_url=f"s3://{make_bucket(moto_server)}/",
        s3_endpoint_url=moto_server,
        s3_region="us-east-1",
        api_keys={TENANT: hash_key(API_KEY)},
        model=tiny_settings.model,
        device="cpu",
        max_new_tokens_ocr=OCR_TOKENS,
        max_new_tokens_tables=SLOW_TABLE_TOKENS,
    )


@dataclass
class Flower:
    url: str
    process: ServiceProcess

    def get(self, path: str, *, auth: tuple[str, str] | None = FLOWER_AUTH, **params) -> httpx.Response:
        return httpx.get(f"{self.url}{path}", params=params, auth=auth, timeout=10)


@pytest.fixture(scope="module")
def flower(e2e_settings, tmp_path_factory) -> Iterator[Flower]:
    """``celery -A workers.celery_app flower`` on a free port with basic auth, started
    before any worker or job, so it sees every task event from the first one."""
    port = free_port()
    argv = [sys.executable, "-m", "celery", "-A", "workers.celery_app", "flower", f"--port={port}",
            "--address=127.0.0.1", f"--basic-auth={':'.join(FLOWER_AUTH)}"]
    process = ServiceProcess(argv, settings_env(e2e_settings), tmp_path_factory.mktemp("e2e-logs") / "flower.log")
    flower = Flower(f"http://127.0.0.1:{port}", process)

    def answers() -> bool:
        try:
            return flower.get("/healthcheck", auth=None).status_code == 200
        except httpx.TransportError:
            return False

    try:
        wait_until(answers, 30, "Flower to answer /healthcheck", [process], interval=0.1)
        yield flower
    finally:
        process.stop()


@pytest.fixture(scope="module")
def worker(e2e_settings, flower, tmp_path_factory) -> Iterator[ServiceProcess]:
    """``python -m workers --queues intake,render,gpu``, ready once Flower has its
    worker-online event (the event stream works end to end)."""
    env = settings_env(e2e_settings, repetition_guard_span=0)
    argv = [sys.executable, "-m", "workers", "--queues", ",".join(WORKER_QUEUES), "-n", "e2e@%h"]
    process = ServiceProcess(argv, env, tmp_path_factory.mktemp("e2e-logs") / "worker.log")

    def online_in_flower() -> bool:
        metrics = flower.get("/metrics", auth=None).text
        return any(line.startswith('flower_worker_online{worker="e2e@') and line.endswith(" 1.0")
                   for line in metrics.splitlines())

    try:
        wait_until(online_in_flower, 60, "Flower to see the worker online", [process, flower.process], interval=0.2)
        yield process
    finally:
        process.stop()


@pytest.fixture(scope="module")
def client(e2e_settings) -> Iterator[httpx.Client]:
    """An httpx client of the tenant, on the API served by uvicorn on a loopback port."""
    with serving(create_app(e2e_settings)) as url, httpx.Client(
        base_url=url, headers={"Authorization": f"Bearer {API_KEY}"}, timeout=30
    ) as http:
        yield http


# ---------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------


def submit(client: httpx.Client, data: bytes, filename: str, **fields: str) -> str:
    response = client.post("/v1/jobs", files={"file": (filename, data, "application/octet-stream")}, data=fields)
    assert response.status_code == 202, response.text
    assert response.json()["state"] == "queued"
    return response.json()["id"]


def wait_for_job(client: httpx.Client, job_id: str, worker: ServiceProcess, seen: list[dict] | None = None) -> dict:
    """Poll GET /v1/jobs/{id} until the job ends (every view polled goes to ``seen``); its
    last view, which must say ``succeeded``. Failures carry that view and the worker's log."""
    seen = [] if seen is None else seen

    def ended() -> dict | None:
        seen.append(client.get(f"/v1/jobs/{job_id}").json())
        return seen[-1] if seen[-1]["state"] in TERMINAL else None

    try:
        view = wait_until(ended, JOB_TIMEOUT_S, f"job {job_id} to end", [worker], interval=0.1)
    except AssertionError as exc:
        raise AssertionError(f"{exc}\nlast view of job {job_id}: {seen[-1] if seen else None}") from None
    assert view["state"] == "succeeded", f"job {job_id} ended {view['state']}: {view['error']}\n{worker.tail()}"
    return view


def s3_client(settings: Settings):
    return boto3.client("s3", endpoint_url=settings.s3_endpoint_url, region_name=settings.s3_region)


def bucket_of(settings: Settings) -> str:
    return settings.storage_url.removeprefix("s3://").strip("/")


def s3_keys(settings: Settings, prefix: str) -> list[str]:
    listed = s3_client(settings).list_objects_v2(Bucket=bucket_of(settings), Prefix=prefix)
    return sorted(o["Key"] for o in listed.get("Contents", []))


@dataclass
class Finished:
    """The module's successful jobs: the invoice PDF twice, the 3-frame TIFF once."""

    pdf: bytes
    tiff: bytes
    ids: dict[str, str]
    views: dict[str, dict]
    polled: dict[str, list[dict]]


@pytest.fixture(scope="module")
def finished(client, worker) -> Finished:
    pdf, tiff = builders.invoice_pdf(), builders.tiff_multipage(3)
    ids = {
        "invoice": submit(client, pdf, "invoice.pdf", task="tables", engine="auto"),
        "invoice_again": submit(client, pdf, "invoice-copy.pdf", task="tables", engine="auto"),
        "scan": submit(client, tiff, "scan.tiff", task="ocr", engine="internvl"),
    }
    polled: dict[str, list[dict]] = {name: [] for name in ids}
    views = {name: wait_for_job(client, job_id, worker, polled[name]) for name, job_id in ids.items()}
    return Finished(pdf=pdf, tiff=tiff, ids=ids, views=views, polled=polled)


def assert_page_and_job_timings(view: dict, pages: list[int], engine: str) -> None:
    assert [p["page"] for p in view["pages"]] == pages
    for page in view["pages"]:
        assert page["state"] == "succeeded" and page["engine"] == engine and page["attempts"] == 1, page
        assert page["timings_ms"]["page"] > 0 and all(v >= 0 for v in page["timings_ms"].values()), page
    timings = view["timings"]
    assert timings["total_ms"] >= timings["running_ms"] > 0 and timings["queued_ms"] >= 0, timings
    assert timings["total_ms"] >= timings["queued_ms"] + timings["running_ms"] - 1  # rounding to 0.1 ms


# ---------------------------------------------------------------------------
# results over HTTP
# ---------------------------------------------------------------------------


def test_born_digital_invoice_tables_come_back_over_http(client, finished) -> None:
    job_id = finished.ids["invoice"]
    view = finished.views["invoice"]
    assert view["progress"] == {"total": 1, "succeeded": 1, "failed": 0}
    assert_page_and_job_timings(view, [1], "text")  # auto: the text layer is usable
    assert view["links"]["result"] == f"/v1/jobs/{job_id}/result"

    response = client.get(f"/v1/jobs/{job_id}/result")
    assert response.status_code == 200 and response.headers["content-type"] == "application/json"
    document = response.json()
    assert document["status"] == "succeeded" and document["task"] == "tables"
    assert document["document"]["sha256"] == hashlib.sha256(finished.pdf).hexdigest()
    [page] = document["pages"]
    assert page["engine"] == "text" and page["tables"][0]["rows"] == [builders.INVOICE_HEADER, *builders.INVOICE_ROWS]


def test_tiff_ocr_runs_on_the_model_page_by_page(client, finished, e2e_settings) -> None:
    job_id = finished.ids["scan"]
    view = finished.views["scan"]
    assert view["progress"] == {"total": 3, "succeeded": 3, "failed": 0}
    assert view["page_count"] == 3 and view["input"]["media_type"] == "image/tiff"
    assert view["model"] == e2e_settings.model
    assert_page_and_job_timings(view, [1, 2, 3], "internvl")
    # the progress the client saw while polling only ever went up, and ended at 3
    done = [v["progress"]["succeeded"] for v in finished.polled["scan"]]
    assert done == sorted(done) and done[-1] == 3

    document = client.get(f"/v1/jobs/{job_id}/result").json()
    assert document["status"] == "succeeded" and document["engine"] == "internvl"
    assert document["model"] == e2e_settings.model and document["document"]["page_count"] == 3
    assert [p["page"] for p in document["pages"]] == [1, 2, 3]
    for page in document["pages"]:
        assert page["engine"] == "internvl" and page["status"] == "succeeded" and page["tiles"] > 0, page
        assert isinstance(page["text"], str) and page["timings_ms"]["page"] > 0

    second = client.get(f"/v1/jobs/{job_id}/pages/2")
    assert second.status_code == 200 and second.json() == document["pages"][1]
    missing = client.get(f"/v1/jobs/{job_id}/pages/4")
    assert missing.status_code == 404 and missing.json()["code"] == "not_found"


def test_s3_holds_each_input_once_and_every_result(client, finished, e2e_settings) -> None:
    pdf_sha, tiff_sha = hashlib.sha256(finished.pdf).hexdigest(), hashlib.sha256(finished.tiff).hexdigest()
    first, again = finished.ids["invoice"], finished.ids["invoice_again"]
    assert first != again  # two jobs ...
    assert finished.views["invoice"]["input"]["sha256"] == finished.views["invoice_again"]["input"]["sha256"] == pdf_sha
    # ... one stored copy of their document, content-addressed
    assert s3_keys(e2e_settings, "inputs/") == sorted([input_key(pdf_sha), input_key(tiff_sha)])
    s3, bucket = s3_client(e2e_settings), bucket_of(e2e_settings)
    assert s3.get_object(Bucket=bucket, Key=input_key(pdf_sha))["Body"].read() == finished.pdf

    for name, pages in (("invoice", [1]), ("invoice_again", [1]), ("scan", [1, 2, 3])):
        job_id = finished.ids[name]
        assert s3_keys(e2e_settings, f"results/{job_id}/") == sorted(
            [f"results/{job_id}/document.json", *(f"results/{job_id}/pages/{n:05d}.json" for n in pages)]
        )
        stored = json.loads(s3.get_object(Bucket=bucket, Key=document_result_key(job_id))["Body"].read())
        assert stored == client.get(f"/v1/jobs/{job_id}/result").json()
    scan = finished.ids["scan"]
    page_two = json.loads(s3.get_object(Bucket=bucket, Key=page_result_key(scan, 2))["Body"].read())
    assert page_two == client.get(f"/v1/jobs/{scan}/pages/2").json() and page_two["page"] == 2


def test_result_redirect_follows_a_presigned_s3_url(client, finished, moto_server) -> None:
    job_id = finished.ids["scan"]
    body = client.get(f"/v1/jobs/{job_id}/result").json()

    redirect = client.get(f"/v1/jobs/{job_id}/result", params={"redirect": "true"}, follow_redirects=False)
    assert redirect.status_code == 307
    location = redirect.headers["location"]
    assert location.startswith(f"{moto_server}/") and "X-Amz-Signature=" in location and "X-Amz-Expires=" in location
    followed = client.get(f"/v1/jobs/{job_id}/result", params={"redirect": "true"}, follow_redirects=True)
    assert followed.status_code == 200 and str(followed.url).startswith(moto_server)
    assert followed.json() == body
    # the signature is what grants access: the same object unsigned is refused
    assert httpx.get(location.split("?")[0]).status_code == 403


# ---------------------------------------------------------------------------
# Flower
# ---------------------------------------------------------------------------


def flower_tasks_of(flower: Flower, job_id: str) -> list[dict]:
    """The tasks Flower recorded whose first argument is ``job_id``."""
    response = flower.get("/api/tasks")
    assert response.status_code == 200, response.text
    return [task for task in response.json().values() if task_args(task)[:1] == [job_id]]


def task_args(task: dict) -> list:
    """A Flower task's positional arguments (Flower reports their repr)."""
    return list(ast.literal_eval(task["args"])) if task["args"] else []


def test_flower_shows_each_jobs_tasks_with_basic_auth(flower, finished) -> None:
    # the one-page invoice's text page runs inside its intake (the worker consumes render):
    # Flower shows its intake and no page task
    expected = {"scan": ([1, 2, 3], "gpu"), "invoice": ([], "render")}
    for name, (pages, queue) in expected.items():
        job_id = finished.ids[name]

        def all_succeeded(job_id=job_id, pages=pages) -> list[dict] | None:
            tasks = flower_tasks_of(flower, job_id)
            done = len(tasks) == 1 + len(pages) and all(t["state"] == "SUCCESS" for t in tasks)
            return tasks if done else None  # the last task-succeeded event may trail the job's end

        tasks = wait_until(all_succeeded, 15, f"Flower to show job {name}'s tasks succeeded", [flower.process])
        by_name: dict[str, list[dict]] = {}
        for task in tasks:
            by_name.setdefault(task["name"], []).append(task)
        [intake] = by_name["docproc.intake"]
        assert intake["routing_key"] == "intake" and intake["worker"].startswith("e2e@")
        page_tasks = by_name.get("docproc.page", [])
        assert sorted(task_args(t)[1] for t in page_tasks) == pages
        assert {t["routing_key"] for t in page_tasks} == ({queue} if pages else set())
        assert all(t["worker"].startswith("e2e@") and t["runtime"] > 0 for t in page_tasks)

    for auth in (None, (FLOWER_AUTH[0], "wrong-pw")):
        assert flower.get("/api/tasks", auth=auth).status_code == 401


# ---------------------------------------------------------------------------
# cancel
# ---------------------------------------------------------------------------


def drained(settings: Settings) -> bool:
    """No task waits in the worker's queues and none is delivered and unacknowledged."""
    with redis.Redis.from_url(settings.redis_url) as r:
        return not any(r.llen(queue) for queue in WORKER_QUEUES) and not r.hlen("unacked")


def test_cancel_over_http_while_the_job_runs(client, worker, e2e_settings) -> None:
    frames = 4
    job_id = submit(client, builders.tiff_multipage(frames), "long-scan.tiff", task="tables", engine="internvl")

    def a_page_running() -> dict | None:
        view = client.get(f"/v1/jobs/{job_id}").json()
        assert view["state"] in ("queued", "running"), view
        return view if any(p["state"] == "running" for p in view["pages"]) else None

    running = wait_until(a_page_running, JOB_TIMEOUT_S, f"a page of job {job_id} to run", [worker], interval=0.05)
    assert running["progress"]["succeeded"] < frames

    canceled = client.delete(f"/v1/jobs/{job_id}")
    assert canceled.status_code == 200, canceled.text
    assert canceled.json()["state"] == "canceled" and canceled.json()["finished_at"] is not None

    # the worker drains: the running page ends, the queued ones are revoked or skipped
    for _ in range(3):  # three looks in a row: a message is never between queue and unacked then
        wait_until(lambda: drained(e2e_settings), JOB_TIMEOUT_S, "the worker to drain its queues", [worker])
        time.sleep(0.3)
    after = client.get(f"/v1/jobs/{job_id}").json()
    assert after["state"] == "canceled" and after["finished_at"] == canceled.json()["finished_at"]
    assert after["links"]["result"] is None
    result = client.get(f"/v1/jobs/{job_id}/result")
    assert result.status_code == 404 and result.json()["code"] == "not_found", result.text

    keys = s3_keys(e2e_settings, f"results/{job_id}/")
    assert document_result_key(job_id) not in keys
    # the pages not started when the job was canceled never ran
    assert len(keys) < frames and set(keys) <= {page_result_key(job_id, n) for n in range(1, frames + 1)}
    assert after["progress"]["succeeded"] + after["progress"]["failed"] < frames
    assert f"job {job_id}: succeeded" not in worker.log()
