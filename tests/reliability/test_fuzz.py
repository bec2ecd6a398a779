"""Fuzzing: the HTTP API from its own OpenAPI schema (schemathesis), intake and render
from random and mutated bytes (hypothesis). Zero 5xx, zero untyped exceptions.

The default budget is small for CI; ``DOCPROC_FUZZ_EXAMPLES`` (examples per API
operation, and a tenth of the intake budget's multiplier) runs longer, e.g.
``DOCPROC_FUZZ_EXAMPLES=500 pytest tests/reliability/test_fuzz.py -s``. Each test
prints how many cases it tried.
"""

from __future__ import annotations

import os
import random

import builders
import pytest
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from docproc.base import model_workers
from docproc.base.errors import DocprocError
from docproc.base.settings import Settings
from docproc.jobs.inputs import open_document
from docproc.jobs.store import JobRequest
from docproc.submission.submit import check_input
from workers.pipeline import render_or_fail
from workers.render import RenderedPage
from workers.tiling import tile_image

from .conftest import API_KEY

pytestmark = [pytest.mark.reliability, pytest.mark.filterwarnings("ignore::UserWarning")]

EXAMPLES = int(os.environ.get("DOCPROC_FUZZ_EXAMPLES", "25"))
"""Examples per API operation; the intake fuzzers run 8x this many."""


# ---------------------------------------------------------------------------
# the API, from its OpenAPI schema
# ---------------------------------------------------------------------------


def test_the_api_answers_every_schema_generated_request_without_a_5xx(stack_settings, serve_api):
    import schemathesis

    api_settings = stack_settings(rate_limit_per_minute=0, max_file_bytes=256 * 1024)
    with redis.Redis.from_url(api_settings.redis_url) as client:  # model work is accepted (503 without one)
        model_workers.announce(client, "placeholder@fuzz", "fuzz", heartbeat_s=3600)
    api = serve_api(api_settings)
    schema = schemathesis.openapi.from_url(f"{api.base_url}/openapi.json")
    tried: dict[str, int] = {}
    failures: list[str] = []
    headers = {"X-API-Key": API_KEY}

    for result in schema.get_all_operations():
        operation = result.ok()
        label = f"{operation.method.upper()} {operation.path}"
        tried[label] = 0

        @settings(max_examples=EXAMPLES, deadline=None, database=None,
                  suppress_health_check=list(HealthCheck))
        @given(case=operation.as_strategy())
        def run(case) -> None:
            tried[label] += 1
            response = case.call(base_url=str(api.base_url), headers=headers, timeout=30)
            if response.status_code >= 500:
                failures.append(f"{label}: {response.status_code} {response.text[:300]} <- {case!r}"[:800])
            if response.status_code >= 400:  # every error is a problem+json with a code
                content_type = response.headers.get("content-type", [""])  # schemathesis: lists of values
                assert content_type[0].startswith("application/problem+json"), (label, response.status_code)
                assert response.json().get("code"), label

        run()
    total = sum(tried.values())
    print(f"\nschemathesis: {total} requests over {len(tried)} operations: {tried}")
    assert not failures, "\n".join(failures[:10])
    assert len(tried) >= 5 and total >= len(tried)


@st.composite
def hostile_json_body(draw) -> tuple[str, bytes]:
    """(route, body): one of the JSON bodies Python's json module parses but docproc must
    refuse (tests/reliability/hostile.py), at a random depth inside a route's body, or a
    bare array nested past the recursion limit."""
    from . import hostile

    route = draw(st.sampled_from(sorted(hostile.JSON_ROUTES)))
    if draw(st.booleans()):
        return route, hostile.nested_array(draw(st.integers(33, 5000))).encode()
    value, _ = hostile.HOSTILE_JSON_VALUES[draw(st.sampled_from(sorted(hostile.HOSTILE_JSON_VALUES)))]
    depth = draw(st.integers(0, 20))  # wrapped in arrays, still under the depth limit
    return route, (hostile.JSON_ROUTES[route] % ("[" * depth + value + "]" * depth)).encode()


