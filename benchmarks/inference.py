"""Inference throughput at a real output length: the in-process engine and vLLM on the same pages.

    python benchmarks/inference.py [--model-size tiny|1b|2b|8b] [--device auto|cpu|cuda]
                                   [--engine inprocess[,vllm]] [--new-tokens N]
                                   [--pages 16] [--page mixed|letter] [--repeats 3]
                                   [--seed-loop | --no-seed-loop] [--batch-size 16] [--tile-budget 0]
                                   [--max-tiles 12] [--dtype auto] [--task ocr|tables]
                                   [--vllm-url URL | --vllm-python PATH] [--vllm-in-flight N]

Flags:

``--new-tokens N``
    Every page writes exactly N output tokens (a minimum and a maximum of N: EOS is
    suppressed until then), so that every engine does the same work and random weights do
    not stop at random points. Default: 750 for the real sizes (olmOCR's budget for a
    full page), 64 for ``tiny``. ``0``: no forcing, each page stops at EOS or at its
    ``--max-new-tokens`` budget (the numbers then depend on where random weights stop).
    The tokens each page really generated are counted and printed; the script fails
    when a page wrote another number.
``--engine LIST``
    Comma-separated engines to run, one after the other, on the same pages:
    ``inprocess`` (``workers.engines.internvl.InternVLEngine``, transformers ``generate``
    behind docproc's batcher) and ``vllm`` (``workers.engines.served.ServedEngine``
    against a vLLM server, every page in flight at once with ``asyncio.gather``, as the
    model worker's feeder sends them). Default ``inprocess``.
``--seed-loop`` / ``--no-seed-loop``
    For ``inprocess``: also time (a) the model card's seed loop (one ``model.chat``-like
    call per page, batch 1: ``load_image``, prompt, ``generate``;
    benchmarks/reference_internvl.py) beside (b) docproc's batched path, and compare
    their outputs token for token (in float32 they must be identical; in bf16/fp16 the
    number of identical pages is printed). Default: off (at 750 tokens, batch 1 takes
    minutes on a GPU; on the 2-core CPU it triples the tiny run's time).
``--page mixed|letter``
    ``mixed``: A4, US Letter, receipts, square photos and landscape pages (default for
    ``tiny``); ``letter``: every page US Letter at 150 dpi (1275 x 1650: 12 tiles and the
    thumbnail, 13 tiles; the issue's yardstick, default for the real sizes).
``--vllm-url URL``
    A running vLLM server (``http://host:port/v1``) serving the same model
    (``--vllm-model``, default: the first model the server lists). Without it the script
    starts one itself (``workers.model_server.vllm_command`` / ``VLLMProcess``) from
    ``--vllm-python`` (default: the CPU build of ``scripts/vllm-venv.sh``; give a GPU
    vLLM's python for GPU runs), serving ``tiny``'s checkpoint directory, or, for the
    real sizes, the random weights written to disk (``save_checkpoint``). On the CPU it
    runs with ``VLLM_CPU_KVCACHE_SPACE=1 --dtype float32``, on a GPU with the bf16/fp16
    dtype of the in-process run; ``--max-model-len 8192`` and ``--vllm-args`` always.
    The server's start is timed apart, not in the throughput. On a GPU, the in-process
    model is freed before the server starts.
``--vllm-in-flight N``
    Pages in flight at the server (and its ``--max-num-seqs``); default: all the pages.

Reported per engine (and per path): seconds (median of ``--repeats`` timed runs after a
warm-up; every run reads pages of its own, of the same sizes with other words, so that
vLLM's prefix and encoder caches cannot serve a run from an earlier one's images), pages/s, output tokens per page (counted), output tokens/s, time to first
token p50 and p99, and on a GPU the model FLOP utilisation (MFU) against the card's bf16
dense peak (``torch.cuda.get_device_name``: H100 SXM 989 TFLOP/s, H100 PCIe 756, H200
989, A100 312, L4 121; ``n/a`` on the CPU or an unknown card). Every row names the device
and the output length it is for.

* Time to first token: seconds from the start of the timed run, when every page is
  submitted at once, to the page's first output token (TTFT of all the pages of all
  runs pooled). In-process, a ``StoppingCriteria`` added to each ``generate`` call
  records its first decoding step, and every page of that batched call gets that time
  (later batches wait for earlier ones). vLLM: when the page's request was sent
  (client-side PNG preparation included) plus the stream's first text
  (``Streamed.first_token_s``).
* FLOPs: dense matmul FLOPs from the model's parameters, 2 x the text model's (the
  input embedding excluded, the LM head included) per prompt and per output token, plus
  2 x the vision tower's per patch token of every tile and 2 x the projector's per image
  token; attention's own FLOPs are left out. The prompt tokens are the in-process
  engine's (the server counts the same: tile parity).

``--model-size tiny`` builds the tiny random checkpoint in a temp dir and loads it
through ``InternVLEngine.load()``; ``1b``/``2b``/``8b`` build random weights of
InternVL3-1B/2B/8B's real architecture and size in memory (for GPU runs; their outputs
are noise, their cost is real; the tokenizer's vocabulary is filled to the real size so
that every id decodes). The repetition guard is off (random weights loop, and the guard
would stop pages early).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw
from transformers import StoppingCriteria, StoppingCriteriaList

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # docproc / workers from this checkout

from benchmarks.reference_internvl import load_image_pixels  # noqa: E402
from docproc.base.settings import REPO_ROOT, Settings  # noqa: E402
from workers.engines.internvl import InternVLEngine, choose_runtime  # noqa: E402
from workers.engines.tiny_internvl import (  # noqa: E402
    build_tiny_internvl,
    internvl_config,
    random_internvl,
    real_size_tokenizer,
    save_checkpoint,
)
from workers.pages import RenderedPage  # noqa: E402

# (width, height) in pixels: A4 and Letter at 150 dpi, a receipt, a photo, a landscape page.
PAGE_SIZES = [(1240, 1754), (1275, 1650), (576, 1600), (900, 900), (1754, 1240), (1240, 1754),
              (448, 448), (1600, 700)]
LETTER = (1275, 1650)  # US Letter at 150 dpi: 12 tiles + the thumbnail
DEFAULT_NEW_TOKENS = {"tiny": 64}  # the real sizes: 750, olmOCR's budget for a full page
REAL_NEW_TOKENS = 750
# bf16 dense tensor peak, TFLOP/s, by words of torch.cuda.get_device_name() (first match wins)
BF16_PEAK_TFLOPS = (("H100 PCIe", 756.0), ("H100", 989.0), ("H200", 989.0), ("A100", 312.0), ("L4", 121.0))


def make_pages(n: int, seed: int = 0, layout: str = "mixed") -> list[RenderedPage]:
    """``n`` text-like pages: of mixed sizes (cycling through PAGE_SIZES), or all US Letter."""
    rng = np.random.default_rng(seed)
    pages = []
    for i in range(n):
        width, height = LETTER if layout == "letter" else PAGE_SIZES[i % len(PAGE_SIZES)]
        im = Image.new("RGB", (width, height), "white")
        draw = ImageDraw.Draw(im)
        draw.rectangle((10, 10, width - 11, height - 11), outline="black", width=3)
        for y in range(40, height - 40, 36):
            words = " ".join(f"w{int(v)}" for v in rng.integers(0, 9999, 6))
            draw.text((30, y), f"Page {i + 1}: {words}", fill="black", font_size=22)
        pages.append(RenderedPage(number=i + 1, image=im))
    return pages


def sync(device: str) -> None:
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


# --- measurements ---------------------------------------------------------------------


@dataclass
class Run:
    """One timed run of one engine / path over all the pages."""

    seconds: float
    outputs: list[list[int]]  # the output token ids of each page
    ttft_s: list[float]  # per page: seconds from the run's start to its first output token
    server_tokens: list[int] | None = None  # vLLM: completion tokens by the server's usage


@dataclass
class Row:
    name: str
    runs: list[Run]
    flops: float | None = None  # one run's FLOPs

    @property
    def median(self) -> Run:
        return sorted(self.runs, key=lambda r: r.seconds)[(len(self.runs) - 1) // 2]

    @property
    def lengths(self) -> list[int]:
        return [len(o) for o in self.runs[0].outputs]


class _FirstStep(StoppingCriteria):
    """Stops nothing; records when ``generate`` finished its first decoding step."""

    def __init__(self, device: str) -> None:
        self.device = device
        self.at: float | None = None

    def __call__(self, input_ids: torch.LongTensor, scores=None, **kwargs) -> torch.BoolTensor:
        if self.at is None:
            sync(self.device)
            self.at = time.perf_counter()
        return torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)


class FirstTokenTimes:
    """While active, every ``model.generate`` call gets a :class:`_FirstStep`; ``calls`` holds
    ``(rows, time of the first decoding step)`` of each call (each of its pages gets that time)."""

    def __init__(self, model, device: str) -> None:
        self.model, self.device = model, device
        self.calls: list[tuple[int, float]] = []

    def __enter__(self) -> "FirstTokenTimes":
        generate = self.model.generate

        def timed_generate(*args, stopping_criteria=None, **kwargs):
            first = _FirstStep(self.device)
            criteria = StoppingCriteriaList([*(stopping_criteria or []), first])
            out = generate(*args, stopping_criteria=criteria, **kwargs)
            ids = kwargs["input_ids"] if "input_ids" in kwargs else args[0]
            self.calls.append((int(ids.shape[0]), first.at if first.at is not None else time.perf_counter()))
            return out

        self.model.generate = timed_generate  # an instance attribute over the class's method
        return self

    def __exit__(self, *exc) -> None:
        del self.model.generate

    def take(self, started: float) -> list[float]:
        """Per page of the calls since the last take: its TTFT from ``started``."""
        times = [at - started for rows, at in self.calls for _ in range(rows)]
        self.calls.clear()
        return times


def percentile(values: list[float], q: float) -> float | None:
    return float(np.percentile(values, q)) if values else None


def count_params(module) -> int:
    return sum(p.numel() for p in module.parameters())


@dataclass(frozen=True)
class FlopModel:
    """Dense matmul FLOPs of one page (see the module docstring)."""

    text_params: int  # the language model without its input embedding, plus the LM head
    vision_params: int
    projector_params: int
    patches_per_tile: int  # vision tokens per tile (patches + the class token)
    image_tokens_per_tile: int

    @classmethod
    def of(cls, model) -> "FlopModel":
        inner, config = model.model, model.config
        vision = config.vision_config
        size = vision.image_size[0] if isinstance(vision.image_size, (list, tuple)) else vision.image_size
        patch = vision.patch_size[0] if isinstance(vision.patch_size, (list, tuple)) else vision.patch_size
        text = count_params(inner.language_model) - count_params(inner.language_model.get_input_embeddings())
        return cls(text_params=text + count_params(model.lm_head), vision_params=count_params(inner.vision_tower),
                   projector_params=count_params(inner.multi_modal_projector),
                   patches_per_tile=(size // patch) ** 2 + 1, image_tokens_per_tile=int(config.image_seq_length))

    def page(self, prompt_tokens: int, new_tokens: int, tiles: int) -> float:
        vision = self.vision_params * self.patches_per_tile + self.projector_params * self.image_tokens_per_tile
        return 2.0 * (self.text_params * (prompt_tokens + new_tokens) + vision * tiles)


def bf16_peak_flops(device: str) -> tuple[str, float | None]:
    """(the card's name, its bf16 dense peak in FLOP/s or None) of ``device``; on the CPU (the
    processor, None)."""
    if not str(device).startswith("cuda"):
        return f"CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)", None
    name = torch.cuda.get_device_name(torch.device(device))
    for part, tflops in BF16_PEAK_TFLOPS:
        if re.search(rf"\b{part}\b", name):  # whole words: an L40S is no L4
            return name, tflops * 1e12
    return name, None


# --- the in-process engine --------------------------------------------------------------


def seed_loop(engine: InternVLEngine, pages: list[RenderedPage], task: str,
              force: int | None) -> list[list[int]]:
    """(a) one model.chat-like call per page: load_image, prompt, generate (batch 1)."""
    model, tokenizer = engine.model, engine.tokenizer
    s = engine.settings
    outputs = []
    for page in pages:
        pixel_values = load_image_pixels(page.image, input_size=engine.tile_size, max_num=s.max_tiles)
        pixel_values = pixel_values.to(model.device, dtype=model.dtype)
        n_tiles = int(pixel_values.shape[0])
        # the same prompt docproc builds (system message, template, image tokens)
        prompt = engine.prompt_for(task, [n_tiles])
        ids = tokenizer(prompt, return_tensors="pt", add_special_tokens=False)
        length = {"min_new_tokens": force, "max_new_tokens": force} if force else \
            {"max_new_tokens": engine.max_new_tokens(task, n_tiles)}
        with torch.inference_mode():
            out = model.generate(
                input_ids=ids["input_ids"].to(model.device),
                attention_mask=ids["attention_mask"].to(model.device),
                pixel_values=pixel_values,
                do_sample=False,
                eos_token_id=engine.eos_token_ids,
                pad_token_id=engine.pad_token_id,
                **length,
            )
        new = out[0, ids["input_ids"].shape[1]:].tolist()
        for k, token in enumerate(new):  # cut after the first EOS
            if token in engine.eos_token_ids:
                new = new[: k + 1]
                break
        outputs.append(new)
    return outputs


def docproc_path(engine: InternVLEngine, pages: list[RenderedPage], task: str,
                 force: int | None) -> list[list[int]]:
    """(b) docproc: the model worker's cross-job path: tile each page (the pages of all
    jobs, as pulled from the queue), then batched generation over all of them."""
    requests = [engine.request_for_page(p, task) for p in pages]
    for request in requests:
        request.force_new_tokens = force
    return [g.token_ids for g in engine.generate_outputs(requests, retry_degenerate=False)]


def interleave_jobs(pages: list[RenderedPage], jobs: int) -> list[RenderedPage]:
    """The pages as ``jobs`` documents whose page messages arrive interleaved on the queue
    (job 1 page 1, job 2 page 1, ...): the order the model worker sees them in."""
    size = -(-len(pages) // max(1, jobs))
    docs = [pages[i:i + size] for i in range(0, len(pages), size)]
    return [doc[k] for k in range(max(len(d) for d in docs)) for doc in docs if k < len(doc)]


def timed(fn: Callable[[], list[list[int]]], device: str, firsts: FirstTokenTimes) -> Run:
    sync(device)
    started = time.perf_counter()
    result = fn()
    sync(device)
    return Run(time.perf_counter() - started, result, firsts.take(started))


def run_inprocess(engine: InternVLEngine, warmup: list[RenderedPage], page_sets: list[list[RenderedPage]],
                  args: argparse.Namespace) -> list[Row]:
    device, force = engine.device, args.new_tokens or None
    paths: list[tuple[str, Callable[[list[RenderedPage]], list[list[int]]]]] = []
    if args.seed_loop:
        paths.append(("inprocess (a) seed loop, batch 1", lambda ps: seed_loop(engine, ps, args.task, force)))
    paths.append(("inprocess (b) docproc batched", lambda ps: docproc_path(engine, ps, args.task, force)))
    rows = [Row(name, []) for name, _ in paths]
    with FirstTokenTimes(engine.model, device) as firsts:
        for _, fn in paths:  # warm-up: a page or two through each path
            fn(warmup)
        firsts.take(0.0)
        for pages in page_sets:  # alternating, so that drift hits every path alike
            for row, (_, fn) in zip(rows, paths):
                row.runs.append(timed(lambda: fn(pages), device, firsts))
    return rows


# --- vLLM ---------------------------------------------------------------------------------


def vllm_python() -> str:
    """The CPU vLLM environment's python, built once (~5 min) by scripts/vllm-venv.sh."""
    out = subprocess.run([str(REPO_ROOT / "scripts" / "vllm-venv.sh")], check=True, capture_output=True, text=True)
    return out.stdout.strip().splitlines()[-1]


