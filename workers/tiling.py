"""InternVL dynamic resolution: cut a page into 448 px tiles (+ a thumbnail).

The grid choice and the pixels equal the reference ``dynamic_preprocess`` of the
InternVL model cards tile for tile (benchmarks/reference_internvl.py holds that
reference; tests/test_tiling.py proves the equality).
Tiles come out as one uint8 array ``(n, size, size, 3)``; normalisation is a
separate, vectorised step (:func:`normalize_tiles`) that an engine runs on its
device.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
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
    parallel: bool = True,
) -> np.ndarray:
    """Cut ``image`` into InternVL tiles: uint8 array of shape (n, image_size, image_size, 3).

    Tiles are in row-major grid order, the thumbnail (whole page squeezed to one
    tile) last, exactly as the reference ``dynamic_preprocess`` after the model
    card's ``convert("RGB")``. The two resizes (to the grid, and to the thumbnail)
    are the whole cost; Pillow releases the GIL while resizing, so with
    ``parallel`` the thumbnail is resized on a second thread meanwhile. Each
    resize is the same call as the reference's, so the pixels are unchanged.
    """
    if image.mode != "RGB":
        image = image.convert("RGB")
    image.load()  # a lazily decoded file must not be loaded from two threads at once
    width, height = image.size
    cols, rows = choose_grid(width, height, min_tiles=min_tiles, max_tiles=max_tiles, image_size=image_size)
    blocks = cols * rows
    extra = 1 if use_thumbnail and blocks != 1 else 0
    out = np.empty((blocks + extra, image_size, image_size, 3), dtype=np.uint8)
    pool = ThreadPoolExecutor(max_workers=1) if parallel and extra else None
    try:
        thumbnail = pool.submit(image.resize, (image_size, image_size)) if pool else None
        grid_size = (cols * image_size, rows * image_size)
        # Already grid-sized (a page rendered for this grid): Pillow's resize would return a copy.
        resized = np.asarray(image if image.size == grid_size else image.resize(grid_size))
        # (rows*S, cols*S, 3) -> (rows, S, cols, S, 3) -> (rows, cols, S, S, 3) is a view, and so
        # is ``out`` seen as (rows, cols, S, S, 3): the tiles are cut by one copy, no per-tile crop.
        out[:blocks].reshape(rows, cols, image_size, image_size, 3)[...] = resized.reshape(
            rows, image_size, cols, image_size, 3
        ).swapaxes(1, 2)
        if extra:
            thumb = thumbnail.result() if thumbnail else image.resize((image_size, image_size))
            out[blocks] = np.asarray(thumb)
    finally:
        if pool:
            pool.shutdown(wait=True)
    return out


def normalize_tiles(
    tiles: "np.ndarray | torch.Tensor",
    *,
    device: "str | torch.device" = "cpu",
    dtype: "torch.dtype | None" = None,
) -> "torch.Tensor":
    """uint8 (n, H, W, 3) tiles -> contiguous float (n, 3, H, W), ImageNet mean/std, on ``device``.

    The arithmetic is torchvision's ``ToTensor`` + ``Normalize`` in float32 in the
    same order (x / 255, - mean, / std), so on the CPU the values equal the model
    card's bit for bit (on a GPU, torch may divide by 255 as a multiply by 1/255:
    within 1 ulp). On the CPU it runs in NumPy (single-threaded, no thread-pool
    contention between worker processes); elsewhere the uint8 tiles are moved
    first (4x fewer bytes over PCIe than floats) and normalised there.
    ``dtype`` (e.g. ``torch.bfloat16``) is applied last.
    """
    import torch

    shape = tuple(tiles.shape)
    if tiles.dtype not in (np.uint8, torch.uint8) or len(shape) != 4 or shape[-1] != 3:
        raise ValueError(f"expected uint8 tiles of shape (n, H, W, 3), got {tiles.dtype} {shape}")
    if torch.device(device).type == "cpu":
        array = tiles.numpy(force=True) if isinstance(tiles, torch.Tensor) else np.asarray(tiles)
        out = torch.from_numpy(_normalize_numpy(array))
    else:
        out = _normalize_torch(torch.as_tensor(tiles).to(device, non_blocking=True))
    return out.to(dtype) if dtype is not None and dtype != torch.float32 else out


def _normalize_numpy(tiles: np.ndarray) -> np.ndarray:
    out = np.empty((tiles.shape[0], 3, tiles.shape[1], tiles.shape[2]), dtype=np.float32)
    np.copyto(out, tiles.transpose(0, 3, 1, 2), casting="unsafe")  # uint8 -> float32, HWC -> CHW, one pass
    out /= np.float32(255)
    out -= np.asarray(IMAGENET_MEAN, dtype=np.float32).reshape(1, 3, 1, 1)
    out /= np.asarray(IMAGENET_STD, dtype=np.float32).reshape(1, 3, 1, 1)
    return out


def _normalize_torch(t: "torch.Tensor") -> "torch.Tensor":
    import torch

    n, h, w, _ = t.shape
    out = torch.empty((n, 3, h, w), dtype=torch.float32, device=t.device)
    out.copy_(t.permute(0, 3, 1, 2))  # uint8 -> float32, HWC -> CHW, one pass
    mean = torch.tensor(IMAGENET_MEAN, dtype=torch.float32, device=t.device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, dtype=torch.float32, device=t.device).view(1, 3, 1, 1)
    return out.div_(255).sub_(mean).div_(std)
