"""Structured logs: JSON lines with docproc's fields, redaction, one request id end to end.

The formatter and redaction are checked on real log records; the request id is
followed for real: HTTP request -> API response header -> the job in Redis ->
the Celery task headers -> the JSON log lines of a prefork worker subprocess
(tests/obs_stack.py) for that job's intake and page tasks.
"""

from __future__ import annotations

import io
import json
import logging
import re
import sys

import builders
import pytest
from obs_stack import fresh_text_stack

from docproc.base import logs
from docproc.base.auth import hash_key
from docproc.jobs.store import JobStore, connect_redis

TENANT = "logs-tenant"
API_KEY = "dp_logs-test-key-0000000000000000000000000000"
PRESIGNED = ("https://bucket.s3.amazonaws.com/results/j/document.json?X-Amz-Algorithm=AWS4-HMAC-SHA256"
             "&X-Amz-Credential=AKIAEXAMPLE%2F20260101%2Fus-east-1%2Fs3%2Faws4_request&X-Amz-Signature=abcdef0123")
WEBHOOK_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


def _record(msg: str, *args, exc: BaseException | None = None, **extra) -> logging.LogRecord:
    record = logging.LogRecord("docproc.test", logging.INFO, __file__, 1, msg, args,
                               (type(exc), exc, exc.__traceback__) if exc else None)
    record.__dict__.update(extra)
    return record


# --------------------------------------------------------------------------- formatter


def test_json_lines_carry_the_structured_fields_and_the_bound_context() -> None:
    fields = {"job_id": "0" * 32, "tenant": "acme", "page": 3, "stage": "render", "duration_ms": 12.5,
              "event_id": "evt_1", "batch_id": "b1", "request_id": "req-explicit"}
    line = logs.JsonFormatter().format(_record("page %d rendered", 3, **fields))
    entry = json.loads(line)
    assert entry["message"] == "page 3 rendered" and entry["level"] == "INFO" and entry["logger"] == "docproc.test"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}\+00:00", entry["time"])
    assert {k: entry[k] for k in fields} == fields

    with logs.bind(request_id="req-bound", job_id="1" * 32, task="docproc.page"):
        bound = json.loads(logs.JsonFormatter().format(_record("hello", page=1)))
        explicit = json.loads(logs.JsonFormatter().format(_record("hello", request_id="req-own")))
    assert bound["request_id"] == "req-bound" and bound["job_id"] == "1" * 32 and bound["page"] == 1
    assert bound["task"] == "docproc.page"
    assert explicit["request_id"] == "req-own"  # a call site's own field wins
    assert "request_id" not in json.loads(logs.JsonFormatter().format(_record("outside")))  # unbound again


@pytest.mark.parametrize("style", ["json", "text"])
def test_secrets_are_redacted_in_messages_fields_and_tracebacks(style: str) -> None:
    try:
        raise RuntimeError(f"refused: Authorization: Bearer {API_KEY}")
    except RuntimeError as caught:
        exc = caught
    record = _record('sent %s with "Authorization": "Bearer tok3n\\"x" and X-API-Key: k3y, secret %s, url %s',
                     API_KEY, WEBHOOK_SECRET, PRESIGNED, exc=exc, tenant="acme")
    line = logs.formatter(style).format(record)
    for secret in (API_KEY, "tok3n", "k3y", WEBHOOK_SECRET, "abcdef0123", "AKIAEXAMPLE", "MfKQ9r8"):
        assert secret not in line, (secret, line)
    assert "https://bucket.s3.amazonaws.com/results/j/document.json?***" in line  # the path stays
    if style == "json":
        entry = json.loads(line)  # still valid JSON after redaction
        assert "RuntimeError" in entry["exc"] and entry["tenant"] == "acme"


