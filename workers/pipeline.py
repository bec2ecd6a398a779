"""One document's way through docproc, in-process: intake -> render -> route -> infer -> merge.

``process_document`` is what the CLI runs and what the Celery tasks will wrap.
Pages are rendered and sent to the engines in batches of ``settings.batch_size``
so memory stays flat however long the document is.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from docproc.base.errors import DocprocError, ModelUnavailable
from docproc.base.settings import Settings, get_settings
from docproc.jobs.clean_text import clean_page
from docproc.jobs.inputs import OpenedDocument, open_document
from docproc.jobs.requests import parse_page_range, resolve_request
from docproc.jobs.results import (
    DocumentInfo,
    DocumentResult,
    EngineName,
    ErrorInfo,
    PageResult,
    ResultWarning,
    Task,
)
from docproc.jobs.schemas import ExtractionSchema
from workers.engines.text import TEXT_TASKS, TextEngine
from workers.pages import RenderedPage
from workers.render import Draw, render_pages
from workers.repair import (
    CUT,
    CUT_MESSAGE,
    MISSING,
    MISSING_MESSAGE,
    document_warning,
    page_damage,
    page_warning,
)

if TYPE_CHECKING:
    from workers.engines.internvl import InternVLEngine
    from workers.engines.openai import OpenAIEngine

MODEL_ENGINES = ("internvl", "openai")


@dataclass
class Engines:
    """The engines of one process; the model is loaded on first use, once."""

    settings: Settings
    text: TextEngine = field(default_factory=TextEngine)
    remember_load_failure: bool = False
    """The CLI: a model that cannot be loaded is tried once per process, not once per batch."""
    _internvl: "InternVLEngine | None" = None
    load_error: ModelUnavailable | None = None

    @property
    def internvl(self) -> "InternVLEngine":
        if self._internvl is None:
            from workers.engines.internvl import InternVLEngine

            if self.load_error is not None:
                raise self.load_error
            engine = InternVLEngine(self.settings)
            try:
                engine.load()
            except ModelUnavailable as exc:
                if self.remember_load_failure:
                    self.load_error = exc
                raise
            self._internvl = engine
        return self._internvl

    _openai: "OpenAIEngine | None" = None

    @property
    def openai(self) -> "OpenAIEngine":
        """The OpenAI-compatible server client (no model in this process)."""
        if self._openai is None:
            from workers.engines.openai import OpenAIEngine

            self._openai = OpenAIEngine(self.settings)
        return self._openai

    def model(self, name: str) -> "InternVLEngine | OpenAIEngine":
        """The model engine called ``name`` (``openai``, else ``internvl``)."""
        return self.openai if name == "openai" else self.internvl

    def model_id(self) -> str | None:
        """The model of the model engine this process used, if any."""
        used = self._openai or self._internvl
        return used.model_id if used is not None else None


def route(page: RenderedPage, task: Task, engine: EngineName) -> str:
    """Which engine a page goes to: ``auto`` reads born-digital pages for ocr/tables when their
    text layer can be trusted (``page.text_layer_issue`` says why not, workers/text_routing.py)."""
    return engine_for(page.has_text_layer, task, engine)


def engine_for(has_text_layer: bool, task: Task, engine: EngineName) -> str:
    """:func:`route` for a page whose text layer is (not) to be trusted."""
    if engine != "auto":
        return engine
    return "text" if task in TEXT_TASKS and has_text_layer else "internvl"


def drawn_for(task: Task, engine: EngineName) -> Draw:
    """The render's ``draw``: only a page that goes to a model engine is drawn."""
    return lambda has_text_layer: engine_for(has_text_layer, task, engine) != "text"


def _batches(pages: Iterable[RenderedPage | PageResult], size: int) -> Iterable[list]:
    batch: list = []
    for page in pages:
        batch.append(page)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


def render_or_fail(doc: OpenedDocument, number: int, settings: Settings, *,
                   draw: Draw | None = None) -> RenderedPage | PageResult:
    """Render one page; a page that cannot render becomes a failed result (engine ``render``).

    In a repaired PDF (:mod:`workers.repair`) a page whose content is gone fails
    ``corrupt_document`` (it would look like a scan), and so does one whose content is cut
    short before any usable text; one cut short later is rendered and carries a
    ``repaired`` warning."""
    damage = page_damage(doc.pdf, number) if doc.repaired and doc.pdf is not None else None
    if damage == MISSING:
        return _lost(number, MISSING_MESSAGE)
    try:
        page = next(render_pages(doc, [number], settings, draw=draw))
    except DocprocError as exc:
        return PageResult(page=number, status="failed", engine="render", error=ErrorInfo(**exc.to_dict()))
    if damage == CUT:
        if not page.has_text_layer:
            return _lost(number, CUT_MESSAGE)
        page.warnings.append(page_warning(damage))
    return page


def _lost(number: int, message: str) -> PageResult:
    return PageResult(page=number, status="failed", engine="render", warnings=[page_warning(MISSING)],
                      error=ErrorInfo(code="corrupt_document", message=message))


def finish_page(page: RenderedPage, result: PageResult) -> PageResult:
    """An engine's result for ``page`` as it leaves the engine: the render's timings and
    warnings added, why the page's text layer was not trusted (if it was not), and its
    strings made safe to serialise (:mod:`docproc.jobs.clean_text`)."""
    result.timings_ms = {**page.timings_ms, **result.timings_ms}
    result.warnings = [*page.warnings, *result.warnings]
    if result.text_layer is None:
        result.text_layer = page.text_layer_issue
    return clean_page(result)


def document_warnings(doc: OpenedDocument, numbers: list[int]) -> list[ResultWarning]:
    """The document's warnings: ``repaired`` when MuPDF had to repair the PDF."""
    return [document_warning(doc.pdf, numbers)] if doc.repaired and doc.pdf is not None else []


