"""How many tokens a schema's JSON may still need to close, from any point of its output.

A JSON-schema grammar alone does not guarantee a *complete* answer: a model (a
randomly initialised one in the tests, a confused real one in production) can
stay inside a string or an array until ``max_new_tokens`` cuts it off, and the
half-written JSON does not parse. docproc closes it instead: once a row's
remaining budget falls to the schema's *closing reserve*, the logits processor
(:mod:`workers.engines.json_constraint`) stops following the model and picks, at
each step, the allowed token of a fixed closing order (:data:`CLOSING_ORDER`:
end a string, end an object, end an array, next member, ``null``, ``0`` ...,
else the shortest allowed token). The grammar still masks every step, so the
closed output is valid under the schema; it is only cut short.

:func:`closing_reserve` bounds, in UTF-8 bytes (plus the stop token), what that
order emits from *any* state of a compact (no whitespace) output: the rest of
the scalar being written (:func:`max_scalar_tail`) plus, for each container that
may be open, a complete greedy fill of it (:func:`greedy_fill`), maximised over
the schema's nesting paths. A byte-level tokenizer holds every single byte as a
token and every token holds at least one byte, so the bound holds in tokens.
Pure Python (no torch, no xgrammar), computed once per schema.
"""

from __future__ import annotations

import copy
import json
import re
from typing import Any

# The closing order: the first of these single bytes the grammar allows is taken.
CLOSING_ORDER = (b'"', b"}", b"]", b",", b"n", b"0", b"[", b"{", b"f", b"t", b"-")
MAX_NUMBER_BYTES = 24  # a number the closing order finishes: generous for range-limited numbers
MAX_CHAR_BYTES = 6  # one character where an escape (\uXXXX) may be written
LITERAL_BYTES = {"null": 4, "boolean": 5}
FORMAT_BYTES = {"date": len('"2026-01-31"')}


# A valid calendar date (years 0001-9999, leap days included): xgrammar's own "format": "date"
# admits 0000-02-31, which the validator rejects; the grammar gets this pattern instead.
_YEAR = "(?:[1-9][0-9]{3}|0[1-9][0-9]{2}|00[1-9][0-9]|000[1-9])"
_MONTH_DAY = ("(?:(?:0[13578]|1[02])-(?:0[1-9]|[12][0-9]|3[01])|(?:0[469]|11)-(?:0[1-9]|[12][0-9]|30)"
              "|02-(?:0[1-9]|1[0-9]|2[0-8]))")
_LEAP_DAY = "(?:[0-9]{2}(?:0[48]|[2468][048]|[13579][26])|(?:0[48]|[2468][048]|[13579][26])00)-02-29"
DATE_PATTERN = f"^(?:{_YEAR}-{_MONTH_DAY}|{_LEAP_DAY})$"


def grammar_schema(schema: dict[str, Any]) -> dict[str, Any]:
    """A copy of ``schema`` for the grammar: ``"format": "date"`` becomes :data:`DATE_PATTERN`.
    It admits exactly what the original's validator accepts there; the original still validates."""
    out = copy.deepcopy(schema)
    _dates_to_patterns(out)
    return out


def _dates_to_patterns(node: Any) -> None:
    if isinstance(node, dict):
        if node.get("format") == "date":
            del node["format"]
            node.pop("pattern", None)
            node["pattern"] = DATE_PATTERN
        for value in node.values():
            _dates_to_patterns(value)
    elif isinstance(node, list):
        for value in node:
            _dates_to_patterns(value)


class UnboundedSchema(ValueError):
    """The schema has a part whose closing length is unknown (e.g. a pattern of no maximum width)."""


def _types(node: dict[str, Any]) -> list[str]:
    t = node.get("type")
    if t is None:
        return []
    return [t] if isinstance(t, str) else list(t)


def _json_bytes(value: Any) -> int:
    return max(len(json.dumps(value, ensure_ascii=a, separators=(",", ":")).encode()) for a in (True, False))


_PLAIN = frozenset(range(0x20, 0x7F)) - {ord('"'), ord("\\")}  # written as one byte in a JSON string


