"""Bulk re-processing through the real stack, extracting with the tiny InternVL.

A batch of documents is extracted with schema ``stamp@1``, then re-processed with
``stamp@2`` (one more field). The schemas are booleans only, so the tiny random model
under constrained decoding answers deterministically and fast. Checked: the new jobs
read the stored inputs (no new input objects), link ``reprocess_of`` their originals
and record the new version; the original results are byte-identical afterwards; the
diff report counts the changed field; one ``reprocess.completed``; selectors, dry runs,
the model rule and tenant isolation; the CLI's dry run and diff.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator

import boto3
import pytest
from batch_stack import SECRET, TENANT_A, Stack, batch_services, running_stack, text_pdf

from docproc.base.settings import REPO_ROOT
from docproc.delivery.webhooks import verify
from docproc.submission import reprocess_diff

pytestmark = pytest.mark.worker

DOCS = 12


def stamp_schema(version: str) -> dict:
    props = {"paid": {"type": "boolean", "description": "Whether the document says it is paid"}}
    if version == "2":
        props["urgent"] = {"type": "boolean", "description": "Whether the document is marked urgent"}
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", "title": "Stamp",
            "description": "The stamps on a document.",
            "x-docproc": {"name": "stamp", "version": version, "prompt_hints": ["Answer true or false."]},
            "type": "object", "properties": props, "required": list(props), "additionalProperties": False}


@pytest.fixture(scope="module")
def rstack(redis_server, moto_server, tiny_settings, tmp_path_factory) -> Iterator[Stack]:
    schemas = tmp_path_factory.mktemp("schemas")
    (schemas / "stamp.json").write_text(json.dumps(stamp_schema("1")))
    (schemas / "stamp.v2.json").write_text(json.dumps(stamp_schema("2")))
    with running_stack(redis_server, moto_server, tmp_path_factory.mktemp("reprocess-logs"),
                       queues="intake,render,gpu,bulk,webhooks,periodic", model=tiny_settings.model,
                       device="cpu", max_new_tokens_extract=64, schemas_dir=str(schemas)) as running:
        yield running


def test_new_request_applies_the_changes_to_each_original():
    from docproc.jobs.store import JobRequest
    from docproc.submission.reprocess import new_request

    ocr = JobRequest(task="ocr", engine="text", pages="1", metadata={"erp": 7}, webhook_url="https://x.example/h")
    extract = new_request(ocr, {"task": "extract", "schema": "invoice@2", "engine": None})
    assert (extract.task, extract.schema_, extract.engine, extract.pages) == ("extract", "invoice@2", "auto", "1")
    assert extract.priority == "bulk" and extract.webhook_url is None and extract.metadata == {"erp": 7}
    same = new_request(ocr, {"task": None, "schema": None, "engine": None})
    assert (same.task, same.schema_, same.engine) == ("ocr", None, "text")
    # an extract re-run on another engine keeps the schema version its original ran
    bare = JobRequest(task="extract", schema="invoice")
    assert new_request(bare, {"engine": "openai"}, schema_version="1").schema_ == "invoice@1"
    assert new_request(bare, {"schema": "invoice@2"}, schema_version="1").schema_ == "invoice@2"


def test_a_versioned_selector_matches_the_version_a_job_ran():
    from datetime import UTC, datetime

    from docproc.jobs.store import Job, JobRequest
    from docproc.submission.reprocess import Selector

    def job(asked: str, ran: str | None) -> Job:
        return Job(id="0" * 32, tenant="acme", state="succeeded", request=JobRequest(task="extract", schema=asked),
                   input_key="inputs/x", input_sha256="0" * 64, size_bytes=1, created_at=datetime.now(UTC),
                   schema_version=ran)

    v1 = Selector(schema="invoice@1")
    assert v1.matches(job("invoice", "1")) and v1.matches(job("invoice@1", "1"))
    assert not v1.matches(job("invoice", "2")) and not v1.matches(job("receipt", "1"))
    assert v1.matches(job("invoice@1", None))  # ended without a recorded version: what it asked for
    assert Selector(schema="invoice").matches(job("invoice@2", "2"))


def s3_objects(stack: Stack, prefix: str) -> dict[str, bytes]:
    s3 = boto3.client("s3", endpoint_url=stack.settings.s3_endpoint_url, region_name="us-east-1")
    bucket = stack.settings.storage_url.removeprefix("s3://").strip("/")
    keys = [o["Key"] for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
            for o in page.get("Contents", [])]
    return {key: s3.get_object(Bucket=bucket, Key=key)["Body"].read() for key in keys}


@pytest.fixture(scope="module")
def original(rstack) -> dict:
    files = [("file", (f"doc-{i}.pdf", text_pdf(i), "application/pdf")) for i in range(DOCS)]
    response = rstack.a.post("/v1/batches", data={"task": "extract", "schema": "stamp@1"}, files=files)
    assert response.status_code == 202, response.text
    view = rstack.wait_batch(response.json()["id"])
    assert view["counts"]["by_state"]["succeeded"] == DOCS, view
    return view


@pytest.fixture(scope="module")
def reprocessed(rstack, original) -> dict:
    before = s3_objects(rstack, "")
    response = rstack.a.post("/v1/reprocess", json={"selector": {"batch_id": original["id"]}, "schema": "stamp@2",
                                                    "webhook_url": rstack.receiver.url})
    assert response.status_code == 202, response.text
    view = rstack.wait_batch(response.json()["id"], path="reprocess")
    return {"view": view, "before": before, "after": s3_objects(rstack, "")}


def test_reprocess_runs_new_jobs_on_the_stored_inputs(rstack, original, reprocessed):
    view = reprocessed["view"]
    assert view["kind"] == "reprocess" and view["counts"]["by_state"]["succeeded"] == DOCS
    originals = {j["job_id"] for j in original["jobs"]}
    for row in view["jobs"]:
        job = rstack.a.get(f"/v1/jobs/{row['job_id']}").json()
        old = rstack.a.get(f"/v1/jobs/{job['reprocess_of']}").json()
        assert job["batch_id"] == view["id"] and old["batch_id"] == original["id"]
        assert job["schema"] == "stamp@2" and job["schema_version"] == "2" and job["request"]["priority"] == "bulk"
        stored = rstack.a.get(f"/v1/jobs/{row['job_id']}/result").json()
        assert set(stored["fields"]) == {"paid", "urgent"}
        assert old["id"] in originals and old["input"]["sha256"] == job["input"]["sha256"]
    new_inputs = {k for k in reprocessed["after"] if k.startswith("inputs/")} - set(reprocessed["before"])
    assert new_inputs == set()  # nothing uploaded or copied again


def test_reprocess_results_are_json_lines(rstack, reprocessed):
    lines = [json.loads(line) for line in
             rstack.a.get(f"/v1/batches/{reprocessed['view']['id']}/results").text.splitlines()]
    assert len(lines) == DOCS and all(line["reprocess_of"] and line["result"]["schema_version"] == "2"
                                      for line in lines)


def test_original_results_are_byte_identical(reprocessed):
    before, after = reprocessed["before"], reprocessed["after"]
    old_results = {k: v for k, v in before.items() if k.startswith("results/")}
    assert old_results and all(after[k] == v for k, v in old_results.items())
    assert len([k for k in after if k.endswith("/document.json")]) == 2 * DOCS


def test_new_jobs_link_their_originals(rstack, original, reprocessed):
    store = batch_services(rstack.settings).store
    links = {store.load(j["job_id"]).reprocess_of for j in reprocessed["view"]["jobs"]}
    assert links == {j["job_id"] for j in original["jobs"]}


def test_diff_report_counts_the_changed_field(rstack, original, reprocessed, monkeypatch):
    diff = rstack.a.get(f"/v1/reprocess/{reprocessed['view']['id']}/diff", params={"limit": 3}).json()
    assert diff["compared"] == DOCS and diff["pending"] == 0
    assert diff["fields"]["urgent"]["changed"] == DOCS and len(diff["fields"]["urgent"]["changes"]) == 3
    change = diff["fields"]["urgent"]["changes"][0]
    assert change["old"] is None and isinstance(change["new"], bool)
    paid = diff["fields"]["paid"]
    assert paid["changed"] + paid["unchanged"] == DOCS

    # The diff kept as the jobs ended equals one rebuilt from storage (in chunks of 5: several
    # Redis round trips and thread-pool rounds), and nothing was left to rebuild.
    monkeypatch.setattr(reprocess_diff, "DIFF_CHUNK", 5)
    svc = batch_services(rstack.settings)
    batch = svc.batches.load(reprocessed["view"]["id"])

    def report() -> dict:
        out = reprocess_diff.diff_report(svc, batch, limit=DOCS).model_dump(mode="json")
        for field in out["fields"].values():  # kept: in the order the jobs ended; rebuilt: batch order
            field["changes"].sort(key=lambda c: c["job_id"])
        return out

    kept = report()
    assert len(kept["fields"]["urgent"]["changes"]) == DOCS
    assert reprocess_diff.rebuild_diff(svc, batch) == 0
    assert reprocess_diff.rebuild_diff(svc, batch, fresh=True) == DOCS
    assert report() == kept
    # the after-end step run again (the sweep, after a finisher died) counts nothing twice
    job = svc.store.load(change["job_id"])
    reprocess_diff.diff_step(job, svc.lifecycle_context())
    assert report() == kept


def test_the_diff_names_nested_fields_by_path():
    v1 = {"total": 10.0, "vendor": {"name": "ACME", "vat_id": None},
          "line_items": [{"description": "bolts", "amount": 4.0}, {"description": "nuts", "amount": 6.0}]}
    v2 = {"total": 10.0, "vendor": {"name": "ACME GmbH", "vat_id": None, "iban": "DE89370400440532013000"},
          "line_items": [{"description": "bolts", "amount": 4.0, "tax_rate": None},
                         {"description": "nuts", "amount": 6.0, "tax_rate": None}]}
    old, new = reprocess_diff.field_paths(v1), reprocess_diff.field_paths(v2)
    assert set(new) == {"total", "vendor.name", "vendor.vat_id", "vendor.iban", "line_items[].description",
                        "line_items[].amount", "line_items[].tax_rate"}
    assert new["line_items[].amount"] == [4.0, 6.0] and new["line_items[].tax_rate"] is None
    changed = {path for path in set(old) | set(new) if old.get(path) != new.get(path)}
    assert changed == {"vendor.name", "vendor.iban"}  # an added field left empty is no change


def test_one_signed_reprocess_completed_event(rstack, reprocessed):
    events = rstack.receiver.wait_for(1, timeout=30)
    mine = [e for e in events if e.json()["data"]["batch_id"] == reprocessed["view"]["id"]]
    assert len(mine) == 1
    payload = verify(SECRET, mine[0].headers, mine[0].body)
    assert payload["type"] == "reprocess.completed" and payload["data"]["counts"]["succeeded"] == DOCS


def test_selectors_and_dry_runs(rstack, original, reprocessed):
    def dry(selector: dict) -> int:
        response = rstack.a.post("/v1/reprocess", json={"selector": selector, "schema": "stamp@2", "dry_run": True})
        assert response.status_code == 200, response.text
        return response.json()["documents"]

    assert dry({"batch_id": original["id"]}) == DOCS
    assert dry({"schema": "stamp"}) == 2 * DOCS
    assert dry({"schema": "stamp@1"}) == DOCS
    assert dry({"schema": "stamp@1", "state": "failed"}) == 0
    assert dry({"since": "2000-01-01T00:00:00Z", "until": "2000-01-02T00:00:00Z"}) == 0
    assert dry({"input_prefix": "inputs/sha256/"}) == 2 * DOCS
    one = rstack.a.get(f"/v1/jobs/{original['jobs'][0]['job_id']}").json()["input"]["sha256"]
    assert dry({"input_prefix": f"inputs/sha256/{one[:2]}/{one}"}) == 2  # the original and its re-process


def test_bad_reprocess_requests_are_refused(rstack, original):
    other_model = rstack.a.post("/v1/reprocess", json={"selector": {"batch_id": original["id"]},
                                                       "schema": "stamp@2", "model": "someone/else"})
    assert other_model.status_code == 422 and other_model.json()["code"] == "model_not_deployed"
    unknown = rstack.a.post("/v1/reprocess", json={"selector": {"batch_id": original["id"]}, "schema": "stamp@9"})
    assert unknown.status_code == 422 and unknown.json()["code"] == "unknown_schema"
    empty = rstack.a.post("/v1/reprocess", json={"selector": {}, "schema": "stamp@2"})
    assert empty.status_code == 422
    metadata = rstack.a.post("/v1/reprocess", json={"selector": {"batch_id": original["id"]}, "schema": "stamp@2",
                                                    "webhook_url": "http://169.254.169.254/latest/meta-data"})
    assert metadata.status_code == 422 and metadata.json()["code"] == "webhook_url_refused"


def test_tenant_isolation(rstack, original, reprocessed):
    rid = reprocessed["view"]["id"]
    for path in (f"/v1/reprocess/{rid}", f"/v1/reprocess/{rid}/diff", f"/v1/batches/{rid}/results"):
        assert rstack.b.get(path).status_code == 404
    theirs = rstack.b.post("/v1/reprocess", json={"selector": {"batch_id": original["id"]}, "schema": "stamp@2"})
    assert theirs.status_code == 404
    assert rstack.b.post("/v1/reprocess", json={"selector": {"schema": "stamp"}, "dry_run": True,
                                                "schema": "stamp@2"}).json()["documents"] == 0


def test_each_version_keeps_its_result_by_schema_version(rstack, original, reprocessed):
    row = reprocessed["view"]["jobs"][0]
    new = rstack.a.get(f"/v1/jobs/{row['job_id']}").json()
    old_id = new["reprocess_of"]
    for asked in (old_id, new["id"]):  # from either end of the link: the same document, oldest first
        listing = rstack.a.get(f"/v1/jobs/{asked}/versions").json()
        assert [(v["job_id"], v["schema_version"], v["reprocess_of"]) for v in listing["versions"]] == [
            (old_id, "1", None), (new["id"], "2", old_id)]
        assert listing["input_sha256"] == new["input"]["sha256"]
        assert all(v["state"] == "succeeded" and v["result"] == f"/v1/jobs/{v['job_id']}/result"
                   for v in listing["versions"])
    v1 = rstack.a.get(f"/v1/jobs/{new['id']}/result", params={"schema": "stamp@1"})
    v2 = rstack.a.get(f"/v1/jobs/{old_id}/result", params={"schema": "stamp@2"})
    assert v1.content == reprocessed["after"][f"results/{old_id}/document.json"]
    assert v2.content == reprocessed["after"][f"results/{new['id']}/document.json"]
    assert json.loads(v2.content)["schema_version"] == "2"
    newest = rstack.a.get(f"/v1/jobs/{old_id}/result", params={"schema": "stamp"})
    assert newest.content == v2.content  # any version: the newest
    missing = rstack.a.get(f"/v1/jobs/{old_id}/result", params={"schema": "stamp@3"})
    assert missing.status_code == 404 and missing.json()["code"] == "not_found"
    for path in (f"/v1/jobs/{old_id}/versions", f"/v1/jobs/{old_id}/result?schema=stamp@2"):
        assert rstack.b.get(path).status_code == 404  # another tenant


def run_cli(stack: Stack, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "docproc", *args], env=stack.env, cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=120)


def test_cli_dry_run_and_diff(rstack, original, reprocessed):
    dry = run_cli(rstack, "reprocess", "--tenant", TENANT_A, "--schema", "stamp@2", "--select-schema", "stamp@1",
                  "--since", "2000-01-01", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert dry.stdout.strip() == f"{DOCS} document(s) would be re-processed"
    diff = run_cli(rstack, "reprocess", "diff", reprocessed["view"]["id"], "--tenant", TENANT_A, "--json")
    assert diff.returncode == 0, diff.stderr
    assert json.loads(diff.stdout)["fields"]["urgent"]["changed"] == DOCS
    text = run_cli(rstack, "reprocess", "diff", reprocessed["view"]["id"], "--tenant", TENANT_A)
    assert "urgent" in text.stdout and f"{DOCS} document(s) compared" in text.stdout
    theirs = run_cli(rstack, "reprocess", "diff", reprocessed["view"]["id"], "--tenant", "batch-b")
    assert theirs.returncode == 1 and "not_found" in theirs.stderr


def test_cli_reprocess_waits_with_progress(rstack, original):
    done = run_cli(rstack, "reprocess", "--tenant", TENANT_A, "--batch", original["id"], "--task", "ocr",
                   "--engine", "text")
    assert done.returncode == 0, done.stderr
    assert f"completed, {DOCS} job(s) ({DOCS} succeeded)" in done.stdout
    assert "reprocess" in done.stderr  # the progress bar
