"""The ``internvl`` engine: transformers' native InternVL, batched across pages.

Loading: ``AutoModelForImageTextToText`` (``InternVLForConditionalGeneration``) and
its tokenizer from ``settings.model``, a local directory or a Hub id (the Hub
client honours ``HF_HUB_OFFLINE``); no remote code unless an operator sets
``trust_remote_code``. A model that cannot be loaded raises
:class:`~docproc.base.errors.ModelUnavailable` naming ``DOCPROC_MODEL`` and what was
tried; there is no fallback. Device, dtype and attention are chosen at load and
logged: bf16 (fp16 where bf16 is missing) + SDPA on a GPU, FlashAttention-2 when
``flash_attn`` is importable, float32 + SDPA on the CPU; settings override "auto".

Inference: each page is tiled (``workers.tiling``), prompted (``workers.prompts``)
and becomes one :class:`GenerationRequest`. Requests are grouped into batches of
similar tile count and prompt length (at most ``batch_size`` requests and
``batch_tile_budget`` tiles), left-padded, and the tiles of a whole batch are
normalised on the model's device and encoded in one vision pass (the
concatenated ``pixel_values`` of one ``generate``). Decoding is greedy, so a
page's output does not depend on its batch. Each row has its own token budget
and a repetition guard (:mod:`workers.engines.repetition`); a row that loops is
retried once with ``repetition_penalty_retry`` and otherwise reported as
``degenerate_output``. ``extract`` is constrained to the schema's JSON grammar
(xgrammar) when ``constrained_decoding`` is on. Requests of one batch may come
from different jobs, tasks and schemas (:meth:`InternVLEngine.process_pages`).

Memory guard: on CUDA a batch's tile budget is the free GPU memory
(``torch.cuda.mem_get_info`` plus the allocator's cached blocks) x
``gpu_memory_fraction`` / the cost of one tile (``gpu_tile_cost_bytes``, or
:meth:`InternVLEngine.tile_cost_bytes` from the config), at most
the batch tile budget (``batch_tile_budget``; 0: 256 on CUDA); on the CPU it is
``batch_tile_budget`` (0: 64: a CPU has no free-memory reading to plan with). A batch that raises
anyway (``torch.OutOfMemoryError`` or any other error) is split in halves,
recursively, and each half retried (the CUDA cache emptied after an OOM); a single
request that still raises is tried ``model_page_attempts`` times and then fails
alone with ``inference_error``: its batch-mates are unaffected and nothing loops.
"""

from __future__ import annotations

import importlib.util
import logging
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from docproc.base import metrics
from docproc.base.errors import InvalidRequest, ModelUnavailable
from docproc.base.settings import Settings, get_settings
from docproc.jobs.results import ErrorInfo, PageResult, Table, Task
from workers.engines import model_source
from workers.pages import RenderedPage
from workers.prompts import (
    INTERNVL_HF_CHAT_TEMPLATE,
    TASKS,
    build_prompt,
    image_tokens,
    render_prompt,
)
from workers.tiling import normalize_tiles, tile_image

if TYPE_CHECKING:
    import torch
    from PIL import Image

    from docproc.jobs.schemas import ExtractionSchema

logger = logging.getLogger(__name__)

NO_TABLES = "NO TABLES"
MIN_NEW_TOKENS = 256
# batch_tile_budget 0: on CUDA the memory guard lowers this to what the free memory holds
# (16 pages of up to 13 tiles fit whole: 7.3x batch 1 at 1B on an H200, README Performance);
# a CPU has no such reading, and 64 tiles of a 1B model in float32 already take ~8 GB there
CUDA_TILE_BUDGET = 256
CPU_TILE_BUDGET = 64


# --- requests and outputs ---------------------------------------------------------


@dataclass
class GenerationRequest:
    """One prompt: its images (each a uint8 tile array ``(n, S, S, 3)``), task and options."""

    tiles: list[np.ndarray]
    task: Task
    schema: "ExtractionSchema | None" = None
    text_hint: str | None = None
    max_new_tokens: int | None = None  # None: from settings, by task and tile count
    # benchmarks: exactly this many output tokens: the budget, EOS suppressed until then and no
    # loop stop (min_new_tokens is batch-wide: it applies when every row of a batch forces this length)
    force_new_tokens: int | None = None

    @property
    def tiles_per_image(self) -> list[int]:
        return [int(t.shape[0]) for t in self.tiles]

    @property
    def n_tiles(self) -> int:
        return sum(self.tiles_per_image)