def test_hostile_json_bodies_get_a_typed_4xx_never_a_5xx(stack_settings, serve_api):
    """Hypothesis over the JSON rules: every body a typed 422 (problem+json with a code and
    a reason), on every route that reads JSON."""
    api = serve_api(stack_settings(rate_limit_per_minute=0))
    tried: dict[str, int] = {}

    @settings(max_examples=EXAMPLES * 4, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    @given(case=hostile_json_body())
    def run(case) -> None:
        route, body = case
        tried[route] = tried.get(route, 0) + 1
        response = api.post(route, content=body, headers={"Content-Type": "application/json"})
        assert response.status_code == 422, (route, response.status_code, response.text[:300])
        problem = response.json()
        assert problem["code"] == "invalid_request" and problem["reason"], problem

    run()
    print(f"\nhostile JSON: {sum(tried.values())} requests: {tried}")
    assert len(tried) == 4


# ---------------------------------------------------------------------------
# intake + render, from random and mutated documents
# ---------------------------------------------------------------------------

FUZZ_SETTINGS = Settings(_env_file=None, render_max_pixels=200_000, max_tiles=2, max_pages=50)
SEEDS = {
    "pdf": builders.invoice_pdf(),
    "scanned_pdf": builders.scanned_pdf(dpi=30),
    "png": builders.png_image(64, 48),
    "jpeg": builders.jpeg_photo(64, 48),
    "tiff": builders.tiff_multipage(2),
    "webp": builders.webp_image(64, 48),
}
tried_intake = {"random": 0, "mutated": 0, "typed_errors": 0, "rendered_pages": 0}


def intake_and_render(data: bytes) -> None:
    """What the API and a worker do with an upload; only DocprocErrors may come out."""
    try:
        check_input(data, JobRequest(), filename="fuzz", settings=FUZZ_SETTINGS)
        with open_document(data, settings=FUZZ_SETTINGS) as doc:
            for number in range(1, min(doc.page_count, 2) + 1):
                page = render_or_fail(doc, number, FUZZ_SETTINGS)
                if isinstance(page, RenderedPage):
                    tile_image(page.image, max_tiles=FUZZ_SETTINGS.max_tiles, image_size=64, parallel=False)
                    tried_intake["rendered_pages"] += 1
    except DocprocError:
        tried_intake["typed_errors"] += 1


@st.composite
def mutated(draw) -> bytes:
    """A seed document with a few bytes flipped, a slice cut out or repeated, or truncated."""
    data = bytearray(SEEDS[draw(st.sampled_from(sorted(SEEDS)))])
    rng = random.Random(draw(st.integers(0, 2**32 - 1)))
    for _ in range(draw(st.integers(1, 4))):
        kind = rng.choice(("flip", "flip", "cut", "repeat", "truncate", "splice"))
        at = rng.randrange(len(data))
        if kind == "flip":
            for _ in range(rng.randint(1, 8)):
                data[rng.randrange(len(data))] = rng.randrange(256)
        elif kind == "cut":
            del data[at:at + rng.randint(1, 512)]
        elif kind == "repeat":
            data[at:at] = data[at:at + rng.randint(1, 256)] * rng.randint(2, 16)
        elif kind == "truncate":
            del data[max(at, 8):]
        else:  # splice: bytes of another seed
            other = SEEDS[rng.choice(sorted(SEEDS))]
            o = rng.randrange(len(other))
            data[at:at + rng.randint(0, 256)] = other[o:o + rng.randint(1, 256)]
        if not data:
            data = bytearray(b"%PDF-")
    return bytes(data)


@settings(max_examples=EXAMPLES * 8, deadline=None, database=None, suppress_health_check=list(HealthCheck))
@given(data=mutated())
def test_mutated_documents_only_raise_typed_errors(data):
    tried_intake["mutated"] += 1
    intake_and_render(data)


@settings(max_examples=EXAMPLES * 4, deadline=None, database=None, suppress_health_check=list(HealthCheck))
@given(data=st.one_of(
    st.binary(max_size=4096),
    st.sampled_from([b"%PDF-", b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"II*\x00", b"MM\x00*", b"RIFF\x00\x00\x00\x00WEBP"])
    .flatmap(lambda magic: st.binary(max_size=2048).map(lambda rest: magic + rest)),
))
def test_random_bytes_only_raise_typed_errors(data):
    tried_intake["random"] += 1
    intake_and_render(data)


def test_report_intake_fuzz_counts():
    """Prints the cases the two intake fuzzers tried (run after them, in file order)."""
    print(f"\nintake fuzz: {tried_intake}")
    assert tried_intake["mutated"] + tried_intake["random"] == 0 or tried_intake["typed_errors"] > 0