def test_the_quick_check_before_redacting_skips_no_text_a_pattern_would_change() -> None:
    """redact() returns an ASCII text without any of its marks untouched; every text the
    patterns change (whatever its case, wherever the secret sits) is still redacted."""

    def by_the_patterns(text: str) -> str:
        for pattern, replacement in logs._REDACTIONS:
            text = pattern.sub(replacement, text)
        return text

    secrets = ["Authorization: Bearer abc123", "X-API-Key: k3y", "api_key=v4l", "APIKEY: v", "secret='s3'",
               "token dp_abcdefgh", "whsec_abcd1234", "https://b.s3/k?X-Amz-Signature=ab&X-Amz-Credential=cd",
               "https://h/p?Signature=abc&AWSAccessKeyId=x", "x-amz-security-token=zzz", "authorızation: Bearer x"]
    plain = ["page 0197a1b2c3d4e5f6/1: succeeded (text)", "GET /v1/jobs/{job_id} 200", "job 42: ended failed",
             "https://example.com/a?b=c", "dp-abc key-api apis secre"]
    for middle in secrets + plain:
        for text in (middle, middle.upper(), middle.lower(), f"before {middle} after", f'{{"h": "{middle}"}}'):
            assert logs.redact(text) == by_the_patterns(text), text
    for text in plain:
        assert logs.redact(text) == text


def test_request_ids_are_accepted_only_when_sane() -> None:
    for good in ("abc-123", "0f" * 16, "req:2026/11/25+a=b@x.y"):
        assert logs.sane_request_id(good) == good
    for bad in (None, "", "has space", "x" * 129, "naïve", "line\nbreak", API_KEY, "-leading-dash"):
        assert logs.sane_request_id(bad) is None, bad
    assert re.fullmatch(r"[0-9a-f]{32}", logs.new_request_id())


# --------------------------------------------------------------------------- end to end


@pytest.fixture(scope="module")
def stack(redis_server, moto_server, tmp_path_factory):
    with fresh_text_stack(redis_server, moto_server, tmp_path_factory.mktemp("logs-logs"),
                          tenant=TENANT, api_key=API_KEY) as running:
        yield running