@dataclass
class Generation:
    """What one request produced. ``finish_reason``: eos | repetition | length | error."""

    text: str
    token_ids: list[int] = field(default_factory=list)
    finish_reason: str = "eos"
    retried: bool = False
    infer_ms: float = 0.0
    error: str | None = None

    @property
    def degenerate(self) -> bool:
        return self.finish_reason == "repetition"


def plan_batches(
    sizes: Sequence[tuple[int, int]], *, batch_size: int, tile_budget: int
) -> list[list[int]]:
    """Indices of requests grouped into batches; ``sizes[i] = (tiles, prompt_tokens)``.

    Requests are sorted by tile count, then prompt length (similar rows pad
    little), and cut into batches of at most ``batch_size`` requests and
    ``tile_budget`` tiles; a request over the budget alone gets a batch of its own.
    """
    order = sorted(range(len(sizes)), key=lambda i: (sizes[i][0], sizes[i][1], i))
    batches: list[list[int]] = []
    current: list[int] = []
    tiles = 0
    for i in order:
        n = sizes[i][0]
        if current and (len(current) >= batch_size or tiles + n > tile_budget):
            batches.append(current)
            current, tiles = [], 0
        current.append(i)
        tiles += n
    if current:
        batches.append(current)
    return batches


# --- table output ---------------------------------------------------------------------

_ESCAPED_PIPE = "\x00"
_SEPARATOR_CELL_RE = re.compile(r"^:?-+:?$")


def _split_row(line: str) -> list[str]:
    s = line.strip().replace("\\|", _ESCAPED_PIPE)
    if s.startswith("|"):
        s = s[1:]
    if s.endswith("|"):
        s = s[:-1]
    return [c.strip().replace(_ESCAPED_PIPE, "|") for c in s.split("|")]


def _is_separator(line: str) -> bool:
    if "-" not in line:
        return False
    cells = _split_row(line)
    return bool(cells) and all(_SEPARATOR_CELL_RE.match(c.replace(" ", "")) for c in cells)


def _markdown_tables(text: str) -> list[list[list[str]]]:
    lines = text.splitlines()
    tables: list[list[list[str]]] = []
    i = 0
    while i < len(lines) - 1:
        if "|" in lines[i] and _is_separator(lines[i + 1]):
            rows = [_split_row(lines[i])]
            j = i + 2
            while j < len(lines) and "|" in lines[j] and lines[j].strip():
                rows.append(_split_row(lines[j]))
                j += 1
            width = len(rows[0])
            tables.append([(r + [""] * width)[:width] if len(r) <= width else r for r in rows])
            i = j
        else:
            i += 1
    return tables


