"""benchmarks/inference.py, run as users run it: at a forced output length, every page must
really write that many tokens, and the output says so with output tokens/s and TTFT.

(Its vLLM half runs in tests/test_vllm_server.py, against that module's server.)
"""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from docproc.base.settings import REPO_ROOT

BENCHMARK = REPO_ROOT / "benchmarks" / "inference.py"


def run_benchmark(*args: str, timeout: float = 300) -> str:
    done = subprocess.run([sys.executable, str(BENCHMARK), *args], cwd=REPO_ROOT, capture_output=True, text=True,
                          timeout=timeout)  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done.stdout


def engine_report(output: str, name: str, tokens: int, pages: int) -> dict[str, float]:
    """The numbers the benchmark printed for ``name``; its counted tokens checked."""
    counted = re.search(rf"^{re.escape(name)}: output tokens counted per page: \[([\d, ]+)\]", output, re.M)
    assert counted, output
    assert [int(n) for n in counted.group(1).split(",")] == [tokens] * pages, counted.group(0)
    summary = re.search(
        rf"^{re.escape(name)}: {pages} pages at {tokens} new tokens per page on cpu: ([\d.]+) pages/s, "
        rf"([\d.]+) output tokens/s, TTFT p50 ([\d.]+) s, p99 ([\d.]+) s$", output, re.M)
    assert summary, output
    pages_s, tokens_s, p50, p99 = (float(v) for v in summary.groups())
    assert pages_s > 0 and p50 > 0 and p99 >= p50
    assert tokens_s == pytest.approx(pages_s * tokens, rel=0.02)
    return {"pages_s": pages_s, "tokens_s": tokens_s, "ttft_p50": p50, "ttft_p99": p99}


def test_the_inference_benchmark_forces_and_counts_64_tokens_per_page_on_the_cpu():
    output = run_benchmark("--device", "cpu", "--new-tokens", "64", "--pages", "4", "--engine", "inprocess")
    assert "output length: 64 new tokens per page" in output
    assert re.search(r"^each row: cpu, 64 new tokens per page", output, re.M), output
    engine_report(output, "inprocess (b) docproc batched", 64, 4)
    row = re.search(r"^inprocess \(b\) docproc batched\s+cpu\s+64\s+[\d.]+\s+[\d.]+\s+[\d.]+\s+[\d.]+\s+[\d.]+\s+n/a$",
                    output, re.M)
    assert row, output  # the table row: 64 tokens a page, MFU n/a on the CPU
