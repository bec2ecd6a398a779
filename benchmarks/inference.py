"""Inference throughput: the model card's seed-style loop vs docproc's batched engine.

    python benchmarks/inference.py [--model-size tiny|1b|2b|8b] [--device auto|cpu|cuda]
                                   [--pages 16] [--batch-size 16] [--tile-budget 0]
                                   [--max-new-tokens 48] [--max-tiles 12] [--dtype auto]
                                   [--repeats 3]

Same model, same pages (a mix of A4, US Letter, receipts, square photos and
landscape pages, drawn with Pillow), same prompt, greedy decoding, one token budget
per page (``InternVLEngine.max_new_tokens``). Two paths, each warmed up once, then
timed ``--repeats`` times (alternating; the median run is reported):

(a) seed: one ``model.chat``-like call per page, batch 1, as in the InternVL model
    card: ``load_image`` (``dynamic_preprocess`` + the per-tile ``build_transform``
    + ``torch.stack``, benchmarks/reference_internvl.py), the prompt, ``generate``;
(b) docproc: what the model worker (workers/model_worker.py) does with the pages
    it pulled from the gpu queue, pages of ``--jobs`` different jobs interleaved:
    ``tile_image`` per page, then one batched call over all of them (left padding,
    one vectorised normalisation and one vision pass per batch, batches of similar
    pages within ``--batch-size`` and ``--tile-budget``, the memory guard's tile
    budget on CUDA, splitting on out-of-memory).

Reported: pages/s and generated tokens/s of each path and their ratio; then the
outputs are compared token for token. In float32 they must be identical (the
script fails otherwise); in bf16/fp16, batched kernels are not bitwise
batch-invariant, so the number of identical pages is reported instead.

``--model-size tiny`` builds the tiny random checkpoint in a temp dir and loads it
through ``InternVLEngine.load()``; ``1b``/``2b``/``8b`` build random weights of
InternVL3-1B/2B/8B's real architecture and size in memory (for GPU runs; their
outputs are noise, their cost is real). The repetition guard is off in both
paths so they do the same work (random weights loop, and the guard would stop
docproc's rows early).
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # docproc / workers from this checkout

from benchmarks.reference_internvl import load_image_pixels  # noqa: E402
from docproc.settings import Settings  # noqa: E402
from workers.engines.internvl import InternVLEngine, choose_runtime  # noqa: E402
from workers.engines.tiny_internvl import (  # noqa: E402
    build_tiny_internvl,
    build_tiny_tokenizer,
    internvl_config,
    random_internvl,
)
from workers.pages import RenderedPage  # noqa: E402

# (width, height) in pixels: A4 and Letter at 150 dpi, a receipt, a photo, a landscape page.
PAGE_SIZES = [(1240, 1754), (1275, 1650), (576, 1600), (900, 900), (1754, 1240), (1240, 1754),
              (448, 448), (1600, 700)]


def make_pages(n: int, seed: int = 0) -> list[RenderedPage]:
    """``n`` text-like pages of mixed sizes (cycling through PAGE_SIZES)."""
    rng = np.random.default_rng(seed)
    pages = []
    for i in range(n):
        width, height = PAGE_SIZES[i % len(PAGE_SIZES)]
        im = Image.new("RGB", (width, height), "white")
        draw = ImageDraw.Draw(im)
        draw.rectangle((10, 10, width - 11, height - 11), outline="black", width=3)
        for y in range(40, height - 40, 36):
            words = " ".join(f"w{int(v)}" for v in rng.integers(0, 9999, 6))
            draw.text((30, y), f"Page {i + 1}: {words}", fill="black", font_size=22)
        pages.append(RenderedPage(number=i + 1, image=im))
    return pages


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def seed_loop(engine: InternVLEngine, pages: list[RenderedPage], task: str) -> list[list[int]]:
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
        with torch.inference_mode():
            out = model.generate(
                input_ids=ids["input_ids"].to(model.device),
                attention_mask=ids["attention_mask"].to(model.device),
                pixel_values=pixel_values,
                max_new_tokens=engine.max_new_tokens(task, n_tiles),
                do_sample=False,
                eos_token_id=engine.eos_token_ids,
                pad_token_id=engine.pad_token_id,
            )
        new = out[0, ids["input_ids"].shape[1]:].tolist()
        for k, token in enumerate(new):  # cut after the first EOS
            if token in engine.eos_token_ids:
                new = new[: k + 1]
                break
        outputs.append(new)
    return outputs


def docproc_path(engine: InternVLEngine, pages: list[RenderedPage], task: str) -> list[list[int]]:
    """(b) docproc: the model worker's cross-job path: tile each page (the pages of all
    jobs, as pulled from the queue), then batched generation over all of them."""
    requests = [engine.request_for_page(p, task) for p in pages]
    return [g.token_ids for g in engine.generate_outputs(requests, retry_degenerate=False)]


def interleave_jobs(pages: list[RenderedPage], jobs: int) -> list[RenderedPage]:
    """The pages as ``jobs`` documents whose page messages arrive interleaved on the queue
    (job 1 page 1, job 2 page 1, ...): the order the model worker sees them in."""
    size = -(-len(pages) // max(1, jobs))
    docs = [pages[i:i + size] for i in range(0, len(pages), size)]
    return [doc[k] for k in range(max(len(d) for d in docs)) for doc in docs if k < len(doc)]


def timed(fn, device: str) -> tuple[float, list[list[int]]]:
    sync(device)
    started = time.perf_counter()
    result = fn()
    sync(device)
    return time.perf_counter() - started, result


def build_engine(args: argparse.Namespace, workdir: Path) -> InternVLEngine:
    common = dict(
        _env_file=None, device=args.device, dtype=args.dtype, batch_size=args.batch_size,
        batch_tile_budget=args.tile_budget, max_tiles=args.max_tiles, repetition_guard_span=0,
        max_new_tokens_ocr=args.max_new_tokens, max_new_tokens_per_tile=args.max_new_tokens,
        text_layer_hint=False,
    )
    if args.model_size == "tiny":
        directory = build_tiny_internvl(workdir / "tiny-internvl", seed=args.seed)
        return InternVLEngine(Settings(model=str(directory), **common)).load()
    # real architecture and size, random weights, built in memory on the device
    settings = Settings(model=f"random-internvl3-{args.model_size}", **common)
    device, dtype, attn = choose_runtime(settings)
    tokenizer = build_tiny_tokenizer()
    model = random_internvl(internvl_config(args.model_size, tokenizer), seed=args.seed,
                            device=device, dtype=dtype, attn_implementation=attn)
    return InternVLEngine.from_model(model, tokenizer, settings, model_id=settings.model)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-size", choices=["tiny", "1b", "2b", "8b"], default="tiny")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    parser.add_argument("--dtype", default="auto", choices=["auto", "bfloat16", "float16", "float32"])
    parser.add_argument("--pages", type=int, default=16)
    parser.add_argument("--jobs", type=int, default=4, help="the pages belong to this many jobs (path b)")
    parser.add_argument("--batch-size", type=int, default=Settings.model_fields["batch_size"].default,
                        help="pages per generate call (default: the setting's default)")
    parser.add_argument("--tile-budget", type=int, default=Settings.model_fields["batch_tile_budget"].default,
                        help="most tiles per generate call (default: the setting's, 0: 256 on CUDA, 64 on the CPU)")
    parser.add_argument("--max-tiles", type=int, default=12)
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--task", default="ocr", choices=["ocr", "tables"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="docproc-bench-") as tmp:
        engine = build_engine(args, Path(tmp))
        pages = interleave_jobs(make_pages(args.pages, seed=args.seed), args.jobs)
        tiles = [int(engine.tile(p.image).shape[0]) for p in pages]
        device = engine.device
        print(f"model: {args.model_size} ({engine.model_id}), "
              f"{sum(p.numel() for p in engine.model.parameters()) / 1e6:.1f} M parameters")
        print(f"device: {device}, dtype: {str(engine.dtype).removeprefix('torch.')}, "
              f"attention: {engine.attn_implementation}, torch {torch.__version__}, "
              f"threads {torch.get_num_threads()}, {platform.processor() or platform.machine()}")
        print(f"pages: {len(pages)}, tiles per page: {tiles} (total {sum(tiles)}), "
              f"image tokens per tile: {engine.image_seq_length}, task: {args.task}, "
              f"max new tokens per page: {args.max_new_tokens}, batch size {args.batch_size}, "
              f"tile budget {args.tile_budget or 'auto'} (a batch now: {engine.tile_budget()}), jobs {args.jobs}")

        # warm-up: one page through each path
        seed_loop(engine, pages[:1], args.task)
        docproc_path(engine, pages[:2], args.task)

        seed_runs, docproc_runs = [], []
        for _ in range(max(1, args.repeats)):
            seed_runs.append(timed(lambda: seed_loop(engine, pages, args.task), device))
            docproc_runs.append(timed(lambda: docproc_path(engine, pages, args.task), device))
        seed_s = statistics.median(t for t, _ in seed_runs)
        docproc_s = statistics.median(t for t, _ in docproc_runs)
        seed_out, docproc_out = seed_runs[0][1], docproc_runs[0][1]
        if any(out != seed_out for _, out in seed_runs) or any(out != docproc_out for _, out in docproc_runs):
            print("warning: a path's outputs changed between repeats")

    seed_tokens = sum(len(o) for o in seed_out)
    docproc_tokens = sum(len(o) for o in docproc_out)
    rows = [("(a) seed loop, batch 1", seed_s, seed_tokens), ("(b) docproc batched", docproc_s, docproc_tokens)]
    print(f"\nmedian of {max(1, args.repeats)} run(s)")
    print(f"{'path':<26}{'seconds':>10}{'pages/s':>10}{'tokens':>9}{'tokens/s':>11}")
    for name, seconds, tokens in rows:
        print(f"{name:<26}{seconds:>10.2f}{len(pages) / seconds:>10.2f}{tokens:>9d}{tokens / seconds:>11.1f}")
    print(f"speed-up (b)/(a): {seed_s / docproc_s:.2f}x pages/s")

    same = [a == b for a, b in zip(seed_out, docproc_out)]
    lengths = [len(o) for o in docproc_out]
    print(f"identical greedy outputs: {sum(same)}/{len(same)} pages "
          f"(generated tokens per page: median {statistics.median(lengths):.0f})")
    exact_dtype = engine.dtype == torch.float32
    if exact_dtype and not all(same):
        first = same.index(False)
        print(f"MISMATCH on page {first + 1}: seed {seed_out[first][:20]} ... vs docproc {docproc_out[first][:20]} ...")
        return 1
    if args.model_size != "tiny":
        # random 151k-vocabulary weights with the tiny tokenizer: most ids decode to nothing
        print("decoded text not compared (random weights of the real size, tiny tokenizer)")
        return 0
    texts_same = all(
        engine.tokenizer.decode(a, skip_special_tokens=True) == engine.tokenizer.decode(b, skip_special_tokens=True)
        for a, b in zip(seed_out, docproc_out)
    )
    print(f"identical decoded text: {texts_same}")
    return 0 if (texts_same or not exact_dtype) else 1


if __name__ == "__main__":
    raise SystemExit(main())
