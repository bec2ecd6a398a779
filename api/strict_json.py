"""JSON from clients, parsed strictly: what Python's ``json`` accepts but docproc cannot keep.

``json.loads`` takes input that later breaks a request with a 500, or changes it without a
word: nesting deep enough to exhaust the recursion limit (in the parser, or later when the
value is validated, stored or serialised), integers past Python's 4,300-digit conversion
limit, lone UTF-16 surrogates (``"\\ud800"``: valid JSON text, but no UTF-8 can encode
them), and ``NaN`` / ``Infinity`` / ``1e999`` (not JSON at all; stored as ``null``).
:func:`loads` refuses each with :class:`~docproc.base.errors.InvalidRequest` (422
``invalid_request``) whose ``reason`` names the check.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

from docproc.base.errors import InvalidRequest

MAX_DEPTH = 32
"""Arrays and objects nested deeper than this are refused (metadata included)."""

_SURROGATE = re.compile("[\ud800-\udfff]")


def loads(raw: bytes | str, what: str = "the body") -> Any:
    """``raw`` parsed as JSON; InvalidRequest (with ``reason``) for anything the module
    docstring lists, and for text that is not JSON."""
    try:
        value = json.loads(raw, parse_constant=lambda name: _non_finite(name, what))
    except InvalidRequest:
        raise
    except RecursionError:
        raise _too_deep(what) from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InvalidRequest(f"{what} is not valid JSON: {exc}", reason="not_json") from None
    except ValueError as exc:  # int() past sys.get_int_max_str_digits()
        raise InvalidRequest(f"{what} has a number with too many digits ({exc})", reason="number_too_large") from None
    check_value(value, what)
    return value


def check_value(value: Any, what: str = "the body") -> None:
    """InvalidRequest when a parsed JSON value nests past :data:`MAX_DEPTH`, holds a string
    (or key) with a lone surrogate, or a float that is not finite. Iterative: any depth."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict | list):
            if depth > MAX_DEPTH:
                raise _too_deep(what)
            if isinstance(item, dict):
                for key, child in item.items():
                    _check_text(key, what)
                    stack.append((child, depth + 1))
            else:
                stack.extend((child, depth + 1) for child in item)
        elif isinstance(item, str):
            _check_text(item, what)
        elif isinstance(item, float) and not math.isfinite(item):
            raise InvalidRequest(f"{what} has a number out of range ({item})", reason="non_finite_number")


def _non_finite(name: str, what: str) -> Any:
    raise InvalidRequest(f"{what} contains {name}, which is not a JSON number", reason="non_finite_number")


def _check_text(text: str, what: str) -> None:
    if _SURROGATE.search(text):
        raise InvalidRequest(f"{what} has a string with a lone UTF-16 surrogate (\\ud800-\\udfff), which no UTF-8 "
                             "text can hold", reason="lone_surrogate")


def _too_deep(what: str) -> InvalidRequest:
    return InvalidRequest(f"{what} nests arrays/objects more than {MAX_DEPTH} deep", reason="nesting_too_deep",
                          limit=MAX_DEPTH)
