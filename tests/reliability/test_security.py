"""Security properties, checked on the real parts: keys, tenants, presigned URLs, rate
limits, source URIs, Flower's auth in every documented deployment, trust_remote_code.

Jobs here are run to the end in this process by the worker's own functions
(:mod:`workers.jobflow`) on the real Redis and moto S3: no broker is needed to have a
finished job whose result, pages and presigned URLs another tenant must not reach.
"""

from __future__ import annotations

import json
import sys
from urllib.parse import parse_qs, urlparse

import builders
import httpx
import pytest
import redis as redis_lib
import yaml
from conftest import ServiceProcess, free_port, settings_env, wait_for_http

from docproc.base.auth import KeyRing, create_key, hash_key
from docproc.base.errors import DocprocError
from docproc.base.settings import REPO_ROOT, Settings
from docproc.base.storage import open_storage
from docproc.jobs.store import JobStore
from workers import jobflow
from workers.pipeline import Engines

from .conftest import API_KEY, OTHER_KEY, TENANT

pytestmark = pytest.mark.reliability


def run_job_here(settings: Settings, job_id: str) -> None:
    """Intake and every page of the job, by the worker's functions, in this process."""
    client = redis_lib.Redis.from_url(settings.redis_url, decode_responses=True)
    store, storage = JobStore(client, settings), open_storage(settings)
    pages: list[int] = []
    jobflow.run_intake(job_id, settings=settings, store=store, storage=storage,
                       enqueue=lambda _job, page, _queue: pages.append(page) or None)
    engines = Engines(settings)
    for page in pages:
        jobflow.run_page(job_id, page, settings=settings, store=store, storage=storage, engines=engines)
    client.close()


@pytest.fixture
def finished(stack_settings, serve_api):
    """The API (as TENANT) and a finished 2-page job of TENANT."""
    settings = stack_settings(presign_expiry_s=120)
    api = serve_api(settings)
    response = api.post("/v1/jobs", files={"file": ("a.pdf", builders.multipage_text_pdf(2), "application/pdf")},
                        data={"task": "ocr", "engine": "text"})
    assert response.status_code == 202, response.text
    job_id = response.json()["id"]
    run_job_here(settings, job_id)
    assert api.get(f"/v1/jobs/{job_id}").json()["state"] == "succeeded"
    return api, settings, job_id


def test_another_tenants_jobs_results_pages_and_urls_answer_404_like_missing_ones(finished):
    api, settings, job_id = finished
    other = httpx.Client(base_url=api.base_url, headers={"X-API-Key": OTHER_KEY}, timeout=30)
    missing = "0" * 32
    for path in ("", "/result", "/result?redirect=true", "/pages/1", "/pages/1?redirect=true"):
        mine = api.get(f"/v1/jobs/{job_id}{path}")
        assert mine.status_code in (200, 307), (path, mine.text)
        theirs, absent = other.get(f"/v1/jobs/{job_id}{path}"), other.get(f"/v1/jobs/{missing}{path}")
        assert theirs.status_code == absent.status_code == 404, (path, theirs.text)
        assert theirs.json()["code"] == absent.json()["code"] == "not_found"
        # the same answer, but for the id each one names
        assert theirs.json()["detail"].replace(job_id, "ID") == absent.json()["detail"].replace(missing, "ID")
    assert other.delete(f"/v1/jobs/{job_id}").status_code == 404
    assert job_id not in {j["id"] for j in other.get("/v1/jobs").json()["jobs"]}
    assert api.get(f"/v1/jobs/{job_id}").json()["state"] == "succeeded"  # the delete changed nothing
    other.close()


def test_presigned_result_urls_are_short_lived_and_name_only_that_object(finished):
    api, settings, job_id = finished
    redirect = api.get(f"/v1/jobs/{job_id}/result", params={"redirect": "true"})
    assert redirect.status_code == 307
    url = urlparse(redirect.headers["location"])
    query = parse_qs(url.query)
    assert int(query["X-Amz-Expires"][0]) == settings.presign_expiry_s <= 300
    assert url.path.endswith(f"/results/{job_id}/document.json")
    assert httpx.get(redirect.headers["location"]).json()["status"] == "succeeded"


def test_rate_limit_per_key_is_429_with_retry_after(stack_settings, serve_api):
    api = serve_api(stack_settings(rate_limit_per_minute=3))
    answers = [api.get("/v1/jobs") for _ in range(4)]
    assert [a.status_code for a in answers] == [200, 200, 200, 429]
    limited = answers[-1]
    assert limited.json()["code"] == "rate_limited" and 1 <= int(limited.headers["Retry-After"]) <= 60
    # the limit is per key: the other tenant's key still passes
    assert httpx.get(f"{api.base_url}/v1/jobs", headers={"X-API-Key": OTHER_KEY}).status_code == 200


def test_api_keys_are_hashed_at_rest_and_compared_in_constant_time(stack_settings):
    settings = stack_settings()
    client = redis_lib.Redis.from_url(settings.redis_url, decode_responses=True)
    key, digest = create_key(client, "redis-tenant")
    assert digest == hash_key(key)
    stored = [(k, client.dump(k)) for k in client.keys("*")]
    assert stored and not any(key in k or key.encode() in (v or b"") for k, v in stored)  # only the hash
    ring = KeyRing(settings, client)
    assert ring.authenticate(key) == "redis-tenant" and ring.authenticate(API_KEY) == TENANT
    for wrong in (API_KEY[:-1] + "x", "", "x" * 10_000, "dp_é"):
        with pytest.raises(DocprocError) as caught:
            ring.authenticate(wrong)
        assert caught.value.code == "unauthorized"
    # settings hold hashes only: a plain key where a hash belongs is refused at start
    with pytest.raises(ValueError):
        Settings(_env_file=None, api_keys={TENANT: API_KEY})
    # constant time: every stored hash goes through hmac.compare_digest (timing: tests/test_auth.py)
    body = (REPO_ROOT / "docproc" / "base" / "auth.py").read_text().split("def authenticate")[1].split("\ndef ")[0]
    assert "hmac.compare_digest(digest, stored)" in body
    client.close()


