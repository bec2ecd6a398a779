"""The operator CLI (docproc/cli/admin.py): ``docproc jobs ls|show|retry|cancel`` and ``docproc queues``.

Against a real redis-server (the JobStore and the Celery broker) and local storage:
jobs are submitted the way the API submits them (:func:`docproc.submission.submit.submit_job`, a
real ``docproc.intake`` message on the ``intake`` list), the commands run through
``docproc.cli.commands.main`` with the settings in the environment, and what they print (tables
and ``--json``), their exit status and what they changed in Redis are checked. One test
runs the installed ``docproc`` entry point; one starts a real Celery worker to see a
retried job run to the end while its canceled original stays canceled.
"""

from __future__ import annotations

import base64
import json
import re
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import builders
import pytest
from conftest import ServiceProcess, settings_env, wait_until

from docproc.base.broker import QUEUES
from docproc.base.settings import Settings, get_settings
from docproc.base.storage import open_storage
from docproc.cli import commands as cli
from docproc.jobs.results import ErrorInfo
from docproc.jobs.store import ENDED_OUTBOX, Job, JobRequest, JobStore, PageStatus
from docproc.submission.submit import submit_job
from workers.celery_app import create_app


@dataclass
class Ran:
    code: int
    out: str
    err: str

    def json(self):
        return json.loads(self.out)


@pytest.fixture
def admin_settings(redis_server, redis_client, tmp_path) -> Settings:
    """The session's Redis (emptied) and local storage in a fresh directory."""
    return Settings(_env_file=None, redis_url=redis_server.url, storage_url=f"file://{tmp_path}/storage")


@pytest.fixture
def store(admin_settings, redis_client) -> JobStore:
    return JobStore(redis_client, admin_settings)


@pytest.fixture
def docproc(admin_settings, monkeypatch, capsys) -> Iterator[Callable[..., Ran]]:
    """``docproc(*argv)`` runs ``docproc.cli.commands.main`` in this process with ``admin_settings``
    in the environment, as an operator's shell would have them."""
    for name in ("redis_url", "storage_url"):
        monkeypatch.setenv(f"DOCPROC_{name.upper()}", getattr(admin_settings, name))
    get_settings.cache_clear()

    def run(*argv: str) -> Ran:
        capsys.readouterr()
        code = cli.main(list(argv))
        captured = capsys.readouterr()
        return Ran(code, captured.out, captured.err)

    yield run
    get_settings.cache_clear()


def submit(settings: Settings, store: JobStore, tenant: str, **request) -> Job:
    """A job as the API makes it: input stored, job created, intake message sent."""
    celery = create_app(settings)
    try:
        return submit_job(store=store, storage=open_storage(settings), celery=celery, settings=settings,
                          tenant=tenant, request=JobRequest(**request), data=builders.invoice_pdf(),
                          filename="invoice.pdf").job
    finally:
        celery.close()


def fail(store: JobStore, job: Job) -> None:
    """End ``job`` the way a worker does when its only page failed."""
    store.start(job.id, page_count=1, pages=[1], media_type="application/pdf")
    store.page_started(job.id, 1)
    error = ErrorInfo(code="corrupt_document", message="page 1 cannot be drawn")
    store.page_finished(job.id, PageStatus(page=1, state="failed", engine="text", error=error,
                                           timings_ms={"render": 12.0}))
    assert store.finish(job.id, "failed", error=error)


def counted(name: str, **labels: str) -> float:
    """A counter of this process's default registry (the CLI ran in this process)."""
    from prometheus_client import REGISTRY

    return REGISTRY.get_sample_value(name, labels) or 0.0


def intake_messages(redis_client) -> list[str]:
    """The job ids of the ``docproc.intake`` messages waiting on the intake list."""
    ids = []
    for raw in redis_client.lrange("intake", 0, -1):
        message = json.loads(raw)
        assert message["headers"]["task"] == "docproc.intake"
        ids.append(json.loads(base64.b64decode(message["body"]))[0][0])
    return ids