class StartedServer:
    """A vLLM server this script starts (and stops), its log in a file."""

    def __init__(self, args: argparse.Namespace, settings: Settings, cpu: bool, workdir: Path) -> None:
        from docproc.cli.localservices import free_port
        from workers.model_server import VLLMProcess, vllm_command

        dtype = "float32" if cpu else (args.dtype if args.dtype != "auto" else args.runtime_dtype)
        self.settings = settings.model_copy(update={
            "vllm_python": args.vllm_python or vllm_python(), "vllm_port": free_port(),
            "vllm_args": f"--dtype {dtype} --max-model-len 8192 {args.vllm_args}".strip(),
        })  # fmt: skip
        self.url = f"http://127.0.0.1:{self.settings.vllm_port}/v1"
        self.log = workdir / "vllm.log"
        handler = logging.FileHandler(self.log)
        server_log = logging.getLogger("docproc.vllm")
        server_log.setLevel(logging.INFO)
        server_log.propagate = False
        server_log.addHandler(handler)
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        if cpu:
            env["VLLM_CPU_KVCACHE_SPACE"] = env.get("VLLM_CPU_KVCACHE_SPACE", "1")
        command = vllm_command(self.settings)
        print(f"vllm: starting {' '.join(command[:3])} ... (log: {self.log})", flush=True)
        self.process = VLLMProcess(command, env=env).start()

    def wait(self, timeout_s: float) -> float:
        from workers.model_server import wait_until_ready

        started = time.perf_counter()
        try:
            wait_until_ready(self.url, timeout_s=timeout_s, process=self.process)
        except Exception:
            print("vllm: the server did not start; the end of its log:\n" + self.tail(), file=sys.stderr)
            raise
        return time.perf_counter() - started

    def tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def close(self) -> None:
        self.process.close()