HOSTILE_SOURCES = (
    "file:///etc/passwd", "http://169.254.169.254/latest/meta-data/", "https://example.com/a.pdf",
    "s3://not-allowed-bucket/a.pdf", "s3://allowed-in/a.pdf?versionId=x", "/etc/passwd", "gs://allowed-in/a.pdf",
    "S3://allowed-in", "s3:///a.pdf", "s3://allowed-in.evil.example/a.pdf", "s3://user@allowed-in/a.pdf",
)


def test_source_uris_only_name_allow_listed_s3_buckets(stack_settings, serve_api):
    api = serve_api(stack_settings(source_buckets=["allowed-in"]))
    for uri in HOSTILE_SOURCES:
        response = api.post("/v1/jobs", json={"source_uri": uri})
        assert response.status_code == 422, (uri, response.text)
        assert response.json()["code"] == "invalid_request", uri
        assert "root:" not in response.text  # nothing of a local file ever comes back


# ---------------------------------------------------------------------------
# Flower: basic auth in every documented deployment
# ---------------------------------------------------------------------------


def test_every_documented_flower_deployment_requires_basic_auth():
    """docker compose (FLOWER_BASIC_AUTH required, compose refuses to start without it),
    Kubernetes (a required Secret), ``docproc up`` (--basic-auth, a random password)."""
    compose = yaml.safe_load((REPO_ROOT / "docker" / "compose.yaml").read_text())
    flower = compose["services"]["flower"]
    assert flower["environment"]["FLOWER_BASIC_AUTH"].startswith("${FLOWER_BASIC_AUTH:?")
    assert not any("--auth" in arg or "--unauthenticated_api" in arg for arg in flower["command"])
    k8s = [doc for doc in yaml.safe_load_all((REPO_ROOT / "infra" / "flower.yaml").read_text()) if doc]
    containers = [c for doc in k8s if doc.get("kind") == "Deployment"
                  for c in doc["spec"]["template"]["spec"]["containers"]]
    auth_env = [e for c in containers for e in c.get("env", []) if e["name"] == "FLOWER_BASIC_AUTH"]
    assert auth_env and all(e["valueFrom"]["secretKeyRef"]["optional"] is False for e in auth_env)


def test_docproc_up_starts_flower_with_basic_auth(tmp_path):
    from docproc.cli.stack import Stack

    stack = Stack(var=tmp_path, env={})
    flower = next(child for child in stack.plan() if child.name == "flower")
    auth = [arg for arg in flower.argv if arg.startswith("--basic-auth=")]
    user, _, password = auth[0].removeprefix("--basic-auth=").partition(":")
    assert user and len(password) >= 12


def test_flower_reading_flower_basic_auth_from_the_env_refuses_anonymous_calls(stack_settings, tmp_path):
    """What compose and Kubernetes rely on: Flower takes FLOWER_BASIC_AUTH from its
    environment; its API then answers 401 without the password."""
    settings = stack_settings()
    port = free_port()
    env = settings_env(settings)
    env["FLOWER_BASIC_AUTH"] = "ops:s3cret-flower"
    process = ServiceProcess([sys.executable, "-m", "celery", "-A", "workers.celery_app", "flower",
                              "--address=127.0.0.1", f"--port={port}"], env, tmp_path / "flower.log")
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for_http(f"{base}/healthcheck", 60, "Flower to answer", [process])
        for path in ("/", "/api/workers", "/api/tasks", "/workers"):
            assert httpx.get(f"{base}{path}", timeout=10).status_code == 401, path
        assert httpx.get(f"{base}/api/workers", auth=("ops", "wrong"), timeout=10).status_code == 401
        assert httpx.get(f"{base}/api/workers", auth=("ops", "s3cret-flower"), timeout=10).status_code == 200
    finally:
        process.stop()


# ---------------------------------------------------------------------------
# trust_remote_code
# ---------------------------------------------------------------------------


def test_remote_model_code_is_never_run_unless_an_operator_opts_in(tmp_path):
    """A checkpoint that ships its own modelling code (``auto_map``, as InternVL's original
    ``internvl_chat`` repos do): loading it with the default settings is a typed
    ``model_unavailable`` error, and its Python file is never imported."""
    from workers.engines.internvl import InternVLEngine

    marker = tmp_path / "remote-code-ran"
    model = tmp_path / "remote-code-model"
    model.mkdir()
    (model / "config.json").write_text(json.dumps({
        "model_type": "internvl_chat", "architectures": ["InternVLChatModel"],
        "auto_map": {"AutoConfig": "evil.EvilConfig", "AutoModel": "evil.EvilModel",
                     "AutoModelForCausalLM": "evil.EvilModel"},
    }))
    (model / "evil.py").write_text(f"open({str(marker)!r}, 'w').write('ran')\n")
    assert Settings(_env_file=None).trust_remote_code is False
    settings = Settings(_env_file=None, model=str(model), device="cpu")
    with pytest.raises(DocprocError) as caught:
        InternVLEngine(settings).load()
    assert caught.value.code == "model_unavailable"
    assert not marker.exists()
    # and no code path turns it on by itself
    for path in (REPO_ROOT / "workers").rglob("*.py"):
        assert "trust_remote_code=True" not in path.read_text(), path