# ---------------------------------------------------------------------------
# ls / show
# ---------------------------------------------------------------------------


def test_ls_lists_every_tenant_newest_first_with_filters(admin_settings, store, docproc):
    acme = [submit(admin_settings, store, "acme", task="ocr") for _ in range(3)]
    globex = [submit(admin_settings, store, "globex", task="tables") for _ in range(2)]
    fail(store, acme[0])
    newest_first = [j.id for j in sorted(acme + globex, key=lambda j: (j.created_at, j.id), reverse=True)]

    every = docproc("jobs", "ls", "--json")
    assert every.code == 0
    assert [row["id"] for row in every.json()] == newest_first
    assert {row["id"]: row["tenant"] for row in every.json()} == {
        **{j.id: "acme" for j in acme}, **{j.id: "globex" for j in globex}}

    only_globex = docproc("jobs", "ls", "--tenant", "globex", "--json").json()
    assert {row["id"] for row in only_globex} == {j.id for j in globex}
    assert {row["task"] for row in only_globex} == {"tables"}

    failed = docproc("jobs", "ls", "--state", "failed", "--json").json()
    assert [(row["id"], row["state"], row["error"], row["pages"]) for row in failed] == [
        (acme[0].id, "failed", "corrupt_document", "1/1")]

    assert [row["id"] for row in docproc("jobs", "ls", "--limit", "2", "--json").json()] == newest_first[:2]

    text = docproc("jobs", "ls")
    lines = text.out.splitlines()
    assert text.code == 0 and lines[0].split()[:3] == ["ID", "TENANT", "STATE"]
    assert [line.split()[0] for line in lines[1:]] == newest_first

    assert docproc("jobs", "ls", "--tenant", "nobody").out.strip() == "no jobs"
    bad = docproc("jobs", "ls", "--limit", "0")
    assert bad.code == 1 and "invalid_request" in bad.err


def test_show_prints_state_request_timings_pages_and_error(admin_settings, store, docproc):
    job = submit(admin_settings, store, "acme", task="ocr", metadata={"po": "42"})
    fail(store, job)

    text = docproc("jobs", "show", job.id)
    assert text.code == 0
    assert f"job       {job.id}" in text.out and "tenant    acme" in text.out
    assert "state     failed  error corrupt_document: page 1 cannot be drawn" in text.out
    assert "task=ocr" in text.out and "invoice.pdf" in text.out and job.input_key in text.out
    page_row = next(line for line in text.out.splitlines() if line.startswith("1 "))
    assert page_row.split()[:4] == ["1", "failed", "text", "1"] and "render=12" in page_row

    shown = docproc("jobs", "show", job.id, "--json").json()
    assert shown["job"]["id"] == job.id and shown["job"]["state"] == "failed"
    assert shown["job"]["request"]["metadata"] == {"po": "42"}
    assert shown["job"]["error"]["code"] == "corrupt_document"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z", shown["job"]["created_at"])  # one format
    assert shown["pages"] == [{"page": 1, "state": "failed", "engine": "text", "attempts": 1,
                               "error": {"code": "corrupt_document", "message": "page 1 cannot be drawn"},
                               "timings_ms": {"render": 12.0}}]
    assert shown["timings"]["total_s"] >= shown["timings"]["running_s"] >= 0

    for missing in ("0" * 32, "not-a-job-id"):
        ran = docproc("jobs", "show", missing)
        assert ran.code == 1 and ran.out == "" and ran.err.startswith("docproc: not_found:")


# ---------------------------------------------------------------------------
# cancel / retry
# ---------------------------------------------------------------------------


