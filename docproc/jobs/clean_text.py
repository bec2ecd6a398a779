"""Text from the engines made safe to serialise: no UTF-16 surrogates in a result.

PyMuPDF's table finder (and a model's detokeniser, or a server's JSON with ``\\ud835``
escapes) can hand back Python strings holding surrogate code points: a character outside
the BMP split into its two UTF-16 halves (``"\\ud835\\udc65"``, a math-italic x), or one
half alone. No UTF-8 encoder takes them, so the page's JSON (CLI file, stored result,
Redis record) cannot be written. :func:`clean_page` is applied where each engine's page
result comes out (:func:`workers.pipeline.finish_page`): a split pair is joined back
into its character, a lone half becomes U+FFFD (the replacement character).
"""

from __future__ import annotations

import re
from typing import Any

from docproc.jobs.results import PageResult

_SURROGATE = re.compile("[\ud800-\udfff]")


def clean_text(text: str) -> str:
    """``text`` with surrogate pairs joined and lone surrogates replaced by U+FFFD."""
    if not _SURROGATE.search(text):
        return text
    return text.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "replace")


def clean_value(value: Any) -> Any:
    """Every string in a JSON-like value (dicts, lists, tuples; keys too) cleaned."""
    if isinstance(value, str):
        return clean_text(value)
    if isinstance(value, dict):
        return {clean_value(k): clean_value(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(clean_value(v) for v in value)
    return value


def clean_page(result: PageResult) -> PageResult:
    """``result`` with every string it holds cleaned (the same object when none needed it).

    The common case is checked first, cheaply: a result that serialises to JSON holds no
    surrogate (the UTF-8 encoder refuses every one, paired or lone)."""
    try:
        result.model_dump_json()
        return result
    except ValueError:  # PydanticSerializationError: a surrogate (or another reason): walk it
        pass
    data = result.model_dump(mode="python", by_alias=True)
    cleaned = clean_value(data)
    return result if cleaned == data else PageResult.model_validate(cleaned)
