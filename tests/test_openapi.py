"""The API as an integrator meets it: its OpenAPI document, a client generated from it, /docs.

The document is checked by a validator (openapi-spec-validator) and by generating a
Python client from it (openapi-python-client, as an integrator would) and calling the
running service through that client: a body the document leaves out (POST /v1/reprocess's
used to be) cannot be sent. /docs and /redoc must work on an air-gapped site: every asset
they load is served by the API itself.
"""

from __future__ import annotations

import importlib
import io
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import builders
import httpx
import pytest
from conftest import serving

from api.app import create_app
from docproc.base.auth import hash_key
from docproc.base.settings import Settings

TENANT = "acme"
KEY = "dp_openapi-test-key-000000000000000000000000"
BODY_ROUTES = {("post", "/v1/jobs"), ("post", "/v1/batches"), ("post", "/v1/reprocess"),
               ("post", "/v1/webhooks/endpoints/enable")}


@pytest.fixture
def api_url(service_settings: Settings) -> Iterator[str]:
    settings = service_settings.model_copy(update={"api_keys": {TENANT: hash_key(KEY)}})
    with serving(create_app(settings)) as base:
        yield base


@pytest.fixture
def document(api_url: str) -> dict:
    return httpx.get(f"{api_url}/openapi.json", timeout=30).json()


def _resolve(document: dict, node: dict) -> dict:
    while "$ref" in node:
        name = node["$ref"].removeprefix("#/components/schemas/")
        node = document["components"]["schemas"][name]  # KeyError: a dangling $ref
    return node


def test_the_openapi_document_is_valid_and_describes_every_body_and_response(document):
    from openapi_spec_validator import validate

    validate(document)
    operations = [(method, path, op) for path, item in document["paths"].items() for method, op in item.items()]
    assert len({op["operationId"] for _, _, op in operations}) == len(operations)
    with_body = {(method, path) for method, path, op in operations if "requestBody" in op}
    assert with_body == BODY_ROUTES
    for method, path in BODY_ROUTES:
        content = document["paths"][path][method]["requestBody"]["content"]
        schema = _resolve(document, content["application/json"]["schema"])
        assert schema["properties"], (method, path)
    reprocess = _resolve(document, document["paths"]["/v1/reprocess"]["post"]["requestBody"]["content"]
                         ["application/json"]["schema"])
    assert "selector" in reprocess["required"] and _resolve(document, reprocess["properties"]["selector"])
    for method, path, op in operations:
        responses = op["responses"]
        ok = [status for status in responses if status.startswith("2")]
        assert ok, (method, path)
        for status, response in responses.items():
            for media, body in response.get("content", {}).items():
                if body.get("schema"):
                    _resolve(document, body["schema"])
            if status.startswith(("4", "5")):
                assert response["content"]["application/problem+json"]["schema"] == {
                    "$ref": "#/components/schemas/Problem"}
        if (method, path) in BODY_ROUTES:
            assert {"408", "415", "422"} <= set(responses), (method, path)


