"""Batches through the real stack: streamed multipart, S3 prefix expansion in small chunks,
counts and pagination, JSON Lines results, one signed batch.completed, tenant isolation."""

from __future__ import annotations

import dataclasses
import json
import time

import boto3
import pytest
from batch_stack import (  # noqa: F401 - stack is the module's fixture
    CHUNK,
    MAX_FILE_BYTES,
    MISSING_BUCKET,
    SECRET,
    TENANT_A,
    batch_services,
    stack,
    text_pdf,
)
from conftest import wait_until

from docproc.base.errors import InvalidRequest
from docproc.delivery.webhooks import events_for_subject, verify
from docproc.housekeeping import after_end
from docproc.jobs import lifecycle
from docproc.jobs.store import JobRequest
from docproc.submission import batches, expansion

pytestmark = pytest.mark.worker

UPLOADED = 200


@pytest.fixture(scope="module")
def uploaded(stack) -> dict:
    """A multipart batch of UPLOADED distinct PDFs plus one file that is not a document."""
    files = [("file", (f"doc-{i:05d}.pdf", text_pdf(i), "application/pdf")) for i in range(UPLOADED)]
    files.insert(3, ("file", ("junk.bin", b"this is not a document at all", "application/octet-stream")))
    files.insert(10, ("file", ("huge.pdf", b"%PDF-1.7\n" + b"0" * MAX_FILE_BYTES, "application/pdf")))
    response = stack.a.post("/v1/batches", data={"task": "ocr", "engine": "text",
                                                 "webhook_url": stack.receiver.url}, files=files)
    assert response.status_code == 202, response.text
    view = response.json()
    assert view["kind"] == "batch" and view["source"] == "upload"
    return stack.wait_batch(view["id"])


def test_upload_batch_completes_with_counts_and_one_signed_event(stack, uploaded):
    counts = uploaded["counts"]
    assert counts["total"] == UPLOADED and counts["ended"] == UPLOADED
    assert counts["by_state"]["succeeded"] == UPLOADED
    assert uploaded["progress"] == 1.0
    assert counts["rejected"] == 2  # one bad document and one too large: the others went on
    assert [(r["index"], r["source"], r["code"]) for r in uploaded["rejections"]] == [
        (3, "junk.bin", "unsupported_type"), (10, "huge.pdf", "file_too_large")]
    events = stack.receiver.wait_for(1, timeout=30)
    payload = verify(SECRET, events[0].headers, events[0].body)
    assert payload["type"] == "batch.completed"
    assert payload["data"]["batch_id"] == uploaded["id"]
    assert payload["data"]["counts"]["succeeded"] == UPLOADED


def test_completion_is_emitted_once_even_when_the_step_runs_again(stack, uploaded):
    """The sweep re-running members' after-end steps (finishers that died) counts nothing
    twice and makes no second event: the webhook store holds one event with one attempt."""
    svc = batch_services(stack.settings)
    ctx = dataclasses.replace(svc.lifecycle_context(), after_end=after_end.STEPS)
    for row in uploaded["jobs"][-3:]:
        lifecycle.job_ended(row["job_id"], ctx)  # every after-end step, with a real send
    assert svc.batches.counts(uploaded["id"]).ended == UPLOADED  # counted once
    events = wait_until(lambda: [e for e in events_for_subject(svc.redis, TENANT_A, uploaded["id"]) if e.attempts],
                        30, "the batch event's delivery to be recorded")
    assert [e.type for e in events] == ["batch.completed"]
    assert events[0].id == f"evt_{uploaded['id']}_batch_completed" and len(events[0].attempts) == 1
    mine = [r for r in stack.receiver.requests if r.json()["data"].get("batch_id") == uploaded["id"]]
    assert len(mine) == 1


