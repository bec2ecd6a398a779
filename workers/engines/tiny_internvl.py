"""Randomly initialised InternVL checkpoints of the real architecture, for tests and benchmarks.

:func:`build_tiny_internvl` writes a complete native-transformers checkpoint
(``config.json``, safetensors weights, ``generation_config.json``, a byte-level
Qwen2 tokenizer with InternVL's image tokens and the InternVL ``-hf`` chat
template, and the GotOcr2 image-processor config) to a directory, so the very
code users run (``InternVLEngine(Settings(model=<dir>)).load()``) loads it back.

Architecture: InternViT vision tower + pixel-shuffle projector + Qwen2 text
model, i.e. ``InternVLForConditionalGeneration``, at toy sizes. The vision tower
keeps the pipeline's 448 px tiles: ``image_size=448`` with ``patch_size=56``
gives 8 x 8 = 64 patches per tile, and the 0.5 pixel-shuffle downsample leaves
``image_seq_length = (448 / 56)^2 * 0.5^2 = 16`` image tokens per tile.

:func:`internvl_config` also gives the configs of the real InternVL3-1B/2B/8B
(InternViT-300M + Qwen2.5-0.5B/1.5B/7B) for benchmarks on random weights of the
real size (:func:`real_size_tokenizer` fills the vocabulary so that every id decodes), and
:func:`save_checkpoint` writes such a model to disk for a vLLM server to load. The
outputs of random weights are noise; only their cost is real.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from workers.prompts import INTERNVL_HF_CHAT_TEMPLATE

if TYPE_CHECKING:
    from transformers import InternVLConfig, PreTrainedTokenizerBase

ModelSize = Literal["tiny", "1b", "2b", "8b"]

IMAGE_TOKENS = {
    "start_image_token": "<img>",
    "end_image_token": "</img>",
    "context_image_token": "<IMG_CONTEXT>",
    "video_token": "<video>",
}

# InternViT-300M-448px (the vision tower of InternVL3-1B/2B/8B).
_INTERNVIT_300M: dict[str, Any] = dict(
    hidden_size=1024,
    num_hidden_layers=24,
    num_attention_heads=16,
    intermediate_size=4096,
    image_size=448,
    patch_size=14,
    attention_bias=True,
    norm_type="layer_norm",
    layer_norm_eps=1e-6,
)

# Qwen2.5 text models of InternVL3-1B / 2B / 8B.
_QWEN25: dict[str, dict[str, Any]] = {
    "1b": dict(hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
               num_attention_heads=14, num_key_value_heads=2),
    "2b": dict(hidden_size=1536, intermediate_size=8960, num_hidden_layers=28,
               num_attention_heads=12, num_key_value_heads=2),
    "8b": dict(hidden_size=3584, intermediate_size=18944, num_hidden_layers=28,
               num_attention_heads=28, num_key_value_heads=4),
}
REAL_VOCAB_SIZE = 151674  # InternVL3 (Qwen2.5 vocabulary + InternVL's added tokens)


ADDED_TOKENS = 3 + len(IMAGE_TOKENS)  # <|endoftext|>, <|im_start|>, <|im_end|> and the image tokens


def build_tiny_tokenizer(vocab_size: int | None = None) -> "PreTrainedTokenizerBase":
    """A byte-level Qwen2 tokenizer (256 byte symbols, no merges) with ChatML and image tokens.

    ``vocab_size`` (random weights of the real size): the vocabulary is filled up to that many
    ids with three-character ASCII words, so that every id a random model writes decodes to
    text (a server streams text; TTFT is its first piece). Without merges no prompt ever
    encodes to them: prompts are the same as with the 256-symbol vocabulary."""
    from itertools import product
    from string import ascii_letters, digits

    from tokenizers.pre_tokenizers import ByteLevel
    from transformers import Qwen2Tokenizer

    alphabet = sorted(ByteLevel.alphabet())
    vocab = {symbol: i for i, symbol in enumerate(alphabet)}
    if vocab_size is not None:
        words = ("".join(w) for w in product(ascii_letters + digits, repeat=3))
        while len(vocab) < vocab_size - ADDED_TOKENS:
            vocab.setdefault(next(words), len(vocab))
    tokenizer = Qwen2Tokenizer(
        vocab=vocab,
        merges=[],
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token="<|endoftext|>",
        extra_special_tokens=dict(IMAGE_TOKENS),
    )
    tokenizer.add_tokens(
        ["<|endoftext|>", "<|im_start|>", "<|im_end|>", *IMAGE_TOKENS.values()],
        special_tokens=True,
    )
    tokenizer.chat_template = INTERNVL_HF_CHAT_TEMPLATE
    tokenizer.padding_side = "left"
    return tokenizer


def internvl_config(
    size: ModelSize,
    tokenizer: "PreTrainedTokenizerBase",
    *,
    image_size: int = 448,
    patch_size: int = 56,
    vocab_size: int | None = None,
) -> "InternVLConfig":
    """The InternVLConfig of a model of ``size``; special-token ids come from ``tokenizer``.

    ``tiny``: toy widths, ``image_size``/``patch_size`` as given (448/56 -> 16 tokens a
    tile). ``1b``/``2b``/``8b``: InternViT-300M (448 px, patch 14 -> 256 tokens a
    tile) + Qwen2.5-0.5B/1.5B/7B, vocabulary ``vocab_size`` (default: the real 151,674).
    """
    from transformers import InternVLConfig, InternVLVisionConfig, Qwen2Config

    ids = {name: tokenizer.convert_tokens_to_ids(tok) for name, tok in IMAGE_TOKENS.items()}
    eos_id = tokenizer.convert_tokens_to_ids("<|im_end|>")
    pad_id = tokenizer.pad_token_id
    if size == "tiny":
        vision = InternVLVisionConfig(
            hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
            image_size=image_size, patch_size=patch_size, attention_bias=True,
        )
        # head_dim 64: the smallest a vLLM CPU attention kernel takes (16 fails there)
        text_kwargs: dict[str, Any] = dict(
            hidden_size=128, intermediate_size=256, num_hidden_layers=2,
            num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=32768,
        )
        vocab = vocab_size or len(tokenizer)
    elif size in _QWEN25:
        vision = InternVLVisionConfig(**_INTERNVIT_300M)
        text_kwargs = dict(_QWEN25[size], max_position_embeddings=32768, rope_theta=1_000_000.0)
        vocab = vocab_size or REAL_VOCAB_SIZE
    else:
        raise ValueError(f"unknown model size {size!r}; choose tiny, 1b, 2b or 8b")
    if vocab < len(tokenizer):
        raise ValueError(f"vocab_size {vocab} is smaller than the tokenizer ({len(tokenizer)})")
    text = Qwen2Config(vocab_size=vocab, eos_token_id=eos_id, pad_token_id=pad_id,
                       bos_token_id=None, tie_word_embeddings=False, **text_kwargs)
    downsample = 0.5
    vision_image, vision_patch = vision.image_size[0], vision.patch_size[0]
    if vision_image % vision_patch or (vision_image // vision_patch) % 2:
        raise ValueError("image_size / patch_size must be an even whole number (pixel shuffle 0.5)")
    seq_len = int((vision_image // vision_patch) ** 2 * downsample**2)
    config = InternVLConfig(
        vision_config=vision,
        text_config=text,
        image_token_id=ids["context_image_token"],
        image_seq_length=seq_len,
        downsample_ratio=downsample,
        tie_word_embeddings=False,
    )
    config.architectures = ["InternVLForConditionalGeneration"]
    return config


def random_internvl(
    config: "InternVLConfig",
    *,
    seed: int = 0,
    device: str = "cpu",
    dtype: Any = None,
    attn_implementation: str | None = None,
):
    """A randomly initialised ``InternVLForConditionalGeneration`` (seeded), built on ``device``."""
    import torch
    from transformers import InternVLForConditionalGeneration

    torch.manual_seed(seed)
    kwargs: dict[str, Any] = {}
    if dtype is not None:
        kwargs["dtype"] = dtype
    if attn_implementation is not None:
        kwargs["attn_implementation"] = attn_implementation
    with torch.device(device):
        model = InternVLForConditionalGeneration._from_config(config, **kwargs)
    model.generation_config.eos_token_id = config.text_config.eos_token_id
    model.generation_config.pad_token_id = config.text_config.pad_token_id
    model.generation_config.bos_token_id = None
    return model.eval()


def save_checkpoint(model: Any, tokenizer: "PreTrainedTokenizerBase", directory: str | Path,
                    *, max_patches: int = 12) -> Path:
    """Write ``model`` and ``tokenizer`` as a complete checkpoint that transformers and vLLM
    load: weights and config, tokenizer, the GotOcr2 image-processor config and the
    processor's own config. Returns the directory."""
    from transformers import GotOcr2ImageProcessorPil
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    config = model.config
    size = config.vision_config.image_size
    image_size = size[0] if isinstance(size, (list, tuple)) else size
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    GotOcr2ImageProcessorPil(
        size={"height": image_size, "width": image_size},
        crop_to_patches=True,
        min_patches=1,
        max_patches=max_patches,
        image_mean=[0.485, 0.456, 0.406],
        image_std=[0.229, 0.224, 0.225],
    ).save_pretrained(out)
    # The processor's own config: vLLM reads image_seq_length from it (without it, 256 is
    # assumed and the first image request fails on a placeholder count mismatch).
    (out / "processor_config.json").write_text(
        json.dumps({"image_seq_length": config.image_seq_length, "processor_class": "InternVLProcessor"}, indent=2)
    )
    return out


def real_size_tokenizer() -> "PreTrainedTokenizerBase":
    """The tokenizer of random weights of the real size: the real vocabulary's size."""
    return build_tiny_tokenizer(vocab_size=REAL_VOCAB_SIZE)


def build_tiny_internvl(
    directory: str | Path,
    *,
    seed: int = 0,
    image_size: int = 448,
    patch_size: int = 56,
) -> Path:
    """Write a tiny random InternVL checkpoint (model, tokenizer, image processor) to ``directory``.

    Deterministic: the same ``seed`` gives the same weights. Returns the directory.
    """
    tokenizer = build_tiny_tokenizer()
    config = internvl_config("tiny", tokenizer, image_size=image_size, patch_size=patch_size)
    return save_checkpoint(random_internvl(config, seed=seed), tokenizer, directory)
