"""The whole pipeline and the CLI with ``--engine internvl`` on the tiny real InternVL.

The tiny model's weights are random, so its output is noise: these tests check that
every page goes through the model and comes back honestly reported (valid, or
``invalid_output``/``degenerate_output`` with the raw text kept), never lost.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import builders
from conftest import free_port
from workers.pipeline import Engines, process_document

MODEL_CODES = {"invalid_output", "degenerate_output"}


def _honest(page) -> None:
    if page.status == "succeeded":
        assert page.error is None
    else:
        assert page.error.code in MODEL_CODES, page.error
        assert page.raw_output is not None


def test_extract_on_invoice_pdf(tiny_settings, tiny_engine):
    engines = Engines(tiny_settings, _internvl=tiny_engine)
    result = process_document(
        builders.invoice_pdf(), task="extract", schema="invoice", engine="internvl",
        settings=tiny_settings, engines=engines,
    )
    (page,) = result.pages
    assert page.engine == "internvl" and page.tiles == 7  # A4: 2x3 grid + thumbnail
    _honest(page)
    assert result.schema_name == "invoice" and result.model == tiny_engine.model_id
    if page.status == "succeeded":
        assert result.fields == page.fields and set(result.provenance) == set(page.fields)
    else:
        assert result.status == "failed" and result.fields == {}
    assert {"render", "tile", "infer"} <= set(page.timings_ms)


def test_auto_routes_scans_to_the_model_and_text_pages_to_the_text_layer(tiny_settings, tiny_engine):
    # page 1 born-digital, page 2 a scan: one PDF with both
    import pymupdf

    doc = pymupdf.open(stream=builders.invoice_pdf(), filetype="pdf")
    doc.insert_pdf(pymupdf.open(stream=builders.scanned_pdf(), filetype="pdf"))
    engines = Engines(tiny_settings, _internvl=tiny_engine)
    result = process_document(doc.tobytes(), task="ocr", engine="auto", settings=tiny_settings, engines=engines)
    assert [p.engine for p in result.pages] == ["text", "internvl"]
    assert result.pages[0].status == "succeeded" and builders.INVOICE_NUMBER in result.pages[0].text
    assert result.pages[1].tiles >= 1
    assert result.engine == "internvl+text"


def test_cli_internvl_end_to_end_on_pdf_and_tiff(tmp_path, tiny_model_dir):
    (tmp_path / "invoice.pdf").write_bytes(builders.invoice_pdf())
    (tmp_path / "scan.tiff").write_bytes(builders.tiff_multipage(3))
    env = dict(os.environ, DOCPROC_MODEL=str(tiny_model_dir), DOCPROC_DEVICE="cpu",
               DOCPROC_MAX_NEW_TOKENS_OCR="16", DOCPROC_MAX_NEW_TOKENS_EXTRACT="24")
    out = tmp_path / "out"
    for name, task in (("invoice.pdf", ["--task", "extract", "--schema", "invoice"]), ("scan.tiff", ["--task", "ocr"])):
        proc = subprocess.run(
            [sys.executable, "-m", "docproc", "process", str(tmp_path / name), *task,
             "--engine", "internvl", "--out", str(out), "--no-progress"],
            capture_output=True, text=True, timeout=300, env=env,
        )
        assert "Traceback" not in proc.stderr, proc.stderr
        doc = json.loads((out / f"{name.rsplit('.', 1)[0]}.json").read_text())
        assert doc["engine"] == "internvl" and doc["model"] == str(tiny_model_dir)
        assert len(doc["pages"]) == doc["document"]["page_count"]
        for page in doc["pages"]:
            assert page["engine"] == "internvl" and page["tiles"] >= 1
            if page["status"] == "failed":
                assert page["error"]["code"] in MODEL_CODES and page["raw_output"] is not None
        assert proc.returncode == (1 if doc["status"] == "failed" else 0)
    assert json.loads((out / "scan.json").read_text())["document"]["media_type"] == "image/tiff"


def test_cli_missing_model_names_the_setting(tmp_path):
    (tmp_path / "scan.png").write_bytes(builders.png_image())
    env = dict(os.environ, DOCPROC_MODEL=str(tmp_path / "no-model-here"))
    proc = subprocess.run(
        [sys.executable, "-m", "docproc", "process", str(tmp_path / "scan.png"), "--engine", "auto",
         "--out", str(tmp_path / "out"), "--no-progress"],
        capture_output=True, text=True, timeout=120, env=env,
    )
    assert proc.returncode == 1
    assert "model_unavailable" in proc.stderr and "DOCPROC_MODEL" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_cli_with_a_model_that_cannot_load_fails_its_pages_fast_and_goes_on(tmp_path):
    """A Hub id this machine cannot reach (no network, not cached): the scan's pages fail with
    model_unavailable at once (no Hub retries), its JSON is written, and the next file is processed."""
    (tmp_path / "scan.png").write_bytes(builders.png_image())
    (tmp_path / "invoice.pdf").write_bytes(builders.invoice_pdf())
    dead_hub = f"http://127.0.0.1:{free_port()}"  # nothing listens: the Hub is out of reach
    env = dict(os.environ, DOCPROC_MODEL="docproc-tests/no-such-model", HF_ENDPOINT=dead_hub,
               HF_HOME=str(tmp_path / "hf"))
    env.pop("HF_HUB_OFFLINE", None)
    out = tmp_path / "out"
    started = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "docproc", "process", str(tmp_path / "scan.png"), str(tmp_path / "invoice.pdf"),
         "--engine", "auto", "--out", str(out), "--no-progress"],
        capture_output=True, text=True, timeout=120, env=env,
    )
    took = time.monotonic() - started
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert "model_unavailable" in proc.stderr and "DOCPROC_MODEL" in proc.stderr
    scan = json.loads((out / "scan.json").read_text())
    assert scan["status"] == "failed" and scan["error"]["code"] == "model_unavailable"
    assert [p["error"]["code"] for p in scan["pages"]] == ["model_unavailable"]
    assert "cannot be reached" in scan["pages"][0]["error"]["message"]
    invoice = json.loads((out / "invoice.json").read_text())
    assert invoice["status"] == "succeeded" and invoice["engine"] == "text"
    assert took < 20, f"took {took:.1f} s"
