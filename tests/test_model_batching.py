"""Cross-job batching on the tiny real InternVL: pages of several jobs (tasks, schemas and tile
counts differ) in one batched call, and faults injected into the real model's ``generate``.

Fault injection wraps the loaded model's own ``generate`` (the real model still runs
whenever the wrapper lets the call through): a RuntimeError for a marked page, a
``torch.OutOfMemoryError`` for batches larger than k. Nothing of the model is mocked.
"""

from __future__ import annotations

import pytest
import torch
from PIL import Image, ImageDraw
from prometheus_client import REGISTRY
from test_jobflow import flow, flow_settings, model_flow  # noqa: F401 - fixtures

from docproc.jobs.schemas import get_registry
from workers.engines.internvl import CPU_TILE_BUDGET, InternVLEngine
from workers.pages import RenderedPage

POISON = "POISON-PAGE"


def page(number: int, width: int, height: int, text: str | None = None) -> RenderedPage:
    im = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(im)
    draw.rectangle((8, 8, width - 9, height - 9), outline="black", width=3)
    draw.text((30, 30), f"page {number}", fill="black", font_size=24)
    return RenderedPage(number=number, image=im, text=text, has_text_layer=text is not None)


@pytest.fixture(scope="module")
def engine(tiny_engine) -> InternVLEngine:
    """The loaded tiny model; one batch may hold every page of these tests."""
    settings = tiny_engine.settings.model_copy(update={"batch_size": 16, "batch_tile_budget": 128,
                                                       "model_page_attempts": 2})
    return InternVLEngine.from_model(tiny_engine.model, tiny_engine.tokenizer, settings,
                                     model_id=tiny_engine.model_id)


@pytest.fixture(scope="module")
def items(tiny_settings):
    """Pages of three jobs: ocr (1 and 7 tiles), tables (5 tiles), extract receipt (4 tiles)."""
    receipt = get_registry(tiny_settings).get("receipt")
    return [
        (page(1, 448, 448), "ocr", None),
        (page(2, 1240, 1754), "ocr", None),
        (page(1, 896, 896), "tables", None),
        (page(1, 1344, 448), "extract", receipt),
    ]


@pytest.fixture(scope="module")
def plain(items):
    """The ocr and tables pages (1, 7 and 5 tiles): the fault tests' batch. (An extract row's
    grammar keeps its JSON closable, which makes its budget, and every row's, long.)"""
    return items[:3]


def outputs(results) -> list[tuple]:
    return [(r.status, r.text, r.tables, r.fields, r.raw_output, r.tiles) for r in results]


def one_by_one(engine: InternVLEngine, items) -> list:
    return [engine.process_pages([item])[0] for item in items]


def metric(name: str, **labels) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def wrap_generate(engine: InternVLEngine, monkeypatch, hook) -> list[int]:
    """Wrap the real model's generate: ``hook(rows, prompts)`` runs first (it may raise).
    Returns the list of batch sizes of every call."""
    real = engine.model.generate
    calls: list[int] = []

    def generate(*args, **kwargs):
        ids = kwargs["input_ids"]
        prompts = [engine.tokenizer.decode(row, skip_special_tokens=True) for row in ids]
        calls.append(int(ids.shape[0]))
        hook(int(ids.shape[0]), prompts)
        return real(*args, **kwargs)

    monkeypatch.setattr(engine.model, "generate", generate)
    return calls


def test_pages_of_several_jobs_in_one_batch_equal_one_by_one(engine, items, monkeypatch):
    alone = one_by_one(engine, items)
    calls = wrap_generate(engine, monkeypatch, lambda n, prompts: None)
    pages_before = metric("docproc_model_batch_pages_sum")
    tokens_before = metric("docproc_tokens_generated_total", engine="internvl")

    batched = engine.process_pages(items)

    assert [r.tiles for r in batched] == [1, 7, 5, 4]  # different tile counts (with thumbnails), one call
    assert calls == [4]
    assert outputs(batched) == outputs(alone)
    assert [r.page for r in batched] == [1, 2, 1, 1]
    assert metric("docproc_model_batch_pages_sum") - pages_before == 4
    assert metric("docproc_tokens_generated_total", engine="internvl") > tokens_before


def test_an_injected_failure_fails_only_its_page(engine, plain, monkeypatch):
    poisoned = list(plain)
    poisoned[1] = (page(2, 1240, 1754, text=POISON), "ocr", None)
    healthy = one_by_one(engine, [poisoned[i] for i in (0, 2)])

    def hook(n, prompts):
        if any(POISON in p for p in prompts):
            raise RuntimeError("injected fault")

    calls = wrap_generate(engine, monkeypatch, hook)
    results = engine.process_pages(poisoned)

    assert results[1].status == "failed" and results[1].error.code == "inference_error"
    assert "injected fault" in results[1].error.message and "after 2 attempts" in results[1].error.message
    assert outputs([results[i] for i in (0, 2)]) == outputs(healthy)
    # bounded: the batch of 3, its halves (1 + 2), the 2 split again, the page alone twice
    assert calls[0] == 3 and len(calls) <= 1 + 2 + 2 + 2