class _HTMLTableParser(HTMLParser):
    """Rows of cells of every ``<table>`` (``colspan`` repeated as empty cells)."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tables: list[list[list[str]]] = []
        self._depth = 0
        self._row: list[str] | None = None
        self._cell: list[str] | None = None
        self._span = 1

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "table":
            self._depth += 1
            if self._depth == 1:
                self.tables.append([])
        elif tag == "tr" and self._depth == 1:
            self._row = []
        elif tag in ("td", "th") and self._row is not None:
            self._cell = []
            span = dict(attrs).get("colspan") or "1"
            self._span = int(span) if span.isdigit() and 0 < int(span) <= 100 else 1
        elif tag == "br" and self._cell is not None:
            self._cell.append(" ")

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "th") and self._cell is not None and self._row is not None:
            self._row.append(" ".join("".join(self._cell).split()))
            self._row.extend([""] * (self._span - 1))
            self._cell = None
        elif tag == "tr" and self._row is not None:
            if self._row and self.tables:
                self.tables[-1].append(self._row)
            self._row = None
        elif tag == "table" and self._depth:
            self._depth -= 1

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)


def parse_tables(text: str) -> list[Table]:
    """Every Markdown (and HTML ``<table>``) table of a model's output, in order.

    Cells are stripped; rows are padded to the header's width. The Markdown is
    re-written uniformly from the rows.
    """
    from workers.engines.text import rows_to_markdown

    found = _markdown_tables(text)
    if "<table" in text.lower():
        parser = _HTMLTableParser()
        try:
            parser.feed(text)
            parser.close()
        except Exception:  # noqa: BLE001 - malformed HTML: keep what was read
            pass
        found += [t for t in parser.tables if t]
    tables = []
    for rows in found:
        width = max(len(r) for r in rows)
        rows = [r + [""] * (width - len(r)) for r in rows]
        tables.append(Table(markdown=rows_to_markdown(rows), rows=rows))
    return tables


# --- loading --------------------------------------------------------------------------


def read_output(task: Task, raw: str, schema: "ExtractionSchema | None") -> dict[str, Any]:
    """A model's raw answer as PageResult fields (text / tables / fields, error): the
    postprocess every model engine shares (:mod:`workers.postprocess`, :func:`parse_tables`)."""
    from workers.postprocess import clean_text_output, postprocess_extract

    if task == "ocr":
        return {"text": clean_text_output(raw)}
    if task == "tables":
        cleaned = clean_text_output(raw)
        tables: list[Table] = parse_tables(cleaned)
        if not tables and cleaned.strip() and cleaned.strip().rstrip(".").upper() != NO_TABLES:
            return {"tables": tables, "error": ErrorInfo(
                code="invalid_output", message="the model output holds no Markdown or HTML table")}
        return {"tables": tables}
    fields, error = postprocess_extract(raw, schema)
    return {"fields": fields, "error": error}


def choose_runtime(settings: Settings) -> tuple[str, "torch.dtype", str]:
    """(device, dtype, attention implementation) the settings ask for on this machine."""
    import torch

    device = _pick_device(settings.device, torch)
    return device, _pick_dtype(settings.dtype, device, torch), _pick_attention(settings.attn_implementation, device)


def _pick_device(setting: str, torch: Any) -> str:
    if setting != "auto":
        return setting
    return "cuda" if torch.cuda.is_available() else "cpu"


def _pick_dtype(setting: str, device: str, torch: Any) -> "torch.dtype":
    if setting != "auto":
        return getattr(torch, setting)
    if device.startswith("cuda"):
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float32


def _pick_attention(setting: str, device: str) -> str:
    if setting != "auto":
        return setting
    if device.startswith("cuda") and importlib.util.find_spec("flash_attn") is not None:
        try:
            import flash_attn  # noqa: F401 - a broken build (ABI mismatch) must not fail the load
        except Exception as exc:  # noqa: BLE001
            logger.warning("internvl: flash_attn is installed but does not import (%s); using sdpa", exc)
            return "sdpa"
        return "flash_attention_2"
    return "sdpa"


def _ensure_chat_template(tokenizer: Any, source: str, revision: str | None, local_only: bool = False) -> None:
    """Give ``tokenizer`` the checkpoint's chat template when only the processor files hold it
    (``chat_template.json``); with none at all, InternVL's ``-hf`` template, logged."""
    if getattr(tokenizer, "chat_template", None):
        return
    import json

    from transformers.utils import cached_file

    for name in ("chat_template.jinja", "chat_template.json"):
        try:
            path = cached_file(source, name, revision=revision, local_files_only=local_only,
                               _raise_exceptions_for_missing_entries=False)
        except Exception:  # noqa: BLE001 - an absent optional file
            path = None
        if path:
            text = Path(path).read_text(encoding="utf-8")
            tokenizer.chat_template = json.loads(text)["chat_template"] if name.endswith(".json") else text
            return
    logger.warning("internvl: %s ships no chat template; using InternVL's -hf template", source)
    tokenizer.chat_template = INTERNVL_HF_CHAT_TEMPLATE


def _unavailable(model: str, tried: str, exc: BaseException) -> ModelUnavailable:
    reason = " ".join(str(exc).split())[:400].rstrip(".") or type(exc).__name__
    hint = ""
    if "trust_remote_code" in reason or "internvl_chat" in reason:
        hint = (" This looks like an original remote-code InternVL checkpoint; use its converted "
                "'-hf' version (e.g. OpenGVLab/InternVL3-1B-hf).")
    return ModelUnavailable(
        f"cannot load the InternVL model DOCPROC_MODEL={model!r}: tried {tried}: "
        f"{type(exc).__name__}: {reason}.{hint} Set DOCPROC_MODEL to a local directory with an "
        "InternVL checkpoint in the native transformers format, or to a Hub id this machine can reach.",
        model=model,
    )


# --- the engine -----------------------------------------------------------------------


def _check_task(task: str, schema: "ExtractionSchema | None") -> None:
    if task not in TASKS:
        raise InvalidRequest(f"unknown task {task!r}; expected one of {', '.join(TASKS)}")
    if task == "extract" and schema is None:
        raise InvalidRequest("the extract task needs a schema")