def _rendered(doc: OpenedDocument, numbers: Sequence[int], settings: Settings,
              draw: Draw) -> Iterable[RenderedPage | PageResult]:
    """Render pages one by one; a page that cannot render becomes a failed result."""
    for number in numbers:
        yield render_or_fail(doc, number, settings, draw=draw)


def _run_batch(
    doc: OpenedDocument,
    batch: list[RenderedPage | PageResult],
    task: Task,
    schema: ExtractionSchema | None,
    engine: EngineName,
    engines: Engines,
) -> list[PageResult]:
    done = [p for p in batch if isinstance(p, PageResult)]
    rendered = [p for p in batch if isinstance(p, RenderedPage)]
    text_pages = [p for p in rendered if route(p, task, engine) == "text"]
    model_pages = [p for p in rendered if route(p, task, engine) in MODEL_ENGINES]
    if text_pages:
        done += engines.text.process(doc, text_pages, task)
    if model_pages:
        name = route(model_pages[0], task, engine)
        try:
            model = engines.model(name)
        except ModelUnavailable as exc:  # the model pages fail; the text pages and other documents go on
            error = ErrorInfo(code=exc.code, message=exc.message)
            done += [PageResult(page=p.number, status="failed", engine=name, error=error) for p in model_pages]
        else:
            done += model.process(model_pages, task, schema)
    by_page = {p.number: p for p in rendered}
    return [finish_page(by_page[r.page], r) if r.page in by_page else r for r in done]


def document_status(pages: Sequence[PageResult]) -> str:
    """succeeded when every page did, failed when none did, else partial."""
    ok = sum(p.status == "succeeded" for p in pages)
    if ok == len(pages):
        return "succeeded"
    return "failed" if ok == 0 else "partial"


def document_error(pages: Sequence[PageResult]) -> ErrorInfo:
    """Why a document failed: the pages' shared error, or a summary of their codes."""
    codes = sorted({p.error.code for p in pages if p.error})
    if len(codes) == 1:
        first = next(p.error for p in pages if p.error)
        return ErrorInfo(code=first.code, message=f"every page failed: {first.message}")
    return ErrorInfo(code="all_pages_failed", message=f"every page failed ({', '.join(codes)})")


def process_document(
    data: bytes,
    *,
    filename: str | None = None,
    task: Task = "ocr",
    schema: str | None = None,
    engine: EngineName = "auto",
    pages: str | None = None,
    settings: Settings | None = None,
    engines: Engines | None = None,
    on_start: Callable[[int], None] | None = None,
    on_page: Callable[[PageResult], None] | None = None,
) -> DocumentResult:
    """Process one document in-process. Typed input errors are raised; page errors are reported."""
    settings = settings or get_settings()
    engines = engines or Engines(settings)
    started = time.perf_counter()
    extraction_schema = resolve_request(task, schema, engine, settings)

    t0 = time.perf_counter()
    with open_document(data, filename=filename, settings=settings) as doc:
        intake_ms = (time.perf_counter() - t0) * 1000
        numbers = parse_page_range(pages, doc.page_count)
        if on_start:
            on_start(len(numbers))
        results: list[PageResult] = []
        for batch in _batches(_rendered(doc, numbers, settings, drawn_for(task, engine)), settings.batch_size):
            for result in _run_batch(doc, batch, task, extraction_schema, engine, engines):
                results.append(result)
                if on_page:
                    on_page(result)
        warnings = document_warnings(doc, numbers)
        info = DocumentInfo(
            filename=filename,
            sha256=doc.sha256,
            size_bytes=doc.size_bytes,
            media_type=str(doc.media_type),
            page_count=doc.page_count,
        )

    model_id = engines.model_id()
    stage_totals = {"intake": intake_ms, **page_stage_totals(results)}
    stage_totals["total"] = (time.perf_counter() - started) * 1000
    return assemble_document(
        info, results, task=task, schema=extraction_schema, engine=engine, model_id=model_id, timings_ms=stage_totals,
        warnings=warnings,
    )


def page_stage_totals(results: Iterable[PageResult]) -> dict[str, float]:
    """Each stage's milliseconds summed over the pages (render, tile, infer, ...)."""
    totals: dict[str, float] = {}
    for r in results:
        for stage, ms in r.timings_ms.items():
            totals[stage] = totals.get(stage, 0.0) + ms
    return totals


def assemble_document(
    info: DocumentInfo,
    results: Sequence[PageResult],
    *,
    task: Task,
    schema: ExtractionSchema | None,
    engine: EngineName,
    model_id: str | None,
    timings_ms: dict[str, float],
    warnings: Sequence[ResultWarning] = (),
) -> DocumentResult:
    """The document result from its page results: status, merged fields, engines used.

    ``model_id`` is reported only when a page went through the model; ``engine``
    (the request's) is reported when no page reached an engine.
    """
    results = sorted(results, key=lambda r: r.page)
    status = document_status(results)
    merged = provenance = None
    if schema is not None:
        from workers.postprocess import merge_pages

        merged, provenance = merge_pages(results, schema)
    used = sorted({r.engine for r in results if r.engine in ("text", *MODEL_ENGINES)})
    return DocumentResult(
        document=info,
        task=task,
        schema=schema.name if schema else None,
        schema_version=schema.version if schema else None,
        engine="+".join(used) if used else engine,
        model=model_id if set(MODEL_ENGINES) & set(used) else None,
        status=status,
        pages=results,
        fields=merged,
        provenance=provenance,
        timings_ms={k: round(v, 3) for k, v in timings_ms.items()},
        error=document_error(results) if status == "failed" else None,
        warnings=list(warnings),
    )
