"""workers.tiling equals the InternVL model card's preprocessing.

The reference is the card's own code, kept once in benchmarks/reference_internvl.py
(shared with the benchmark). Grids are compared on thousands of sizes, including
exact ties on both sides of the area threshold; pixels are compared with
``np.array_equal`` on real-looking images of several modes; normalisation against
the card's ToTensor + Normalize.
"""

from __future__ import annotations

import io
import math
import sys
from concurrent.futures import ThreadPoolExecutor
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from workers import tiling
from workers.tiling import (
    _normalize_torch,
    choose_grid,
    normalize_tiles,
    tile_count,
    tile_image,
)

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
import reference_internvl as ref  # noqa: E402  (the model card's code)

S = 448
# (min_tiles, max_tiles); (4, 4) and (6, 6) hold grids of equal tile count that tie
# (2.5 ties 2x2 with 4x1), where only the card's set-then-stable-sort order decides.
SETTINGS = [(1, 6), (1, 12), (1, 40), (2, 12), (4, 4), (6, 6)]


def _grids(min_tiles: int, max_tiles: int) -> list[tuple[int, int]]:
    return [(i, j) for i in range(1, max_tiles + 1) for j in range(1, max_tiles + 1) if min_tiles <= i * j <= max_tiles]


def _tied(width: int, height: int, min_tiles: int, max_tiles: int) -> list[tuple[int, int]]:
    """Grids at the smallest ratio distance, as the card's float arithmetic sees it."""
    diffs = {g: abs(width / height - g[0] / g[1]) for g in _grids(min_tiles, max_tiles)}
    best = min(diffs.values())
    return [g for g, d in diffs.items() if d == best]


def _tie_sizes(min_tiles: int, max_tiles: int) -> list[tuple[int, int]]:
    """Sizes at aspect ratios where grids tie, just below and above each tied grid's area threshold.

    Tie ratios: every grid's own ratio (its multiples tie with it: 1:1 with 2x2 and 3x3)
    and the midpoint of each pair of neighbouring ratios (2.5 ties 2x1 with 3x1).
    """
    ratios = sorted({Fraction(c, r) for c, r in _grids(min_tiles, max_tiles)})
    ties = set(ratios) | {(a + b) / 2 for a, b in zip(ratios, ratios[1:])}
    sizes = []
    for t in sorted(ties):
        p, q = t.numerator, t.denominator
        dist = {g: abs(t - Fraction(*g)) for g in _grids(min_tiles, max_tiles)}
        tied = [g for g, d in dist.items() if d == min(dist.values())]
        for product in {c * r for c, r in tied}:
            k0 = math.floor(math.sqrt(0.5 * S * S * product / (p * q)))
            sizes += [(k * p, k * q) for k in range(max(1, k0 - 1), k0 + 3)]
    return sizes


