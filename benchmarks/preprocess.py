"""Page preprocessing: the model card's seed-style path vs docproc's, ms per page.

    python benchmarks/preprocess.py [--pages N] [--dpi DPI] [--repeats R] [--max-tiles T]

Builds two real PDFs in memory with PyMuPDF (A4 and US Letter, N pages each; every
page has text, a ruled table and an embedded photo-like JPEG), then times per page:

(a) seed: ``page.get_pixmap(dpi=DPI)`` -> PIL, then the InternVL model card's
    ``load_image`` body: ``dynamic_preprocess(image, image_size=448,
    use_thumbnail=True, max_num=T)`` with PIL crops, the card's ``build_transform``
    per tile (Resize -> ToTensor -> Normalize) and ``torch.stack``
    (benchmarks/reference_internvl.py holds that code);
(b) docproc: ``open_document`` + ``render_pages`` (resolution from page size and
    tile budget; also extracts the text layer) + ``tile_image`` + ``normalize_tiles``.

Each path runs once to warm up, then R times; the median run is reported. Then an
identity check: docproc's ``tile_image`` on the seed's own rendered images must
equal the seed's tiles (``np.array_equal``), and docproc's normalised tensor the
seed's ``pixel_values``; and for each page the grid (cols, rows) docproc's render
leads to is compared with the seed's.
"""

from __future__ import annotations

import argparse
import io
import os
import platform
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import PIL
import pymupdf
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # docproc / workers from this checkout

from reference_internvl import dynamic_preprocess, load_image_pixels, reference_grid  # noqa: E402

from docproc.base.settings import Settings  # noqa: E402
from docproc.jobs.inputs import open_document  # noqa: E402
from workers.render import render_pages  # noqa: E402
from workers.tiling import choose_grid, normalize_tiles, tile_image  # noqa: E402

A4 = (595.0, 842.0)
LETTER = (612.0, 792.0)
TILE = 448

LOREM = (
    "Payment is due within thirty days of the invoice date. Goods remain our property until paid "
    "in full. Please quote the invoice number with every payment; bank charges are borne by the "
    "payer. Deliveries are insured to the address given above. "
)


def photo_jpeg(width: int, height: int, seed: int) -> bytes:
    """A photo-like JPEG: smooth gradients, a few shapes and sensor-like noise."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    img = np.stack(
        [
            120 + 100 * np.sin(x / width * 3 + seed),
            110 + 90 * np.cos(y / height * 4),
            90 + 80 * np.sin((x + y) / (width + height) * 7),
        ],
        axis=-1,
    )
    for _ in range(6):
        cx, cy, r = rng.uniform(0, width), rng.uniform(0, height), rng.uniform(20, min(width, height) / 3)
        img[(x - cx) ** 2 + (y - cy) ** 2 < r * r] = rng.uniform(0, 255, 3)
    img += rng.normal(0, 12, img.shape)
    buf = io.BytesIO()
    Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(buf, format="JPEG", quality=85)
    return buf.getvalue()


def build_pdf(pages: int, size: tuple[float, float], seed: int) -> bytes:
    """A born-digital report: per page a heading, body text, a ruled 6x4 table and a photo."""
    doc = pymupdf.open()
    w, h = size
    for i in range(1, pages + 1):
        page = doc.new_page(width=w, height=h)
        page.insert_text((50, 60), f"Quarterly delivery report - page {i} of {pages}", fontsize=16, fontname="hebo")
        page.insert_textbox(pymupdf.Rect(50, 75, w - 50, 215), LOREM * 3, fontsize=9.5, fontname="helv")
        xs = [50, 250, 330, 430, w - 50]
        y0, row_h = 230, 20
        rows = [["Item", "Qty", "Unit price", "Amount"]] + [
            [f"Article {i}-{r}", str(r * 3), f"{9.5 * r:.2f}", f"{28.5 * r * r:.2f}"] for r in range(1, 6)
        ]
        for r in range(len(rows) + 1):
            page.draw_line((xs[0], y0 + r * row_h), (xs[-1], y0 + r * row_h), width=0.7)
        for x in xs:
            page.draw_line((x, y0), (x, y0 + len(rows) * row_h), width=0.7)
        for r, row in enumerate(rows):
            for c, cell in enumerate(row):
                font = "hebo" if r == 0 else "helv"
                page.insert_text((xs[c] + 4, y0 + r * row_h + 14), cell, fontsize=9, fontname=font)
        photo = pymupdf.Rect(50, 380, w - 50, 380 + (w - 100) * 0.6)
        page.insert_image(photo, stream=photo_jpeg(1200, 720, seed=seed * 100 + i))
        page.insert_textbox(pymupdf.Rect(50, photo.y1 + 15, w - 50, h - 40), LOREM * 2, fontsize=9.5, fontname="helv")
    return doc.tobytes(garbage=3, deflate=True)


# ------------------------------------------------------------------ the two paths


def seed_path(data: bytes, dpi: int, max_tiles: int, stages: dict[str, float]) -> list[torch.Tensor]:
    """What a naive pipeline does: 300 dpi render, then the model card's load_image per page."""
    out = []
    doc = pymupdf.open(stream=data, filetype="pdf")
    for page in doc:
        t0 = time.perf_counter()
        pix = page.get_pixmap(dpi=dpi)
        image = Image.frombytes("RGB", (pix.width, pix.height), pix.samples)
        t1 = time.perf_counter()
        out.append(load_image_pixels(image, input_size=TILE, max_num=max_tiles))
        t2 = time.perf_counter()
        stages["render"] += t1 - t0
        stages["tile+transform+stack"] += t2 - t1
    doc.close()
    return out