def _generate_client(document_url: str, out: Path) -> str:
    """openapi-python-client's package for the document, importable from ``out``; its output."""
    spec = out / "openapi.json"
    spec.write_bytes(httpx.get(document_url, timeout=30).content)
    config = out / "config.yaml"
    config.write_text("post_hooks: []\n")  # no formatter run: the generated code as generated
    proc = subprocess.run(
        [str(Path(sys.executable).parent / "openapi-python-client"), "generate", "--path", str(spec),
         "--meta", "none", "--config", str(config), "--output-path", str(out / "docproc_client")],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    _import_unset(out / "docproc_client")
    return proc.stdout + proc.stderr


def _import_unset(package: Path) -> None:
    """Work around openapi-python-client 0.29's endpoint template: an operation with a body in
    two media types (multipart and JSON) is always typed ``... | Unset = UNSET`` (a Jinja
    scoping slip), but ``Unset`` is imported only when another parameter is optional. POST
    /v1/batches has none, so its module would not import. The fix adds the missing import."""
    for module in (package / "api").rglob("*.py"):
        text = module.read_text()
        if "| Unset = UNSET" in text and not re.search(r"^from \.\.\.types import .*\bUnset\b", text, re.M):
            module.write_text(text.replace("import httpx\n", "import httpx\n\nfrom ...types import Unset\n", 1))


def test_a_generated_client_calls_every_body_route_of_the_service(api_url, tmp_path, monkeypatch):
    output = _generate_client(f"{api_url}/openapi.json", tmp_path)
    assert "Warning" not in output and "Unable to" not in output, output  # every schema became a model
    monkeypatch.syspath_prepend(str(tmp_path))
    client_pkg = importlib.import_module("docproc_client")
    ops = {name: importlib.import_module(f"docproc_client.api.{tag}.{name}") for tag, name in (
        ("jobs", "submit"), ("jobs", "get_job"), ("jobs", "list_jobs"), ("batches", "submit_batch"),
        ("batches", "submit_reprocess"), ("webhooks", "enable_endpoint"), ("schemas", "list_schemas"))}
    models = importlib.import_module("docproc_client.models")
    types = importlib.import_module("docproc_client.types")
    client = client_pkg.AuthenticatedClient(base_url=api_url, token=KEY)

    # POST /v1/jobs, multipart: a typed body, a typed JobView back
    body = models.SubmitFilesBody(file=types.File(payload=io.BytesIO(builders.invoice_pdf()), file_name="inv.pdf"),
                                  task=models.SubmitFilesBodyTask.TABLES)
    submitted = ops["submit"].sync_detailed(client=client, body=body)
    assert submitted.status_code == 202, submitted.content
    job = submitted.parsed
    assert isinstance(job, models.JobView) and job.state == models.JobViewState.QUEUED and job.filename == "inv.pdf"
    again = ops["get_job"].sync(job.id, client=client)
    assert again.id == job.id and re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z",
                                                again.to_dict()["created_at"])
    assert [j.id for j in ops["list_jobs"].sync(client=client).jobs] == [job.id]

    # POST /v1/reprocess: the body the document used to leave out
    request = models.ReprocessRequest(selector=models.Selector(schema="invoice"), dry_run=True)
    dry = ops["submit_reprocess"].sync_detailed(client=client, body=request)
    assert dry.status_code == 200 and isinstance(dry.parsed, models.DryRun) and dry.parsed.documents == 0

    # POST /v1/batches as JSON, POST /v1/webhooks/endpoints/enable: typed problems come back typed
    batch = ops["submit_batch"].sync_detailed(client=client, body=models.BatchSubmission(
        source_uris=["s3://not-allowed/a.pdf"]))
    assert batch.status_code == 422 and isinstance(batch.parsed, models.Problem)
    assert batch.parsed.code == "invalid_request"
    enabled = ops["enable_endpoint"].sync(client=client, body=models.EndpointRequest(url="https://example.com/h"))
    assert enabled.url == "https://example.com/h" and enabled.was_disabled is False
    assert {s.name for s in ops["list_schemas"].sync(client=client).schemas} >= {"invoice", "receipt"}


_ASSET = re.compile(r"""(?:src|href)\s*=\s*["']([^"']+)["']|url:\s*['"]([^'"]+)['"]""")


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
def test_docs_and_redoc_load_every_asset_from_the_api_itself(api_url, page):
    """Air-gapped sites: no CDN. Every script, stylesheet and icon the page names is a path
    on the API, and it is served (the real Swagger UI / ReDoc bundles, not stubs)."""
    html = httpx.get(f"{api_url}{page}", timeout=30)
    assert html.status_code == 200
    urls = [a or b for a, b in _ASSET.findall(html.text)]
    assert urls and not [u for u in urls if "//" in u], urls  # nothing absolute: no CDN, no fonts
    sizes = {}
    for url in urls:
        asset = httpx.get(f"{api_url}{url}", timeout=30)
        assert asset.status_code == 200, url
        sizes[url] = len(asset.content)
    scripts = [u for u in urls if u.endswith(".js")]
    assert scripts and all(sizes[u] > 500_000 for u in scripts), sizes  # swagger-ui-bundle.js, redoc.standalone.js
    assert "/openapi.json" in urls or "/openapi.json" in html.text
