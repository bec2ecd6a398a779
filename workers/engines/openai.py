"""The ``openai`` engine: pages sent to an OpenAI-compatible chat-completions server.

Operators run InternVL in a dedicated inference server (vLLM, LMDeploy
``api_server``) and keep the Celery workers CPU-only: a page is rendered here,
downscaled to ``openai_image_max_pixels``, encoded as a PNG or JPEG data URL and
sent with the task prompt of :mod:`workers.prompts` (the server tiles it).
``extract`` asks for ``response_format: {"type": "json_schema", ...}`` with the
schema (vLLM and LMDeploy constrain decoding to it, with xgrammar); an answer cut
by ``max_tokens`` (``max_new_tokens_<task>``) fails postprocess like any other.
The answer goes through the same postprocess as the ``internvl`` engine.

Per request: at most ``openai_max_concurrency`` in flight per engine (process),
a connect and a read timeout, and retries of 429 / 5xx / failed connections with
exponential backoff and jitter, a ``Retry-After`` header winning. Failures are
typed (codes): the server down or still failing after the retries raises
:class:`~docproc.base.errors.InferenceServerUnavailable` (transient: the page task is
retried later); an answer that is not a chat completion (or a 4xx) fails the
page with ``inference_server_error``; no answer in time fails it with
``timeout``. The API key is sent as a bearer token and never logged.
"""

from __future__ import annotations

import base64
import io
import json
import logging
import math
import random
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import TYPE_CHECKING, Any

import httpx
from PIL import Image

from docproc.base.errors import (
    EngineUnavailable,
    InferenceServerError,
    InferenceServerTimeout,
    InferenceServerUnavailable,
    InvalidRequest,
)
from docproc.base.settings import Settings, get_settings
from docproc.jobs.results import ErrorInfo, PageResult, Task
from workers.engines.internvl import read_output
from workers.pages import RenderedPage
from workers.prompts import TASKS, build_prompt

if TYPE_CHECKING:
    from docproc.jobs.schemas import ExtractionSchema

logger = logging.getLogger(__name__)

MEDIA_TYPES = {"png": "image/png", "jpeg": "image/jpeg"}
JPEG_QUALITY = 90
PNG_COMPRESS_LEVEL = 3  # pages are mostly white: level 3 is near the smallest, much faster than 9


# --- request parts (plain functions) -------------------------------------------------


def encode_page_image(image: Image.Image, *, fmt: str, max_pixels: int) -> tuple[str, tuple[int, int]]:
    """``(data URL, (width, height) sent)``: the page as PNG/JPEG, downscaled to ``max_pixels``."""
    if fmt not in MEDIA_TYPES:
        raise ValueError(f"unknown image format {fmt!r}; expected png or jpeg")
    width, height = image.size
    if width < 1 or height < 1:
        raise ValueError(f"the page image is empty ({width}x{height})")
    if width * height > max_pixels:
        scale = math.sqrt(max_pixels / (width * height))
        image = image.resize((max(1, int(width * scale)), max(1, int(height * scale))), Image.Resampling.BICUBIC)
    rgb = image if image.mode == "RGB" else image.convert("RGB")
    buf = io.BytesIO()
    if fmt == "png":
        rgb.save(buf, format="PNG", compress_level=PNG_COMPRESS_LEVEL)
    else:
        rgb.save(buf, format="JPEG", quality=JPEG_QUALITY)
    data = base64.b64encode(buf.getvalue()).decode("ascii")
    return f"data:{MEDIA_TYPES[fmt]};base64,{data}", rgb.size


def chat_messages(task: Task, image_url: str, *, schema: "ExtractionSchema | None" = None,
                  text_hint: str | None = None, text_hint_max_chars: int = 4000) -> list[dict[str, Any]]:
    """The chat of :func:`workers.prompts.build_prompt` in the OpenAI format (the image as an ``image_url``)."""
    messages = build_prompt(task, tiles_per_image=[1], schema=schema, text_hint=text_hint,
                            text_hint_max_chars=text_hint_max_chars)
    out = []
    for message in messages:
        content = message["content"]
        if isinstance(content, list):
            content = [{"type": "image_url", "image_url": {"url": image_url}} if item["type"] == "image"
                       else {"type": "text", "text": item["text"]} for item in content]
        out.append({"role": message["role"], "content": content})
    return out