def docproc_path(data: bytes, settings: Settings, stages: dict[str, float]) -> list[torch.Tensor]:
    out = []
    t0 = time.perf_counter()
    with open_document(data, settings=settings) as doc:
        stages["open"] += time.perf_counter() - t0
        for page in render_pages(doc, list(range(1, doc.page_count + 1)), settings):
            t1 = time.perf_counter()
            tiles = tile_image(
                page.image,
                min_tiles=settings.min_tiles,
                max_tiles=settings.max_tiles,
                image_size=settings.tile_size,
                use_thumbnail=settings.use_thumbnail,
            )
            t2 = time.perf_counter()
            out.append(normalize_tiles(tiles))
            t3 = time.perf_counter()
            stages["render (pixels)"] += page.timings_ms["render"] / 1000
            stages["render (text layer)"] += page.timings_ms["text_layer"] / 1000
            stages["tile_image"] += t2 - t1
            stages["normalize_tiles"] += t3 - t2
    return out


def timed(fn, docs: list[bytes], repeats: int) -> tuple[float, float, dict[str, float]]:
    """One pass over ``docs`` (after a warm-up pass), ``repeats`` times: the median run's
    wall seconds, its CPU seconds (this process, all threads) and its per-stage wall seconds."""
    runs = []
    for r in range(repeats + 1):
        stages: dict[str, float] = defaultdict(float)
        t0, c0 = time.perf_counter(), time.process_time()
        for data in docs:
            fn(data, stages)
        elapsed, cpu = time.perf_counter() - t0, time.process_time() - c0
        if r:  # run 0 is the warm-up
            runs.append((elapsed, cpu, dict(stages)))
    runs.sort(key=lambda run: run[0])
    return runs[len(runs) // 2]


# ------------------------------------------------------------------ identity checks


def identity_checks(docs: list[bytes], dpi: int, settings: Settings) -> list[str]:
    """Assert docproc's tiles equal the seed's on the seed's own images; compare the grids."""
    lines = []
    for d, data in enumerate(docs):
        seed_doc = pymupdf.open(stream=data, filetype="pdf")
        with open_document(data, settings=settings) as doc:
            ours = list(render_pages(doc, list(range(1, doc.page_count + 1)), settings))
        for page, mine in zip(seed_doc, ours, strict=True):
            pix = page.get_pixmap(dpi=dpi)
            image = Image.frombytes("RGB", (pix.width, pix.height), pix.samples)
            where = f"doc {d} page {page.number + 1}"
            seed_tiles = dynamic_preprocess(image, image_size=TILE, use_thumbnail=True, max_num=settings.max_tiles)
            seed_tiles = np.stack([np.asarray(t) for t in seed_tiles])
            docproc_tiles = tile_image(image, max_tiles=settings.max_tiles, image_size=TILE)
            assert np.array_equal(docproc_tiles, seed_tiles), f"{where}: tiles differ"
            seed_pixels = load_image_pixels(image, input_size=TILE, max_num=settings.max_tiles)
            assert torch.equal(normalize_tiles(docproc_tiles), seed_pixels), f"{where}: pixel_values differ"
            seed_grid = reference_grid(*image.size, max_num=settings.max_tiles, image_size=TILE)
            our_grid = choose_grid(*mine.image.size, max_tiles=settings.max_tiles, image_size=TILE)
            lines.append(
                f"  {where}: seed {image.size[0]}x{image.size[1]} px -> grid {seed_grid}, "
                f"{len(seed_tiles)} tiles identical; docproc {mine.image.size[0]}x{mine.image.size[1]} px "
                f"({mine.dpi:.0f}x{mine.dpi_y:.0f} dpi{', rendered at the grid' if mine.grid else ''}) -> grid {our_grid} "
                f"{'same' if our_grid == seed_grid else 'DIFFERENT'}"
            )
        seed_doc.close()
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pages", type=int, default=3, help="pages per document (two documents: A4, Letter)")
    parser.add_argument("--dpi", type=int, default=300, help="the seed path's fixed render resolution")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per path (after one warm-up)")
    parser.add_argument("--max-tiles", type=int, default=12)
    args = parser.parse_args(argv)

    settings = Settings(_env_file=None, max_tiles=args.max_tiles)
    docs = [build_pdf(args.pages, A4, seed=1), build_pdf(args.pages, LETTER, seed=2)]
    n_pages = 2 * args.pages

    affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs ({affinity} usable), "
        f"torch {torch.__version__} with {torch.get_num_threads()} threads, Pillow {PIL.__version__}, "
        f"PyMuPDF {pymupdf.VersionBind}, Python {platform.python_version()}"
    )
    print(f"input: 2 PDFs x {args.pages} pages (A4, Letter; text + table + photo), max_tiles={args.max_tiles}, "
          f"median of {args.repeats} runs after 1 warm-up\n")

    seed_s, seed_cpu, seed_stages = timed(
        lambda data, st: seed_path(data, args.dpi, args.max_tiles, st), docs, args.repeats
    )
    ours_s, our_cpu, our_stages = timed(lambda data, st: docproc_path(data, settings, st), docs, args.repeats)

    def ms(seconds: float) -> str:
        return f"{seconds * 1000 / n_pages:9.1f}"

    width = 58
    print(f"{'ms/page (wall; CPU = all threads of this process)':<{width}}{'wall':>9}{'CPU':>9}")
    print(f"{f'(a) seed: {args.dpi} dpi + card load_image (per-tile loop)':<{width}}{ms(seed_s)}{ms(seed_cpu)}")
    for name, s in seed_stages.items():
        print(f"{'      ' + name:<{width}}{ms(s)}")
    print(f"{'(b) docproc: open + render_pages + tile + normalize':<{width}}{ms(ours_s)}{ms(our_cpu)}")
    for name, s in our_stages.items():
        print(f"{'      ' + name:<{width}}{ms(s)}")
    ratio = seed_s / ours_s
    print(
        f"\nspeed-up (a)/(b): {ratio:.1f}x wall, {seed_cpu / our_cpu:.1f}x CPU "
        f"({'meets' if ratio >= 5 else 'BELOW'} the 5x target on wall time)\n"
    )

    print("identity (same input image -> identical tiles and pixel_values; grid from docproc's own render):")
    for line in identity_checks(docs, args.dpi, settings):
        print(line)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
