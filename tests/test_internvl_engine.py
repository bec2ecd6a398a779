"""The InternVL engine on a tiny, randomly initialised InternVL of the real architecture.

The checkpoint is written to disk by the fixtures and loaded back through
``InternVLEngine.load()`` - the same code that loads a real model. Random
weights produce noise, so the tests check what must hold for any weights:
token counts, batching equal to one-by-one decoding, the repetition guard,
the error codes, and honest reporting of unparseable output.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from docproc.base.errors import ModelUnavailable
from docproc.base.settings import Settings
from docproc.jobs.schemas import get_registry
from workers.engines.internvl import (
    GenerationRequest,
    InternVLEngine,
    parse_tables,
    plan_batches,
)
from workers.engines.repetition import RunawayGuard, loop_period
from workers.engines.tiny_internvl import build_tiny_internvl
from workers.pages import RenderedPage


def page_image(width: int, height: int, label: str) -> Image.Image:
    im = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(im)
    draw.rectangle((8, 8, width - 9, height - 9), outline="black", width=3)
    for k in range(0, height - 60, max(40, height // 12)):
        draw.text((30, 30 + k), f"{label} line {k}", fill="black", font_size=24)
    return im


@pytest.fixture(scope="module")
def pages() -> list[RenderedPage]:
    """A 1-tile square page, an A4 page (2x3 grid + thumbnail) and a wide 3x1 strip."""
    return [
        RenderedPage(number=1, image=page_image(448, 448, "square")),
        RenderedPage(number=2, image=page_image(1240, 1754, "A4"), text="Invoice INV-7 total 12.00",
                     has_text_layer=True),
        RenderedPage(number=3, image=page_image(1344, 448, "wide")),
    ]


def engine_with(base: InternVLEngine, **overrides) -> InternVLEngine:
    """The already loaded tiny model under other settings (no reload)."""
    return InternVLEngine.from_model(base.model, base.tokenizer,
                                     base.settings.model_copy(update=overrides), model_id=base.model_id)


class VisionCalls:
    """Counts vision-tower passes and the tiles each one encoded (a forward hook, no mock)."""

    def __init__(self, engine: InternVLEngine) -> None:
        self.tiles: list[int] = []
        self._handle = engine.model.model.vision_tower.register_forward_hook(self._record)

    def _record(self, module, args, output) -> None:
        self.tiles.append(int(output.last_hidden_state.shape[0]))

    def __enter__(self) -> "VisionCalls":
        return self

    def __exit__(self, *exc) -> None:
        self._handle.remove()


# --- loading --------------------------------------------------------------------


def test_tiny_checkpoint_loads_through_the_user_path(tiny_engine, tiny_model_dir, caplog):
    from transformers import InternVLForConditionalGeneration

    assert type(tiny_engine.model) is InternVLForConditionalGeneration
    assert tiny_engine.device == "cpu" and tiny_engine.dtype == torch.float32
    assert tiny_engine.attn_implementation == "sdpa"
    assert tiny_engine.image_seq_length == 16 and tiny_engine.tile_size == 448
    assert tiny_engine.model_id == str(tiny_model_dir)
    caplog.set_level(logging.INFO, logger="workers.engines.internvl")
    fresh = InternVLEngine(tiny_engine.settings)
    assert fresh.load() is fresh and fresh.load() is fresh  # idempotent
    line = next(r.getMessage() for r in caplog.records if "loaded" in r.getMessage())
    assert "on cpu" in line and "dtype=float32" in line and "attention=sdpa" in line


def test_tiny_checkpoint_is_deterministic(tmp_path, tiny_model_dir):
    def digest(path):
        return hashlib.sha256((path / "model.safetensors").read_bytes()).hexdigest()

    assert digest(build_tiny_internvl(tmp_path / "again", seed=0)) == digest(tiny_model_dir)
    assert digest(build_tiny_internvl(tmp_path / "other", seed=1)) != digest(tiny_model_dir)


def test_missing_model_directory_is_model_unavailable(tmp_path):
    missing = tmp_path / "no-such-model"
    with pytest.raises(ModelUnavailable) as info:
        InternVLEngine(Settings(_env_file=None, model=str(missing))).load()
    assert "DOCPROC_MODEL" in info.value.message and str(missing) in info.value.message
    assert info.value.code == "model_unavailable"


def test_a_directory_without_a_model_is_model_unavailable(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelUnavailable) as info:
        InternVLEngine(Settings(_env_file=None, model=str(tmp_path / "empty"))).load()
    assert "DOCPROC_MODEL" in info.value.message and "local directory" in info.value.message


def test_a_non_internvl_checkpoint_is_model_unavailable(tmp_path):
    from transformers import Qwen2Config

    Qwen2Config(hidden_size=32, num_hidden_layers=1, num_attention_heads=2).save_pretrained(tmp_path / "qwen")
    with pytest.raises(ModelUnavailable, match="not InternVL"):
        InternVLEngine(Settings(_env_file=None, model=str(tmp_path / "qwen"))).load()


# --- batching -------------------------------------------------------------------


def test_plan_batches_groups_similar_requests_within_limits():
    sizes = [(7, 900), (1, 500), (7, 880), (4, 700), (1, 520), (13, 1200)]
    plan = plan_batches(sizes, batch_size=2, tile_budget=14)
    assert sorted(i for b in plan for i in b) == list(range(len(sizes)))
    assert plan == [[1, 4], [3, 2], [0], [5]]
    for batch in plan:
        assert len(batch) <= 2
        assert sum(sizes[i][0] for i in batch) <= 14 or len(batch) == 1
    assert plan_batches([(20, 10)], batch_size=8, tile_budget=4) == [[0]]


def test_batched_generation_equals_one_by_one(tiny_engine, pages):
    engine = engine_with(tiny_engine, batch_size=8, batch_tile_budget=64)
    requests = [engine.request_for_page(p, "ocr") for p in pages]
    assert [r.n_tiles for r in requests] == [1, 7, 4]
    lengths = [len(engine.prompt_ids(r)) for r in requests]
    assert len(set(lengths)) == 3  # the batch really is left-padded
    with VisionCalls(engine) as vision:
        batched = engine.generate_outputs(requests, retry_degenerate=False)
    assert vision.tiles == [12]  # one vision pass over all tiles of the batch
    alone = [engine.generate_outputs([r], retry_degenerate=False)[0] for r in requests]
    for b, a in zip(batched, alone):
        assert b.error is None and len(b.token_ids) > 0
        assert b.token_ids == a.token_ids
        assert b.text == a.text


def test_process_keeps_input_order_and_honours_the_tile_budget(tiny_engine, pages):
    engine = engine_with(tiny_engine, batch_size=8, batch_tile_budget=8)
    with VisionCalls(engine) as vision:
        results = engine.process(pages, "ocr")
    assert sorted(vision.tiles) == [5, 7]  # [1 + 4] tiles, then the 7-tile page alone
    assert [r.page for r in results] == [1, 2, 3]
    assert [r.tiles for r in results] == [1, 7, 4]
    assert [(r.width, r.height) for r in results] == [p.image.size for p in pages]
    for r in results:
        assert r.engine == "internvl" and r.status == "succeeded" and isinstance(r.text, str)
        assert set(r.timings_ms) == {"tile", "infer", "postprocess"}
    assert results[1].has_text_layer and not results[0].has_text_layer


def test_text_layer_hint_follows_settings(tiny_engine, pages):
    on = engine_with(tiny_engine, text_layer_hint=True)
    off = engine_with(tiny_engine, text_layer_hint=False)
    assert "Invoice INV-7 total 12.00" in on.prompt_text(on.request_for_page(pages[1], "ocr"))
    assert "Invoice INV-7" not in off.prompt_text(off.request_for_page(pages[1], "ocr"))
    assert "text layer" not in on.prompt_text(on.request_for_page(pages[0], "ocr"))


def test_token_budget_scales_with_tiles_and_is_capped(tiny_engine):
    engine = engine_with(tiny_engine, max_new_tokens_ocr=2048, max_new_tokens_per_tile=384)
    assert engine.max_new_tokens("ocr", 1) == 384
    assert engine.max_new_tokens("ocr", 4) == 1536
    assert engine.max_new_tokens("ocr", 7) == 2048


# --- repetition guard -------------------------------------------------------------


def test_loop_period_on_constructed_sequences():
    rng = np.random.default_rng(0)
    prefix = rng.integers(0, 250, 50).tolist()
    dots = prefix + [13] * 250
    line = rng.integers(0, 250, 23).tolist()
    repeated_line = prefix + line * 12
    assert loop_period(dots) == 1
    assert loop_period(repeated_line) == 23
    assert loop_period(rng.integers(0, 250, 800).tolist()) is None
    # a real table separator, repeated a few times, is no loop
    assert loop_period(prefix + [7, 8] * 20 + [9]) is None
    # a unit must follow itself min_repeats (4) times, i.e. be seen 5 times
    assert loop_period(prefix + line * 4, min_span=40) is None
    assert loop_period(prefix + line * 5, min_span=40) == 23


def test_runaway_guard_stops_rows_independently():
    prompt = [1, 2, 3]
    eos = 99
    loop = prompt + [5, 6] * 12  # loops with period 2
    plain = prompt + list(range(10, 34))
    ended = prompt + [40, 41, eos] + [0] * 21  # EOS, then padding that repeats
    guard = RunawayGuard(len(prompt), [100, 100, 100], eos_token_ids=[eos], min_span=8)
    # replay the decoding step by step, as generate() calls it
    stops = []
    for step in range(1, 25):
        ids = torch.tensor([seq[: len(prompt) + step] for seq in (loop, plain, ended)])
        stops.append(guard(ids, None).tolist())
    assert guard.reasons == ["repetition", None, "eos"]
    assert guard.lengths[0] == 10 and guard.lengths[2] == 3  # 8-token span + one period
    assert guard.loop_periods[0] == 2
    assert not any(s[1] for s in stops) and not any(s[2] for s in stops)
    guard.finalize(24)
    assert guard.reasons[1] == "length" and guard.lengths[1] == 24


def test_runaway_guard_enforces_per_row_budgets():
    guard = RunawayGuard(2, [3, 5], eos_token_ids=[99], min_span=0)
    ids = torch.tensor([[1, 1, 10, 11, 12], [1, 1, 20, 21, 22]])
    assert guard(ids, None).tolist() == [True, False]
    assert guard.reasons == ["length", None] and guard.lengths[0] == 3


def test_guard_stops_a_looping_tiny_model(tiny_engine, pages):
    free = engine_with(tiny_engine, repetition_guard_span=0, max_new_tokens_ocr=160)
    guarded = engine_with(tiny_engine, repetition_guard_span=16, max_new_tokens_ocr=160)
    request = free.request_for_page(pages[0], "ocr")
    unguarded = free.generate_outputs([request], retry_degenerate=False)[0]
    stopped = guarded.generate_outputs([request], retry_degenerate=False)[0]
    assert unguarded.finish_reason == "length" and len(unguarded.token_ids) == 160
    assert stopped.finish_reason == "repetition"
    assert len(stopped.token_ids) < 160
    assert unguarded.token_ids[: len(stopped.token_ids)] == stopped.token_ids
    assert loop_period(stopped.token_ids, min_span=16) is not None


def test_degenerate_page_is_retried_once_then_reported(tiny_engine, pages):
    # penalty 1.0 makes the retry decode the same loop again: the page must end degenerate
    engine = engine_with(tiny_engine, repetition_guard_span=16, max_new_tokens_ocr=160,
                         repetition_penalty_retry=1.0)
    with VisionCalls(engine) as vision:
        [result] = engine.process(pages[:1], "ocr")
    assert len(vision.tiles) == 2  # the first run and exactly one retry
    assert result.status == "failed" and result.error.code == "degenerate_output"
    assert "retry" in result.error.message
    assert result.raw_output and result.text is None


def test_retry_uses_the_repetition_penalty(tiny_engine, pages):
    engine = engine_with(tiny_engine, repetition_guard_span=16, max_new_tokens_ocr=160,
                         repetition_penalty_retry=1.5)
    request = engine.request_for_page(pages[0], "ocr")
    first = engine.generate_outputs([request], retry_degenerate=False)[0]
    final = engine.generate_outputs([request])[0]
    assert first.degenerate and final.retried
    assert final.token_ids != first.token_ids


# --- outputs and failures ----------------------------------------------------------


def test_extract_output_is_reported_honestly(tiny_engine, pages):
    schema = get_registry().get("invoice")
    [result] = tiny_engine.process(pages[:1], "extract", schema)
    raw = result.raw_output
    if result.status == "succeeded":
        assert result.fields is not None and not list(schema.validator.iter_errors(result.fields))
    else:
        assert result.fields is None and raw
        assert result.error.code in ("invalid_output", "degenerate_output")
    # decoding was constrained to the schema's grammar: properties come in schema order
    assert (raw or "").startswith('{"invoice_number":') or result.status == "succeeded"


def test_unconstrained_extract_keeps_raw_output_when_it_does_not_parse(tiny_engine, pages):
    engine = engine_with(tiny_engine, constrained_decoding=False)
    schema = get_registry().get("invoice")
    [result] = engine.process(pages[:1], "extract", schema)
    assert result.status == "failed" and result.error.code in ("invalid_output", "degenerate_output")
    assert result.raw_output and result.fields is None


def test_tables_output_without_a_table_is_invalid_output(tiny_engine, pages):
    [result] = tiny_engine.process(pages[:1], "tables")
    if result.status == "succeeded":
        assert result.tables is not None
    else:
        assert result.error.code in ("invalid_output", "degenerate_output") and result.raw_output


def test_one_failing_page_does_not_fail_the_others(tiny_engine, pages):
    broken = RenderedPage(number=9, image=Image.new("RGB", (0, 0)))
    results = tiny_engine.process([pages[0], broken, pages[2]], "ocr")
    assert [r.page for r in results] == [1, 9, 3]
    assert results[1].status == "failed" and results[1].error.code == "inference_error"
    assert results[0].status == "succeeded" and results[2].status == "succeeded"


def test_a_request_that_breaks_its_batch_fails_alone(tiny_engine, pages):
    good = [tiny_engine.request_for_page(p, "ocr") for p in (pages[0], pages[2])]
    bad = GenerationRequest(tiles=[np.zeros((1, 224, 224, 3), dtype=np.uint8)], task="ocr")
    outputs = tiny_engine.generate_outputs([good[0], bad, good[1]], retry_degenerate=False)
    assert outputs[1].error is not None and outputs[1].finish_reason == "error"
    alone = tiny_engine.generate_outputs(good, retry_degenerate=False)
    assert [o.token_ids for o in (outputs[0], outputs[2])] == [o.token_ids for o in alone]


def test_extract_without_schema_is_an_invalid_request(tiny_engine, pages):
    from docproc.base.errors import InvalidRequest

    with pytest.raises(InvalidRequest):
        tiny_engine.process(pages[:1], "extract", None)


def test_parse_tables_reads_markdown_and_html():
    text = (
        "Intro\n\n| Item | Qty |\n|---|:--:|\n| Bolt \\| M6 | 4 |\n| Nut | |\n\ntext\n"
        "<table><tr><th>A</th><th colspan=2>B</th></tr><tr><td>1</td><td>2</td><td>3</td></tr></table>"
    )
    first, second = parse_tables(text)
    assert first.rows == [["Item", "Qty"], ["Bolt | M6", "4"], ["Nut", ""]]
    assert first.markdown.splitlines()[0] == "| Item | Qty |"
    assert second.rows == [["A", "B", ""], ["1", "2", "3"]]
    assert parse_tables("no table here | just a pipe") == []


def test_tables_page_results_from_model_text(tiny_engine, pages):
    from workers.engines.internvl import Generation

    request = tiny_engine.request_for_page(pages[0], "tables")
    none = tiny_engine._page_result(pages[0], "tables", None, request, Generation(text="NO TABLES."), 1.0)
    assert none.status == "succeeded" and none.tables == []
    table = "```markdown\n| Item | Qty |\n| --- | --- |\n| Bolt | 4 |\n```"
    found = tiny_engine._page_result(pages[0], "tables", None, request, Generation(text=table), 1.0)
    assert found.status == "succeeded" and found.tables[0].rows == [["Item", "Qty"], ["Bolt", "4"]]
    assert found.raw_output is None


def test_multi_image_request_generates(tiny_engine, pages):
    request = GenerationRequest(tiles=[tiny_engine.tile(p.image) for p in pages], task="extract",
                                schema=get_registry().get("invoice"), max_new_tokens=20)
    assert request.tiles_per_image == [1, 7, 4]
    prompt = tiny_engine.prompt_text(request)
    assert "Image-1: <img>" in prompt and "Image-3: <img>" in prompt
    [out] = tiny_engine.generate_outputs([request], retry_degenerate=False)
    assert out.error is None and out.text.startswith('{"invoice_number"')
    # A cap below the schema's closing reserve is raised to it: the JSON always completes.
    assert len(out.token_ids) > 20
    request.schema.validator.validate(json.loads(out.text))


def test_chat_template_from_processor_file_is_used(tmp_path, tiny_model_dir):
    import json
    import shutil

    model_dir = Path(shutil.copytree(tiny_model_dir, tmp_path / "model"))
    template = (model_dir / "chat_template.jinja").read_text()
    (model_dir / "chat_template.jinja").unlink()
    marked = template.replace("<|im_start|>' + message['role']", "<|im_start|>' + '#' + message['role']")
    (model_dir / "chat_template.json").write_text(json.dumps({"chat_template": marked}))
    engine = InternVLEngine(Settings(_env_file=None, model=str(model_dir), device="cpu")).load()
    page = RenderedPage(number=1, image=Image.new("RGB", (448, 448), "white"))
    prompt = engine.prompt_text(engine.request_for_page(page, "ocr"))
    assert prompt.startswith("<|im_start|>#system\n") and "<|im_start|>#user\n<img>" in prompt


def test_a_forced_length_writes_exactly_that_many_tokens(tiny_engine, pages):
    """force_new_tokens (benchmarks): every row writes exactly N tokens: no EOS before, and no
    loop stop (the same blank page unforced is stopped by the repetition guard)."""
    engine = engine_with(tiny_engine, repetition_guard_span=16, max_new_tokens_ocr=48)
    blank = RenderedPage(number=1, image=Image.new("RGB", (1275, 1650), "white"))
    free = engine.generate_outputs([engine.request_for_page(blank, "ocr")], retry_degenerate=False)[0]
    assert free.finish_reason in ("repetition", "eos") and len(free.token_ids) < 48, free
    requests = [engine.request_for_page(p, "ocr") for p in [blank, *pages[:2]]]
    for request in requests:
        request.force_new_tokens = 48
    outputs = engine.generate_outputs(requests, retry_degenerate=False)
    assert [len(o.token_ids) for o in outputs] == [48, 48, 48]
    assert all(o.finish_reason == "length" for o in outputs)
    assert not any(t in engine.eos_token_ids for o in outputs for t in o.token_ids)