def _threshold_sizes(min_tiles: int, max_tiles: int) -> list[tuple[int, int]]:
    """Tied sizes whose area equals a threshold 0.5 * S^2 * m exactly (where ">" and ">=" differ)."""
    sizes = []
    for m in range(min_tiles, max_tiles + 1):
        area = S * S * m // 2
        for w in range(1, math.isqrt(area) + 1):
            if area % w == 0:
                for size in ((w, area // w), (area // w, w)):
                    if len(_tied(*size, min_tiles, max_tiles)) > 1:
                        sizes.append(size)
    return sizes


def _page_sizes() -> list[tuple[int, int]]:
    """A4, Letter, Legal, A3 (portrait and landscape) at the resolutions renderers use."""
    pages = [(595, 842), (612, 792), (612, 1008), (842, 1191)]
    out = []
    for w_pt, h_pt in pages:
        for dpi in (36, 50, 72, 96, 100, 110, 144, 150, 200, 240, 300, 400, 600):
            w, h = round(w_pt * dpi / 72), round(h_pt * dpi / 72)
            out += [(w, h), (h, w)]
    return out


EXTREME_SIZES = [
    (1, 1), (1, 2), (2, 1), (3, 1), (1, 3), (2, 2), (447, 448), (448, 448), (449, 448),
    (1, 100_000), (100_000, 1), (2, 100_000), (100_000, 3), (7, 65_000), (65_000, 9),
    (1, 40), (40, 1), (10, 4000), (4000, 10), (16_383, 16_383), (20_000, 1),
]


def _random_sizes(n: int, seed: int) -> list[tuple[int, int]]:
    rng = np.random.default_rng(seed)
    wh = np.exp(rng.uniform(0, math.log(20_000), size=(n, 2))).astype(int) + 1
    return [(int(w), int(h)) for w, h in wh]


def _sample(sizes: list[tuple[int, int]], n: int, seed: int) -> list[tuple[int, int]]:
    if len(sizes) <= n:
        return sizes
    rng = np.random.default_rng(seed)
    return [sizes[i] for i in sorted(rng.choice(len(sizes), n, replace=False))]


@pytest.mark.parametrize(("min_tiles", "max_tiles"), SETTINGS)
def test_grid_equals_reference(min_tiles: int, max_tiles: int) -> None:
    # The card builds its ratio set per call, O(max_tiles^3): fewer sizes for the big budget.
    budget = 1000 if max_tiles > 12 else 100_000
    ties = _sample(_tie_sizes(min_tiles, max_tiles), budget // 2, seed=1)
    sizes = (
        ties
        + _threshold_sizes(min_tiles, max_tiles)
        + _page_sizes()
        + EXTREME_SIZES
        + _random_sizes(budget // 3 if max_tiles > 12 else 3000, seed=max_tiles)
    )
    mismatches = []
    tie_rule_fired = tie_rule_declined = 0
    for w, h in sizes:
        expected = ref.reference_grid(w, h, min_num=min_tiles, max_num=max_tiles, image_size=S)
        got = choose_grid(w, h, min_tiles=min_tiles, max_tiles=max_tiles, image_size=S)
        if got != expected:
            mismatches.append(((w, h), got, expected))
        blocks = expected[0] * expected[1]
        assert tile_count(w, h, min_tiles=min_tiles, max_tiles=max_tiles) == blocks + (blocks != 1)
        assert tile_count(w, h, min_tiles=min_tiles, max_tiles=max_tiles, use_thumbnail=False) == blocks
        tied = _tied(w, h, min_tiles, max_tiles)
        if len(tied) > 1:
            if expected == min(tied, key=lambda g: g[0] * g[1]):
                tie_rule_declined += 1
            else:
                tie_rule_fired += 1
    assert not mismatches, f"{len(mismatches)} of {len(sizes)} sizes differ, e.g. {mismatches[:5]}"
    # The sizes really exercise the tie rule both ways (else the test proves little).
    assert tie_rule_fired >= 2 and tie_rule_declined >= 2, (tie_rule_fired, tie_rule_declined)


def _photo_like(width: int, height: int, seed: int) -> Image.Image:
    """Gradients + shapes + noise: the pixel statistics of a scanned or photographed page."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    r = 255 * x / max(width - 1, 1)
    g = 255 * y / max(height - 1, 1)
    b = 127.5 + 127.5 * np.sin((x + 2 * y) / max(width, height) * 12)
    img = np.stack([r, g, b], axis=-1)
    img[(x // max(width // 8, 1) + y // max(height // 8, 1)) % 2 == 0] *= 0.6  # hard edges
    img += rng.normal(0, 25, img.shape)
    return Image.fromarray(np.clip(img, 0, 255).astype(np.uint8), "RGB")


def _in_mode(im: Image.Image, mode: str, seed: int) -> Image.Image:
    if mode == "RGBA":
        alpha = Image.fromarray(np.random.default_rng(seed).integers(0, 256, im.size[::-1], dtype=np.uint8), "L")
        out = im.convert("RGBA")
        out.putalpha(alpha)
        return out
    if mode == "P":
        return im.convert("P", palette=Image.Palette.ADAPTIVE, colors=64)
    return im.convert(mode)


IMAGE_SIZES = [
    (1, 1), (3, 700), (700, 3), (50, 50), (100, 50), (211, 97), (448, 448), (449, 447),
    (620, 877), (877, 620), (640, 480), (900, 300), (1024, 1024), (1240, 1754), (300, 2000),
]
MODES = ["RGB", "L", "RGBA", "P", "LA", "CMYK"]
CASES = [(size, MODES[i % len(MODES)], i) for i, size in enumerate(IMAGE_SIZES)] + [
    ((612, 792), "L", 101),
    ((595, 842), "P", 102),
    ((2000, 1000), "RGBA", 103),
    ((1000, 2000), "RGB", 104),
    ((1283, 1283), "L", 105),  # square, area above the 2x2 tie threshold
    ((633, 316), "RGB", 106),  # 2:1, area just below the 2x1 tie threshold
    ((634, 317), "RGB", 107),  # 2:1, just above it
    ((672, 448), "CMYK", 108),  # 3:2
    ((2480, 3508), "RGB", 109),  # A4 at 300 dpi: the thumbnail shrinks 7.8x (where Image.reduce would differ)
]


def _reference_tiles(image: Image.Image, **kw) -> np.ndarray:
    """The card's load_image path: convert("RGB") then dynamic_preprocess, tiles as one array."""
    tiles = ref.dynamic_preprocess(image.convert("RGB"), **kw)
    return np.stack([np.asarray(t) for t in tiles])


@pytest.mark.parametrize(("size", "mode", "seed"), CASES, ids=[f"{s[0]}x{s[1]}-{m}" for s, m, _ in CASES])
def test_tiles_equal_reference(size: tuple[int, int], mode: str, seed: int) -> None:
    image = _in_mode(_photo_like(*size, seed=seed), mode, seed)
    assert image.mode == mode
    big = size[0] * size[1] > 4_000_000  # fewer settings for the 300-dpi page (time)
    for use_thumbnail in (True, False):
        for min_tiles, max_tiles in ((1, 12), (1, 1)) if big else ((1, 12), (1, 6), (2, 12), (1, 1)):
            expected = _reference_tiles(
                image, min_num=min_tiles, max_num=max_tiles, image_size=S, use_thumbnail=use_thumbnail
            )
            for parallel in (True, False) if use_thumbnail else (True,):
                got = tile_image(
                    image, min_tiles=min_tiles, max_tiles=max_tiles, use_thumbnail=use_thumbnail, parallel=parallel
                )
                assert got.dtype == np.uint8 and got.shape[1:] == (S, S, 3)
                assert got.shape == expected.shape, (use_thumbnail, min_tiles, max_tiles)
                assert np.array_equal(got, expected), (use_thumbnail, min_tiles, max_tiles, parallel)
                assert len(got) == tile_count(
                    *size, min_tiles=min_tiles, max_tiles=max_tiles, use_thumbnail=use_thumbnail
                )


def test_tiles_of_a_lazily_decoded_file_equal_reference() -> None:
    """An image straight from Image.open (not yet decoded) tiles correctly with two threads."""
    buf = io.BytesIO()
    _photo_like(1100, 1500, seed=7).save(buf, format="PNG")
    buf.seek(0)
    lazy = Image.open(buf)
    got = tile_image(lazy, parallel=True)
    buf.seek(0)
    expected = _reference_tiles(Image.open(buf), image_size=S, use_thumbnail=True)
    assert got.shape == (tile_count(1100, 1500), S, S, 3) == (13, S, S, 3)  # 3x4 + thumbnail
    assert np.array_equal(got, expected)


def test_tiles_are_row_major_with_the_thumbnail_last() -> None:
    """Tile k of a 3x2 grid is the crop at column k % 3, row k // 3 of the resized page."""
    image = _photo_like(3 * S, 2 * S, seed=3)  # already grid-sized: the resize is a copy
    tiles = tile_image(image)
    assert tiles.shape == (7, S, S, 3)
    page = np.asarray(image)
    for k in range(6):
        r, c = divmod(k, 3)
        assert np.array_equal(tiles[k], page[r * S:(r + 1) * S, c * S:(c + 1) * S])
    assert np.array_equal(tiles[6], np.asarray(image.resize((S, S))))


def _noise(width: int, height: int, seed: int) -> Image.Image:
    """Uniform noise: a resize whose passes ran in another order differs in thousands of pixels."""
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8), "RGB")


# Every grid of up to 12 tiles, and taller ones whose thumbnail Pillow 13 resizes vertically first.
GRID_SHAPES = sorted({(c, r) for c in range(1, 13) for r in range(1, 13) if c * r <= 12} | {(2, 6), (3, 6), (1, 20)})


@pytest.mark.skipif(not tiling.SPLIT_RESIZE, reason="the two-thread resize is used with Pillow 13 only")
def test_thumbnail_on_two_threads_equals_pillow_for_every_grid() -> None:
    """A page rendered at its grid: the thumbnail resized in halves on two threads is Pillow's resize."""
    with ThreadPoolExecutor(max_workers=1) as pool:
        for i, (cols, rows) in enumerate(GRID_SHAPES):
            image = _noise(cols * S, rows * S, seed=i)
            got = np.asarray(tiling._resize_on_two_threads(image, (S, S), pool))
            assert np.array_equal(got, np.asarray(image.resize((S, S)))), (cols, rows)
    assert any(tiling._vertical_pass_first((c * S, r * S), (S, S)) for c, r in GRID_SHAPES)
    assert not all(tiling._vertical_pass_first((c * S, r * S), (S, S)) for c, r in GRID_SHAPES)


def _pass_order_sizes() -> list[tuple[tuple[int, int], tuple[int, int]]]:
    """(size, target) pairs where the height shrinks by 2x the width's shrink - 1, exactly 2x, and + 1."""
    rng = np.random.default_rng(3)
    pairs = []
    for _ in range(40):
        width, new_width = sorted(int(v) for v in rng.integers(2, 400, 2))[::-1]
        for extra in (-1, 0, 1):
            new_height = int(rng.integers(2, 200))
            height = new_height + max(2 * (width - new_width) + extra, 1)
            pairs.append(((width, height), (new_width, new_height)))
    for _ in range(40):  # and anywhere
        width, height = (int(v) for v in rng.integers(2, 2000, 2))
        pairs.append(((width, height), (int(rng.integers(2, width + 1)), int(rng.integers(2, height + 1)))))
    return pairs


@pytest.mark.skipif(not tiling.SPLIT_RESIZE, reason="the two-thread resize is used with Pillow 13 only")
def test_pillow_pass_order_rule() -> None:
    """_vertical_pass_first is Pillow 13's rule: the two-thread resize equals Pillow's on both sides of it."""
    pairs = _pass_order_sizes()
    with ThreadPoolExecutor(max_workers=1) as pool:
        for i, (size, target) in enumerate(pairs):
            image = _noise(*size, seed=i)
            got = np.asarray(tiling._resize_on_two_threads(image, target, pool))
            assert np.array_equal(got, np.asarray(image.resize(target))), (size, target)
    orders = {tiling._vertical_pass_first(size, target) for size, target in pairs}
    assert orders == {True, False}


def _reference_pixel_values(image: Image.Image) -> torch.Tensor:
    """The card's per-tile build_transform over the card's tiles, stacked."""
    transform = ref.build_transform(input_size=S)
    return torch.stack([transform(t) for t in ref.dynamic_preprocess(image, image_size=S, use_thumbnail=True)])


@pytest.mark.parametrize("size", [(1240, 1754), (640, 480), (448, 448)])
def test_normalize_equals_card_transform(size: tuple[int, int]) -> None:
    image = _photo_like(*size, seed=size[0])
    expected = _reference_pixel_values(image)
    got = normalize_tiles(tile_image(image))
    serial = normalize_tiles(tile_image(image, parallel=False), parallel=False)
    assert torch.equal(serial, got)  # the second threads change nothing
    assert got.shape == expected.shape == (len(expected), 3, S, S)
    assert got.dtype == torch.float32 and got.is_contiguous()
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=0)
    # Same float32 operations in the same order as torchvision: equal bit for bit on CPU.
    assert torch.equal(got, expected)
    # And equal to the card's load_image as a whole.
    assert torch.equal(got, ref.load_image_pixels(image, input_size=S))
    # The torch arithmetic used on an accelerator, run here on the CPU, is the same too.
    on_device = _normalize_torch(torch.from_numpy(tile_image(image)))
    assert on_device.is_contiguous() and torch.equal(on_device, expected)


def test_normalize_covers_every_byte_value() -> None:
    values = np.arange(256, dtype=np.uint8)
    tiles = np.broadcast_to(values[None, :, None, None], (1, 256, 4, 3)).copy()  # H=256, W=4
    got = normalize_tiles(tiles)
    on_device = _normalize_torch(torch.from_numpy(tiles))
    for c in range(3):
        expected = (values.astype(np.float32) / np.float32(255) - np.float32(ref.IMAGENET_MEAN[c])) / np.float32(
            ref.IMAGENET_STD[c]
        )
        assert np.array_equal(got[0, c, :, 0].numpy(), expected)
        assert np.array_equal(on_device[0, c, :, 0].numpy(), expected)


def test_normalize_dtype_and_input_types() -> None:
    tiles = tile_image(_photo_like(900, 600, seed=11))
    full = normalize_tiles(tiles)
    half = normalize_tiles(torch.from_numpy(tiles), dtype=torch.bfloat16)
    assert half.dtype == torch.bfloat16 and half.shape == full.shape == (len(tiles), 3, S, S)
    assert torch.equal(half, full.to(torch.bfloat16))
    f64 = normalize_tiles(tiles, dtype=torch.float64)
    assert f64.dtype == torch.float64 and torch.equal(f64, full.double())


def test_normalize_rejects_wrong_tiles() -> None:
    with pytest.raises(ValueError, match="uint8"):
        normalize_tiles(np.zeros((2, S, S, 3), dtype=np.float32))
    with pytest.raises(ValueError, match="shape"):
        normalize_tiles(np.zeros((S, S, 3), dtype=np.uint8))