def test_job_ids_paginate_in_order_and_jobs_run_at_bulk_priority(stack, uploaded):
    seen, cursor = [], None
    while True:
        params = {"limit": 64} | ({"cursor": cursor} if cursor else {})
        page = stack.a.get(f"/v1/batches/{uploaded['id']}", params=params).json()
        seen += page["jobs"]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    indexes = [j["index"] for j in seen]
    assert indexes == sorted(indexes) and not {3, 10} & set(indexes) and len(indexes) == UPLOADED
    assert len({j["job_id"] for j in seen}) == UPLOADED
    job = stack.a.get(f"/v1/jobs/{seen[0]['job_id']}").json()
    assert job["request"]["priority"] == "bulk" and job["request"]["webhook_url"] is None


def test_results_are_json_lines_in_batch_order(stack, uploaded):
    with stack.a.stream("GET", f"/v1/batches/{uploaded['id']}/results") as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("application/x-ndjson")
        lines = [json.loads(line) for line in response.iter_lines() if line]
    assert len(lines) == UPLOADED
    for line in lines[:5] + lines[-5:]:
        number = int(line["filename"].removeprefix("doc-").removesuffix(".pdf"))
        assert line["state"] == "succeeded"
        assert f"Document number {number:05d}" in line["result"]["pages"][0]["text"]


def test_another_tenants_batch_is_not_found(stack, uploaded):
    for path in (f"/v1/batches/{uploaded['id']}", f"/v1/batches/{uploaded['id']}/results"):
        theirs = stack.b.get(path)
        missing = stack.a.get(path.replace(uploaded["id"], "0" * 32))
        assert theirs.status_code == missing.status_code == 404
        assert theirs.json()["code"] == missing.json()["code"] == "not_found"


def test_prefix_batch_is_expanded_in_chunks(stack):
    s3 = boto3.client("s3", endpoint_url=stack.settings.s3_endpoint_url, region_name="us-east-1")
    count = 3 * CHUNK + 4
    for i in range(count):
        s3.put_object(Bucket=stack.source_bucket, Key=f"in/{i:04d}.pdf", Body=text_pdf(10_000 + i))
    s3.put_object(Bucket=stack.source_bucket, Key="other/x.pdf", Body=text_pdf(99_999))
    response = stack.a.post("/v1/batches", json={"source_prefix": f"s3://{stack.source_bucket}/in/", "task": "ocr",
                                                 "engine": "text", "webhook_url": stack.receiver.url})
    assert response.status_code == 202, response.text
    view = stack.wait_batch(response.json()["id"])
    assert view["counts"]["total"] == count and view["counts"]["by_state"]["succeeded"] == count
    assert stack.receiver.wait_for(2, timeout=30)


def test_form_fields_after_a_file_are_refused(stack):
    body = (b"--B\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.pdf\"\r\n\r\n" + text_pdf(1)
            + b"\r\n--B\r\nContent-Disposition: form-data; name=\"task\"\r\n\r\nocr\r\n--B--\r\n")
    response = stack.a.post("/v1/batches", content=body, headers={"Content-Type": "multipart/form-data; boundary=B"})
    assert response.status_code == 422 and "before the first file" in response.json()["detail"]


def test_bad_sources_are_refused_at_once(stack):
    refused = stack.a.post("/v1/batches", json={"source_uris": ["s3://not-allowed/x.pdf"], "task": "ocr"})
    assert refused.status_code == 422 and refused.json()["code"] == "invalid_request"
    both = stack.a.post("/v1/batches", json={"source_uris": ["s3://a/b"], "source_prefix": "s3://a/", "task": "ocr"})
    assert both.status_code == 422
    missing = stack.a.post("/v1/batches", json={"source_prefix": f"s3://{MISSING_BUCKET}/in/", "task": "ocr"})
    assert missing.status_code == 422 and "does not exist" in missing.json()["detail"]
    unknown = stack.a.post("/v1/batches", json={"source_prefix": f"s3://{stack.source_bucket}/in/", "task": "extract",
                                                "schema": "no-such-schema"})
    assert unknown.status_code == 422 and unknown.json()["code"] == "unknown_schema"
    for hook in ("http://169.254.169.254/latest/meta-data", "http://10.0.0.7/hook"):  # loopback is allow-listed here
        ssrf = stack.a.post("/v1/batches", json={"source_prefix": f"s3://{stack.source_bucket}/in/", "task": "ocr",
                                                 "webhook_url": hook})
        assert ssrf.status_code == 422 and ssrf.json()["code"] == "webhook_url_refused", hook