def test_cancel_cancels_revokes_and_runs_the_after_end_steps(admin_settings, store, redis_client, docproc):
    job = submit(admin_settings, store, "acme")
    assert job.task_ids and job.state == "queued"
    broadcasts = redis_client.pubsub(ignore_subscribe_messages=True)
    broadcasts.psubscribe("*pidbox*")  # Celery's remote-control fanout (revoke goes there)

    canceled_before = counted("docproc_jobs_finished_total", state="canceled", task="ocr", schema="")
    ran = docproc("jobs", "cancel", job.id, "--json")
    assert ran.code == 0, ran.err
    assert counted("docproc_jobs_finished_total", state="canceled", task="ocr", schema="") == canceled_before + 1
    assert ran.json() == {"job_id": job.id, "state": "canceled", "revoked": job.task_ids}
    assert store.load(job.id).state == "canceled"
    assert redis_client.zscore(ENDED_OUTBOX, job.id) is None  # lifecycle.job_ended ran and took it out

    revoked: list[str] = []

    def revoke_seen() -> bool:
        message = broadcasts.get_message(timeout=0.2)
        if message is not None:
            body = json.loads(base64.b64decode(json.loads(message["data"])["body"]))
            if body.get("method") == "revoke":
                revoked.extend(body["arguments"]["task_id"])
        return bool(revoked)

    wait_until(revoke_seen, 10, "the revoke broadcast")
    assert revoked == job.task_ids
    broadcasts.close()

    again = docproc("jobs", "cancel", job.id)
    assert again.code == 1 and again.err.startswith("docproc: job_state_conflict:") and "already ended" in again.err
    assert store.load(job.id).state == "canceled"
    assert docproc("jobs", "cancel", "f" * 32).code == 1


def test_retry_makes_one_linked_job_from_the_stored_input(admin_settings, store, redis_client, docproc):
    original = submit(admin_settings, store, "acme", task="tables", pages="1", metadata={"k": "v"})
    running = submit(admin_settings, store, "acme")
    fail(store, original)
    assert intake_messages(redis_client) == [running.id, original.id]  # newest on the left

    submitted_before = counted("docproc_jobs_submitted_total", task="tables", schema="", priority="normal")
    first = docproc("jobs", "retry", original.id, "--json")
    assert first.code == 0, first.err
    new_id = first.json()["new_job_id"]
    assert first.json() == {"job_id": original.id, "new_job_id": new_id, "created": True, "state": "queued"}
    new = store.load(new_id)
    assert new.id != original.id and new.reprocess_of == original.id and new.tenant == "acme"
    assert (new.input_key, new.input_sha256, new.filename, new.request) == (
        original.input_key, original.input_sha256, original.filename, original.request)
    assert intake_messages(redis_client)[0] == new_id and new.task_ids

    again = docproc("jobs", "retry", original.id)
    assert again.code == 0 and again.out.strip() == f"job {original.id} already retried as {new_id} (queued)"
    assert intake_messages(redis_client).count(new_id) == 1  # nothing enqueued twice
    assert counted("docproc_jobs_submitted_total", task="tables", schema="", priority="normal") == submitted_before + 1

    conflict = docproc("jobs", "retry", running.id)
    assert conflict.code == 1 and "job_state_conflict" in conflict.err and "queued" in conflict.err

    store.finish(running.id, "succeeded")
    assert "job_state_conflict" in docproc("jobs", "retry", running.id).err
    forced = docproc("jobs", "retry", running.id, "--force", "--json")
    assert forced.code == 0 and store.load(forced.json()["new_job_id"]).reprocess_of == running.id

    gone = submit(admin_settings, store, "globex", task="ocr")
    store.finish(gone.id, "canceled")
    Path(admin_settings.storage_url.removeprefix("file://"), gone.input_key).unlink()
    missing = docproc("jobs", "retry", gone.id)
    assert missing.code == 1 and "not_found" in missing.err and "stored input" in missing.err


# ---------------------------------------------------------------------------
# queues
# ---------------------------------------------------------------------------


