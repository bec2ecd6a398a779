"""The InternVL model cards' image preprocessing, kept as the reference docproc must equal.

``find_closest_aspect_ratio`` and ``dynamic_preprocess`` are the code published in the
"Quick Start" of the OpenGVLab InternVL2_5 / InternVL3 Hugging Face model cards, copied
as written (only blank lines and comments trimmed). ``build_transform`` is the card's
torchvision pipeline ``Lambda(convert RGB) -> Resize((s, s), BICUBIC) -> ToTensor ->
Normalize(IMAGENET_MEAN, IMAGENET_STD)`` rewritten with PIL + NumPy + torch, because
torchvision does not work with the CPU torch build here; every step does the same
float32 arithmetic in the same order as torchvision's ``to_tensor`` and ``normalize``.
``load_image_pixels`` is the card's ``load_image`` for an already opened image.

Used by tests/test_tiling.py (the equality proofs) and benchmarks/preprocess.py (the
seed-style baseline); do not "optimise" anything here.
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def to_tensor(pic: Image.Image) -> np.ndarray:
    """torchvision ``ToTensor`` for a uint8 RGB PIL image: (3, H, W) float32 in [0, 1]."""
    img = np.array(pic, dtype=np.uint8, copy=True)
    img = img.reshape(pic.size[1], pic.size[0], len(pic.getbands()))
    img = np.ascontiguousarray(img.transpose(2, 0, 1))
    return img.astype(np.float32) / np.float32(255)


def normalize(tensor: np.ndarray, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> np.ndarray:
    """torchvision ``Normalize``: (x - mean) / std per channel, in the tensor's dtype."""
    mean = np.asarray(mean, dtype=tensor.dtype).reshape(-1, 1, 1)
    std = np.asarray(std, dtype=tensor.dtype).reshape(-1, 1, 1)
    return (tensor - mean) / std


def build_transform(input_size):
    def transform(img: Image.Image) -> torch.Tensor:
        img = img.convert("RGB") if img.mode != "RGB" else img
        # T.Resize((s, s), BICUBIC) on a PIL image is PIL's resize with BICUBIC.
        img = img.resize((input_size, input_size), Image.Resampling.BICUBIC)
        return torch.from_numpy(normalize(to_tensor(img)))

    return transform


def find_closest_aspect_ratio(aspect_ratio, target_ratios, width, height, image_size):
    best_ratio_diff = float('inf')
    best_ratio = (1, 1)
    area = width * height
    for ratio in target_ratios:
        target_aspect_ratio = ratio[0] / ratio[1]
        ratio_diff = abs(aspect_ratio - target_aspect_ratio)
        if ratio_diff < best_ratio_diff:
            best_ratio_diff = ratio_diff
            best_ratio = ratio
        elif ratio_diff == best_ratio_diff:
            if area > 0.5 * image_size * image_size * ratio[0] * ratio[1]:
                best_ratio = ratio
    return best_ratio


def dynamic_preprocess(image, min_num=1, max_num=12, image_size=448, use_thumbnail=False):
    orig_width, orig_height = image.size
    aspect_ratio = orig_width / orig_height

    # calculate the existing image aspect ratio
    target_ratios = set(
        (i, j) for n in range(min_num, max_num + 1) for i in range(1, n + 1) for j in range(1, n + 1) if
        i * j <= max_num and i * j >= min_num)
    target_ratios = sorted(target_ratios, key=lambda x: x[0] * x[1])

    # find the closest aspect ratio to the target
    target_aspect_ratio = find_closest_aspect_ratio(
        aspect_ratio, target_ratios, orig_width, orig_height, image_size)

    # calculate the target width and height
    target_width = image_size * target_aspect_ratio[0]
    target_height = image_size * target_aspect_ratio[1]
    blocks = target_aspect_ratio[0] * target_aspect_ratio[1]

    # resize the image
    resized_img = image.resize((target_width, target_height))
    processed_images = []
    for i in range(blocks):
        box = (
            (i % (target_width // image_size)) * image_size,
            (i // (target_width // image_size)) * image_size,
            ((i % (target_width // image_size)) + 1) * image_size,
            ((i // (target_width // image_size)) + 1) * image_size
        )
        # split the image
        split_img = resized_img.crop(box)
        processed_images.append(split_img)
    assert len(processed_images) == blocks
    if use_thumbnail and len(processed_images) != 1:
        thumbnail_img = image.resize((image_size, image_size))
        processed_images.append(thumbnail_img)
    return processed_images


def load_image_pixels(image, input_size=448, max_num=12):
    """The card's ``load_image`` after ``Image.open``: RGB, tiles, per-tile transform, stack."""
    image = image.convert('RGB')
    transform = build_transform(input_size=input_size)
    images = dynamic_preprocess(image, image_size=input_size, use_thumbnail=True, max_num=max_num)
    pixel_values = [transform(image) for image in images]
    pixel_values = torch.stack(pixel_values)
    return pixel_values


class _SizeOnly:
    """Stands in for a PIL image of a given size: records what ``dynamic_preprocess`` resizes to."""

    def __init__(self, width, height):
        self.size = (width, height)
        self.resized_to = None

    def resize(self, size, *args, **kwargs):
        if self.resized_to is None:  # the first resize is the grid's; a second is the thumbnail
            self.resized_to = tuple(size)
        return self

    def crop(self, box):
        return box


def reference_grid(width, height, min_num=1, max_num=12, image_size=448):
    """(cols, rows) that the card's ``dynamic_preprocess`` picks for an image of this size.

    Runs ``dynamic_preprocess`` itself on a size-only stand-in (no pixels are resized),
    so the grid comes from the card's code, not from a copy of it.
    """
    probe = _SizeOnly(width, height)
    dynamic_preprocess(probe, min_num=min_num, max_num=max_num, image_size=image_size)
    target_width, target_height = probe.resized_to
    return target_width // image_size, target_height // image_size
