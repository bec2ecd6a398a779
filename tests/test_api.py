"""The REST API over real HTTP: uvicorn on a loopback port, real Redis, moto's S3 server.

Each test gets its own API server (a thread running uvicorn) on the session's
redis-server (emptied) and a fresh S3 bucket. Tasks are sent to the real broker
(the same Redis) and read back from its queues; no worker runs here except in
the result tests, which run the worker's own functions (workers.jobflow) in-process.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone

import boto3
import builders
import httpx
import pytest
import redis
from conftest import serving

from api.app import create_app
from docproc.base.auth import hash_key
from docproc.base.settings import Settings
from docproc.base.storage import input_key, open_storage

KEYS = {
    "tenant-a": "dp_test-key-of-tenant-a-0000000000000000000000",
    "tenant-b": "dp_test-key-of-tenant-b-1111111111111111111111",
    "tenant-c": "dp_test-key-of-tenant-c-2222222222222222222222",
}
PROBLEM = "application/problem+json"


@dataclass
class Api:
    url: str
    settings: Settings
    redis: redis.Redis
    clients: list[httpx.Client] = field(default_factory=list)

    def client(self, tenant: str | None = "tenant-a", *, header: str = "bearer") -> httpx.Client:
        headers = {}
        if tenant is not None:
            key = KEYS[tenant]
            headers = {"Authorization": f"Bearer {key}"} if header == "bearer" else {"X-API-Key": key}
        client = httpx.Client(base_url=self.url, headers=headers, timeout=30)
        self.clients.append(client)
        return client

    @property
    def storage(self):
        return open_storage(self.settings)


@pytest.fixture
def start_api(service_settings: Settings, redis_client: redis.Redis,
              model_worker_online) -> Iterator[Callable[..., Api]]:
    """``start_api(**settings_overrides)`` runs an API server (with a model worker counted online);
    all are stopped after the test."""
    with_keys = service_settings.model_copy(
        update={"api_keys": {tenant: hash_key(key) for tenant, key in KEYS.items()}}
    )
    stack: list = []

    def start(**overrides) -> Api:
        settings = with_keys.model_copy(update=overrides)
        cm = serving(create_app(settings))
        url = cm.__enter__()
        api = Api(url=url, settings=settings, redis=redis_client)
        stack.append((cm, api))
        return api

    yield start
    for cm, api in reversed(stack):
        for client in api.clients:
            client.close()
        cm.__exit__(None, None, None)


@pytest.fixture
def api(start_api) -> Api:
    return start_api()


# ---------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------


def submit(client: httpx.Client, data: bytes, filename: str = "doc.pdf", headers=None, **fields) -> httpx.Response:
    form = {k: (json.dumps(v) if k == "metadata" else str(v)) for k, v in fields.items()}
    return client.post("/v1/jobs", files={"file": (filename, data, "application/octet-stream")}, data=form, headers=headers)


def assert_problem(response: httpx.Response, status: int, code: str) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith(PROBLEM)
    body = response.json()
    assert body["status"] == status and body["code"] == code
    assert body["type"] == f"urn:docproc:problem:{code}"
    assert body["title"] and body["detail"] and body["instance"].startswith("urn:uuid:")
    return body


def queued_tasks(r: redis.Redis, queue: str) -> list[tuple[str, list]]:
    """(task name, args) of every message waiting in a Celery queue on the Redis broker."""
    out = []
    for raw in r.lrange(queue, 0, -1):
        message = json.loads(raw)
        args, _kwargs, _embed = json.loads(base64.b64decode(message["body"]))
        out.append((message["headers"]["task"], args))
    return out


# ---------------------------------------------------------------------------
# auth
# ---------------------------------------------------------------------------


def test_requests_without_a_valid_key_get_401_problems(api: Api) -> None:
    anonymous = api.client(None)
    body = assert_problem(anonymous.get("/v1/jobs"), 401, "unauthorized")
    assert "Bearer" in anonymous.get("/v1/jobs").headers["www-authenticate"]
    assert "traceback" not in json.dumps(body).lower()
    assert_problem(anonymous.get("/v1/jobs", headers={"Authorization": "Bearer dp_not-a-key"}), 401, "unauthorized")
    assert_problem(anonymous.get("/v1/jobs", headers={"X-API-Key": "dp_not-a-key"}), 401, "unauthorized")
    assert_problem(anonymous.post("/v1/jobs", files={"file": ("a.pdf", builders.invoice_pdf())}), 401, "unauthorized")
    assert api.client("tenant-a").get("/v1/jobs").status_code == 200
    assert api.client("tenant-a", header="x-api-key").get("/v1/jobs").status_code == 200


def test_rate_limit_answers_429_with_retry_after(start_api) -> None:
    api = start_api(rate_limit_per_minute=3)
    a, b = api.client("tenant-a"), api.client("tenant-b")
    assert [a.get("/v1/jobs").status_code for _ in range(3)] == [200, 200, 200]
    response = a.get("/v1/jobs")
    assert_problem(response, 429, "rate_limited")
    assert 1 <= int(response.headers["retry-after"]) <= 60
    assert b.get("/v1/jobs").status_code == 200  # the limit is per key


# ---------------------------------------------------------------------------
# submit
# ---------------------------------------------------------------------------


def test_submit_pdf_upload_queues_a_job_and_its_intake_task(api: Api) -> None:
    client = api.client("tenant-a")
    pdf = builders.invoice_pdf()
    response = submit(client, pdf, "invoice.pdf", task="tables", pages="1", metadata={"erp_ref": "PO-7", "n": [1, 2]})
    assert response.status_code == 202, response.text
    job = response.json()
    assert response.headers["location"] == f"/v1/jobs/{job['id']}"
    assert job["state"] == "queued" and job["metadata"] == {"erp_ref": "PO-7", "n": [1, 2]}

    shown = client.get(response.headers["location"]).json()
    assert shown["id"] == job["id"] and shown["state"] == "queued"
    assert shown["task"] == "tables" and shown["request"]["pages"] == "1"
    assert shown["filename"] == "invoice.pdf"
    sha = hashlib.sha256(pdf).hexdigest()
    assert shown["input"] == {"sha256": sha, "size_bytes": len(pdf), "media_type": "application/pdf"}
    assert shown["progress"] == {"total": None, "succeeded": 0, "failed": 0}
    assert shown["metadata"] == {"erp_ref": "PO-7", "n": [1, 2]}

    assert api.storage.get(input_key(sha)) == pdf  # stored once, content-addressed, in S3
    assert queued_tasks(api.redis, "intake") == [("docproc.intake", [job["id"]])]
    assert queued_tasks(api.redis, "bulk") == []


def test_bulk_priority_goes_to_the_bulk_queue(api: Api) -> None:
    response = submit(api.client(), builders.png_image(), "scan.png", priority="bulk")
    assert response.status_code == 202, response.text
    assert queued_tasks(api.redis, "bulk") == [("docproc.intake", [response.json()["id"]])]
    assert queued_tasks(api.redis, "intake") == []


def test_idempotency_key_replays_the_same_job_and_refuses_another_body(api: Api) -> None:
    client = api.client("tenant-a")
    pdf = builders.invoice_pdf()
    key = {"Idempotency-Key": "order-4711"}
    first = submit(client, pdf, headers=key, task="ocr", metadata={"a": 1})
    assert first.status_code == 202, first.text
    again = submit(client, pdf, headers=key, task="ocr", metadata={"a": 1})
    assert again.status_code == 200, again.text
    assert again.json()["id"] == first.json()["id"]
    assert again.headers["location"] == first.headers["location"]
    assert len(queued_tasks(api.redis, "intake")) == 1  # one job, one intake task

    other_fields = submit(client, pdf, headers=key, task="tables", metadata={"a": 1})
    assert_problem(other_fields, 409, "idempotency_conflict")
    other_file = submit(client, builders.multipage_text_pdf(2), headers=key, task="ocr", metadata={"a": 1})
    assert_problem(other_file, 409, "idempotency_conflict")
    # Keys are per tenant: tenant B's "order-4711" is its own job.
    other_tenant = submit(api.client("tenant-b"), pdf, headers=key, task="ocr", metadata={"a": 1})
    assert other_tenant.status_code == 202 and other_tenant.json()["id"] != first.json()["id"]
    assert len(queued_tasks(api.redis, "intake")) == 2


BAD_INPUTS = [
    pytest.param(b"", "empty.pdf", {}, 400, "empty_document", id="empty"),
    pytest.param(builders.elf_bytes(), "invoice.pdf", {}, 415, "unsupported_type", id="elf-named-pdf"),
    pytest.param(builders.encrypted_pdf(), "locked.pdf", {}, 422, "encrypted_document", id="encrypted"),
    pytest.param(builders.bomb_png(), "bomb.png", {}, 413, "image_too_large", id="bomb-png"),
    pytest.param(builders.truncated_pdf(), "cut.pdf", {}, 422, "corrupt_document", id="truncated"),
    pytest.param(builders.multipage_text_pdf(4), "long.pdf", {}, 413, "too_many_pages", id="too-many-pages"),
    pytest.param(builders.invoice_pdf(), "a.pdf", {"pages": "2-3"}, 422, "invalid_page_range", id="page-range"),
    pytest.param(builders.invoice_pdf(), "a.pdf", {"task": "extract", "schema": "payslip"}, 422, "unknown_schema",
                 id="unknown-schema"),
    pytest.param(builders.invoice_pdf(), "a.pdf", {"task": "extract"}, 422, "invalid_request", id="extract-no-schema"),
]


@pytest.mark.parametrize(("data", "filename", "fields", "status", "code"), BAD_INPUTS)
def test_bad_input_is_refused_at_once_with_its_typed_code(
    start_api, data: bytes, filename: str, fields: dict, status: int, code: str
) -> None:
    api = start_api(max_pages=3)
    client = api.client("tenant-a")
    started = time.monotonic()
    response = submit(client, data, filename, **fields)
    assert_problem(response, status, code)
    assert time.monotonic() - started < 5
    assert client.get("/v1/jobs").json()["jobs"] == []  # no job was made
    assert queued_tasks(api.redis, "intake") == []


def test_invalid_fields_are_422_with_field_errors(api: Api) -> None:
    client = api.client("tenant-a")
    pdf = builders.invoice_pdf()
    body = assert_problem(submit(client, pdf, task="translate"), 422, "invalid_request")
    assert [e["loc"] for e in body["errors"]] == [["body", "task"]]
    body = assert_problem(submit(client, pdf, colour="blue"), 422, "invalid_request")
    assert [e["loc"] for e in body["errors"]] == [["body", "colour"]]
    assert body["errors"][0]["type"] == "extra_forbidden"
    too_big = assert_problem(submit(client, pdf, metadata={"blob": "x" * 20000}), 422, "invalid_request")
    assert [e["loc"] for e in too_big["errors"]] == [["body", "metadata"]]
    assert_problem(submit(client, pdf, metadata=["not", "an", "object"]), 422, "invalid_request")
    for url in ("ftp://example.com/hook", "not a url", "example.com/hook"):  # the SSRF guard's code, not pydantic's
        refused = assert_problem(submit(client, pdf, webhook_url=url), 422, "webhook_url_refused")
        assert refused["reason"] == "scheme"
    not_json = client.post("/v1/jobs", files={"file": ("a.pdf", pdf)}, data={"metadata": "{not json"})
    assert_problem(not_json, 422, "invalid_request")
    no_file = client.post("/v1/jobs", data={"task": "ocr"}, files={"other": ("a.pdf", pdf)})
    assert_problem(no_file, 422, "invalid_request")
    assert queued_tasks(api.redis, "intake") == []


def test_api_errors_name_request_fields_not_cli_flags(api: Api) -> None:
    client = api.client("tenant-a")
    pdf = builders.invoice_pdf()
    for fields, named in (({"task": "extract"}, "schema 'invoice'"),
                          ({"task": "extract", "schema": "invoice", "engine": "text"}, "engine 'internvl'")):
        body = assert_problem(submit(client, pdf, **fields), 422, "invalid_request")
        assert "--" not in body["detail"] and named in body["detail"], body["detail"]


def test_unknown_json_field_is_refused(api: Api) -> None:
    client = api.client("tenant-a")
    response = client.post("/v1/jobs", json={"source_uri": "s3://inbox/a.pdf", "task": "ocr", "colour": "blue"})
    body = assert_problem(response, 422, "invalid_request")
    assert ["body", "colour"] in [e["loc"] for e in body["errors"]]
    missing = assert_problem(client.post("/v1/jobs", json={"task": "ocr"}), 422, "invalid_request")
    assert ["body", "source_uri"] in [e["loc"] for e in missing["errors"]]
    assert_problem(client.post("/v1/jobs", content=b"{nope", headers={"content-type": "application/json"}),
                   422, "invalid_request")
    raw_pdf = assert_problem(client.post("/v1/jobs", content=b"%PDF-1.7", headers={"content-type": "application/pdf"}),
                             415, "unsupported_media_type")  # a body the route does not read: 415, not 422
    assert raw_pdf["content_type"] == "application/pdf"


def test_submit_from_an_allowed_s3_bucket_only(start_api, moto_server: str) -> None:
    s3 = boto3.client("s3", endpoint_url=moto_server, region_name="us-east-1")
    s3.create_bucket(Bucket="inbox")
    s3.create_bucket(Bucket="elsewhere")
    pdf = builders.invoice_pdf()
    s3.put_object(Bucket="inbox", Key="2026/03/invoice 42.pdf", Body=pdf)
    s3.put_object(Bucket="elsewhere", Key="invoice.pdf", Body=pdf)
    s3.put_object(Bucket="inbox", Key="big.pdf", Body=pdf + b"\0" * 8192)
    api = start_api(source_buckets=["inbox"], max_file_bytes=len(pdf) + 1024)
    client = api.client("tenant-a")

    response = client.post(
        "/v1/jobs", json={"source_uri": "s3://inbox/2026/03/invoice%2042.pdf", "task": "tables", "metadata": {"k": 1}}
    )
    assert response.status_code == 202, response.text
    job = client.get(response.headers["location"]).json()
    assert job["filename"] == "invoice 42.pdf" and job["task"] == "tables" and job["metadata"] == {"k": 1}
    assert api.storage.get(input_key(hashlib.sha256(pdf).hexdigest())) == pdf
    assert queued_tasks(api.redis, "intake") == [("docproc.intake", [job["id"]])]

    for uri in ("s3://elsewhere/invoice.pdf", "file:///etc/passwd", "http://169.254.169.254/latest/meta-data",
                "https://inbox.s3.amazonaws.com/a.pdf", "s3://inbox", "s3://inbox/missing.pdf"):
        assert_problem(client.post("/v1/jobs", json={"source_uri": uri}), 422, "invalid_request")
    assert_problem(client.post("/v1/jobs", json={"source_uri": "s3://inbox/big.pdf"}), 413, "file_too_large")
    assert len(queued_tasks(api.redis, "intake")) == 1


# ---------------------------------------------------------------------------
# size limit while streaming
# ---------------------------------------------------------------------------


def _raw_request(url: str, head: bytes, body_parts: list[bytes], *, timeout: float = 5.0) -> bytes:
    """Send a request head and some body on a raw socket WITHOUT finishing the body,
    then read what the server answers (it must answer before the body ends)."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=timeout) as sock:
        sock.sendall(head)
        for part in body_parts:
            sock.sendall(part)
        answer = b""
        while b"\r\n\r\n" not in answer or not answer.rstrip().endswith(b"}"):
            chunk = sock.recv(65536)
            if not chunk:
                break
            answer += chunk
        return answer


