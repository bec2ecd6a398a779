"""The constrained-decoding proof: noise in, schema-valid JSON out, for every schema and page.

The tiny InternVL has random weights: left free, its ``extract`` output is noise.
Constrained by the schema's grammar, with the closing order taking over when the
row's budget runs low (workers/engines/json_constraint.py), every output must
parse and validate against the ORIGINAL schema (formats included) on pages of
different sizes and tile counts, within the row's token budget. A model-free
random walk checks the closing reserve bound itself from many random states.
"""

from __future__ import annotations

import datetime as dt
import io
import json
import random
import re

import builders
import numpy as np
import pytest
from PIL import Image
from transformers import AutoTokenizer

from docproc.base.settings import Settings
from docproc.jobs.inputs import open_document
from docproc.jobs.schemas import get_registry
from workers.engines.internvl import InternVLEngine
from workers.engines.json_constraint import JsonSchemaConstraint
from workers.engines.schema_bounds import (
    DATE_PATTERN,
    UnboundedSchema,
    closing_reserve,
    grammar_schema,
)
from workers.pages import RenderedPage
from workers.pipeline import Engines, process_document
from workers.render import render_pages

SCHEMAS = [s.name for s in get_registry().latest()]  # a bare name: the latest version
# ... plus every older version still served by key (invoice@1): the model proof and the reserve check cover all
ALL_VERSIONS = SCHEMAS + [s.key for s in get_registry() if s is not get_registry().get(s.name)]
FREE_TOKENS = 40  # each row's budget is its schema's closing reserve + this: the model writes, then it closes


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """The tiny model's matmuls gain nothing from threads; on a shared CPU the extra threads
    only spin (3x the CPU time measured). Restored afterwards."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _image_page(number: int, png: bytes) -> RenderedPage:
    return RenderedPage(number=number, image=Image.open(io.BytesIO(png)).convert("RGB"))


@pytest.fixture(scope="module")
def pages() -> list[RenderedPage]:
    """1 tile (square), 4 tiles (wide strip), 7 tiles (A4 scan) and a born-digital invoice page
    (its text layer goes into the prompt as a hint)."""
    settings = Settings(_env_file=None)
    with open_document(builders.invoice_pdf(), settings=settings) as doc:
        [invoice] = list(render_pages(doc, [1], settings))
    out = [_image_page(1, builders.png_image(448, 448)), _image_page(2, builders.png_image(1344, 448)),
           _image_page(3, builders.png_image(1240, 1754)), invoice]
    invoice.number = 4
    return out


def reserve(name: str) -> int:
    return closing_reserve(grammar_schema(get_registry().get(name).model_schema()))


@pytest.fixture(scope="module")
def proof_engine(tiny_engine) -> InternVLEngine:
    """The loaded tiny model (no reload), extract budget above the receipt's closing reserve."""
    budget = reserve("receipt") + FREE_TOKENS
    overrides = {"max_new_tokens_extract": budget, "max_new_tokens_per_tile": budget}
    return InternVLEngine.from_model(tiny_engine.model, tiny_engine.tokenizer,
                                     tiny_engine.settings.model_copy(update=overrides), model_id="tiny")


@pytest.mark.parametrize("name", ALL_VERSIONS)  # every file in extraction_schemas/, invoice@1 too
def test_random_weights_give_schema_valid_json_for_every_schema_and_page(proof_engine, pages, name):
    schema = get_registry().get(name)
    requests = [proof_engine.request_for_page(p, "extract", schema) for p in pages]
    assert sorted(r.n_tiles for r in requests[:3]) == [1, 4, 7]
    budget = reserve(name) + FREE_TOKENS
    for r in requests:
        r.max_new_tokens = budget
    outputs = proof_engine.generate_outputs(requests, retry_degenerate=False)
    for page, out in zip(pages, outputs):
        assert out.error is None and out.finish_reason == "eos", (page.number, out.finish_reason, out.text)
        value = json.loads(out.text)  # the raw model output: no repair, no normalisation
        errors = [e.message for e in schema.validator.iter_errors(value)]  # the ORIGINAL schema, formats too
        assert errors == [], (page.number, errors, out.text)
        assert len(out.token_ids) <= budget


def test_unconstrained_output_of_the_same_model_is_noise(tiny_engine, pages):
    engine = InternVLEngine.from_model(tiny_engine.model, tiny_engine.tokenizer,
                                       tiny_engine.settings.model_copy(update={"constrained_decoding": False}))
    schema = get_registry().get("invoice")
    outputs = engine.generate_outputs([engine.request_for_page(p, "extract", schema) for p in pages[:2]],
                                      retry_degenerate=False)
    for out in outputs:
        with pytest.raises(ValueError):
            json.loads(out.text)


def test_a_budget_below_the_reserve_is_raised_and_the_json_still_closes(tiny_engine, pages):
    # tiny_settings give extract 32 tokens: far too few for any complete invoice
    schema = get_registry().get("invoice")
    [result] = tiny_engine.process(pages[:1], "extract", schema)
    assert result.status == "succeeded", result.error
    assert not list(schema.validator.iter_errors(result.fields))