@pytest.fixture
def access_log():
    """The API's access log lines (JSON), as its handler writes them during a request."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logs.JsonFormatter())
    logger = logging.getLogger("docproc.api.access")
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    yield lambda: [json.loads(line) for line in stream.getvalue().splitlines()]
    logger.removeHandler(handler)
    logger.setLevel(level)



@pytest.mark.worker
def test_one_request_id_from_the_api_to_the_job_and_the_worker_log_lines(stack, access_log) -> None:
    request_id = "req-e2e-logs-0001"
    response = stack.api.post("/v1/jobs", files={"file": ("doc.pdf", builders.multipage_text_pdf(2), "application/pdf")},
                              data={"task": "ocr", "engine": "text"}, headers={"X-Request-Id": request_id})
    assert response.status_code == 202, response.text
    assert response.headers["X-Request-Id"] == request_id
    job_id = response.json()["id"]
    assert stack.wait_for_job(job_id)["state"] == "succeeded"

    with connect_redis(stack.settings) as client:
        assert JobStore(client, stack.settings).load(job_id).request_id == request_id

    def job_lines() -> list[dict]:
        lines = [line for line in stack.worker.log().splitlines() if line.startswith("{")]
        return [entry for entry in map(json.loads, lines) if entry.get("job_id") == job_id]

    # the worker logs the job's end after its pages: wait until that line is written
    from conftest import wait_until

    wait_until(lambda: any(e["message"].endswith("ended succeeded") for e in job_lines()), 10, "the job's end log line")
    entries = job_lines()
    assert entries and all(e["request_id"] == request_id for e in entries), entries
    assert {e.get("task") for e in entries} >= {"docproc.intake", "docproc.page"}
    pages = [e for e in entries if e.get("stage") == "page"]
    assert sorted(e["page"] for e in pages) == [1, 2]
    assert all(e["duration_ms"] > 0 and e["level"] == "INFO" for e in pages)
    assert API_KEY not in stack.worker.log()

    submit_line = [e for e in access_log() if e["message"] == "POST /v1/jobs 202"]
    assert submit_line and submit_line[0]["request_id"] == request_id and submit_line[0]["duration_ms"] > 0
    assert submit_line[0]["tenant"] == TENANT


@pytest.mark.worker
def test_a_missing_or_insane_request_id_gets_a_fresh_one(stack) -> None:
    made = stack.api.get("/v1/jobs")
    assert re.fullmatch(r"[0-9a-f]{32}", made.headers["X-Request-Id"])
    replaced = stack.api.get("/v1/jobs", headers={"X-Request-Id": f"evil {API_KEY}"})
    assert re.fullmatch(r"[0-9a-f]{32}", replaced.headers["X-Request-Id"])
    assert made.headers["X-Request-Id"] != replaced.headers["X-Request-Id"]
    refused = stack.api.get("/v1/jobs/unknown", headers={"X-Request-Id": "req-404"})  # errors carry it too
    assert refused.status_code == 404 and refused.headers["X-Request-Id"] == "req-404"


def test_the_api_process_logs_json_access_lines_with_the_request_id(service_settings, tmp_path) -> None:
    """``python -m api`` as operators start it: its own logging (uvicorn's included) is JSON."""
    import httpx
    from conftest import (
        ServiceProcess,
        free_port,
        settings_env,
        wait_for_http,
        wait_until,
    )

    port = free_port()
    env = settings_env(service_settings, api_keys=json.dumps({TENANT: hash_key(API_KEY)}))
    env.pop("DOCPROC_LOG_FORMAT", None)  # the default: json
    api = ServiceProcess([sys.executable, "-m", "api", "--port", str(port)], env, tmp_path / "api.log")
    try:
        url = f"http://127.0.0.1:{port}"

        wait_for_http(f"{url}/healthz", 30, "the API to answer", [api], interval=0.1)
        response = httpx.get(f"{url}/v1/jobs", headers={"Authorization": f"Bearer {API_KEY}",
                                                        "X-Request-Id": "req-api-process"}, timeout=10)
        assert response.status_code == 200 and response.headers["X-Request-Id"] == "req-api-process"

        def access_line() -> dict | None:
            entries = [json.loads(line) for line in api.log().splitlines() if line.startswith("{")]
            return next((e for e in entries if e.get("request_id") == "req-api-process"), None)

        entry = wait_until(access_line, 10, "the access log line", [api])
        assert entry["message"] == "GET /v1/jobs 200" and entry["logger"] == "docproc.api.access"
        started = [line for line in api.log().splitlines() if "Uvicorn running" in line]
        assert started and json.loads(started[0])["logger"].startswith("uvicorn")  # uvicorn's lines are JSON too
        assert API_KEY not in api.log()
    finally:
        api.stop()


def test_an_unhandled_error_answers_500_with_the_request_id_and_logs_it(service_settings) -> None:
    import httpx
    from conftest import serving

    from api.app import create_app

    app = create_app(service_settings)

    def boom() -> None:
        raise RuntimeError(f"leaked {API_KEY}")

    app.add_api_route("/test-boom", boom)
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logs.JsonFormatter())
    api_log = logging.getLogger("docproc.api")
    api_log.addHandler(handler)
    try:
        with serving(app) as url:
            response = httpx.get(f"{url}/test-boom", headers={"X-Request-Id": "req-boom"}, timeout=10)
    finally:
        api_log.removeHandler(handler)
    assert response.status_code == 500 and response.json()["code"] == "internal_error"
    assert response.headers["X-Request-Id"] == "req-boom"
    entry = next(json.loads(line) for line in stream.getvalue().splitlines() if "unhandled error" in line)
    assert entry["request_id"] == "req-boom" and entry["exc"].endswith("RuntimeError: leaked dp_***")