def _plain_ascii(tree: Any) -> bool:
    """True when every character a parsed regex can match is plain ASCII (one byte, no escape)."""
    from re import _constants as c

    for op, arg in tree:
        if op in (c.LITERAL,):
            if arg not in _PLAIN:
                return False
        elif op == c.RANGE:
            if not (arg[0] in _PLAIN and arg[1] in _PLAIN and all(x in _PLAIN for x in range(arg[0], arg[1] + 1))):
                return False
        elif op == c.IN:
            if not _plain_ascii(arg):
                return False
        elif op in (c.MAX_REPEAT, c.MIN_REPEAT, c.POSSESSIVE_REPEAT):
            if not _plain_ascii(arg[2]):
                return False
        elif op == c.SUBPATTERN:
            if not _plain_ascii(arg[3]):
                return False
        elif op == c.BRANCH:
            if not all(_plain_ascii(b) for b in arg[1]):
                return False
        elif op != c.AT:  # ANY, NOT_LITERAL, NEGATE, CATEGORY ...: may need more bytes
            return False
    return True


def _pattern_bytes(pattern: str) -> int:
    """Most bytes of a string matching ``pattern`` between its quotes."""
    from re import _parser  # the stdlib's own regex parser: (min, max) match width

    try:
        tree = _parser.parse(pattern)
    except re.error as exc:
        raise UnboundedSchema(f"pattern {pattern!r} does not parse: {exc}") from exc
    _, high = tree.getwidth()
    if high >= _parser.MAXREPEAT:
        raise UnboundedSchema(f"pattern {pattern!r} has no maximum width")
    return int(high) * (1 if _plain_ascii(tree) else MAX_CHAR_BYTES)


def _string_bytes(node: dict[str, Any]) -> int:
    """A whole string value of ``node`` as the closing order writes it."""
    if "format" in node:  # xgrammar ignores a pattern next to a format
        if node["format"] not in FORMAT_BYTES:
            raise UnboundedSchema(f"format {node['format']!r} has no known length")
        return FORMAT_BYTES[node["format"]]
    if "pattern" in node:
        return 2 + _pattern_bytes(node["pattern"])
    return 2 + MAX_CHAR_BYTES * int(node.get("minLength", 0))


def _fixed_bytes(node: dict[str, Any]) -> int | None:
    """Bytes of a ``const``/``enum`` node's longest value (None for other nodes)."""
    if "const" in node:
        return _json_bytes(node["const"])
    if "enum" in node:
        return max(_json_bytes(v) for v in node["enum"])
    return None


def _typed(node: dict[str, Any]) -> list[str]:
    types = _types(node)
    if not types:
        raise UnboundedSchema("a node without 'type' admits any JSON")
    return types


def greedy_fill(node: dict[str, Any]) -> int:
    """Bytes of a whole value of ``node`` written by the closing order from its first byte."""
    fixed = _fixed_bytes(node)
    if fixed is not None:
        return fixed
    types = _typed(node)
    if "string" in types:  # '"' comes first in the closing order
        return _string_bytes(node)
    if "null" in types:
        return LITERAL_BYTES["null"]
    if "number" in types or "integer" in types:
        return MAX_NUMBER_BYTES
    if "array" in types:
        n = int(node.get("minItems", 0))
        return 2 + n * greedy_fill(node.get("items") or {}) + max(0, n - 1)
    if "object" in types:
        props = node.get("properties") or {}
        return 2 + sum(_json_bytes(k) + 1 + greedy_fill(v) for k, v in props.items()) + max(0, len(props) - 1)
    if "boolean" in types:
        return LITERAL_BYTES["boolean"]
    raise UnboundedSchema(f"unknown type(s) {types}")


def _children(node: dict[str, Any]) -> list[dict[str, Any]]:
    kids = list((node.get("properties") or {}).values())
    if isinstance(node.get("items"), dict):
        kids.append(node["items"])
    return kids


def _is_container(node: dict[str, Any]) -> bool:
    return "const" not in node and "enum" not in node and bool({"object", "array"} & set(_types(node)))


def max_scalar_tail(node: dict[str, Any]) -> int:
    """Most bytes needed to finish any scalar of the schema (or a key) once it was begun."""
    worst = 0
    if not _is_container(node):
        worst = max(worst, greedy_fill(node), MAX_NUMBER_BYTES if {"number", "integer"} & set(_types(node)) else 0)
    for key, child in (node.get("properties") or {}).items():
        worst = max(worst, _json_bytes(key) + 1)
        worst = max(worst, max_scalar_tail(child))
    if isinstance(node.get("items"), dict):
        worst = max(worst, max_scalar_tail(node["items"]))
    return worst


def _path_fill(node: dict[str, Any]) -> int:
    """The largest sum of greedy fills of containers nested along one path from ``node``."""
    if not _is_container(node):
        return 0
    return greedy_fill(node) + max((_path_fill(c) for c in _children(node)), default=0)