def retry_after_s(response: httpx.Response | None) -> float | None:
    """Seconds a ``Retry-After`` header asks to wait (delta-seconds or an HTTP date), else None."""
    value = response.headers.get("retry-after") if response is not None else None
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def backoff_s(retry: int, *, base_s: float, max_s: float, rng: random.Random | None = None) -> float:
    """Delay before retry number ``retry`` (0-based): ``base_s * 2**retry`` capped at ``max_s``,
    jittered into its upper half so clients that failed together do not retry together."""
    delay = min(max_s, base_s * (2**retry))
    return (rng or random).uniform(delay / 2, delay)


def read_completion(body: Any) -> tuple[str, str | None]:
    """``(content, finish_reason)`` of a chat-completion body; InferenceServerError when it is not one."""
    try:
        choice = body["choices"][0]
        content = choice["message"]["content"]
    except (KeyError, IndexError, TypeError) as exc:
        raise InferenceServerError(f"the inference server's answer is not a chat completion (no {exc})") from None
    if not isinstance(content, str):
        raise InferenceServerError("the inference server's answer has no text content")
    reason = choice.get("finish_reason") if isinstance(choice, dict) else None
    return content, reason if isinstance(reason, str) else None


@dataclass
class Completion:
    """One answered request: its text, why it stopped, how many HTTP attempts it took."""

    text: str
    finish_reason: str | None
    attempts: int
    infer_ms: float


# --- the engine ----------------------------------------------------------------------


