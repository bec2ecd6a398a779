"""Pages read by a model server (vLLM, LMDeploy): the gpu queue's runtime at production speed.

The model worker (:mod:`workers.model_feeder`) keeps many pages in flight at an
OpenAI-compatible server that does continuous batching, paged KV cache and CUDA
graphs; this module turns one rendered page into one streamed chat completion and
the answer into a :class:`~docproc.jobs.results.PageResult`, with the promises of the
in-process engine (:mod:`workers.engines.internvl`):

* **Tile parity.** The server tiles images itself. The page is sent resized to the
  exact grid docproc picks (:func:`workers.tiling.choose_grid`: ``cols x 448`` by
  ``rows x 448``; PDF pages are rendered at their grid already), as JPEG (quality 95) or
  PNG (``model_server_image_format``), with the same tile budget (vLLM: ``--mm-processor-kwargs``
  ``min/max_patches`` for ``-hf`` checkpoints and ``min/max_dynamic_patch`` for the
  originals; LMDeploy: ``max_dynamic_patch`` on the image). An image of exactly a
  grid's aspect and size gets that grid from InternVL's rule, so the server cuts the
  same tiles plus the thumbnail: ``tiles`` on the result is docproc's own count, and
  the prompt tokens the server reports prove it (tests/test_vllm_server.py). The
  server's budget must equal ``DOCPROC_MAX_TILES``: the worker starts vLLM with it
  (:func:`tiling_kwargs`); a sidecar is started so (infra/, docker/).
* **Token budget.** ``ocr`` / ``tables``: the in-process rule (``max_new_tokens_per_tile``
  x tiles, at least 256, capped per task). ``extract``:
  ``model_server_extract_max_tokens``, with the schema bounded to fit it
  (:func:`workers.engines.schema_bounds.bounded_schema`): every string gets a
  ``maxLength`` and every array a ``maxItems``, so the longest compact JSON the
  server's grammar (xgrammar, ``response_format`` json_schema) admits ends before
  ``max_tokens``. A server must run with compact JSON (vLLM
  ``--structured-outputs-config '{"disable_any_whitespace": true}'``, which the
  worker passes when it starts vLLM itself).
* **Loop guard** (ocr, tables; extract's bounded schema ends every loop by itself). The answer is streamed; every few tokens the tail goes through the
  repetition detector (:func:`workers.engines.repetition.loop_period`). A looping
  request is aborted (closing the stream aborts it on the server) and sent once more
  with ``repetition_penalty_retry``; if it loops again the page fails with
  ``degenerate_output``, its text kept.
* **Failures are typed.** The server down, a dropped connection, a 429/5xx, or a
  stream cut before its end raise :class:`~docproc.base.errors.InferenceServerUnavailable`:
  transient, the caller puts the page back (nothing is recorded). A 4xx or an answer
  that is no chat completion fails the page with ``inference_server_error``; no end
  within ``inference_timeout_s`` fails it with ``timeout``.

Each read also reports what a benchmark needs: time to first token, output tokens,
the prompt tokens the server counted.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import httpx
from PIL import Image

from docproc.base.errors import InferenceServerError, InferenceServerUnavailable
from docproc.base.settings import Settings
from docproc.jobs.results import ErrorInfo, PageResult, Task
from workers.engines.internvl import MIN_NEW_TOKENS, read_output
from workers.engines.openai import chat_messages
from workers.engines.repetition import loop_period
from workers.engines.schema_bounds import UnboundedSchema, bounded_schema
from workers.pages import RenderedPage
from workers.tiling import choose_grid

if TYPE_CHECKING:
    from docproc.jobs.schemas import ExtractionSchema

logger = logging.getLogger(__name__)

LOOP_CHECK_EVERY = 16  # tokens between two looks at the tail
LOOP_MAX_PERIOD = 128
LOOP_MIN_REPEATS = 4  # loop_period's default: the longest tail it reads is max(span, 4 x period) + period
PNG_COMPRESS_LEVEL = 1  # the grid image is large and mostly white: fast beats small on loopback
JPEG_QUALITY = 95


def served_model(settings: Settings) -> str:
    """The model name every request carries (the server's ``--served-model-name``)."""
    return settings.openai_model or settings.model


# --- tile parity ------------------------------------------------------------------------


@dataclass(frozen=True)
class GridImage:
    """A page resized to the tile grid docproc picks for it."""

    image: Image.Image
    cols: int
    rows: int
    tiles: int  # cols * rows, plus the thumbnail when there is more than one


def at_grid(image: Image.Image, settings: Settings) -> GridImage:
    """``image`` resized to ``cols x tile_size`` by ``rows x tile_size`` for the grid
    :func:`~workers.tiling.choose_grid` picks (as the in-process engine does); a page
    rendered for its grid is passed through untouched."""
    size = settings.tile_size
    cols, rows = choose_grid(*image.size, min_tiles=settings.min_tiles, max_tiles=settings.max_tiles,
                             image_size=size)
    target = (cols * size, rows * size)
    rgb = image if image.mode == "RGB" else image.convert("RGB")
    if rgb.size != target:
        rgb = rgb.resize(target, Image.Resampling.BICUBIC)
    blocks = cols * rows
    return GridImage(rgb, cols, rows, blocks + (1 if settings.use_thumbnail and blocks != 1 else 0))


def image_data_url(image: Image.Image, fmt: str) -> str:
    """The page as a data URL: JPEG (quality 95) or lossless PNG."""
    buf = io.BytesIO()
    if fmt == "png":
        image.save(buf, format="PNG", compress_level=PNG_COMPRESS_LEVEL)
    else:
        image.save(buf, format="JPEG", quality=JPEG_QUALITY)
    return f"data:image/{fmt};base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def tiling_kwargs(settings: Settings, *, original: bool) -> dict[str, int]:
    """The tile budget as the checkpoint's image processor names it: ``min/max_patches``
    (``-hf``, transformers' GotOcr2 processor) or ``min/max_dynamic_patch`` (the original
    remote-code checkpoints). vLLM takes it at start (``--mm-processor-kwargs``): per-request
    processor kwargs are refused unless the server trusts its clients."""
    lo, hi = settings.min_tiles, settings.max_tiles
    if original:
        return {"min_dynamic_patch": lo, "max_dynamic_patch": hi}
    return {"min_patches": lo, "max_patches": hi}


# --- the request --------------------------------------------------------------------------


def page_budget(task: Task, tiles: int, settings: Settings) -> int:
    """Output tokens a page may write: the in-process engine's rule for ocr / tables,
    ``model_server_extract_max_tokens`` for extract."""
    s = settings
    if task == "extract":
        return s.model_server_extract_max_tokens
    cap = s.max_new_tokens_ocr if task == "ocr" else s.max_new_tokens_tables
    return max(1, min(cap, max(MIN_NEW_TOKENS, s.max_new_tokens_per_tile * tiles)))


@dataclass
class PageRequest:
    """One page's chat-completions body, and what docproc expects of it."""

    body: dict[str, Any]
    tiles: int
    budget: int


def build_request(page: RenderedPage, task: Task, schema: "ExtractionSchema | None", *, settings: Settings,
                  model: str, kind: str = "vllm", force_tokens: int | None = None) -> PageRequest:
    """The streamed request for one page (tile parity, budget, bounded schema). ``force_tokens``
    (benchmarks): exactly that many output tokens (vLLM ``min_tokens`` = ``max_tokens``, EOS ignored)."""
    s = settings
    grid = at_grid(page.image, s)
    url = image_data_url(grid.image, s.model_server_image_format)
    hint = page.text if s.text_layer_hint and page.text and page.text.strip() else None
    messages = chat_messages(task, url, schema=schema, text_hint=hint, text_hint_max_chars=s.text_hint_max_chars)
    budget = force_tokens or page_budget(task, grid.tiles, s)
    body: dict[str, Any] = {
        "model": model,
        "messages": messages,
        "max_tokens": budget,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    if kind == "vllm":
        body["return_token_ids"] = True
    else:  # LMDeploy reads the tile budget from the image item
        for message in messages:
            for item in message["content"] if isinstance(message["content"], list) else []:
                if item["type"] == "image_url":
                    item["image_url"]["max_dynamic_patch"] = s.max_tiles
    if force_tokens:
        body.update(min_tokens=force_tokens, ignore_eos=True)
    if task == "extract" and schema is not None:
        bounded, _ = bounded_schema(schema.model_schema(), budget)
        body["response_format"] = {"type": "json_schema",
                                   "json_schema": {"name": schema.name, "schema": bounded, "strict": True}}
    return PageRequest(body, grid.tiles, budget)


# --- streaming ----------------------------------------------------------------------------


@dataclass
class Streamed:
    """What one streamed completion produced."""

    text: str = ""
    tokens: list[int] = field(default_factory=list)  # token ids, or hashes of the text pieces
    finish_reason: str | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    first_token_s: float | None = None  # seconds from sending to the first output token
    looped: bool = False


async def sse_events(response: httpx.Response) -> AsyncIterator[dict[str, Any]]:
    """The JSON events of a server-sent-events stream, up to ``[DONE]``."""
    async for line in response.aiter_lines():
        if not line.startswith("data:"):
            continue
        data = line[5:].strip()
        if data == "[DONE]":
            return
        try:
            yield json.loads(data)
        except json.JSONDecodeError:
            raise InferenceServerError(f"the inference server streamed a line that is not JSON: {data[:200]!r}") \
                from None


def _pieces(event: dict[str, Any]) -> tuple[str, list[int], str | None]:
    """(text, token ids, finish reason) of one chunk; an error event raises."""
    if "error" in event and "choices" not in event:
        error = event["error"]
        message = error.get("message") if isinstance(error, dict) else str(error)
        raise InferenceServerUnavailable(f"the inference server failed the request mid-stream: {message}")
    choices = event.get("choices") or []
    if not choices:
        return "", [], None
    choice = choices[0]
    delta = choice.get("delta") or {}
    text = delta.get("content") or ""
    ids = choice.get("token_ids") or delta.get("token_ids") or []
    return text, list(ids), choice.get("finish_reason")


class ServedEngine:
    """Reads pages on a model server (async; one per model worker, many pages at once)."""

    def __init__(self, settings: Settings, base_url: str, *, kind: str = "vllm", model: str | None = None,
                 max_in_flight: int | None = None) -> None:
        self.settings = settings
        self.kind = kind  # vllm or lmdeploy: also the engine a page result names
        self.base_url = base_url.rstrip("/") + "/"
        self.model_id = model or served_model(settings)
        connections = max_in_flight or settings.model_server_in_flight
        headers = {"Accept": "text/event-stream"}
        if settings.openai_api_key is not None:
            headers["Authorization"] = f"Bearer {settings.openai_api_key.get_secret_value()}"
        self._client = httpx.AsyncClient(
            base_url=self.base_url, headers=headers,
            timeout=httpx.Timeout(settings.inference_timeout_s, connect=settings.openai_connect_timeout_s),
            limits=httpx.Limits(max_connections=connections + 4, max_keepalive_connections=connections + 4),
        )

    async def aclose(self) -> None:
        await self._client.aclose()

    async def ready(self) -> bool:
        """Whether the server answers its model list (vLLM and LMDeploy both serve it)."""
        try:
            response = await self._client.get("models", timeout=5.0)
        except httpx.HTTPError:
            return False
        return response.status_code == 200

    # -- one completion --

    async def stream(self, body: dict[str, Any], *, loop_guard: bool = True) -> Streamed:
        """POST ``body`` streamed; stop early (``looped``) when the tail repeats."""
        s = self.settings
        out = Streamed()
        started = time.perf_counter()
        span = s.repetition_guard_span if loop_guard else 0
        checked = 0
        try:
            async with self._client.stream("POST", "chat/completions", json=body) as response:
                if response.status_code >= 300:
                    await response.aread()
                    _raise_for_status(response)
                async for event in sse_events(response):
                    text, ids, reason = _pieces(event)
                    if (text or ids) and out.first_token_s is None:
                        out.first_token_s = time.perf_counter() - started
                    out.text += text
                    out.tokens.extend(ids or ([hash(text)] if text else []))
                    out.finish_reason = reason or out.finish_reason
                    usage = event.get("usage") or {}
                    out.prompt_tokens = usage.get("prompt_tokens", out.prompt_tokens)
                    out.completion_tokens = usage.get("completion_tokens", out.completion_tokens)
                    if span and len(out.tokens) - checked >= LOOP_CHECK_EVERY:
                        checked = len(out.tokens)
                        tail = out.tokens[-(max(span, LOOP_MIN_REPEATS * LOOP_MAX_PERIOD) + LOOP_MAX_PERIOD):]
                        if loop_period(tail, min_span=span, max_period=LOOP_MAX_PERIOD):
                            out.looped = True
                            return out  # leaving the block closes the stream: the server aborts it
        except httpx.TimeoutException as exc:
            if isinstance(exc, httpx.ConnectTimeout | httpx.PoolTimeout):
                raise InferenceServerUnavailable(f"the inference server at {self.base_url} did not accept a "
                                                 f"connection ({type(exc).__name__})") from None
            raise
        except httpx.TransportError as exc:  # refused, reset, or the stream cut mid-answer
            raise InferenceServerUnavailable(f"the inference server at {self.base_url} went away: "
                                             f"{type(exc).__name__}: {exc}") from None
        if out.finish_reason is None:
            raise InferenceServerUnavailable("the inference server's stream ended before the answer did")
        return out

    # -- one page --

    async def read_page(self, page: RenderedPage, task: Task, schema: "ExtractionSchema | None" = None, *,
                        force_tokens: int | None = None) -> tuple[PageResult, Streamed | None]:
        """The page's result (and its last completion, for measurements). Raises
        InferenceServerUnavailable (transient) when the server cannot answer."""
        s = self.settings
        width, height = page.image.size
        common: dict[str, Any] = {"page": page.number, "engine": self.kind, "width": width, "height": height,
                                  "has_text_layer": page.has_text_layer}
        started = time.perf_counter()
        try:
            request = build_request(page, task, schema, settings=s, model=self.model_id, kind=self.kind,
                                    force_tokens=force_tokens)
        except (ValueError, UnboundedSchema) as exc:  # an image or schema that cannot be sent fails alone
            return PageResult(status="failed", error=ErrorInfo(code="inference_error", message=str(exc)),
                              **common), None
        common["tiles"] = request.tiles
        prep_ms = (time.perf_counter() - started) * 1000.0
        # extract needs no guard: its bounded schema ends every value (a loop ends at maxLength or
        # maxItems) before max_tokens, and aborting it would break the always-valid JSON promise
        guard = force_tokens is None and task != "extract"
        try:
            done = await asyncio.wait_for(self._answer(request, guard), timeout=s.inference_timeout_s)
        except TimeoutError:
            return PageResult(status="failed", error=ErrorInfo(
                code="timeout", message=f"the inference server did not finish the page within "
                                        f"{s.inference_timeout_s} s"), **common), None
        except InferenceServerError as exc:
            return PageResult(status="failed", error=ErrorInfo(code=exc.code, message=exc.message), **common), None
        infer_ms = (time.perf_counter() - started) * 1000.0 - prep_ms
        timings = {"tile": round(prep_ms, 3), "infer": round(infer_ms, 3)}
        if done.looped:
            return PageResult(status="failed", raw_output=done.text, timings_ms=timings, error=ErrorInfo(
                code="degenerate_output", message="the output looped (repetition) after a retry with "
                                                  "repetition_penalty; raw text kept"), **common), done
        begun = time.perf_counter()
        output = read_output(task, done.text, schema)
        timings["postprocess"] = round((time.perf_counter() - begun) * 1000.0, 3)
        error = output.get("error")
        return PageResult(status="failed" if error else "succeeded", raw_output=done.text if error else None,
                          timings_ms=timings, **output, **common), done

    async def _answer(self, request: PageRequest, guard: bool) -> Streamed:
        """The completion; a looping one is sent once more with the repetition penalty."""
        done = await self.stream(request.body, loop_guard=guard)
        penalty = self.settings.repetition_penalty_retry
        if done.looped and penalty:
            logger.info("model server: a page looped after %d tokens; retrying with repetition_penalty %.2f",
                        len(done.tokens), penalty)
            done = await self.stream({**request.body, "repetition_penalty": penalty}, loop_guard=True)
        return done


def _raise_for_status(response: httpx.Response) -> None:
    """429 / 5xx: transient (the page goes back); another 4xx: the page fails."""
    detail = response.text[:300]
    if response.status_code == 429 or response.status_code >= 500:
        raise InferenceServerUnavailable(f"the inference server answered HTTP {response.status_code}: {detail}")
    raise InferenceServerError(f"the inference server refused the request: HTTP {response.status_code}: {detail}",
                               status=response.status_code)
