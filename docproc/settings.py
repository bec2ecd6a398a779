"""One settings object for the whole of docproc, read from ``DOCPROC_*`` env vars."""

from __future__ import annotations

import re
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

REPO_ROOT = Path(__file__).resolve().parent.parent

# Tenants name Redis keys and storage paths; key hashes are lowercase sha256 hex.
TENANT_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
SHA256_RE = re.compile(r"[0-9a-f]{64}")


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

    # --- service -------------------------------------------------------------
    # The queued service (api/ + workers/): Redis, storage, auth, time limits.
    redis_url: str = Field(
        "redis://127.0.0.1:6379/0", description="Redis for the Celery broker and the job state (one server)."
    )
    storage_url: str = Field(
        "file://./var/docproc",
        description='Where inputs and results live: "s3://bucket/prefix" or "file:///abs/dir" '
        "(a relative file:// path is taken from the working directory).",
    )
    s3_endpoint_url: str | None = Field(
        None, description="S3-compatible endpoint (moto, MinIO, ...); None: AWS itself."
    )
    s3_region: str = "us-east-1"
    presign_expiry_s: int = Field(300, ge=1, le=604800, description="Lifetime of presigned result URLs.")
    api_keys: dict[str, str] = Field(
        default_factory=dict,
        description='tenant -> sha256 hex of its API key (hashed at rest); JSON in the env, '
        'e.g. DOCPROC_API_KEYS=\'{"acme": "9f86d0..."}\'.',
    )
    rate_limit_per_minute: int = Field(600, ge=0, description="Requests per API key per minute (0: no limit).")
    visibility_timeout_s: int = Field(
        7200,
        description="Redis broker: an unacked task is redelivered after this long; keep it above task_time_limit_s.",
    )
    task_soft_time_limit_s: int = 1800
    task_time_limit_s: int = 1900
    inference_timeout_s: int = Field(
        1500, description="Own timeout around one engine call (solo pools ignore time limits)."
    )
    max_attempts: int = Field(3, ge=1, description="Most deliveries of one job page (poison-document guard).")
    idempotency_ttl_s: int = Field(86400, ge=1, description="How long an Idempotency-Key keeps answering with its job.")
    source_buckets: list[str] = Field(
        default_factory=list,
        description="S3 buckets a job's source_uri may name (POST /v1/jobs with JSON); empty: none. "
        'JSON in the env, e.g. DOCPROC_SOURCE_BUCKETS=\'["invoices-in"]\'.',
    )

    # --- housekeeping (workers/periodic.py, run by `celery beat`) ----------------
    periodic_interval_s: float = Field(
        15.0, gt=0, description="How often the scheduler (celery beat) sends each housekeeping tick."
    )
    ended_sweep_after_s: float = Field(
        60.0, gt=0, description="A job ended this long ago whose after-end steps (webhook, batch count) "
        "did not complete (its worker died) gets them run again by the sweep.",
    )

    # --- webhooks (docproc/webhooks.py, workers/webhook_tasks.py) ----------------

    # --- batches and re-processing (docproc/batches.py, docproc/reprocess.py) ----

    # --- observability (docproc/metrics.py, docproc/logs.py, docproc/tracing.py) --

    # --- model worker: cross-job batching, memory guard, page leases -------------

    # --- OpenAI-compatible engine (workers/engines/openai.py) --------------------

    # --- reliability (docproc/watchdog.py) ---------------------------------------

    @field_validator("api_keys")
    @classmethod
    def _api_keys_are_hashes(cls, value: dict[str, str]) -> dict[str, str]:
        for tenant, digest in value.items():
            if not TENANT_RE.fullmatch(tenant):
                raise ValueError(f"api_keys: tenant {tenant!r} must match {TENANT_RE.pattern}")
            if not SHA256_RE.fullmatch(digest):
                raise ValueError(f"api_keys[{tenant!r}] must be the sha256 hex of the key, not the key")
        return value


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
