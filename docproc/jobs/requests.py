"""What a request may ask, checked before any document is read: the task, the engine, the
extraction schema and the page range.

The API checks a request at submission and the workers check it again at intake (a job
re-processed under a changed schema registry, a request sent straight to the queue), with
these same functions, so both sides refuse the same requests with the same typed errors.
"""

from __future__ import annotations

import re

from docproc.base.errors import InvalidPageRange, InvalidRequest
from docproc.base.settings import Settings
from docproc.jobs.results import EngineName, Task
from docproc.jobs.schemas import ExtractionSchema, get_registry

TASKS: tuple[Task, ...] = ("ocr", "tables", "extract")
ENGINES: tuple[EngineName, ...] = ("auto", "text", "internvl", "openai")


def resolve_request(task: str, schema: str | None, engine: str, settings: Settings) -> ExtractionSchema | None:
    """Check a request before any document is read; returns the extraction schema, if any."""
    if task not in TASKS:
        raise InvalidRequest(f"unknown task {task!r}; expected one of {', '.join(TASKS)}")
    if engine not in ENGINES:
        raise InvalidRequest(f"unknown engine {engine!r}; expected one of {', '.join(ENGINES)}")
    if task == "extract":
        if not schema:
            raise InvalidRequest("task 'extract' needs a schema (e.g. schema 'invoice')")
        if engine == "text":
            raise InvalidRequest("the text engine cannot extract fields; use engine 'internvl', 'openai' or 'auto'")
        return get_registry(settings).get(schema)
    if schema:
        raise InvalidRequest(f"a schema is only used by task 'extract', not {task!r}")
    return None


_PART = re.compile(r"^\s*(\d*)\s*(-?)\s*(\d*)\s*$")


def parse_page_range(spec: str | None, page_count: int) -> list[int]:
    """1-based page numbers selected by ``spec``, sorted, without duplicates.

    ``None``, ``""`` and ``"all"`` select every page. Otherwise a comma-separated
    list of ``N`` (one page), ``A-B`` (A to B), ``A-`` (A to the last page) and
    ``-B`` (the first page to B). Any page beyond ``page_count``, a zero, a
    descending range or anything else -> InvalidPageRange.
    """
    if spec is None or spec.strip().lower() in ("", "all"):
        return list(range(1, page_count + 1))
    pages: set[int] = set()
    for part in spec.split(","):
        m = _PART.match(part)
        if not m or not (m.group(1) or m.group(3)) or (m.group(1) and m.group(3) and not m.group(2)):
            raise InvalidPageRange(
                f"invalid page range {spec!r}: {part.strip()!r} is not N, A-B, A- or -B", spec=spec
            )
        first_s, dash, last_s = m.groups()
        first = int(first_s) if first_s else 1
        last = int(last_s) if last_s else (page_count if dash else first)
        if first < 1 or last < 1:
            raise InvalidPageRange(f"invalid page range {spec!r}: pages are numbered from 1", spec=spec)
        if max(first, last) > page_count:
            raise InvalidPageRange(
                f"invalid page range {spec!r}: page {max(first, last)} is beyond the "
                f"document's {page_count} page{'s' if page_count != 1 else ''}",
                spec=spec,
                page_count=page_count,
            )
        if first > last:
            raise InvalidPageRange(f"invalid page range {spec!r}: {first}-{last} is descending", spec=spec)
        pages.update(range(first, last + 1))
    return sorted(pages)