async def vllm_runs(settings: Settings, url: str, model: str, warmup: list[RenderedPage],
                    page_sets: list[list[RenderedPage]], args: argparse.Namespace, in_flight: int) -> list[Run]:
    from workers.engines.served import ServedEngine

    force = args.new_tokens or None
    engine = ServedEngine(settings, url, model=model, max_in_flight=in_flight)

    async def one(page: RenderedPage, started: float):
        sent = time.perf_counter()
        result, done = await engine.read_page(page, args.task, force_tokens=force)
        if result.status != "succeeded" or done is None:
            raise RuntimeError(f"vllm: page {page.number} failed: {result.error}")
        prep_s = result.timings_ms.get("tile", 0.0) / 1000.0
        first = None if done.first_token_s is None else sent - started + prep_s + done.first_token_s
        return done, first

    async def run(batch: list[RenderedPage]) -> Run:
        started = time.perf_counter()
        answers = await asyncio.gather(*(one(p, started) for p in batch))
        seconds = time.perf_counter() - started
        return Run(seconds, [done.tokens for done, _ in answers], [t for _, t in answers if t is not None],
                   server_tokens=[done.completion_tokens or 0 for done, _ in answers])

    try:
        await run(warmup)
        return [await run(pages) for pages in page_sets]
    finally:
        await engine.aclose()