def test_a_settings_budget_leaves_the_model_free_tokens_before_the_closing(tiny_engine, pages):
    # a one-tile page's budget from the settings is below invoice@2's reserve: it is raised to
    # reserve + extract_min_free_tokens (the model writes, then the closer finishes the JSON)
    free = 40
    engine = InternVLEngine.from_model(tiny_engine.model, tiny_engine.tokenizer,
                                       tiny_engine.settings.model_copy(update={"extract_min_free_tokens": free}))
    schema = get_registry().get("invoice@2")
    request = engine.request_for_page(pages[0], "extract", schema)
    assert request.n_tiles == 1 and engine.budget(request) < reserve("invoice@2")
    budgets = [engine.budget(request)]
    assert engine._grammars([request], budgets) is not None and budgets == [reserve("invoice@2") + free]
    [out] = engine.generate_outputs([request], retry_degenerate=False)
    assert out.finish_reason == "eos" and not list(schema.validator.iter_errors(json.loads(out.text)))
    assert len(out.token_ids) <= reserve("invoice@2") + free
    # an explicit budget is the caller's: raised to the reserve only
    request.max_new_tokens = 10
    budgets = [engine.budget(request)]
    engine._grammars([request], budgets)
    assert budgets == [reserve("invoice@2")]


def test_whole_document_through_process_document(proof_engine):
    result = process_document(builders.scanned_pdf(), filename="scan.pdf", task="extract", schema="receipt",
                              engine="internvl", settings=proof_engine.settings,
                              engines=Engines(proof_engine.settings, _internvl=proof_engine))
    assert result.status == "succeeded" and result.fields is not None
    assert not list(get_registry().get("receipt").validator.iter_errors(result.fields))


# --- the closing reserve, without a model ---------------------------------------------------


@pytest.fixture(scope="module")
def constraint(tiny_model_dir) -> JsonSchemaConstraint:
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    stop = [tokenizer.convert_tokens_to_ids("<|im_end|>")]
    return JsonSchemaConstraint(tokenizer, vocab_size=len(tokenizer), stop_token_ids=stop)


@pytest.mark.parametrize("name", ALL_VERSIONS)
def test_closing_from_random_states_fits_the_reserve(constraint, name):
    """A random 'model' writes k tokens (any the grammar allows), then the closing order
    finishes: it never needs more than the reserve, and the result is valid."""
    import xgrammar as xgr

    schema = get_registry().get(name)
    compiled = constraint.compile(schema.model_schema_json())
    decoded = constraint.tokenizer_info.decoded_vocab
    rng = random.Random(name)
    by_byte = {piece: t for t, piece in enumerate(decoded) if len(piece) == 1}
    structural = np.array([by_byte[b] for b in (b'"', b"[", b"{", b",", b"0", b"7", b"-", b".") if b in by_byte])
    worst = 0
    for trial in range(60):
        matcher = xgr.GrammarMatcher(compiled.grammar)
        bitmask = xgr.allocate_token_bitmask(1, constraint.vocab_size)
        text, steps = b"", rng.randrange(0, 600)
        for _ in range(steps):
            if matcher.is_terminated():
                break
            matcher.fill_next_token_bitmask(bitmask, 0)
            bits = np.unpackbits(bitmask[0].numpy().view(np.uint8), bitorder="little")[: constraint.vocab_size]
            shaping = structural[bits[structural] == 1]  # half the time: open, separate, number
            token = int(rng.choice(shaping if shaping.size and rng.random() < 0.5 else np.flatnonzero(bits)))
            if token in constraint.closer.stop_ids:
                break
            assert matcher.accept_token(token)
            text += decoded[token]
        closing = 0
        while not matcher.is_terminated():
            matcher.fill_next_token_bitmask(bitmask, 0)
            token = constraint.closer.choose(bitmask[0])
            closing += 1
            assert matcher.accept_token(token)
            text += decoded[token] if token not in constraint.closer.stop_ids else b""
        assert closing <= compiled.reserve, (trial, closing, compiled.reserve)
        worst = max(worst, closing)
        value = json.loads(text.decode("utf-8", errors="replace"))  # as the tokenizer decodes
        assert not list(schema.validator.iter_errors(value)), text
    print(f"{name}: longest closing {worst} tokens, reserve {compiled.reserve}")


def test_date_pattern_admits_exactly_the_valid_dates():
    pattern = re.compile(DATE_PATTERN)
    years = [*range(0, 13), *range(96, 105), *range(396, 405), *range(1896, 1905), *range(1996, 2005),
             *range(2096, 2105), *range(2396, 2405), 9996, 9999]
    for y in years:
        for m in range(0, 14):
            for d in range(0, 33):
                s = f"{y:04d}-{m:02d}-{d:02d}"
                try:
                    dt.date.fromisoformat(s)
                    valid = True
                except ValueError:
                    valid = False
                assert valid == bool(pattern.fullmatch(s)), s


def test_a_pattern_of_no_maximum_width_has_no_reserve():
    schema = {"type": "object", "additionalProperties": False, "required": ["a"],
              "properties": {"a": {"type": "string", "pattern": "^[A-Z]+$"}}}
    with pytest.raises(UnboundedSchema):
        closing_reserve(schema)