class OpenAIEngine:
    """Pages through an OpenAI-compatible server; thread-safe, one per worker process."""

    name = "openai"

    def __init__(self, settings: Settings | None = None, *, transport: httpx.BaseTransport | None = None) -> None:
        s = self.settings = settings or get_settings()
        if not s.openai_base_url:
            raise EngineUnavailable(
                "engine 'openai' needs DOCPROC_OPENAI_BASE_URL: the base URL of an OpenAI-compatible "
                "server serving InternVL, e.g. http://gpu-host:8000/v1"
            )
        self.model_id = s.openai_model or s.model
        headers = {"Accept": "application/json"}
        if s.openai_api_key is not None:
            headers["Authorization"] = f"Bearer {s.openai_api_key.get_secret_value()}"
        self._client = httpx.Client(
            base_url=s.openai_base_url.rstrip("/") + "/",
            timeout=httpx.Timeout(s.openai_timeout_s, connect=s.openai_connect_timeout_s),
            headers=headers,
            limits=httpx.Limits(max_connections=s.openai_max_concurrency,
                                max_keepalive_connections=s.openai_max_concurrency),
            transport=transport,
        )
        self._slots = threading.BoundedSemaphore(s.openai_max_concurrency)

    def close(self) -> None:
        self._client.close()

    # -- requests --

    def request_body(self, page: RenderedPage, task: Task, schema: "ExtractionSchema | None" = None) -> dict[str, Any]:
        """The chat-completions request for one page."""
        s = self.settings
        url, _ = encode_page_image(page.image, fmt=s.openai_image_format, max_pixels=s.openai_image_max_pixels)
        hint = page.text if s.text_layer_hint and page.text and page.text.strip() else None
        body: dict[str, Any] = {
            "model": self.model_id,
            "messages": chat_messages(task, url, schema=schema, text_hint=hint,
                                      text_hint_max_chars=s.text_hint_max_chars),
            "temperature": 0,
        }
        body["max_tokens"] = {"ocr": s.max_new_tokens_ocr, "tables": s.max_new_tokens_tables,
                              "extract": s.max_new_tokens_extract}[task]
        if task == "extract":
            body["response_format"] = {
                "type": "json_schema",
                "json_schema": {"name": schema.name, "schema": schema.model_schema(), "strict": True},
            }
        return body

    def complete(self, body: dict[str, Any], *, page: int | None = None) -> Completion:
        """POST one chat completion, with the retries and backoff of the module doc."""
        s = self.settings
        started = time.perf_counter()
        log = {"page": page, "stage": "infer"}
        for attempt in range(s.openai_max_retries + 1):
            response: httpx.Response | None = None
            with self._slots:
                try:
                    response = self._client.post("chat/completions", json=body)
                except httpx.TimeoutException as exc:
                    if not isinstance(exc, (httpx.ConnectTimeout, httpx.PoolTimeout)):
                        raise InferenceServerTimeout(
                            f"the inference server did not answer within {s.openai_timeout_s:g} s"
                        ) from None
                    problem = f"connection timed out ({type(exc).__name__})"
                except httpx.TransportError as exc:
                    problem = f"connection failed ({type(exc).__name__}: {exc})"
            if response is not None:
                if response.status_code < 300:
                    try:
                        content, reason = read_completion(response.json())
                    except (json.JSONDecodeError, UnicodeDecodeError):
                        raise InferenceServerError(
                            f"the inference server answered HTTP {response.status_code} with a body that is not "
                            f"JSON ({response.headers.get('content-type', 'no content type')})"
                        ) from None
                    return Completion(content, reason, attempt + 1, (time.perf_counter() - started) * 1000.0)
                if response.status_code != 429 and response.status_code < 500:
                    raise InferenceServerError(
                        f"the inference server refused the request: HTTP {response.status_code}: "
                        f"{response.text[:300]}", status=response.status_code,
                    )
                problem = f"HTTP {response.status_code}"
            if attempt >= s.openai_max_retries:
                break
            wait = retry_after_s(response)
            if wait is not None and wait > s.openai_backoff_max_s:
                raise InferenceServerUnavailable(
                    f"the inference server answered {problem} and asked to retry after {wait:.0f} s "
                    f"(more than openai_backoff_max_s={s.openai_backoff_max_s:g})"
                )
            delay = wait if wait is not None else backoff_s(attempt, base_s=s.openai_backoff_s,
                                                             max_s=s.openai_backoff_max_s)
            logger.warning("openai: %s; retry %d/%d in %.2f s", problem, attempt + 1, s.openai_max_retries,
                           delay, extra=log)
            time.sleep(delay)
        raise InferenceServerUnavailable(
            f"the inference server at {s.openai_base_url} failed {s.openai_max_retries + 1} time(s); "
            f"last: {problem}"
        )

    # -- pages --

    def process(self, pages: Sequence[RenderedPage], task: Task,
                schema: "ExtractionSchema | None" = None) -> list[PageResult]:
        """One PageResult per page, in input order. A page the server cannot answer usefully
        fails alone; InferenceServerUnavailable (server down) is raised once all pages are done."""
        if task not in TASKS:
            raise InvalidRequest(f"unknown task {task!r}; expected one of {', '.join(TASKS)}")
        if task == "extract" and schema is None:
            raise InvalidRequest("the extract task needs a schema")
        if not pages:
            return []
        workers = min(len(pages), self.settings.openai_max_concurrency)
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="docproc-openai") as pool:
            outcomes = list(pool.map(lambda p: self._page(p, task, schema), pages))
        down = [o for o in outcomes if isinstance(o, InferenceServerUnavailable)]
        if down:
            raise down[0]
        return outcomes

    def _page(self, page: RenderedPage, task: Task,
              schema: "ExtractionSchema | None") -> PageResult | InferenceServerUnavailable:
        width, height = page.image.size
        common: dict[str, Any] = {"page": page.number, "engine": self.name, "width": width, "height": height,
                                  "has_text_layer": page.has_text_layer}
        try:
            body = self.request_body(page, task, schema)
        except ValueError as exc:  # an image that cannot be encoded fails alone
            return PageResult(status="failed", error=ErrorInfo(code="inference_error", message=str(exc)), **common)
        try:
            done = self.complete(body, page=page.number)
        except InferenceServerUnavailable as exc:
            return exc
        except InferenceServerError as exc:
            logger.warning("openai: page %d failed: %s", page.number, exc.code, extra={"page": page.number})
            return PageResult(status="failed", error=ErrorInfo(code=exc.code, message=exc.message), **common)
        started = time.perf_counter()
        out = read_output(task, done.text, schema)
        timings = {"infer": round(done.infer_ms, 3),
                   "postprocess": round((time.perf_counter() - started) * 1000.0, 3)}
        error = out.pop("error", None)
        return PageResult(status="failed" if error else "succeeded", error=error,
                          raw_output=done.text if error else None, timings_ms=timings, **out, **common)
