"""InternVL dynamic resolution: cut a page into 448 px tiles (+ a thumbnail).

The grid choice and the pixels equal the reference ``dynamic_preprocess`` of the
InternVL model cards tile for tile (tests/test_tiling.py holds that reference).
Tiles come out as one uint8 array ``(n, size, size, 3)``; normalisation is a
separate, vectorised step (:func:`normalize_tiles`) that an engine runs on its
device.
"""

from __future__ import annotations

from functools import lru_cache
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

if TYPE_CHECKING:
    import torch

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@lru_cache(maxsize=64)
def target_ratios(min_tiles: int, max_tiles: int) -> tuple[tuple[int, int], ...]:
    """Every grid (cols, rows) with min_tiles <= cols*rows <= max_tiles, by tile count.

    Built exactly as the model card builds it (a set, then a stable sort on the
    product), because the order of equal products decides ties.
    """
    ratios = set(
        (i, j)
        for n in range(min_tiles, max_tiles + 1)
        for i in range(1, n + 1)
        for j in range(1, n + 1)
        if min_tiles <= i * j <= max_tiles
    )
    return tuple(sorted(ratios, key=lambda r: r[0] * r[1]))


def find_closest_aspect_ratio(
    aspect_ratio: float,
    ratios: tuple[tuple[int, int], ...],
    width: int,
    height: int,
    image_size: int,
) -> tuple[int, int]:
    """The grid whose aspect ratio is closest; on a tie the later (larger) grid
    wins when the image has more than half the pixels that grid would hold."""
    best_diff = float("inf")
    best = (1, 1)
    area = width * height
    for ratio in ratios:
        diff = abs(aspect_ratio - ratio[0] / ratio[1])
        if diff < best_diff:
            best_diff = diff
            best = ratio
        elif diff == best_diff and area > 0.5 * image_size * image_size * ratio[0] * ratio[1]:
            best = ratio
    return best


def choose_grid(
    width: int, height: int, *, min_tiles: int = 1, max_tiles: int = 12, image_size: int = 448
) -> tuple[int, int]:
    """(cols, rows) of the tile grid for an image of this size."""
    return find_closest_aspect_ratio(
        width / height, target_ratios(min_tiles, max_tiles), width, height, image_size
    )


def tile_count(
    width: int,
    height: int,
    *,
    min_tiles: int = 1,
    max_tiles: int = 12,
    image_size: int = 448,
    use_thumbnail: bool = True,
) -> int:
    """How many tiles :func:`tile_image` returns for an image of this size."""
    cols, rows = choose_grid(width, height, min_tiles=min_tiles, max_tiles=max_tiles, image_size=image_size)
    blocks = cols * rows
    return blocks + (1 if use_thumbnail and blocks != 1 else 0)


def tile_image(
    image: Image.Image,
    *,
    min_tiles: int = 1,
    max_tiles: int = 12,
    image_size: int = 448,
    use_thumbnail: bool = True,
) -> np.ndarray:
    """Cut ``image`` into InternVL tiles: uint8 array of shape (n, image_size, image_size, 3).

    Tiles are in row-major grid order, the thumbnail (whole page squeezed to one
    tile) last, exactly as the reference ``dynamic_preprocess``.
    """
    if image.mode != "RGB":
        image = image.convert("RGB")
    width, height = image.size
    cols, rows = choose_grid(width, height, min_tiles=min_tiles, max_tiles=max_tiles, image_size=image_size)
    resized = np.asarray(image.resize((cols * image_size, rows * image_size)))
    # (rows*S, cols*S, 3) -> (rows, S, cols, S, 3) -> (rows, cols, S, S, 3): a view, no per-tile crop.
    grid = resized.reshape(rows, image_size, cols, image_size, 3).swapaxes(1, 2)
    blocks = cols * rows
    extra = 1 if use_thumbnail and blocks != 1 else 0
    out = np.empty((blocks + extra, image_size, image_size, 3), dtype=np.uint8)
    out[:blocks] = grid.reshape(blocks, image_size, image_size, 3)
    if extra:
        out[blocks] = np.asarray(image.resize((image_size, image_size)))
    return out


def normalize_tiles(
    tiles: "np.ndarray | torch.Tensor",
    *,
    device: "str | torch.device" = "cpu",
    dtype: "torch.dtype | None" = None,
) -> "torch.Tensor":
    """uint8 (n, H, W, 3) tiles -> float (n, 3, H, W), ImageNet mean/std, on ``device``.

    The uint8 tiles are moved first (4x fewer bytes over PCIe than floats), then
    scaled and normalised there in one fused expression.
    """
    import torch

    t = torch.as_tensor(tiles).to(device, non_blocking=True)
    work = torch.float32
    mean = torch.tensor(IMAGENET_MEAN, device=t.device, dtype=work).view(1, 3, 1, 1) * 255.0
    inv_std = 1.0 / (torch.tensor(IMAGENET_STD, device=t.device, dtype=work).view(1, 3, 1, 1) * 255.0)
    out = (t.permute(0, 3, 1, 2).to(work) - mean) * inv_std
    return out.to(dtype) if dtype is not None else out
