"""One settings object for the whole of docproc, read from ``DOCPROC_*`` env vars."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

REPO_ROOT = Path(__file__).resolve().parent.parent


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="DOCPROC_", env_file=".env", extra="ignore")

    # --- intake limits -------------------------------------------------------
    max_file_bytes: int = Field(100 * 1024 * 1024, description="Largest accepted upload, bytes.")
    max_pages: int = Field(500, description="Most pages a document may have.")
    max_image_pixels: int = Field(
        100_000_000, description="Most pixels an image page may declare (decompression-bomb guard)."
    )

    # --- render + tiling -----------------------------------------------------
    render_max_pixels: int = Field(
        12_000_000, description="Hard cap on the pixels of one rendered page."
    )
    render_max_dpi: float = Field(300.0, description="Never render a PDF page finer than this.")
    render_min_dpi: float = Field(72.0, description="Render at least this fine (text layer legibility).")
    tile_size: int = Field(448, description="InternVL tile edge in pixels.")
    min_tiles: int = Field(1, ge=1)
    max_tiles: int = Field(12, ge=1, description="InternVL dynamic-resolution tile budget per page.")
    use_thumbnail: bool = Field(True, description="Add a thumbnail tile when a page has >1 tile.")
    min_text_chars: int = Field(
        20, description="A page with fewer extractable characters has no usable text layer."
    )

    # --- model ---------------------------------------------------------------
    model: str = Field(
        "OpenGVLab/InternVL3-1B-hf",
        description="Hub id or local directory of an InternVL checkpoint in the native transformers format.",
    )
    model_revision: str | None = None
    device: str = Field("auto", description="auto | cpu | cuda | cuda:N")
    dtype: Literal["auto", "bfloat16", "float16", "float32"] = "auto"
    attn_implementation: Literal["auto", "flash_attention_2", "sdpa", "eager"] = "auto"
    trust_remote_code: bool = Field(False, description="Never on unless an operator opts in.")
    batch_size: int = Field(8, ge=1, description="Pages per batched generate call.")
    batch_tile_budget: int = Field(64, ge=1, description="Most image tiles per batched generate call.")
    text_layer_hint: bool = Field(True, description="Add a page's text layer to the prompt as a hint.")
    text_hint_max_chars: int = 4000
    max_new_tokens_ocr: int = 2048
    max_new_tokens_tables: int = 2048
    max_new_tokens_extract: int = 1024
    max_new_tokens_per_tile: int = Field(
        384, ge=1, description="Token budget per image tile; a page gets min(task cap, max(256, this x tiles))."
    )
    repetition_penalty_retry: float = 1.15
    repetition_guard_span: int = Field(
        200, ge=0, description="Stop a page whose last N generated tokens repeat one short unit (0: off)."
    )
    constrained_decoding: bool = Field(
        True, description="extract: constrain decoding to the schema's JSON grammar (xgrammar)."
    )

    # --- paths ---------------------------------------------------------------
    schemas_dir: Path = Field(REPO_ROOT / "extraction_schemas")


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