def test_a_listing_that_fails_for_good_still_completes_the_batch(stack):
    """The expand task's on_failure path: the error is kept, the batch completes with the
    jobs made so far (none here) and its event is sent, instead of "expanding" forever."""
    svc = batch_services(stack.settings)
    batch = batches.new_batch(TENANT_A, source="prefix", request=JobRequest(task="ocr"),
                              webhook_url=stack.receiver.url, selector={"source_prefix": "s3://gone/"})
    svc.batches.create(batch)
    seen = len(stack.receiver.requests)
    batches.fail_listing(svc, batch.id, InvalidRequest("source_prefix 's3://gone/' does not exist"))
    view = stack.a.get(f"/v1/batches/{batch.id}").json()
    assert view["state"] == "completed" and view["counts"]["total"] == 0
    assert view["counts"]["error"]["code"] == "invalid_request"
    event = stack.receiver.wait_for(seen + 1, timeout=30)[-1].json()
    assert event["type"] == "batch.completed" and event["data"]["batch_id"] == batch.id


def test_an_upload_lost_with_its_api_process_is_ended_by_the_watchdog(stack):
    """An upload batch whose files stopped arriving (the API process died mid-body) would stay
    "expanding" forever: the watchdog ends its listing; it completes with what it received."""
    svc = batch_services(stack.settings)
    batch = batches.new_batch(TENANT_A, source="upload", request=JobRequest(task="ocr", engine="text"),
                              webhook_url=stack.receiver.url)
    svc.batches.create(batch)
    job = batches.add_document(svc, batch, 0, text_pdf(1), "first.pdf")  # one file arrived, then nothing
    batches.enqueue_jobs(svc, batch, [(0, job)])
    seen = len(stack.receiver.requests)
    assert batches.end_stalled_uploads(svc) == []  # still within batch_upload_stall_s
    later = time.time() + stack.settings.batch_upload_stall_s + 1
    assert batches.end_stalled_uploads(svc, now=later) == [batch.id]
    assert batches.end_stalled_uploads(svc, now=later) == []  # once
    event = stack.receiver.wait_for(seen + 1, timeout=60)[-1].json()
    assert event["type"] == "batch.completed" and event["data"]["batch_id"] == batch.id
    view = stack.a.get(f"/v1/batches/{batch.id}").json()
    assert view["state"] == "completed" and view["counts"]["total"] == 1
    assert view["counts"]["error"]["code"] == "upload_interrupted"


def test_a_redelivered_expansion_creates_no_duplicate_jobs(stack):
    """Expansion stops after one chunk (slice 0), its cursor is lost (a crash before the
    checkpoint), and the listing is run again: every document still has exactly one job."""
    s3 = boto3.client("s3", endpoint_url=stack.settings.s3_endpoint_url, region_name="us-east-1")
    count = 2 * CHUNK + 1
    uris = []
    for i in range(count):
        s3.put_object(Bucket=stack.source_bucket, Key=f"re/{i:04d}.pdf", Body=text_pdf(20_000 + i))
        uris.append(f"s3://{stack.source_bucket}/re/{i:04d}.pdf")
    svc = batch_services(stack.settings)
    batch = batches.new_batch(TENANT_A, source="uris", request=JobRequest(task="ocr", engine="text"),
                              webhook_url=None)
    svc.batches.create(batch, uris)
    assert expansion.expand_batch(svc, batch.id, slice_s=0) is False  # one chunk, then "continue later"
    assert svc.batches.counts(batch.id).total == CHUNK  # chunk by chunk: never the whole listing at once
    svc.batches.save_cursor(batch.id, None, 0)  # the checkpoint was lost
    assert expansion.expand_batch(svc, batch.id, slice_s=600) is True
    job_ids = [job_id for _, job_id in svc.batches.job_ids(batch.id)]
    assert len(job_ids) == len(set(job_ids)) == count
    view = stack.wait_batch(batch.id)
    assert view["counts"]["by_state"]["succeeded"] == count