class InternVLEngine:
    """Pages -> text, tables or fields with an InternVL model (see the module docstring)."""

    name = "internvl"

    def __init__(self, settings: Settings | None = None) -> None:
        self.settings = settings or get_settings()
        self.model_id = self.settings.model
        self.model: Any = None
        self.tokenizer: Any = None
        self.device: str | None = None
        self.dtype: Any = None
        self.attn_implementation: str | None = None
        self.image_seq_length = 0
        self._image_tokens: tuple[str, str, str] | None = None  # (<img>, <IMG_CONTEXT>, </img>) of the tokenizer
        self.tile_size = self.settings.tile_size
        self._constraint: Any = None
        self._constraint_failed = False

    # -- loading --

    @property
    def loaded(self) -> bool:
        return self.model is not None

    def load(self) -> "InternVLEngine":
        """Load the model and tokenizer once (later calls return at once)."""
        if self.model is not None:
            return self
        from transformers import AutoConfig, AutoModelForImageTextToText, AutoTokenizer
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # a worker's log is no terminal; the CLI has its own bar
        s = self.settings
        found = model_source.resolve(s.model, s.model_revision)  # fails at once, not after Hub retries
        source, tried = found.source, found.tried
        device, dtype, attn = choose_runtime(s)
        common: dict[str, Any] = {"revision": s.model_revision, "trust_remote_code": s.trust_remote_code,
                                  "local_files_only": found.local_only}
        started = time.perf_counter()
        try:
            config = AutoConfig.from_pretrained(source, **common)
            if getattr(config, "model_type", None) != "internvl":
                raise ValueError(
                    f"the checkpoint is a {getattr(config, 'model_type', '?')!r} model, "
                    "not InternVL in the native transformers format ('internvl')"
                )
            tokenizer = AutoTokenizer.from_pretrained(source, **common)
            _ensure_chat_template(tokenizer, source, s.model_revision, found.local_only)
            load_kwargs: dict[str, Any] = dict(common, dtype=dtype, attn_implementation=attn)
            direct = device != "cpu" and importlib.util.find_spec("accelerate") is not None
            if direct:
                load_kwargs["device_map"] = device
            model = AutoModelForImageTextToText.from_pretrained(source, **load_kwargs)
            if not direct:
                model = model.to(device)
        except ModelUnavailable:
            raise
        except Exception as exc:  # noqa: BLE001 - every load failure is the operator's to fix
            raise _unavailable(s.model, tried, exc) from exc
        self._attach(model.eval(), tokenizer)
        logger.info(
            "internvl: loaded %s on %s (dtype=%s, attention=%s, %d image tokens per %d px tile) in %.1f s",
            s.model, self.device, str(self.dtype).removeprefix("torch."), self.attn_implementation,
            self.image_seq_length, self.tile_size, time.perf_counter() - started,
        )
        return self

    @classmethod
    def from_model(cls, model: Any, tokenizer: Any, settings: Settings | None = None,
                   *, model_id: str = "in-memory") -> "InternVLEngine":
        """An engine around an already built model (benchmarks on random weights of real size)."""
        engine = cls(settings)
        engine.model_id = model_id
        engine._attach(model.eval(), tokenizer)
        return engine

    def _attach(self, model: Any, tokenizer: Any) -> None:
        config = model.config
        try:
            tokens = image_tokens(tokenizer)
        except ValueError as exc:
            raise ModelUnavailable(f"DOCPROC_MODEL={self.settings.model!r}: {exc}", model=self.model_id) from exc
        context = tokens[1]
        context_id = tokenizer.convert_tokens_to_ids(context)
        if context_id != config.image_token_id:
            raise ModelUnavailable(
                f"DOCPROC_MODEL={self.settings.model!r}: the tokenizer's {context} is id {context_id} but the "
                f"model expects image_token_id {config.image_token_id}; tokenizer and model do not match",
                model=self.model_id,
            )
        vision = config.vision_config
        size = vision.image_size[0] if isinstance(vision.image_size, (list, tuple)) else vision.image_size
        patch = vision.patch_size[0] if isinstance(vision.patch_size, (list, tuple)) else vision.patch_size
        per_tile = round((size // patch) ** 2 * config.downsample_ratio**2)
        if per_tile != config.image_seq_length:
            raise ModelUnavailable(
                f"DOCPROC_MODEL={self.settings.model!r}: image_seq_length {config.image_seq_length} does not "
                f"match the vision tower ({size} px / patch {patch} x downsample {config.downsample_ratio} "
                f"-> {per_tile} tokens per tile)",
                model=self.model_id,
            )
        if size != self.settings.tile_size:
            logger.warning("internvl: the model's tiles are %d px, not DOCPROC_TILE_SIZE=%d; using %d",
                           size, self.settings.tile_size, size)
        self.model = model
        self.tokenizer = tokenizer
        self._image_tokens = tokens
        self.image_seq_length = int(config.image_seq_length)
        self.tile_size = int(size)
        self.device = str(model.device)
        self.dtype = model.dtype
        self.attn_implementation = getattr(config, "_attn_implementation", None)
        pad = tokenizer.pad_token_id
        eos = set()
        for source in (model.generation_config.eos_token_id, config.text_config.eos_token_id,
                       tokenizer.eos_token_id):
            if source is not None:
                eos.update(source if isinstance(source, (list, tuple)) else [source])
        im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
        if isinstance(im_end, int) and im_end != tokenizer.unk_token_id:
            eos.add(im_end)
        self.eos_token_ids = sorted(eos)
        self.pad_token_id = pad if pad is not None else self.eos_token_ids[0]

    def _require_loaded(self) -> None:
        if self.model is None:
            raise RuntimeError("InternVLEngine.load() must be called first")

    # -- requests --

    def tile(self, image: "Image.Image") -> np.ndarray:
        """The page's tiles (uint8 ``(n, S, S, 3)``) with the settings' tile budget."""
        s = self.settings
        return tile_image(image, min_tiles=s.min_tiles, max_tiles=s.max_tiles,
                          image_size=self.tile_size, use_thumbnail=s.use_thumbnail)

    def max_new_tokens(self, task: Task, n_tiles: int) -> int:
        """A request's token budget: ``max_new_tokens_per_tile`` x tiles, raised to 256 and
        capped by the task's ``max_new_tokens_<task>``."""
        s = self.settings
        cap = {"ocr": s.max_new_tokens_ocr, "tables": s.max_new_tokens_tables,
               "extract": s.max_new_tokens_extract}[task]
        return max(1, min(cap, max(MIN_NEW_TOKENS, s.max_new_tokens_per_tile * n_tiles)))

    def request_for_page(self, page: RenderedPage, task: Task,
                         schema: "ExtractionSchema | None" = None,
                         tiles: np.ndarray | None = None) -> GenerationRequest:
        """One page as one request (its text layer as a hint when settings allow)."""
        s = self.settings
        hint = page.text if s.text_layer_hint and page.text and page.text.strip() else None
        return GenerationRequest(tiles=[self.tile(page.image) if tiles is None else tiles],
                                 task=task, schema=schema, text_hint=hint)

    def prompt_for(self, task: Task, tiles_per_image: Sequence[int], *,
                   schema: "ExtractionSchema | None" = None, text_hint: str | None = None) -> str:
        """The full prompt for images of these tile counts (chat template applied, image tokens expanded)."""
        self._require_loaded()
        messages = build_prompt(task, tiles_per_image=tiles_per_image, schema=schema, text_hint=text_hint,
                                text_hint_max_chars=self.settings.text_hint_max_chars)
        return render_prompt(self.tokenizer, messages, self.image_seq_length, tiles_per_image,
                             tokens=self._image_tokens)

    def prompt_text(self, request: GenerationRequest) -> str:
        """The request's full prompt."""
        return self.prompt_for(request.task, request.tiles_per_image, schema=request.schema,
                               text_hint=request.text_hint)

    def prompt_ids(self, request: GenerationRequest) -> list[int]:
        """The request's prompt as token ids; the image-token count is checked."""
        ids = self.tokenizer(self.prompt_text(request), add_special_tokens=False)["input_ids"]
        image_id = self.model.config.image_token_id
        found = sum(1 for t in ids if t == image_id)
        wanted = request.n_tiles * self.image_seq_length
        if found != wanted:
            raise ValueError(f"the prompt holds {found} image tokens, the tiles need {wanted}")
        return ids

    def budget(self, request: GenerationRequest) -> int:
        if request.force_new_tokens:
            return int(request.force_new_tokens)
        if request.max_new_tokens is not None:
            return max(1, int(request.max_new_tokens))
        return self.max_new_tokens(request.task, request.n_tiles)

    # -- generation --

    def generate(self, requests: Sequence[GenerationRequest]) -> list[str]:
        """The text each request produced, in input order (errors raise)."""
        outputs = self.generate_outputs(requests)
        for out in outputs:
            if out.error is not None:
                raise RuntimeError(out.error)
        return [o.text for o in outputs]

    def generate_outputs(self, requests: Sequence[GenerationRequest], *,
                         retry_degenerate: bool = True) -> list[Generation]:
        """Batched greedy generation for ``requests``; one :class:`Generation` each, in input order.

        A request whose batch raises is re-run alone; if it still raises, its
        Generation carries ``error`` (finish_reason ``error``). Looping outputs are
        retried once, batched, with ``repetition_penalty_retry``.
        """
        self._require_loaded()
        results: list[Generation | None] = [None] * len(requests)
        prompts: dict[int, list[int]] = {}
        for i, request in enumerate(requests):
            try:
                prompts[i] = self.prompt_ids(request)
            except Exception as exc:  # noqa: BLE001 - a bad request fails alone
                results[i] = Generation(text="", finish_reason="error", error=f"{type(exc).__name__}: {exc}")
        self._run(requests, prompts, list(prompts), results, penalty=None)
        if retry_degenerate and self.settings.repetition_penalty_retry:
            looping = [i for i, r in enumerate(results) if r is not None and r.degenerate]
            if looping:
                first = {i: results[i] for i in looping}
                self._run(requests, prompts, looping, results, penalty=self.settings.repetition_penalty_retry)
                for i in looping:
                    retry = results[i]
                    if retry.error is not None:  # the retry raised: keep the looping output
                        retry = results[i] = first[i]
                    else:
                        retry.infer_ms += first[i].infer_ms
                    retry.retried = True
        return [r if r is not None else Generation(text="", finish_reason="error", error="not run")
                for r in results]

    def _run(self, requests: Sequence[GenerationRequest], prompts: dict[int, list[int]],
             indices: list[int], results: list[Generation | None], *, penalty: float | None) -> None:
        s = self.settings
        plan = plan_batches([(requests[i].n_tiles, len(prompts[i])) for i in indices],
                            batch_size=s.batch_size, tile_budget=self.tile_budget())
        for batch in plan:
            rows = [indices[k] for k in batch]
            for i, out in zip(rows, self._generate_split(requests, prompts, rows, penalty)):
                results[i] = out

    def _generate_split(self, requests: Sequence[GenerationRequest], prompts: dict[int, list[int]],
                        rows: list[int], penalty: float | None) -> list[Generation]:
        """One batched generate over ``rows``; when it raises, the halves are run (recursively),
        and a single request is tried ``model_page_attempts`` times before it fails alone."""
        if len(rows) == 1:
            return [self._generate_alone(requests[rows[0]], prompts[rows[0]], penalty)]
        try:
            return self._generate_batch([requests[i] for i in rows], [prompts[i] for i in rows], penalty)
        except Exception as exc:  # noqa: BLE001 - isolate the failing page(s), keep the rest
            reason = self._recover(exc)
            metrics.MODEL_BATCH_SPLITS.labels(reason=reason).inc()
            logger.warning("internvl: a batch of %d requests (%d tiles) failed (%s: %s); splitting it",
                           len(rows), sum(requests[i].n_tiles for i in rows), type(exc).__name__, exc)
            mid = len(rows) // 2
            return (self._generate_split(requests, prompts, rows[:mid], penalty)
                    + self._generate_split(requests, prompts, rows[mid:], penalty))

    def _generate_alone(self, request: GenerationRequest, prompt: list[int], penalty: float | None) -> Generation:
        attempts = max(1, self.settings.model_page_attempts)
        for attempt in range(1, attempts + 1):
            try:
                return self._generate_batch([request], [prompt], penalty)[0]
            except Exception as exc:  # noqa: BLE001 - this page fails alone
                reason = self._recover(exc)
                logger.warning("internvl: a request (%d tiles) failed alone, attempt %d of %d (%s): %s: %s",
                               request.n_tiles, attempt, attempts, reason, type(exc).__name__, exc)
                error = f"{type(exc).__name__}: {exc}"
        return Generation(text="", finish_reason="error", error=f"{error} (after {attempts} attempts)")

    def _recover(self, exc: BaseException) -> str:
        """After a failed generate: free what the failed call left on the GPU; the reason
        (``oom`` or ``error``) for the split metric."""
        import torch

        oom = isinstance(exc, torch.OutOfMemoryError)
        if str(self.device).startswith("cuda"):
            torch.cuda.empty_cache()
        return "oom" if oom else "error"

    # -- memory guard --

    def tile_cost_bytes(self) -> int:
        """Estimated GPU memory one tile adds to a batch: its vision-tower activations, its
        image tokens' KV cache plus a share of the generated tokens' (``max_new_tokens_per_tile``),
        and one decoder layer's prefill activations for its tokens; x1.5 for the allocator."""
        import torch

        self._require_loaded()
        config = self.model.config
        text, vision = config.text_config, config.vision_config
        elem = torch.finfo(self.dtype).bits // 8 if self.dtype.is_floating_point else 4
        head_dim = getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads
        kv_heads = getattr(text, "num_key_value_heads", None) or text.num_attention_heads
        kv_per_token = 2 * text.num_hidden_layers * kv_heads * head_dim * elem
        kv = kv_per_token * (self.image_seq_length + self.settings.max_new_tokens_per_tile)
        prefill = self.image_seq_length * (4 * text.hidden_size + 3 * text.intermediate_size) * elem
        size = vision.image_size[0] if isinstance(vision.image_size, (list, tuple)) else vision.image_size
        patch = vision.patch_size[0] if isinstance(vision.patch_size, (list, tuple)) else vision.patch_size
        vision_tokens = (size // patch) ** 2 + 1
        encoder = vision_tokens * (6 * vision.hidden_size + 2 * vision.intermediate_size) * elem
        return int(1.5 * (kv + prefill + encoder))

    def tile_budget(self) -> int:
        """Most tiles the next batch may hold: on CUDA (``gpu_memory_guard``) from the free
        memory, capped by the batch tile budget; elsewhere the batch tile budget."""
        s = self.settings
        cuda = str(self.device).startswith("cuda")
        most = s.batch_tile_budget or (CUDA_TILE_BUDGET if cuda else CPU_TILE_BUDGET)
        if not (s.gpu_memory_guard and cuda):
            return most
        import torch

        device = torch.device(self.device)
        free, total = torch.cuda.mem_get_info(device)
        allocated, reserved = torch.cuda.memory_allocated(device), torch.cuda.memory_reserved(device)
        usable = free + max(0, reserved - allocated)  # the caching allocator's free blocks are usable too
        for kind, value in (("free", free), ("total", total), ("allocated", allocated), ("reserved", reserved)):
            metrics.GPU_MEMORY_BYTES.labels(device=str(self.device), kind=kind,
                                            worker=metrics.worker_label()).set(value)
        cost = s.gpu_tile_cost_bytes or self.tile_cost_bytes()
        budget = max(1, min(most, int(usable * s.gpu_memory_fraction) // max(1, cost)))
        logger.debug("internvl: tile budget %d (usable %.1f GiB, %.1f MiB per tile)", budget, usable / 2**30,
                     cost / 2**20)
        return budget

    def _grammars(self, requests: Sequence[GenerationRequest], budgets: list[int]) -> list[Any] | None:
        """One grammar per row (None: free); a constrained row's ``budgets[k]`` is raised to its
        schema's closing reserve when below it, so its JSON can always be closed in budget, plus
        ``extract_min_free_tokens`` when the budget came from the settings (a one-tile page's 384
        tokens would otherwise all go to closing a large schema)."""
        if not self.settings.constrained_decoding or self._constraint_failed:
            return None
        if not any(r.task == "extract" and r.schema is not None for r in requests):
            return None
        try:
            if self._constraint is None:
                from workers.engines.json_constraint import JsonSchemaConstraint

                self._constraint = JsonSchemaConstraint(
                    self.tokenizer, vocab_size=self.model.config.text_config.vocab_size,
                    stop_token_ids=self.eos_token_ids)
            grammars = []
            for k, r in enumerate(requests):
                if r.task != "extract" or r.schema is None:
                    grammars.append(None)
                    continue
                grammar = self._constraint.compile(r.schema.model_schema_json())
                # a budget from the settings leaves the model room to write; an explicit one is kept
                min_free = self.settings.extract_min_free_tokens if r.max_new_tokens is None else 0
                budgets[k] = self._constraint.row_budget(budgets[k], grammar, min_free)
                grammars.append(grammar)
            return grammars
        except Exception as exc:  # noqa: BLE001 - fall back to free decoding + validation
            self._constraint_failed = self._constraint is None
            logger.warning("internvl: constrained decoding unavailable (%s: %s); decoding freely",
                           type(exc).__name__, exc)
            return None

    def _generate_batch(self, requests: Sequence[GenerationRequest], prompts: Sequence[list[int]],
                        penalty: float | None) -> list[Generation]:
        import torch
        from transformers import (
            GenerationConfig,
            LogitsProcessorList,
            StoppingCriteriaList,
        )

        from workers.engines.repetition import RunawayGuard

        started = time.perf_counter()
        device = self.model.device
        width = max(len(p) for p in prompts)
        input_ids = torch.full((len(prompts), width), self.pad_token_id, dtype=torch.long)
        attention = torch.zeros((len(prompts), width), dtype=torch.long)
        for row, ids in enumerate(prompts):
            input_ids[row, width - len(ids):] = torch.tensor(ids, dtype=torch.long)
            attention[row, width - len(ids):] = 1
        tiles = np.concatenate([t for r in requests for t in r.tiles], axis=0)
        metrics.MODEL_BATCH_PAGES.observe(len(prompts))
        metrics.MODEL_BATCH_TILES.observe(int(tiles.shape[0]))
        pixel_values = normalize_tiles(tiles, device=device, dtype=self.dtype)
        budgets = [self.budget(r) for r in requests]
        grammars = self._grammars(requests, budgets)  # may raise a row's budget to fit its JSON
        # a batch whose rows all force one length writes exactly that (EOS suppressed, no loop stop)
        forced = {r.force_new_tokens for r in requests}
        force = forced.pop() if len(forced) == 1 else None
        guard = RunawayGuard(width, budgets, eos_token_ids=self.eos_token_ids,
                             min_span=0 if force else self.settings.repetition_guard_span)
        processors = LogitsProcessorList()
        if grammars is not None:
            processors.append(self._constraint.logits_processor(grammars, budgets))
        config = GenerationConfig(
            max_new_tokens=max(budgets), do_sample=False, num_beams=1, min_new_tokens=force or None,
            eos_token_id=self.eos_token_ids, pad_token_id=self.pad_token_id,
            repetition_penalty=penalty if penalty else 1.0,
        )
        with torch.inference_mode():
            out = self.model.generate(
                input_ids=input_ids.to(device), attention_mask=attention.to(device),
                pixel_values=pixel_values, generation_config=config,
                stopping_criteria=StoppingCriteriaList([guard]), logits_processor=processors,
            )
        new = out[:, width:].to("cpu")
        guard.finalize(new.shape[1])
        elapsed_ms = (time.perf_counter() - started) * 1000.0
        metrics.TOKENS_GENERATED.labels(engine=self.name).inc(sum(int(n) for n in guard.lengths))
        results = []
        for row in range(len(prompts)):
            ids = new[row, : guard.lengths[row]].tolist()
            text_ids = ids[:-1] if ids and ids[-1] in self.eos_token_ids else ids
            results.append(Generation(
                text=self.tokenizer.decode(text_ids, skip_special_tokens=True),
                token_ids=ids,
                finish_reason=guard.reasons[row] or "length",
                infer_ms=elapsed_ms / len(prompts),
            ))
        return results

    # -- pages --

    def process(self, pages: Sequence[RenderedPage], task: Task,
                schema: "ExtractionSchema | None" = None) -> list[PageResult]:
        """One :class:`PageResult` per page, in input order; a failing page fails alone."""
        _check_task(task, schema)
        return self.process_pages([(page, task, schema) for page in pages])

    def process_pages(self, items: Sequence[tuple[RenderedPage, Task, "ExtractionSchema | None"]]
                      ) -> list[PageResult]:
        """``(page, task, schema)`` items, e.g. pages of many jobs, batched together: one
        :class:`PageResult` each, in input order; a failing page (even a bad task) fails alone."""
        self.load()
        results: list[PageResult | None] = [None] * len(items)
        requests: list[GenerationRequest] = []
        owners: list[int] = []
        tile_ms: dict[int, float] = {}
        for i, (page, task, schema) in enumerate(items):
            try:
                _check_task(task, schema)
            except InvalidRequest as exc:
                results[i] = self._failed(page, exc.code, exc.message)
                continue
            started = time.perf_counter()
            try:
                tiles = self.tile(page.image)
            except Exception as exc:  # noqa: BLE001 - an untileable page fails alone
                results[i] = self._failed(page, "inference_error", f"tiling failed: {type(exc).__name__}: {exc}")
                continue
            tile_ms[i] = (time.perf_counter() - started) * 1000.0
            requests.append(self.request_for_page(page, task, schema, tiles=tiles))
            owners.append(i)
        outputs = self.generate_outputs(requests)
        for i, request, out in zip(owners, requests, outputs):
            page, task, schema = items[i]
            results[i] = self._page_result(page, task, schema, request, out, tile_ms[i])
        return [r for r in results if r is not None]

    def _failed(self, page: RenderedPage, code: str, message: str, **extra: Any) -> PageResult:
        width, height = page.image.size
        return PageResult(page=page.number, status="failed", engine=self.name, width=width, height=height,
                          has_text_layer=page.has_text_layer, error=ErrorInfo(code=code, message=message),
                          **extra)

    def _page_result(self, page: RenderedPage, task: Task, schema: "ExtractionSchema | None",
                     request: GenerationRequest, out: Generation, tile_ms: float) -> PageResult:
        timings = {"tile": round(tile_ms, 3), "infer": round(out.infer_ms, 3)}
        common: dict[str, Any] = {"tiles": request.n_tiles, "timings_ms": timings}
        if out.error is not None:
            return self._failed(page, "inference_error", out.error, **common)
        if out.degenerate:
            tries = "after a retry with repetition_penalty" if out.retried else "(no retry)"
            return self._failed(page, "degenerate_output",
                                f"the output looped (repetition) {tries}; raw text kept",
                                raw_output=out.text, **common)
        started = time.perf_counter()
        output = read_output(task, out.text, schema)
        timings["postprocess"] = round((time.perf_counter() - started) * 1000.0, 3)
        error = output.get("error")
        width, height = page.image.size
        return PageResult(
            page=page.number, status="failed" if error else "succeeded", engine=self.name,
            width=width, height=height, has_text_layer=page.has_text_layer,
            raw_output=out.text if error else None, **output, **common,
        )
