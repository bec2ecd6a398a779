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
import PIL
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
    are the whole cost, and Pillow releases the GIL while resizing, so with
    ``parallel`` a second thread shares them: it resizes the thumbnail while this
    one resizes to the grid, or, for a page already rendered at its grid (where the
    thumbnail is the only resize), half of each of the thumbnail's two passes
    (:func:`_resize_on_two_threads`). The pixels are Pillow's either way.
    """
    if image.mode != "RGB":
        image = image.convert("RGB")
    image.load()  # a lazily decoded file must not be loaded from two threads at once
    width, height = image.size
    cols, rows = choose_grid(width, height, min_tiles=min_tiles, max_tiles=max_tiles, image_size=image_size)
    blocks = cols * rows
    extra = 1 if use_thumbnail and blocks != 1 else 0
    thumb_size = (image_size, image_size)
    grid_size = (cols * image_size, rows * image_size)
    out = np.empty((blocks + extra, image_size, image_size, 3), dtype=np.uint8)
    pool = ThreadPoolExecutor(max_workers=1) if parallel and extra else None
    try:
        if image.size == grid_size:  # a page rendered for this grid: the tiles are its own pixels
            _cut_grid(out[:blocks], np.asarray(image), cols, rows)
            if extra:
                thumbnail = _resize_on_two_threads(image, thumb_size, pool) if pool else image.resize(thumb_size)
                out[blocks] = np.asarray(thumbnail)
        else:
            thumbnail = pool.submit(image.resize, thumb_size) if pool else None
            _cut_grid(out[:blocks], np.asarray(image.resize(grid_size)), cols, rows)
            if extra:
                out[blocks] = np.asarray(thumbnail.result() if thumbnail else image.resize(thumb_size))
    finally:
        if pool:
            pool.shutdown(wait=True)
    return out


def _cut_grid(out: np.ndarray, page: np.ndarray, cols: int, rows: int) -> None:
    """Copy the (rows*S, cols*S, 3) ``page`` into ``out`` (rows*cols, S, S, 3), row-major.

    (rows*S, cols*S, 3) -> (rows, S, cols, S, 3) -> (rows, cols, S, S, 3) is a view, and so
    is ``out`` seen as (rows, cols, S, S, 3): the tiles are cut by one copy, no per-tile crop.
    """
    size = out.shape[1]
    out.reshape(rows, cols, size, size, 3)[...] = page.reshape(rows, size, cols, size, 3).swapaxes(1, 2)


PILLOW_MAJOR = int(PIL.__version__.split(".")[0])
SPLIT_RESIZE = PILLOW_MAJOR == 13
"""Whether :func:`_resize_on_two_threads` may be used: it relies on the order of
Pillow's two resize passes (:func:`_vertical_pass_first`), checked for Pillow 13 only.
With another Pillow, a grid-sized page's thumbnail is one ``resize`` call."""


def _vertical_pass_first(size: tuple[int, int], target: tuple[int, int]) -> bool:
    """Whether Pillow 13's ``resize`` from ``size`` to ``target`` runs its vertical pass first.

    A resize is two separable passes, each rounding to 8 bits, so their order shows
    in the pixels. Up to Pillow 12 it was horizontal, then vertical; Pillow 13
    (python-pillow/Pillow#9549) runs the vertical pass first when the height shrinks
    by more than twice as many pixels as the width. tests/test_tiling.py checks this
    rule against Pillow's own resize, on both sides of the boundary.
    """
    (width, height), (new_width, new_height) = size, target
    return new_height < height and height - new_height > 2 * (width - new_width)


def _resize_on_two_threads(image: Image.Image, size: tuple[int, int], pool: ThreadPoolExecutor) -> Image.Image:
    """``image.resize(size)`` (bicubic, shrinking), computed by two threads.

    Pillow's resize is two passes (one per axis) in the order
    :func:`_vertical_pass_first` gives. They are run here as two one-axis resizes
    in that order: a one-axis resize is exactly that pass of Pillow's two, and its
    lines (rows for the width, columns for the height) do not depend on each other,
    so each thread resizes half of them. A size that grows, or another Pillow than
    13 (:data:`SPLIT_RESIZE`), is one ``resize`` call.
    """
    width, height = image.size
    if not SPLIT_RESIZE or size[0] > width or size[1] > height or min(width, height, *size) < 2:
        return image.resize(size)
    middle = (width, size[1]) if _vertical_pass_first(image.size, size) else (size[0], height)
    return _resize_one_axis(_resize_one_axis(image, middle, pool), size, pool)