def closing_reserve(schema: dict[str, Any]) -> int:
    """Tokens (stop token included) the closing order needs at most, from any state, to end a
    compact JSON value of ``schema``. Raises UnboundedSchema when that is not known."""
    return max_scalar_tail(schema) + _path_fill(schema) + 1


# --- schemas sent to a model server (workers/engines/served.py) -----------------------
#
# A server (vLLM, LMDeploy) constrains decoding to the schema with xgrammar but has no
# closing order: a string or an array the model never ends runs into ``max_tokens`` and
# the JSON is cut. So what is sent is bounded instead: every string gets a ``maxLength``
# and every array a ``maxItems`` (tighter ones of the schema stay), chosen so that the
# longest compact value the bounded schema admits fits the page's token budget, and every
# number a range (the grammar then bounds its digits). The output must be compact: the
# server must run with the grammar's free whitespace off.

STRING_CHARS_START = 512  # the bounds tried first, halved until the longest value fits
ARRAY_ITEMS_START = 64
# A number without a range is any count of digits in xgrammar's grammar; with one, the grammar
# bounds its digits (and writes at most 6 decimals): -999999999999.999999 is 20 bytes.
NUMBER_LIMIT = 10**12 - 1


def max_bytes(node: dict[str, Any]) -> int:
    """Most bytes of a compact JSON value of a bounded ``node`` (numbers count
    :data:`MAX_NUMBER_BYTES`); UnboundedSchema where a string or array has no bound."""
    fixed = _fixed_bytes(node)
    return fixed if fixed is not None else max(_type_max_bytes(node, t) for t in _typed(node))


def _type_max_bytes(node: dict[str, Any], kind: str) -> int:
    if kind == "string":
        if "format" in node or "pattern" in node:
            return _string_bytes(node)
        if "maxLength" not in node:
            raise UnboundedSchema("a string without maxLength")
        return 2 + MAX_CHAR_BYTES * int(node["maxLength"])
    if kind in LITERAL_BYTES:
        return LITERAL_BYTES[kind]
    if kind in ("number", "integer"):
        return MAX_NUMBER_BYTES
    if kind == "array":
        if "maxItems" not in node:
            raise UnboundedSchema("an array without maxItems")
        n = int(node["maxItems"])
        return 2 + n * max_bytes(node.get("items") or {}) + max(0, n - 1)
    if kind == "object":
        props = node.get("properties") or {}
        return 2 + sum(_json_bytes(k) + 1 + max_bytes(v) for k, v in props.items()) + max(0, len(props) - 1)
    raise UnboundedSchema(f"unknown type {kind!r}")


def _apply_bounds(node: dict[str, Any], chars: int, items: int) -> None:
    types = _types(node)
    if "string" in types and "format" not in node and "pattern" not in node and "enum" not in node:
        node["maxLength"] = max(int(node.get("minLength", 0)), min(chars, int(node.get("maxLength", chars))))
    if {"number", "integer"} & set(types):
        node.setdefault("minimum", -NUMBER_LIMIT)
        node.setdefault("maximum", NUMBER_LIMIT)
    if "array" in types:
        node["maxItems"] = max(int(node.get("minItems", 0)), min(items, int(node.get("maxItems", items))))
    if "object" in types:
        node["additionalProperties"] = False  # no keys beyond the listed ones: their length is unknown
    for child in _children(node):
        _apply_bounds(child, chars, items)


def bounded_schema(schema: dict[str, Any], budget_tokens: int) -> tuple[dict[str, Any], int]:
    """``(schema to send, its longest compact value in bytes)``: :func:`grammar_schema` of
    ``schema`` with strings and arrays bounded so that value plus the stop token fits
    ``budget_tokens`` (every token holds at least one byte). Bounds start at
    :data:`STRING_CHARS_START` characters and :data:`ARRAY_ITEMS_START` items and are
    halved, arrays first down to 8 items, until it fits; UnboundedSchema when even one
    character and one item do not."""
    chars, items = STRING_CHARS_START, ARRAY_ITEMS_START
    while True:
        out = grammar_schema(schema)
        _apply_bounds(out, chars, items)
        longest = max_bytes(out)
        if longest + 1 <= budget_tokens:
            return out, longest
        if items > 8:
            items //= 2
        elif chars > 32:
            chars //= 2
        elif items > 1:
            items //= 2
        elif chars > 1:
            chars //= 2
        else:
            raise UnboundedSchema(f"the schema's shortest bounded form needs {longest + 1} tokens, more than "
                                  f"the budget of {budget_tokens}")
