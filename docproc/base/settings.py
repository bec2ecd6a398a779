"""One settings object for the whole of docproc, read from ``DOCPROC_*`` env vars."""

from __future__ import annotations

import re
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

REPO_ROOT = Path(__file__).resolve().parents[2]

# Tenants name Redis keys and storage paths; key hashes are lowercase sha256 hex.
TENANT_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
SHA256_RE = re.compile(r"[0-9a-f]{64}")


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="DOCPROC_", env_file=".env", extra="ignore")

    # --- intake limits -------------------------------------------------------
    max_file_bytes: int = Field(100 * 1024 * 1024, description="Largest accepted upload, bytes.")
    request_body_timeout_s: float = Field(
        600.0, gt=0, description="A request body (upload, JSON) must arrive within this many seconds from its "
        "first read, else 408 request_timeout: a client trickling bytes cannot hold a connection for ever.",
    )
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
        20, description="A page with fewer extractable characters beside an image (a page number on a scan) is "
        "sent to the model; alone on the page, short text is read as text (workers/text_routing.py).",
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
    batch_size: int = Field(
        16, ge=1, description="Pages per batched generate call (on an H200 at 1B, 16 pages ran 6.3-7.3x "
        "faster than one call per page: README, Performance).",
    )
    batch_tile_budget: int = Field(
        0, ge=0, description="Most image tiles per batched generate call; 0: 256 on CUDA (where the memory "
        "guard lowers it to what the free memory holds), 64 on the CPU (no guard there).",
    )
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
    extract_min_free_tokens: int = Field(
        256, ge=0, description="A constrained extract page gets at least this many tokens to write before the "
        "schema's closing reserve (the tokens that always finish its JSON) begins: its budget is raised to "
        "reserve + this when lower.",
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
    intake_runs_single_page: bool = Field(
        True, description="A one-page job's text page runs inside its intake task when that worker consumes the "
        "page's queue (no second task, download or parse); false: every page is a docproc.page task of its own.",
    )
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
    retention_s: int = Field(
        30 * 86400, ge=0, description="How long the Redis records of ended work (a job, its pages, its webhook "
        "events and attempt log, a finished batch) are kept after it ended; then the periodic purge deletes "
        "them and their API reads answer 404. 0 keeps them forever. S3 objects are never deleted by docproc: "
        "give the bucket a lifecycle rule.",
    )
    retention_batch: int = Field(1000, ge=1, description="Most jobs one purge tick deletes.")

    # --- webhooks (docproc/delivery/webhooks.py, workers/webhook_tasks.py) ----------------
    webhook_secrets: dict[str, list[str]] = Field(
        default_factory=dict,
        description="tenant -> its webhook signing secrets (whsec_ + base64), newest first; during a rotation "
        'two, and every request carries both signatures. JSON in the env, e.g. DOCPROC_WEBHOOK_SECRETS='
        '\'{"acme": ["whsec_..."]}\'. A tenant without one cannot ask for webhooks (webhook_not_configured).',
    )
    webhook_timeout_s: float = Field(
        10.0, gt=0, description="Total deadline of one webhook delivery attempt: connect, TLS, request, the "
        "receiver's status line and headers, its body; a receiver trickling bytes is cut at it.",
    )
    webhook_concurrency: int = Field(
        16, ge=1, description="Deliveries one webhook worker (`docproc worker -Q webhooks`, threads pool) "
        "makes at once.",
    )
    webhook_retry_schedule_s: list[float] = Field(
        default_factory=lambda: [0, 5, 300, 1800, 7200, 18000, 36000, 50400, 72000, 86400],
        min_length=1,
        description="Delay before each delivery attempt, from the previous one (the first is normally 0); "
        "after the last attempt fails the event is dead-lettered.",
    )
    webhook_retry_jitter: float = Field(
        0.1, ge=0, le=1, description="Each retry delay is multiplied by a random factor in [1-j, 1+j]."
    )
    webhook_retry_after_max_s: float = Field(
        86400.0, ge=0, description="A receiver's Retry-After is honoured up to this many seconds."
    )
    webhook_countdown_max_s: float = Field(
        60.0, ge=0, description="Retries due within this many seconds are sent as Celery countdowns; later "
        "ones wait in Redis for the periodic webhooks_due tick (keeps ETAs far below the visibility timeout).",
    )
    webhook_lease_s: float = Field(
        120.0, gt=0, description="A delivery enqueued but not recorded within this long (its worker died) is "
        "enqueued again by the periodic tick.",
    )
    webhook_response_max_bytes: int = Field(
        1024, ge=0, description="How much of a receiver's response body is kept in the delivery log."
    )
    webhook_ca_file: Path | None = Field(
        None, description="PEM bundle of the CAs that https webhook receivers' certificates may chain to "
        "(a private CA); None: the public bundle (certifi). The certificate is always checked against "
        "the URL's host name, not the address connected to.",
    )
    webhook_allow_hosts: list[str] = Field(
        default_factory=list,
        description="SSRF allow-list for tests and private deployments: host names or CIDRs (127.0.0.1/32) "
        "webhooks may reach although they are not public. JSON in the env.",
    )

    # --- batches and re-processing (docproc/submission/batches.py, docproc/submission/reprocess.py) ----
    batch_max_files: int = Field(
        1000, ge=1, description="Most documents one multipart POST /v1/batches may carry."
    )
    batch_json_max_bytes: int = Field(
        4 * 1024 * 1024, ge=1024, description="Largest JSON body of POST /v1/batches (a list of source_uris)."
    )
    batch_chunk_size: int = Field(
        200, ge=1, description="Documents the expand task lists, creates and enqueues per step (memory is flat in it)."
    )
    batch_expand_threads: int = Field(
        8, ge=1, description="Documents the expand task reads, checks and stores at once (S3 round trips overlap)."
    )
    batch_expand_slice_s: float = Field(
        300.0, gt=0, description="An expand task hands the rest of a long listing to a fresh task after this long "
        "(stays well inside the task time limits; the cursor is kept in Redis).",
    )
    batch_upload_stall_s: float = Field(
        900.0, gt=0, description="An upload batch that receives no file for this long lost its API process "
        "mid-upload: the watchdog ends its listing (error upload_interrupted) with the documents received.",
    )

    # --- observability (docproc/base/metrics.py, docproc/base/logs.py, docproc/base/tracing.py) --
    log_format: Literal["json", "text"] = Field(
        "json", description="Service logs (API, workers): JSON lines or plain text; secrets are redacted in both."
    )
    log_level: str = Field("INFO", description="Log level of the API process (workers take --loglevel).")
    worker_metrics_port: int = Field(
        0, ge=0, le=65535,
        description="A worker's main process serves its Prometheus metrics (all pool children "
        "summed) on this port at /metrics; 0: off. One port per worker on a host.",
    )
    worker_metrics_host: str = Field(
        "127.0.0.1", description="Interface of the worker metrics endpoint: loopback unless you open it (the "
        "API's /metrics already shows the whole service).",
    )
    otel_enabled: bool = Field(
        False, description="OpenTelemetry spans per stage (needs the otel extra); off by default."
    )
    otel_service_name: str = Field("docproc", description="service.name of the spans.")

    # --- model worker: cross-job batching, memory guard, page leases -------------
    model_worker_prefetch: int = Field(
        16, ge=1, description="Page messages the model worker holds at once (from many jobs) and batches "
        "together; batch_size and the tile budget then cut them into generate calls.",
    )
    model_worker_batch_window_s: float = Field(
        0.05, ge=0, description="After the first page message, wait this long for more before running a batch.",
    )
    gpu_memory_guard: bool = Field(
        True, description="On CUDA, cap each batch's tiles by the GPU's free memory (torch.cuda.mem_get_info) "
        "/ the per-tile cost; the batch tile budget stays the upper bound. The CPU uses the batch tile budget.",
    )
    gpu_memory_fraction: float = Field(
        0.8, gt=0, le=1, description="Share of the free GPU memory a batch may plan to use.",
    )
    gpu_tile_cost_bytes: int = Field(
        0, ge=0, description="GPU memory one tile of a batch costs (vision activations, its image tokens' KV "
        "cache and prefill activations); 0: estimated from the model config and dtype.",
    )
    model_page_attempts: int = Field(
        2, ge=1, description="Tries of one page alone after its batch failed and was split down to it; "
        "then the page fails with inference_error (its batch-mates are unaffected).",
    )
    model_worker_heartbeat_s: float = Field(
        5.0, gt=0, description="A model worker announces itself in Redis this often once its model is loaded; "
        "one silent for 3 beats is not online. With none online, work that needs the model is refused (503 "
        "engine_unavailable) and intake fails model pages with engine_unavailable (docproc/base/model_workers.py).",
    )
    model_worker_grace_s: float = Field(
        600.0, ge=0, description="Model pages left on the gpu queue when no model worker has been online for "
        "this long (the last one went away: a crash loop, a pool scaled to zero) fail with engine_unavailable "
        "at the next watchdog tick instead of waiting for the stuck-job watchdog; a model worker that comes "
        "back finds them recorded.",
    )
    lease_ttl_s: float = Field(
        60.0, gt=0, description="Page lease lifetime; the owner renews it every ttl/3 while the page runs, so "
        "a dead owner's page is taken over by a later delivery within one ttl.",
    )

    # --- model server: the gpu queue's runtime (workers/model_feeder.py) -----------
    model_server: str = Field(
        "", description="What the model worker (gpu queue) runs its pages on: '' = the in-process transformers "
        "engine; 'vllm' = a vLLM server the worker starts and supervises itself; a URL such as "
        "http://127.0.0.1:8000/v1 = an OpenAI-compatible server beside it (a vLLM or LMDeploy sidecar).",
    )
    model_server_kind: Literal["vllm", "lmdeploy"] = Field(
        "vllm", description="Which server that is: it decides how the tile budget is sent with each page.",
    )
    model_server_in_flight: int = Field(
        192, ge=1, description="Pages one model worker keeps in flight at the server (Little's law: 12 pages/s "
        "x ~12 s a page at 750 output tokens is ~150).",
    )
    model_server_image_format: Literal["jpeg", "png"] = Field(
        "jpeg", description="How a page goes to the server: JPEG quality 95 (about 5x faster to encode than PNG "
        "for a Letter page) or lossless PNG. Either way it is sized to its tile grid.",
    )
    model_server_retries: int = Field(
        8, ge=0, description="Times a page is put back after the server went away (restart, dropped "
        "connection) before it fails with engine_unavailable; these do not count as deliveries.",
    )
    model_server_start_timeout_s: float = Field(
        900.0, gt=0, description="Most seconds to wait for the server's health check at start (model loading).",
    )
    model_server_extract_max_tokens: int = Field(
        4096, ge=64, description="Output budget of an extract page on the server; every string and array of "
        "the schema sent is bounded (maxLength, maxItems) so its longest valid JSON fits.",
    )
    vllm_python: str = Field(
        "python3", description="The python of the environment that holds vLLM (model_server=vllm).",
    )
    vllm_port: int = Field(8000, ge=1, le=65535, description="Port of the vLLM server the worker starts.")
    vllm_args: str = Field(
        "", description="Extra flags for the vLLM server the worker starts (shell-split), e.g. "
        "'--max-model-len 16384 --gpu-memory-utilization 0.9'.",
    )

    # --- OpenAI-compatible engine (workers/engines/openai.py) --------------------
    openai_base_url: str | None = Field(
        None, description="Base URL of an OpenAI-compatible server (vLLM, LMDeploy api_server), e.g. "
        "http://gpu-host:8000/v1; required by engine 'openai'.",
    )
    openai_api_key: SecretStr | None = Field(
        None, description="Bearer token for that server (vLLM --api-key); never logged."
    )
    openai_model: str | None = Field(
        None, description="The model name the server serves (its --served-model-name); None: DOCPROC_MODEL."
    )
    openai_timeout_s: float = Field(120.0, gt=0, description="Most seconds to wait for one chat completion.")
    openai_connect_timeout_s: float = Field(5.0, gt=0, description="Most seconds to open a connection.")
    openai_max_concurrency: int = Field(
        4, ge=1, description="Most requests one worker process has in flight at once."
    )
    openai_max_retries: int = Field(
        4, ge=0, description="Retries of a request answered 429/5xx or whose connection failed."
    )
    openai_backoff_s: float = Field(
        0.5, ge=0, description="First retry delay; doubles per retry, with jitter (Retry-After wins)."
    )
    openai_backoff_max_s: float = Field(
        30.0, ge=0, description="Longest retry delay; a Retry-After longer than this gives up at once."
    )
    openai_image_format: Literal["png", "jpeg"] = Field("png", description="How page images are sent.")
    openai_image_max_pixels: int = Field(
        2_500_000, ge=10_000, description="Pages are downscaled to at most this many pixels before sending "
        "(InternVL sees at most 12 tiles of 448 px = 2.4 Mpx).",
    )

    # --- reliability (docproc/housekeeping/watchdog.py) ---------------------------------------
    watchdog_stall_s: float = Field(
        10800.0, gt=0, description="A running job with no progress (a page started or recorded) for this long "
        "fails with code timeout and its tasks are revoked. Keep it above visibility_timeout_s + "
        "task_time_limit_s, the longest a lost page takes to come back by itself.",
    )
    watchdog_queued_s: float = Field(
        86400.0, gt=0, description="A job still queued (its intake never ran) this long after it was created "
        "fails with code timeout; high, so a backed-up queue is not mistaken for a lost job.",
    )
    watchdog_batch: int = Field(500, ge=1, description="Most stalled jobs one watchdog tick ends.")
    max_content_bytes: int = Field(
        512 * 1024 * 1024, ge=1, description="Most bytes of content reading a PDF's pages once each may decode: "
        "its content streams through their filters and the forms they call, once per call, summed over the "
        "pages (a shared stream counts per page); more is content_too_large (a decompression bomb).",
    )

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