def test_queues_shows_depth_and_oldest_age_of_every_queue(admin_settings, store, docproc):
    empty = docproc("queues", "--json")
    assert empty.code == 0
    assert empty.json() == [{"queue": q, "depth": 0, "oldest_age_s": 0.0} for q in QUEUES]

    submit(admin_settings, store, "acme")
    submit(admin_settings, store, "acme", priority="bulk")
    submit(admin_settings, store, "globex")
    stats = {row["queue"]: row for row in docproc("queues", "--json").json()}
    assert {q: stats[q]["depth"] for q in QUEUES} == {q: {"intake": 2, "bulk": 1}.get(q, 0) for q in QUEUES}
    assert 0 <= stats["intake"]["oldest_age_s"] < 600 and 0 <= stats["bulk"]["oldest_age_s"] < 600

    lines = docproc("queues").out.splitlines()
    assert lines[0].split() == ["QUEUE", "DEPTH", "OLDEST"]
    rows = {line.split()[0]: line.split()[1:] for line in lines[1:]}
    assert rows["intake"][0] == "2" and rows["intake"][1].endswith("s") and rows["gpu"] == ["0", "-"]


# ---------------------------------------------------------------------------
# the installed command, and a retry run by a real worker
# ---------------------------------------------------------------------------


def test_the_installed_command_exit_status(admin_settings, store):
    env = settings_env(admin_settings)
    env["DOCPROC_STORAGE_URL"] = admin_settings.storage_url
    job = submit(admin_settings, store, "acme")

    def run(*argv: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "docproc", *argv], env=env, capture_output=True, text=True,
                              timeout=60)

    listed = run("jobs", "ls", "--json")
    assert listed.returncode == 0, listed.stderr
    assert [row["id"] for row in json.loads(listed.stdout)] == [job.id]
    missing = run("jobs", "show", "0" * 32)
    assert missing.returncode == 1 and missing.stderr.startswith("docproc: not_found:")
    usage = run("jobs")
    assert usage.returncode == 2 and "required" in usage.stderr
    down = subprocess.run([sys.executable, "-m", "docproc", "queues"], capture_output=True, text=True, timeout=60,
                          env={**env, "DOCPROC_REDIS_URL": "redis://127.0.0.1:1/0"})
    assert down.returncode == 1 and down.stderr.startswith("docproc: service_unavailable:")
    assert "Traceback" not in down.stderr


@pytest.mark.worker
def test_a_retried_job_runs_to_the_end_and_its_canceled_original_stays_canceled(
    admin_settings, store, docproc, tmp_path
):
    original = submit(admin_settings, store, "acme", task="tables")
    assert docproc("jobs", "cancel", original.id).code == 0
    retried = docproc("jobs", "retry", original.id, "--json").json()["new_job_id"]

    env = settings_env(admin_settings)
    env["DOCPROC_STORAGE_URL"] = admin_settings.storage_url
    worker = ServiceProcess([sys.executable, "-m", "workers", "--queues", "intake,render", "-c", "1",
                             "-n", "admin-test@%h"], env, tmp_path / "worker.log")
    try:
        wait_until(lambda: store.load(retried).state in ("succeeded", "partial", "failed"), 90,
                   "the retried job to end", [worker], interval=0.2)
    finally:
        worker.stop()
    done = store.load(retried)
    assert done.state == "succeeded", f"{done.error}\n{worker.tail()}"
    assert done.result_key and store.load(original.id).state == "canceled"
    shown = docproc("jobs", "show", retried, "--json").json()
    assert shown["job"]["reprocess_of"] == original.id
    assert [p["state"] for p in shown["pages"]] == ["succeeded"] * len(shown["pages"])


def test_the_cli_module_imports_nothing_heavy():
    """docproc.cli.commands imports docproc.cli.admin for every command; ``docproc worker`` must still be
    able to set up multiprocess metrics before prometheus_client is imported."""
    code = "import sys, docproc.cli.commands; print(sorted(m for m in ('prometheus_client', 'celery', 'torch') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.strip() == "[]"