def test_out_of_memory_above_k_pages_splits_and_every_page_succeeds(engine, plain, monkeypatch):
    alone = one_by_one(engine, plain)
    k = 1

    def hook(n, prompts):
        if n > k:
            raise torch.OutOfMemoryError("CUDA out of memory (injected)")

    splits_before = metric("docproc_model_batch_splits_total", reason="oom")
    calls = wrap_generate(engine, monkeypatch, hook)
    results = engine.process_pages(plain)

    assert outputs(results) == outputs(alone)
    assert all(r.error is None or r.error.code != "inference_error" for r in results)
    assert calls == [3, 1, 2, 1, 1]  # 3 -> 1 + 2 -> 1 + 1 + 1
    assert metric("docproc_model_batch_splits_total", reason="oom") - splits_before == 2


def test_a_page_that_always_raises_fails_alone_after_bounded_attempts(engine, plain, monkeypatch):
    poisoned = [(page(9, 448, 448, text=POISON), "ocr", None), *plain]
    single_poison_calls = []

    def hook(n, prompts):
        if any(POISON in p for p in prompts):
            if n == 1:
                single_poison_calls.append(1)
            raise RuntimeError("this page always breaks the model")

    wrap_generate(engine, monkeypatch, hook)
    results = engine.process_pages(poisoned)

    assert len(single_poison_calls) == engine.settings.model_page_attempts == 2
    assert results[0].status == "failed" and results[0].error.code == "inference_error"
    assert [r.error.code if r.error else None for r in results[1:]].count("inference_error") == 0


def test_memory_guard_budget_is_the_setting_on_the_cpu_and_costs_are_positive(engine):
    assert engine.tile_budget() == engine.settings.batch_tile_budget
    assert engine.tile_cost_bytes() > 0
    auto = InternVLEngine.from_model(engine.model, engine.tokenizer,
                                     engine.settings.model_copy(update={"batch_tile_budget": 0}))
    assert auto.tile_budget() == CPU_TILE_BUDGET  # the default: no free-memory reading on a CPU


# --------------------------------------------------------------------- run_pages: the worker's plain function


def test_run_pages_reads_pages_of_several_jobs_and_records_each_to_its_job(model_flow):
    """On a real Redis and moto S3: four pages of two jobs in one call; a page leased by a live
    owner is kept (not run, not counted), a page delivered before runs in a call of its own."""
    import builders

    from docproc.jobs.leases import PageLeases
    from workers.model_batching import PageWork, run_pages

    flow = model_flow
    jobs = [flow.submit(builders.tiff_multipage(2, sizes=[(300, 420), (900, 300)]), filename=f"s{j}.tiff",
                        task="ocr") for j in range(3)]
    for job in jobs:
        flow.intake(job.id)
    works = [PageWork(job_id, page) for job_id, page, queue in flow.sent]
    assert len(works) == 6 and {q for *_, q in flow.sent} == {"gpu"}
    leases = PageLeases(flow.store.redis, ttl_s=5)
    owner = leases.acquire(jobs[2].id, 2)  # another live worker runs this page
    flow.store.page_started(jobs[1].id, 1)  # an earlier delivery of this page was lost with its worker
    seen = []

    outcomes = run_pages(works, settings=flow.settings, store=flow.store, storage=flow.storage,
                         engines=flow.engines, leases=leases, on_outcome=seen.append)

    by_page = {(o.work.job_id, o.work.page): o for o in outcomes}
    assert [o.state for o in outcomes] == ["recorded"] * 5 + ["leased"]
    assert seen[0].state == "leased" and sorted(map(id, seen)) == sorted(map(id, outcomes))  # each as it settles
    assert by_page[(jobs[1].id, 1)].batch == 1  # the suspect alone
    assert sorted(o.batch for o in outcomes if o.state == "recorded") == [1, 4, 4, 4, 4]
    assert [flow.store.load(j.id).state for j in jobs] == ["succeeded", "succeeded", "running"]
    assert [p.attempts for p in flow.store.pages(jobs[1].id)] == [2, 1]
    assert [p.attempts for p in flow.store.pages(jobs[2].id)] == [1, 0]  # the leased page did not start

    owner.release()
    again = run_pages([works[5], works[0]], settings=flow.settings, store=flow.store, storage=flow.storage,
                      engines=flow.engines, leases=leases)
    assert [o.state for o in again] == ["recorded", "skipped"]  # job 0 has ended: its stale delivery is dropped
    assert flow.store.load(jobs[2].id).state == "succeeded"
    assert not flow.store.redis.keys("docproc:lease:*")
