"""The requests docproc sends a model server (workers/engines/served.py) and the bounds that keep
``extract`` JSON complete there (workers/engines/schema_bounds.py). Pure functions, no server:
tests/test_vllm_server.py runs them against a real vLLM."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import settings as hsettings
from hypothesis import strategies as st
from PIL import Image

from docproc.base.settings import Settings
from docproc.jobs.schemas import get_registry
from workers.engines.schema_bounds import (
    MAX_CHAR_BYTES,
    NUMBER_LIMIT,
    UnboundedSchema,
    bounded_schema,
    max_bytes,
)
from workers.engines.served import at_grid, build_request, page_budget
from workers.model_server import server_for, vllm_command
from workers.pages import RenderedPage
from workers.tiling import choose_grid, tile_count


@given(st.integers(16, 5000), st.integers(16, 5000), st.integers(1, 12))
@hsettings(max_examples=300, deadline=None)
def test_a_page_sent_at_its_grid_gets_the_same_grid_from_internvl_s_rule(width, height, max_tiles):
    """What makes vLLM cut docproc's tiles: the page resized to its grid is an image for which
    InternVL's own rule picks that grid again (and so the same thumbnail)."""
    s = Settings(max_tiles=max_tiles, _env_file=None)
    grid = at_grid(Image.new("RGB", (width, height)), s)
    assert grid.image.size == (grid.cols * 448, grid.rows * 448)
    assert choose_grid(width, height, max_tiles=max_tiles) == (grid.cols, grid.rows)
    assert choose_grid(*grid.image.size, max_tiles=max_tiles) == (grid.cols, grid.rows)
    assert grid.tiles == tile_count(width, height, max_tiles=max_tiles) == tile_count(*grid.image.size,
                                                                                       max_tiles=max_tiles)


@pytest.mark.parametrize("budget", [1024, 4096, 8192])
def test_every_shipped_schema_is_bounded_to_fit_its_budget(budget):
    registry = get_registry(Settings(_env_file=None))
    for schema in registry:
        bounded, longest = bounded_schema(schema.model_schema(), budget)
        assert longest + 1 <= budget and max_bytes(bounded) == longest, schema.key
        _every_node_is_bounded(bounded)


def _every_node_is_bounded(node):
    if isinstance(node, list):
        for child in node:
            _every_node_is_bounded(child)
        return
    if not isinstance(node, dict):
        return
    types = node.get("type", [])
    types = [types] if isinstance(types, str) else types
    if "string" in types and not {"format", "pattern", "enum", "const"} & set(node):
        assert node["maxLength"] >= 1
    if "array" in types:
        assert node["maxItems"] >= 1
    if "object" in types:
        assert node["additionalProperties"] is False
    if {"number", "integer"} & set(types):
        assert node["minimum"] >= -NUMBER_LIMIT and node["maximum"] <= NUMBER_LIMIT
    for value in node.values():
        _every_node_is_bounded(value)


def test_bounds_keep_the_schema_s_own_tighter_ones_and_count_escapes():
    schema = {"type": "object", "properties": {
        "code": {"type": "string", "maxLength": 3},
        "tags": {"type": "array", "minItems": 2, "items": {"type": "string"}},
        "n": {"type": "integer", "minimum": 0},
    }}
    bounded, longest = bounded_schema(schema, 4096)
    props = bounded["properties"]
    assert props["code"]["maxLength"] == 3 and props["tags"]["maxItems"] >= 2
    assert props["n"]["minimum"] == 0 and props["n"]["maximum"] == NUMBER_LIMIT
    # the longest value: every character an escape (6 bytes), every array full
    tags = props["tags"]
    assert longest == max_bytes(bounded) >= (2 + MAX_CHAR_BYTES * 3) + tags["maxItems"] * (
        2 + MAX_CHAR_BYTES * tags["items"]["maxLength"])
    assert "maxLength" not in schema["properties"]["tags"]["items"]  # the original is left alone


def test_a_schema_that_cannot_fit_is_refused():
    schema = {"type": "object", "properties": {f"f{i}": {"type": "string", "minLength": 50} for i in range(20)}}
    with pytest.raises(UnboundedSchema):
        bounded_schema(schema, 256)
    with pytest.raises(UnboundedSchema):
        bounded_schema({"type": "object", "properties": {"x": {}}}, 4096)


def test_requests_carry_the_budget_the_bounded_schema_and_the_grid_image():
    s = Settings(model="m", _env_file=None)
    page = RenderedPage(number=1, image=Image.new("RGB", (1275, 1650), "white"))
    ocr = build_request(page, "ocr", None, settings=s, model="m")
    assert ocr.tiles == 13 and ocr.budget == page_budget("ocr", 13, s) == s.max_new_tokens_ocr
    assert ocr.body["stream"] and ocr.body["stream_options"] == {"include_usage": True}
    assert "response_format" not in ocr.body and ocr.body["temperature"] == 0
    invoice = get_registry(s).get("invoice")
    extract = build_request(page, "extract", invoice, settings=s, model="m")
    sent = extract.body["response_format"]["json_schema"]
    assert extract.body["max_tokens"] == s.model_server_extract_max_tokens
    assert sent["strict"] and sent["schema"] == bounded_schema(invoice.model_schema(), extract.budget)[0]
    forced = build_request(page, "ocr", None, settings=s, model="m", force_tokens=750)
    assert (forced.body["max_tokens"], forced.body["min_tokens"], forced.body["ignore_eos"]) == (750, 750, True)
    lmdeploy = build_request(page, "ocr", None, settings=s, model="m", kind="lmdeploy")
    images = [i for m in lmdeploy.body["messages"] if isinstance(m["content"], list)
              for i in m["content"] if i["type"] == "image_url"]
    assert [i["image_url"]["max_dynamic_patch"] for i in images] == [s.max_tiles]
    assert "return_token_ids" not in lmdeploy.body


def test_the_model_server_setting_picks_the_runtime():
    assert server_for(Settings(_env_file=None)) is None
    sidecar = server_for(Settings(model_server="http://127.0.0.1:8000/v1", model_server_kind="lmdeploy",
                                  _env_file=None))
    assert (sidecar.base_url, sidecar.kind, sidecar.process) == ("http://127.0.0.1:8000/v1", "lmdeploy", None)
    with pytest.raises(Exception, match="expected ''"):
        server_for(Settings(model_server="gpu-host:8000", _env_file=None))
    original = vllm_command(Settings(model="OpenGVLab/InternVL3-8B", trust_remote_code=True, max_tiles=6,
                                     vllm_args="--max-model-len 16384", _env_file=None))
    assert "--trust-remote-code" in original and original[-2:] == ["--max-model-len", "16384"]
    kwargs = json.loads(original[original.index("--mm-processor-kwargs") + 1])
    assert kwargs == {"min_dynamic_patch": 1, "max_dynamic_patch": 6}  # the originals' processor names