def served_model_name(url: str) -> str:
    import httpx

    answer = httpx.get(url.rstrip("/") + "/models", timeout=10.0).json()
    return answer["data"][0]["id"]


# --- the run ------------------------------------------------------------------------------


def build_engine(args: argparse.Namespace, workdir: Path) -> tuple[InternVLEngine, Path | None]:
    """The in-process engine, and the checkpoint directory it was loaded from (tiny)."""
    common = dict(
        _env_file=None, device=args.device, dtype=args.dtype, batch_size=args.batch_size,
        batch_tile_budget=args.tile_budget, max_tiles=args.max_tiles, repetition_guard_span=0,
        max_new_tokens_ocr=args.max_new_tokens, max_new_tokens_tables=args.max_new_tokens,
        max_new_tokens_per_tile=args.max_new_tokens, text_layer_hint=False,
    )
    if args.model_size == "tiny":
        directory = build_tiny_internvl(workdir / "tiny-internvl", seed=args.seed)
        return InternVLEngine(Settings(model=str(directory), **common)).load(), directory
    # real architecture and size, random weights, built in memory on the device
    settings = Settings(model=f"random-internvl3-{args.model_size}", **common)
    device, dtype, attn = choose_runtime(settings)
    tokenizer = real_size_tokenizer()
    model = random_internvl(internvl_config(args.model_size, tokenizer), seed=args.seed,
                            device=device, dtype=dtype, attn_implementation=attn)
    return InternVLEngine.from_model(model, tokenizer, settings, model_id=settings.model), None


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-size", choices=["tiny", "1b", "2b", "8b"], default="tiny")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    parser.add_argument("--dtype", default="auto", choices=["auto", "bfloat16", "float16", "float32"])
    parser.add_argument("--engine", default="inprocess",
                        help="comma-separated: inprocess, vllm (e.g. inprocess,vllm); default inprocess")
    parser.add_argument("--new-tokens", type=int, default=None,
                        help="exactly this many output tokens per page (default: 750; 64 for tiny; 0: not forced)")
    parser.add_argument("--pages", type=int, default=16)
    parser.add_argument("--page", choices=["mixed", "letter"], default=None,
                        help="page sizes: mixed (default for tiny) or all US Letter (default for the real sizes)")
    parser.add_argument("--seed-loop", action=argparse.BooleanOptionalAction, default=False,
                        help="inprocess: also time the model card's batch-1 loop and compare outputs (default: off)")
    parser.add_argument("--jobs", type=int, default=4, help="the pages belong to this many jobs (path b)")
    parser.add_argument("--batch-size", type=int, default=Settings.model_fields["batch_size"].default,
                        help="pages per generate call (default: the setting's default)")
    parser.add_argument("--tile-budget", type=int, default=Settings.model_fields["batch_tile_budget"].default,
                        help="most tiles per generate call (default: the setting's, 0: 256 on CUDA, 64 on the CPU)")
    parser.add_argument("--max-tiles", type=int, default=12)
    parser.add_argument("--max-new-tokens", type=int, default=4096,
                        help="the budget per page when --new-tokens is 0")
    parser.add_argument("--task", default="ocr", choices=["ocr", "tables"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--vllm-url", default=None, help="a running vLLM server's /v1 URL (else one is started)")
    parser.add_argument("--vllm-model", default=None, help="the model name the server serves (default: its first)")
    parser.add_argument("--vllm-python", default=None,
                        help="python of a vLLM environment (default: the CPU build of scripts/vllm-venv.sh)")
    parser.add_argument("--vllm-args", default="", help="extra flags for the vLLM server this script starts")
    parser.add_argument("--vllm-in-flight", type=int, default=0, help="pages in flight at vLLM (0: all)")
    parser.add_argument("--vllm-start-timeout", type=float, default=900.0)
    args = parser.parse_args(argv)
    args.engines = [e.strip() for e in args.engine.split(",") if e.strip()]
    unknown = set(args.engines) - {"inprocess", "vllm"}
    if unknown or not args.engines:
        parser.error(f"--engine: unknown {', '.join(sorted(unknown)) or '(none)'}; choose inprocess and/or vllm")
    real = args.model_size != "tiny"
    if args.new_tokens is None:
        args.new_tokens = DEFAULT_NEW_TOKENS.get(args.model_size, REAL_NEW_TOKENS)
    if args.page is None:
        args.page = "letter" if real else "mixed"
    args.repeats = max(1, args.repeats)
    return args


def fmt_s(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    force = args.new_tokens or None
    length = f"{force} new tokens per page" if force else f"new tokens not forced (budget {args.max_new_tokens})"
    rows: list[Row] = []
    status = 0
    with tempfile.TemporaryDirectory(prefix="docproc-bench-") as tmp:
        workdir = Path(tmp)
        engine, checkpoint = build_engine(args, workdir)
        device = engine.device
        args.runtime_dtype = str(engine.dtype).removeprefix("torch.")
        # each timed run reads pages of its own (the same sizes, other words): vLLM's prefix and
        # encoder caches must not serve a run from an earlier run's images
        page_sets = [interleave_jobs(make_pages(args.pages, seed=args.seed + 1 + k, layout=args.page), args.jobs)
                     for k in range(args.repeats)]
        warmup = make_pages(min(2, args.pages), seed=args.seed, layout=args.page)
        pages = page_sets[0]
        requests = [engine.request_for_page(p, args.task) for p in pages]
        tiles = [r.n_tiles for r in requests]
        prompt_tokens = [len(engine.prompt_ids(r)) for r in requests]
        flop_model = FlopModel.of(engine.model)
        card, peak = bf16_peak_flops(device)
        print(f"model: {args.model_size} ({engine.model_id}), "
              f"{count_params(engine.model) / 1e6:.1f} M parameters")
        print(f"device: {device} = {card}; bf16 dense peak: "
              f"{f'{peak / 1e12:.0f} TFLOP/s' if peak else 'n/a'}; in-process dtype {args.runtime_dtype}, "
              f"attention {engine.attn_implementation}, torch {torch.__version__}, threads {torch.get_num_threads()}")
        print(f"pages: {len(pages)} ({args.page}), tiles per page: {tiles} (total {sum(tiles)}), "
              f"image tokens per tile: {engine.image_seq_length}, prompt tokens per page: "
              f"{min(prompt_tokens)}-{max(prompt_tokens)}, task: {args.task}")
        print(f"output length: {length}" + (" (min_new_tokens = max_new_tokens; vLLM min_tokens = "
                                            "max_tokens, ignore_eos)" if force else ""))
        print(f"in-process: batch size {args.batch_size}, tile budget {args.tile_budget or 'auto'} "
              f"(a batch now: {engine.tile_budget()}), jobs {args.jobs}", flush=True)

        def flops_of(outputs: list[list[int]]) -> float:
            return sum(flop_model.page(p, len(o), t) for p, o, t in zip(prompt_tokens, outputs, tiles))

        if "inprocess" in args.engines:
            rows += run_inprocess(engine, warmup, page_sets, args)
        if "vllm" in args.engines:
            server = None
            if args.vllm_url is None and checkpoint is None:  # the real sizes: their random weights, on disk
                started = time.perf_counter()
                checkpoint = save_checkpoint(engine.model, engine.tokenizer, workdir / engine.model_id,
                                             max_patches=args.max_tiles)
                print(f"vllm: wrote the random checkpoint to {checkpoint} in {time.perf_counter() - started:.0f} s")
            settings = engine.settings.model_copy(update={
                "model": str(checkpoint) if checkpoint else engine.model_id,
                "model_server_in_flight": args.vllm_in_flight or len(pages),
            })  # fmt: skip
            cpu = not str(device).startswith("cuda")
            if not cpu:  # the GPU is the server's now
                engine.model = None
                gc.collect()
                torch.cuda.empty_cache()
            try:
                if args.vllm_url:
                    url = args.vllm_url
                    model = args.vllm_model or served_model_name(url)
                else:
                    server = StartedServer(args, settings, cpu, workdir)
                    print(f"vllm: server ready in {server.wait(args.vllm_start_timeout):.0f} s (not timed below)",
                          flush=True)
                    url, model = server.url, args.vllm_model or settings.model
                in_flight = args.vllm_in_flight or len(pages)
                runs = asyncio.run(vllm_runs(settings, url, model, warmup, page_sets, args, in_flight))
                rows.append(Row(f"vllm, {in_flight} in flight", runs))
            finally:
                if server is not None:
                    server.close()

    for row in rows:
        row.flops = flops_of(row.runs[0].outputs)
    reps = f"median of {args.repeats} run(s)"
    where = "cpu" if peak is None and not str(device).startswith("cuda") else card
    print(f"\neach row: {where}, {length}, {reps}; TTFT from the run's start, every page submitted at once")
    header = (f"{'engine / path':<34}{'device':>8}{'tok/page':>10}{'seconds':>9}{'pages/s':>9}"
              f"{'out tok/s':>11}{'TTFT p50':>10}{'TTFT p99':>10}{'MFU':>8}")
    print(header)
    for row in rows:
        run = row.median
        lengths = [len(o) for o in run.outputs]
        per_page = f"{lengths[0]}" if len(set(lengths)) == 1 else f"{min(lengths)}-{max(lengths)}"
        ttft = [t for r in row.runs for t in r.ttft_s]
        mfu = f"{row.flops / run.seconds / peak:.1%}" if peak and row.flops else "n/a"
        print(f"{row.name:<34}{str(device).split(':')[0]:>8}{per_page:>10}{run.seconds:>9.2f}"
              f"{len(run.outputs) / run.seconds:>9.2f}{sum(lengths) / run.seconds:>11.1f}"
              f"{fmt_s(percentile(ttft, 50)):>10}{fmt_s(percentile(ttft, 99)):>10}{mfu:>8}")
    print()
    for row in rows:
        counted = row.lengths
        line = f"{row.name}: output tokens counted per page: {counted}"
        if row.runs[0].server_tokens is not None:
            line += f" (the server's usage: {row.runs[0].server_tokens})"
        print(line)
        print(f"{row.name}: {len(pages)} pages at {length} on {where}: "
              f"{len(pages) / row.median.seconds:.2f} pages/s, "
              f"{sum(counted) / row.median.seconds:.1f} output tokens/s, "
              f"TTFT p50 {fmt_s(percentile([t for r in row.runs for t in r.ttft_s], 50))} s, "
              f"p99 {fmt_s(percentile([t for r in row.runs for t in r.ttft_s], 99))} s")
        wrong = [n for n in counted if n != force] + [n for n in row.runs[0].server_tokens or [] if n != force]
        if force and wrong:
            print(f"FAILED: {row.name}: pages wrote {sorted(set(wrong))} tokens, not {force}")
            status = 1
    batched = next((r for r in rows if r.name.startswith("inprocess (b)")), None)
    served = next((r for r in rows if r.name.startswith("vllm")), None)
    if batched and served:
        print(f"speed-up vllm / inprocess (b): {batched.median.seconds / served.median.seconds:.2f}x pages/s "
              f"({where}, {length})")
    return max(status, compare_paths(rows, engine))


def compare_paths(rows: list[Row], engine: InternVLEngine) -> int:
    """The seed loop's and docproc's outputs, token for token (float32: they must be equal)."""
    by_name = {row.name: row for row in rows}
    seed, docproc = by_name.get("inprocess (a) seed loop, batch 1"), by_name.get("inprocess (b) docproc batched")
    if seed is None or docproc is None:
        return 0
    seed_s, docproc_s = seed.median.seconds, docproc.median.seconds
    print(f"speed-up (b)/(a): {seed_s / docproc_s:.2f}x pages/s")
    seed_out, docproc_out = seed.runs[0].outputs, docproc.runs[0].outputs
    same = [a == b for a, b in zip(seed_out, docproc_out)]
    print(f"identical greedy outputs (a) vs (b): {sum(same)}/{len(same)} pages "
          f"(generated tokens per page: median {statistics.median(len(o) for o in docproc_out):.0f})")
    exact_dtype = engine.dtype == torch.float32
    if exact_dtype and not all(same):
        first = same.index(False)
        print(f"MISMATCH on page {first + 1}: seed {seed_out[first][:20]} ... vs docproc {docproc_out[first][:20]} ...")
        return 1
    texts_same = all(
        engine.tokenizer.decode(a, skip_special_tokens=True) == engine.tokenizer.decode(b, skip_special_tokens=True)
        for a, b in zip(seed_out, docproc_out)
    )
    print(f"identical decoded text: {texts_same}")
    return 0 if (texts_same or not exact_dtype) else 1


if __name__ == "__main__":
    raise SystemExit(main())