def _multipart_head(boundary: str, extra_headers: str = "") -> bytes:
    return (
        "POST /v1/jobs HTTP/1.1\r\nHost: test\r\n"
        f"Authorization: Bearer {KEYS['tenant-a']}\r\n"
        f"Content-Type: multipart/form-data; boundary={boundary}\r\n{extra_headers}\r\n"
    ).encode()


def _chunk(data: bytes) -> bytes:
    return b"%x\r\n" % len(data) + data + b"\r\n"


def test_upload_over_the_limit_is_cut_off_while_streaming(start_api) -> None:
    limit = 64 * 1024
    api = start_api(max_file_bytes=limit)
    boundary = "docproc-test-boundary"
    part_head = (
        f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"big.pdf\"\r\n"
        "Content-Type: application/pdf\r\n\r\n%PDF-1.7\n"
    ).encode()
    # Chunked (no Content-Length): limit + 16 KiB of the file are sent, the body never ends.
    parts = [_chunk(part_head)] + [_chunk(b"0" * 16384) for _ in range(limit // 16384 + 1)]
    started = time.monotonic()
    answer = _raw_request(api.url, _multipart_head(boundary, "Transfer-Encoding: chunked\r\n"), parts)
    assert time.monotonic() - started < 5
    status_line, _, rest = answer.partition(b"\r\n")
    assert status_line.split()[1] == b"413", answer[:500]
    body = json.loads(rest.partition(b"\r\n\r\n")[2])
    assert body["code"] == "file_too_large" and body["limit"] == limit
    assert queued_tasks(api.redis, "intake") == []


def test_content_length_over_the_limit_is_refused_before_reading(start_api) -> None:
    api = start_api(max_file_bytes=64 * 1024)
    # Claims 10 GB, sends nothing of it: the answer must not wait for the body.
    answer = _raw_request(api.url, _multipart_head("b", "Content-Length: 10000000000\r\n"), [])
    assert answer.split(b"\r\n", 1)[0].split()[1] == b"413", answer[:300]
    assert json.loads(answer.partition(b"\r\n\r\n")[2])["code"] == "file_too_large"
    # Just under the limit is fine (and a normal client gets the same 413 above it).
    client = api.client("tenant-a")
    ok = submit(client, builders.png_image(64, 64))
    assert ok.status_code == 202, ok.text
    assert_problem(submit(client, b"%PDF-1.7\n" + b"0" * (64 * 1024)), 413, "file_too_large")


# ---------------------------------------------------------------------------
# read, list, cancel, tenants
# ---------------------------------------------------------------------------


def test_another_tenants_job_is_404_everywhere(api: Api) -> None:
    a, b = api.client("tenant-a"), api.client("tenant-b")
    job_id = submit(a, builders.invoice_pdf()).json()["id"]
    for method, path in [
        ("GET", f"/v1/jobs/{job_id}"),
        ("DELETE", f"/v1/jobs/{job_id}"),
        ("GET", f"/v1/jobs/{job_id}/result"),
        ("GET", f"/v1/jobs/{job_id}/pages/1"),
    ]:
        theirs = b.request(method, path)
        assert_problem(theirs, 404, "not_found")
        never = b.request(method, path.replace(job_id, "0" * 32))
        assert theirs.json()["detail"].replace(job_id, "X") == never.json()["detail"].replace("0" * 32, "X")
    assert b.get("/v1/jobs").json()["jobs"] == []
    assert a.get(f"/v1/jobs/{job_id}").json()["state"] == "queued"  # B's DELETE did nothing
    assert_problem(a.get("/v1/jobs/not-a-job-id"), 404, "not_found")


def test_cancel_a_queued_job_revokes_its_intake_task(api: Api) -> None:
    from kombu import Connection, Exchange, Queue

    client = api.client("tenant-a")
    job_id = submit(client, builders.invoice_pdf()).json()["id"]
    [message] = [json.loads(raw) for raw in api.redis.lrange("intake", 0, -1)]
    task_id = message["headers"]["id"]

    broadcasts: list[dict] = []
    pidbox = Queue("test-pidbox", Exchange("celery.pidbox", type="fanout"), auto_delete=True, no_ack=True)
    with Connection(api.settings.redis_url) as conn, conn.Consumer(
        pidbox, callbacks=[lambda body, _msg: broadcasts.append(body)], accept=["json"]
    ):
        try:  # the first poll subscribes to the fanout channel
            conn.drain_events(timeout=0.2)
        except TimeoutError:
            pass
        canceled = client.delete(f"/v1/jobs/{job_id}")
        deadline = time.monotonic() + 5
        while not broadcasts and time.monotonic() < deadline:
            try:
                conn.drain_events(timeout=0.5)
            except TimeoutError:
                pass
    assert canceled.status_code == 200, canceled.text
    assert canceled.json()["state"] == "canceled" and canceled.json()["finished_at"] is not None
    # The worker side learns it twice: the job state, and Celery's revoke broadcast.
    assert [(b["method"], b["arguments"]["task_id"]) for b in broadcasts] == [("revoke", [task_id])]

    assert client.get(f"/v1/jobs/{job_id}").json()["state"] == "canceled"
    again = client.delete(f"/v1/jobs/{job_id}")  # idempotent
    assert again.status_code == 200 and again.json()["state"] == "canceled"
    assert_problem(client.get(f"/v1/jobs/{job_id}/result"), 404, "not_found")


def test_list_filters_and_cursor_pagination(api: Api) -> None:
    client = api.client("tenant-c")
    ids = []
    for n in range(5):
        response = submit(client, builders.png_image(32 + n, 32), f"p{n}.png", metadata={"n": n})
        assert response.status_code == 202, response.text
        ids.append(response.json()["id"])
        time.sleep(0.005)  # distinct creation times
    extract = submit(client, builders.invoice_pdf(), "inv.pdf", task="extract", schema="invoice")
    assert extract.status_code == 202, extract.text
    ids.append(extract.json()["id"])
    for job_id in ids[1:3]:
        client.delete(f"/v1/jobs/{job_id}")
    submit(api.client("tenant-a"), builders.invoice_pdf())  # another tenant's job never shows

    seen, cursor, pages = [], None, 0
    while True:
        params = {"limit": 2} | ({"cursor": cursor} if cursor else {})
        body = client.get("/v1/jobs", params=params).json()
        assert len(body["jobs"]) <= 2
        seen += [j["id"] for j in body["jobs"]]
        pages += 1
        cursor = body["next_cursor"]
        if cursor is None:
            break
    assert seen == ids[::-1] and pages == 3  # newest first, each once

    canceled = client.get("/v1/jobs", params={"state": "canceled"}).json()
    assert [j["id"] for j in canceled["jobs"]] == [ids[2], ids[1]]
    assert all(j["state"] == "canceled" for j in canceled["jobs"])
    by_schema = client.get("/v1/jobs", params={"schema": "invoice"}).json()["jobs"]
    assert [j["id"] for j in by_schema] == [ids[5]] and by_schema[0]["schema"] == "invoice"

    jobs = {j["id"]: j for j in client.get("/v1/jobs", params={"limit": 10}).json()["jobs"]}
    third = datetime.fromisoformat(jobs[ids[2]]["created_at"])
    newer = client.get("/v1/jobs", params={"created_from": third.isoformat()}).json()["jobs"]
    assert [j["id"] for j in newer] == ids[2:][::-1]
    older = client.get("/v1/jobs", params={"created_to": (third - timedelta(microseconds=1)).isoformat()}).json()
    assert [j["id"] for j in older["jobs"]] == ids[:2][::-1]
    assert jobs[ids[0]]["metadata"] == {"n": 0}

    assert_problem(client.get("/v1/jobs", params={"state": "sleeping"}), 422, "invalid_request")
    assert_problem(client.get("/v1/jobs", params={"cursor": "garbage!"}), 422, "invalid_request")
    assert_problem(client.get("/v1/jobs", params={"limit": 0}), 422, "invalid_request")


# ---------------------------------------------------------------------------
# results, written by the worker's own code
# ---------------------------------------------------------------------------


def run_job_inline(api: Api, job_id: str) -> None:
    """What the Celery tasks do, in-process: intake, then every page (the last finalises)."""
    from docproc.jobs.store import JobStore, connect_redis
    from workers.jobflow import run_intake, run_page
    from workers.pipeline import Engines

    client = connect_redis(api.settings)
    store, storage, engines = JobStore(client, api.settings), api.storage, Engines(api.settings)
    planned: list[int] = []
    run_intake(job_id, settings=api.settings, store=store, storage=storage,
               enqueue=lambda jid, page, queue: planned.append(page) or f"inline-{page}")
    for page in planned:
        run_page(job_id, page, settings=api.settings, store=store, storage=storage, engines=engines)
    client.close()


def test_result_of_a_finished_job(api: Api, moto_server: str) -> None:
    client = api.client("tenant-a")
    pdf = builders.multipage_text_pdf(3)
    job_id = submit(client, pdf, "three.pdf", task="ocr", engine="text", pages="1,3").json()["id"]
    assert_problem(client.get(f"/v1/jobs/{job_id}/result"), 409, "result_not_ready")
    assert_problem(client.get(f"/v1/jobs/{job_id}/pages/1"), 409, "result_not_ready")

    run_job_inline(api, job_id)

    job = client.get(f"/v1/jobs/{job_id}").json()
    assert job["state"] == "succeeded", job
    assert job["progress"] == {"total": 2, "succeeded": 2, "failed": 0}
    assert [p["page"] for p in job["pages"]] == [1, 3] and all(p["state"] == "succeeded" for p in job["pages"])
    assert job["timings"]["total_ms"] >= job["timings"]["running_ms"] >= 0
    assert job["links"]["result"] == f"/v1/jobs/{job_id}/result"

    result = client.get(f"/v1/jobs/{job_id}/result")
    assert result.status_code == 200 and result.headers["content-type"] == "application/json"
    document = result.json()
    assert document["status"] == "succeeded" and document["document"]["sha256"] == hashlib.sha256(pdf).hexdigest()
    assert [p["page"] for p in document["pages"]] == [1, 3]
    assert all(p["text"] for p in document["pages"])

    page = client.get(f"/v1/jobs/{job_id}/pages/3").json()
    assert page == document["pages"][1]
    assert_problem(client.get(f"/v1/jobs/{job_id}/pages/2"), 404, "not_found")  # not selected

    redirect = client.get(f"/v1/jobs/{job_id}/result", params={"redirect": "true"})
    assert redirect.status_code == 307
    location = redirect.headers["location"]
    assert location.startswith(moto_server) and "X-Amz-Signature" in location
    assert httpx.get(location).json() == document  # the presigned URL serves the same JSON


def test_result_redirect_with_local_storage_serves_the_body(start_api, tmp_path) -> None:
    api = start_api(storage_url=f"file://{tmp_path}/store")
    client = api.client("tenant-a")
    job_id = submit(client, builders.invoice_pdf(), task="tables", engine="text").json()["id"]
    run_job_inline(api, job_id)
    response = client.get(f"/v1/jobs/{job_id}/result", params={"redirect": "true"})
    assert response.status_code == 200
    assert response.json()["pages"][0]["tables"]
    # ... and says it did not redirect (and why); without redirect=true nothing is said
    assert response.headers["Docproc-Redirect"].startswith("not-redirected; the storage is local")
    assert client.get(f"/v1/jobs/{job_id}/pages/1", params={"redirect": "true"}).headers["Docproc-Redirect"]
    assert "Docproc-Redirect" not in client.get(f"/v1/jobs/{job_id}/result").headers


ISO_UTC = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z")


def test_every_timestamp_has_one_format(api: Api) -> None:
    """RFC 3339 UTC with microseconds and Z, whether or not the time has a fraction (pydantic
    wrote ...24Z for a whole second, ...24.010000Z otherwise) and in webhooks (+00:00)."""
    from docproc.delivery.webhooks import job_payload
    from docproc.jobs.store import JobStore, connect_redis

    client = api.client("tenant-a")
    job_id = submit(client, builders.invoice_pdf(), task="tables", engine="text").json()["id"]
    redis_client = connect_redis(api.settings)
    store = JobStore(redis_client, api.settings)
    whole_second = datetime(2026, 12, 6, 1, 2, 3, tzinfo=timezone.utc)
    run_job_inline(api, job_id)
    redis_client.hset(f"docproc:job:{job_id}", "started_at", json.dumps(whole_second.isoformat()))
    job = client.get(f"/v1/jobs/{job_id}").json()
    assert job["started_at"] == "2026-12-06T01:02:03.000000Z"
    for name in ("created_at", "finished_at"):
        assert ISO_UTC.fullmatch(job[name]), job[name]
    listed = client.get("/v1/jobs").json()["jobs"][0]
    assert ISO_UTC.fullmatch(listed["created_at"]) and ISO_UTC.fullmatch(listed["finished_at"])
    version = client.get(f"/v1/jobs/{job_id}/versions").json()["versions"][0]
    assert ISO_UTC.fullmatch(version["created_at"])
    payload = job_payload(store.load(job_id))
    assert ISO_UTC.fullmatch(payload["created_at"]) and ISO_UTC.fullmatch(payload["finished_at"])
    redis_client.close()


def test_a_reprocess_answer_shows_its_selector_and_changes_and_only_a_model_it_named(api: Api) -> None:
    client = api.client("tenant-a")
    response = client.post("/v1/reprocess", json={"selector": {"schema": "invoice"}, "schema": "invoice@2"})
    assert response.status_code == 202, response.text
    view = response.json()
    assert view["selector"]["schema"] == "invoice" and "selector" not in view["selector"]
    assert view["changes"] == {"task": "extract", "schema": "invoice@2", "engine": None}
    assert view["model"] is None  # none named; each job records the model that ran it
    assert client.get(f"/v1/reprocess/{view['id']}").json()["selector"] == view["selector"]
    named = client.post("/v1/reprocess", json={"selector": {"schema": "invoice"}, "schema": "invoice@2",
                                               "model": api.settings.model}).json()
    assert named["model"] == api.settings.model
    text = client.post("/v1/reprocess", json={"selector": {"schema": "invoice"}, "task": "ocr", "engine": "text",
                                              "model": api.settings.model})
    assert_problem(text, 422, "invalid_request")  # the text engine runs no model
    batch = client.post("/v1/batches", json={"source_uris": ["s3://inbox/a.pdf"]})
    if batch.status_code == 202:
        assert batch.json()["changes"] is None


# ---------------------------------------------------------------------------
# schemas, health, docs, errors
# ---------------------------------------------------------------------------


def test_schemas_endpoints(api: Api) -> None:
    from docproc.jobs.schemas import get_registry

    registry = get_registry(api.settings)
    client = api.client("tenant-a")
    listed = client.get("/v1/schemas").json()["schemas"]
    assert [s["name"] for s in listed] == registry.names()
    invoice = client.get("/v1/schemas/invoice").json()
    expected = registry.get("invoice")
    assert invoice["key"] == expected.key and invoice["json_schema"] == expected.json_schema
    assert client.get(f"/v1/schemas/{expected.key}").json()["version"] == expected.version
    assert_problem(client.get("/v1/schemas/payslip"), 404, "not_found")
    assert_problem(api.client(None).get("/v1/schemas"), 401, "unauthorized")


def test_healthz_and_readyz(start_api, tmp_path) -> None:
    from conftest import RedisServer

    (tmp_path / "redis").mkdir()
    own = RedisServer(tmp_path / "redis")
    own.start()
    try:
        api = start_api(redis_url=own.url)
        client = api.client(None)
        assert client.get("/healthz").json() == {"status": "ok", "checks": {}}
        ready = client.get("/readyz")
        assert ready.status_code == 200 and ready.json()["checks"] == {"redis": "ok", "storage": "ok"}
        own.stop()
        started = time.monotonic()
        down = client.get("/readyz")
        assert time.monotonic() - started < 10
        body = assert_problem(down, 503, "service_unavailable")
        assert body["checks"]["storage"] == "ok" and body["checks"]["redis"].startswith("unreachable")
        assert client.get("/healthz").status_code == 200  # the process itself is fine
        # Requests that need Redis answer 503 too, not a 500.
        assert_problem(api.client("tenant-a").get("/v1/jobs"), 503, "service_unavailable")
        own.start()
        assert client.get("/readyz").status_code == 200
    finally:
        own.stop()


def test_openapi_documents_routes_and_problems(api: Api) -> None:
    client = api.client(None)
    spec = client.get("/openapi.json").json()
    job = spec["paths"]["/v1/jobs/{job_id}"]["get"]
    assert PROBLEM in job["responses"]["404"]["content"]
    post = spec["paths"]["/v1/jobs"]["post"]
    assert set(post["requestBody"]["content"]) == {"multipart/form-data", "application/json"}
    assert {"401", "409", "413", "415", "422", "429"} <= set(post["responses"])
    assert {"bearer", "apiKey"} <= set(spec["components"]["securitySchemes"])
    assert "swagger" in client.get("/docs").text.lower()
    assert_problem(client.get("/no/such/route"), 404, "not_found")
    assert_problem(client.put("/v1/jobs"), 405, "method_not_allowed")


def test_unhandled_error_is_a_500_problem_without_details(service_settings) -> None:
    app = create_app(service_settings)

    @app.get("/boom")
    def boom() -> None:
        raise RuntimeError("password=hunter2 at /srv/secret/path")

    with serving(app) as url:
        response = httpx.get(f"{url}/boom")
    body = assert_problem(response, 500, "internal_error")
    assert "hunter2" not in response.text and "Traceback" not in response.text and "RuntimeError" not in response.text
    assert body["detail"] == "internal server error"


def test_api_does_not_import_torch() -> None:
    code = "import sys, api.app; api.app.create_app(); assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_python_m_api_serves_from_the_environment(service_settings, tmp_path) -> None:
    import os

    from conftest import free_port

    port = free_port()
    env = os.environ | {
        "DOCPROC_REDIS_URL": service_settings.redis_url,
        "DOCPROC_STORAGE_URL": service_settings.storage_url,
        "DOCPROC_S3_ENDPOINT_URL": service_settings.s3_endpoint_url,
        "DOCPROC_API_KEYS": json.dumps({"tenant-a": hash_key(KEYS["tenant-a"])}),
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "api", "--host", "127.0.0.1", "--port", str(port)],
        env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                ready = httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2)
                break
            except httpx.TransportError:
                assert proc.poll() is None, proc.stdout.read().decode(errors="replace")
                assert time.monotonic() < deadline, "python -m api did not start"
                time.sleep(0.1)
        assert ready.status_code == 200 and ready.json()["checks"] == {"redis": "ok", "storage": "ok"}
        listed = httpx.get(f"http://127.0.0.1:{port}/v1/jobs", headers={"X-API-Key": KEYS["tenant-a"]})
        assert listed.status_code == 200 and listed.json() == {"jobs": [], "next_cursor": None}
    finally:
        proc.terminate()
        proc.wait(10)
    # SIGTERM: a graceful shutdown (uvicorn then re-raises the signal, so -15 is the usual code).
    assert "Application shutdown complete" in proc.stdout.read().decode(errors="replace")