def _resize_one_axis(image: Image.Image, size: tuple[int, int], pool: ThreadPoolExecutor) -> Image.Image:
    """``image.resize(size)`` for a ``size`` that differs from the image's along one
    axis at most: half of the lines on ``pool``'s thread, half on this one."""
    width, height = image.size
    if size == image.size:
        return image
    if size[0] != width:  # horizontal pass: rows are independent
        mid = height // 2
        boxes = [(0, 0, width, mid), (0, mid, width, height)]
        sizes = [(size[0], mid), (size[0], height - mid)]
        corners = [(0, 0), (0, mid)]
    else:  # vertical pass: columns are independent
        mid = width // 2
        boxes = [(0, 0, mid, height), (mid, 0, width, height)]
        sizes = [(mid, size[1]), (width - mid, size[1])]
        corners = [(0, 0), (mid, 0)]
    first = pool.submit(lambda: image.crop(boxes[0]).resize(sizes[0]))
    second = image.crop(boxes[1]).resize(sizes[1])
    out = Image.new(image.mode, size)
    out.paste(first.result(), corners[0])
    out.paste(second, corners[1])
    return out


def normalize_tiles(
    tiles: "np.ndarray | torch.Tensor",
    *,
    device: "str | torch.device" = "cpu",
    dtype: "torch.dtype | None" = None,
    parallel: bool = True,
) -> "torch.Tensor":
    """uint8 (n, H, W, 3) tiles -> contiguous float (n, 3, H, W), ImageNet mean/std, on ``device``.

    The arithmetic is torchvision's ``ToTensor`` + ``Normalize`` in float32 in the
    same order (x / 255, - mean, / std), so on the CPU the values equal the model
    card's bit for bit (on a GPU, torch may divide by 255 as a multiply by 1/255:
    within 1 ulp). On the CPU it runs in NumPy, which releases the GIL: with
    ``parallel`` a second thread normalises half of the tiles (two threads at most,
    not torch's pool of one per core that worker processes would contend for).
    Elsewhere the uint8 tiles are moved first (4x fewer bytes over PCIe than
    floats) and normalised there. ``dtype`` (e.g. ``torch.bfloat16``) is applied last.
    """
    import torch

    shape = tuple(tiles.shape)
    if tiles.dtype not in (np.uint8, torch.uint8) or len(shape) != 4 or shape[-1] != 3:
        raise ValueError(f"expected uint8 tiles of shape (n, H, W, 3), got {tiles.dtype} {shape}")
    if torch.device(device).type == "cpu":
        array = tiles.numpy(force=True) if isinstance(tiles, torch.Tensor) else np.asarray(tiles)
        out = torch.from_numpy(_normalize_numpy(array, parallel=parallel))
    else:
        out = _normalize_torch(torch.as_tensor(tiles).to(device, non_blocking=True))
    return out.to(dtype) if dtype is not None and dtype != torch.float32 else out


_MEAN = np.asarray(IMAGENET_MEAN, dtype=np.float32).reshape(3, 1, 1)
_STD = np.asarray(IMAGENET_STD, dtype=np.float32).reshape(3, 1, 1)


def _normalize_numpy(tiles: np.ndarray, parallel: bool = False) -> np.ndarray:
    """(n, H, W, 3) uint8 -> (n, 3, H, W) float32; with ``parallel``, half of the tiles on a second thread."""
    out = np.empty((tiles.shape[0], 3, tiles.shape[1], tiles.shape[2]), dtype=np.float32)
    half = len(tiles) // 2
    if not (parallel and half):
        _normalize_into(out, tiles)
        return out
    with ThreadPoolExecutor(max_workers=1) as pool:
        first = pool.submit(_normalize_into, out[:half], tiles[:half])
        _normalize_into(out[half:], tiles[half:])
        first.result()
    return out


def _normalize_into(out: np.ndarray, tiles: np.ndarray) -> None:
    """One tile at a time, so its floats (2.4 MB at 448 px) stay in cache between the four passes."""
    for tile, dst in zip(tiles, out):
        np.copyto(dst, tile.transpose(2, 0, 1), casting="unsafe")  # uint8 -> float32, HWC -> CHW, one pass
        dst /= np.float32(255)
        dst -= _MEAN
        dst /= _STD


def _normalize_torch(t: "torch.Tensor") -> "torch.Tensor":
    import torch

    n, h, w, _ = t.shape
    out = torch.empty((n, 3, h, w), dtype=torch.float32, device=t.device)
    out.copy_(t.permute(0, 3, 1, 2))  # uint8 -> float32, HWC -> CHW, one pass
    mean = torch.tensor(IMAGENET_MEAN, dtype=torch.float32, device=t.device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, dtype=torch.float32, device=t.device).view(1, 3, 1, 1)
    return out.div_(255).sub_(mean).div_(std)
