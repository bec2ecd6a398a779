"""From a model's raw text to schema-valid fields, and from page fields to one document.

The steps of ``extract`` postprocessing, each a plain function:

1. :func:`extract_json` finds the first complete JSON object in the output (code
   fences, prose and chatter around it are skipped; trailing commas are repaired).
2. :func:`normalize_fields` walks the value with the schema and rewrites what is
   unambiguous: numbers printed the European or English way, dates in common
   formats, currency symbols, blank strings. What it cannot read it leaves as is.
3. :func:`validate_fields` checks the result against the schema (formats included).

:func:`postprocess_extract` runs the three and never raises on model output; a
failure is an ``invalid_output`` :class:`~docproc.jobs.results.ErrorInfo`.
:func:`merge_pages` merges the pages of one document with per-field provenance.
:func:`clean_text_output` tidies ``ocr``/``tables`` output.

Rules chosen where the input is ambiguous (documented, tested):

- ``"03/01/2026"``: day first (3 January) unless only the other reading is a date
  (``"12/31/2026"`` -> 31 December); pass ``day_first=False`` for US documents.
  Two-digit years: 00-68 -> 20xx, 69-99 -> 19xx. A date without a year is not guessed.
- A lone separator followed by exactly three digits: ``"1,234"`` is 1234 (comma as
  thousands separator) but ``"1.234"`` is 1.234 (dot as decimal point, as JSON reads it).
  With both separators the last one is the decimal point (``"1.234,56"``, ``"1,234.56"``).
- ``"$"`` is taken as USD (``"US$"``, ``"C$"``, ``"A$"`` are read as USD, CAD, AUD);
  ``"kr"`` is not mapped (SEK, NOK, DKK). ``"12%"`` in a number field is 12.0.
- ``"(12.00)"``, ``"12.00-"`` and ``"12.00 DR"`` are negative; ``"12.00 CR"`` positive.
- In a nullable field, ``""``, ``"null"``, ``"none"``, ``"n/a"`` and dashes become null;
  a required key the model left out becomes its empty value (null, ``[]``, or an
  object of empty values) when the schema allows that, as constrained decoding
  would have produced for "not on this page". Unknown keys are kept (and reported).
"""

from __future__ import annotations

import datetime as dt
import json
import math
import re
import unicodedata
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from docproc.jobs.results import ErrorInfo, PageResult
from docproc.jobs.schemas import MERGE_KEY, ExtractionSchema, schema_types

if TYPE_CHECKING:
    from collections.abc import Iterable

# --- 1. finding the JSON ------------------------------------------------------------

_FENCE_RE = re.compile(r"```[ \t]*(?:json5?)?[ \t]*\r?\n(.*?)(?:```|\Z)", re.DOTALL | re.IGNORECASE)


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _outside_strings(text: str, start: int = 0) -> Iterator[tuple[int, str]]:
    """``(index, char)`` for every character of ``text[start:]`` outside JSON strings
    (the quotes themselves excluded)."""
    in_string = escaped = False
    for i in range(start, len(text)):
        ch = text[i]
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        else:
            yield i, ch


def _scan_object(text: str, start: int) -> tuple[int, bool]:
    """Scan the JSON value opened at ``text[start]`` (``{``), string-aware.

    ``(end, True)``: it closes just before ``end``. ``(i, False)``: a bracket at ``i``
    closes the wrong opener. ``(len(text), False)``: it never closes (truncated).
    """
    stack: list[str] = []
    for i, ch in _outside_strings(text, start):
        if ch in "{[":
            stack.append("}" if ch == "{" else "]")
        elif ch in "}]":
            if stack.pop() != ch:
                return i, False
            if not stack:
                return i + 1, True
    return len(text), False


_CLOSER_AHEAD = re.compile(r"[ \t\r\n]*[}\]]")


def _strip_trailing_commas(text: str) -> str:
    """Drop commas that directly precede ``}`` or ``]`` (outside strings)."""
    drop = {
        i
        for i, ch in _outside_strings(text)
        if ch == "," and _CLOSER_AHEAD.match(text, i + 1)
    }
    return "".join(ch for i, ch in enumerate(text) if i not in drop) if drop else text


def _loads(candidate: str) -> Any:
    try:
        return json.loads(candidate, parse_constant=_reject_constant)
    except json.JSONDecodeError:
        repaired = _strip_trailing_commas(candidate)
        if repaired == candidate:
            raise
        return json.loads(repaired, parse_constant=_reject_constant)


def _first_object(text: str) -> tuple[Any, str | None]:
    """(object, None) for the first complete, parseable top-level object, else (None, reason).

    An object that never closes ends the search: everything after its ``{`` is inside
    it, so a complete inner object (``"vendor": {...}`` of a truncated output) must
    not be taken for the answer.
    """
    reason: str | None = None
    pos = 0
    while True:
        start = text.find("{", pos)
        if start < 0:
            return None, reason or "no JSON object found"
        end, closed = _scan_object(text, start)
        if not closed:
            if end >= len(text):
                return None, reason or "the JSON object is not closed (output truncated?)"
            reason = reason or f"invalid JSON: unbalanced {text[end]!r}"
            pos = end + 1  # skip the broken candidate with everything nested in it
            continue
        try:
            return _loads(text[start:end]), None
        except json.JSONDecodeError as exc:
            reason = reason or f"invalid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"
        except ValueError as exc:
            reason = reason or f"invalid JSON: {exc}"
        except RecursionError:
            reason = reason or "invalid JSON: nested too deeply"
        pos = end  # skip the whole candidate: an object inside it is not top-level


def extract_json(raw: str) -> Any:
    """The first complete top-level JSON object in a model's output.

    Looks inside Markdown code fences first, then in the whole text, so leading
    prose and trailing chatter do not matter. Braces are matched string-aware (a
    ``}`` inside a string does not close anything). Trailing commas are removed
    (the only repair made). Raises ``ValueError`` with a short reason when there
    is no complete object (nothing JSON-like, or the output was truncated). An
    unclosed ``{`` ends the search (what follows is inside it), so a stray brace
    in prose before the JSON makes the output unreadable.
    """
    if not isinstance(raw, str) or not raw.strip():
        raise ValueError("empty output")
    text = raw.lstrip("\ufeff")
    first_reason: str | None = None
    for fenced in _FENCE_RE.findall(text):
        value, reason = _first_object(fenced)
        if reason is None:
            return value
        first_reason = first_reason or reason
    value, reason = _first_object(text)
    if reason is None:
        return value
    raise ValueError(first_reason or reason)


# --- 2. normalising values ----------------------------------------------------------

NULL_MARKERS = frozenset({"", "null", "none", "n/a", "n.a.", "-", "--", "\u2013", "\u2014"})

CURRENCY_SYMBOLS = {
    "€": "EUR", "$": "USD", "US$": "USD", "USD$": "USD", "C$": "CAD", "CA$": "CAD", "A$": "AUD",
    "AU$": "AUD", "NZ$": "NZD", "HK$": "HKD", "S$": "SGD", "£": "GBP", "¥": "JPY", "JP¥": "JPY",
    "CN¥": "CNY", "RMB": "CNY", "₹": "INR", "₩": "KRW", "₽": "RUB", "₺": "TRY", "₪": "ILS",
    "₫": "VND", "฿": "THB", "₱": "PHP", "₴": "UAH", "zł": "PLN", "Kč": "CZK", "Ft": "HUF",
    "R$": "BRL", "Fr.": "CHF", "SFr.": "CHF", "EURO": "EUR", "EUROS": "EUR",
}
_CURRENCY_UPPER = {k.upper(): v for k, v in CURRENCY_SYMBOLS.items()}
_SYMBOL_CHARS = "€$£¥₹₩₽₺₪₫฿₱₴"

_MONTHS: dict[str, int] = {}
for _number, _names in enumerate(
    [
        "january jan januar janv janvier enero ene gennaio gen januari jänner jän",
        "february feb februar fév fev février fevrier febrero febbraio februari",
        "march mar märz maerz mrz mars marzo maart mrt",
        "april apr avril avr abril abr aprile",
        "may mai mayo maggio mag mei",
        "june jun juni juin junio giugno giu",
        "july jul juli juillet juil julio luglio lug",
        "august aug août aout agosto ago augustus",
        "september sep sept septembre septiembre settembre set",
        "october oct oktober okt octobre octubre ottobre ott",
        "november nov novembre noviembre",
        "december dec dez dezember décembre decembre diciembre dic dicembre",
    ],
    start=1,
):
    for _name in _names.split():
        _MONTHS[_name] = _number
_WEEKDAYS = frozenset(
    "monday mon tuesday tue tues wednesday wed thursday thu thur thurs friday fri saturday sat "
    "sunday sun montag dienstag mittwoch donnerstag freitag samstag sonntag lundi mardi mercredi "
    "jeudi vendredi samedi dimanche".split()
)
_FILLER = frozenset({"st", "nd", "rd", "th", "of", "de", "the", "er", "le"})
_DATE_TOKEN_RE = re.compile(r"\d+|[^\W\d_]+\.?", re.UNICODE)
_DATE_ALLOWED_RE = re.compile(r"^[\w\s.,/\-']+$", re.UNICODE)
_ISO_DATETIME_RE = re.compile(r"^(\d{4})-(\d{2})-(\d{2})(?:[T ][0-9:.]+(?:Z|[+-]\d{2}:?\d{2})?)?$")


def _year(token: str) -> int | None:
    if len(token) == 4:
        return int(token)
    if len(token) == 2:
        y = int(token)
        return 2000 + y if y < 69 else 1900 + y
    return None


def _make_date(year: int | None, month: int | None, day: int | None) -> str | None:
    if year is None or month is None or day is None:
        return None
    try:
        return dt.date(year, month, day).isoformat()
    except ValueError:
        return None


def parse_date(value: str, *, day_first: bool = True) -> str | None:
    """An ISO ``YYYY-MM-DD`` for a date written in a common format, else ``None``.

    Accepts ISO dates (and datetimes, whose date part is kept), ``01.03.2026``,
    ``01/03/2026``, ``1-3-26``, ``20260301``, ``2026/03/01``, ``1 March 2026``,
    ``1. März 2026``, ``Mar 1, 2026``, ``Sunday, March 1st 2026``, ``01-MAR-26``.
    All-numeric day/month orders follow ``day_first`` unless only the other
    reading is a real date.
    """
    s = unicodedata.normalize("NFC", value.strip())
    if not s:
        return None
    m = _ISO_DATETIME_RE.match(s)
    if m:
        return _make_date(int(m[1]), int(m[2]), int(m[3]))
    if re.fullmatch(r"\d{8}", s):
        return _make_date(int(s[:4]), int(s[4:6]), int(s[6:]))
    if not _DATE_ALLOWED_RE.match(s):
        return None
    numbers: list[str] = []
    month_from_name: int | None = None
    for token in _DATE_TOKEN_RE.findall(s):
        if token.isdigit():
            numbers.append(token)
            continue
        word = token.lower().rstrip(".")
        if word in _MONTHS and month_from_name is None:
            month_from_name = _MONTHS[word]
        elif word in _WEEKDAYS or word in _FILLER:
            continue
        else:
            return None
    if any(len(n) > 4 for n in numbers):
        return None

    if month_from_name is not None:
        if len(numbers) != 2:
            return None
        a, b = numbers
        if len(a) == 4:  # 2026 March 1
            return _make_date(int(a), month_from_name, int(b))
        if len(b) in (2, 4) and len(a) <= 2:  # 1 March 2026 / March 1, 2026 / 01-MAR-26
            return _make_date(_year(b), month_from_name, int(a))
        return None

    if len(numbers) != 3:
        return None
    a, b, c = numbers
    if len(a) == 4:  # 2026/03/01, 2026.3.1
        return _make_date(int(a), int(b), int(c))
    if len(a) > 2 or len(b) > 2 or len(c) not in (2, 4):
        return None
    year = _year(c)
    first = _make_date(year, int(b), int(a)) if day_first else _make_date(year, int(a), int(b))
    if first is not None:
        return first
    return _make_date(year, int(a), int(b)) if day_first else _make_date(year, int(b), int(a))


_CURRENCY_PREFIX_RE = re.compile(r"^(?:[A-Za-z]{1,3}[" + _SYMBOL_CHARS + r"]|[A-Za-z]{3}(?![A-Za-z])|[" + _SYMBOL_CHARS + r"])\s*")
_CURRENCY_SUFFIX_RE = re.compile(r"\s*(?:[" + _SYMBOL_CHARS + r"]|(?<![A-Za-z])[A-Za-z]{3})$")


def _unsigned_decimal(s: str) -> str | None:
    """``"1.234,56"`` -> ``"1234.56"``: the digits of an unsigned amount with a dot decimal point."""
    for sep in (" ", "'"):
        if sep in s:  # spaces / apostrophes are only ever thousands separators
            m = re.fullmatch(r"(\d{1,3}(?:" + sep + r"\d{3})+)(?:[.,](\d+))?", s)
            return None if m is None else m[1].replace(sep, "") + (f".{m[2]}" if m[2] else "")
    if not re.fullmatch(r"\d[\d.,]*|[.,]\d+", s) or s[-1] in ".,":
        return None
    dots, commas = s.count("."), s.count(",")
    if dots and commas:  # the last separator is the decimal point
        decimal = "." if s.rfind(".") > s.rfind(",") else ","
        thousands = "," if decimal == "." else "."
        if s.count(decimal) != 1:
            return None
    elif commas:  # a lone comma before exactly 3 digits groups thousands: 1,234 -> 1234
        single_group = commas == 1 and len(s) - s.rfind(",") - 1 == 3
        decimal, thousands = ("", ",") if commas > 1 or single_group else (",", "")
    elif dots:  # a lone dot is the decimal point: 1.234 -> 1.234; 1.234.567 -> 1234567
        decimal, thousands = ("", ".") if dots > 1 else (".", "")
    else:
        decimal = thousands = ""
    int_part, frac = s.split(decimal, 1) if decimal else (s, "")
    int_part = int_part or "0"
    if thousands:
        groups = int_part.split(thousands)
        if not (1 <= len(groups[0]) <= 3 and all(len(g) == 3 for g in groups[1:])):
            return None
        int_part = "".join(groups)
    if not int_part.isdigit() or (frac and not frac.isdigit()):
        return None
    return f"{int_part}.{frac}" if frac else int_part


def parse_number(value: str) -> float | None:
    """A float for an amount written the European or English way, else ``None``.

    ``"1.234,56"``, ``"1,234.56"``, ``"1 234,56"``, ``"1'234.56"``, ``"€ 1.234,56"``,
    ``"EUR 12"``, ``"-€12"``, ``"(12.00)"`` / ``"12.00-"`` / ``"12.00 DR"`` (negative),
    ``"12%"`` (12.0).
    """
    s = unicodedata.normalize("NFKC", value).replace("\u2212", "-").strip()
    negative = False
    for _ in range(4):  # peel signs, brackets, currency, %, CR/DR in any order
        before = s
        if len(s) > 1 and s[0] == "(" and s[-1] == ")":
            negative, s = not negative, s[1:-1].strip()
        if s[:1] in "+-" and s:
            negative, s = negative ^ (s[0] == "-"), s[1:].strip()
        if s[-1:] == "-" and len(s) > 1:
            negative, s = not negative, s[:-1].strip()
        if s[-1:] == "%":
            s = s[:-1].strip()
        if re.search(r"\d\s*[CD]R$", s, re.IGNORECASE):
            negative, s = negative ^ (s[-2].upper() == "D"), s[:-2].strip()
        s = _CURRENCY_SUFFIX_RE.sub("", _CURRENCY_PREFIX_RE.sub("", s)).strip()
        if s == before:
            break
    digits = _unsigned_decimal(s) if s else None
    if digits is None:
        return None
    number = float(digits)
    if not math.isfinite(number):
        return None
    return (-number if negative else number) + 0.0  # + 0.0 turns -0.0 into 0.0


def normalize_currency(value: str) -> str | None:
    """An ISO 4217 code for ``"€"``, ``"eur"``, ``"US$"``, ``"EUR"``..., else ``None``."""
    s = unicodedata.normalize("NFKC", value).strip()
    if s.upper() in _CURRENCY_UPPER:
        return _CURRENCY_UPPER[s.upper()]
    if re.fullmatch(r"[A-Za-z]{3}", s):
        return s.upper()
    return None


def _is_numeric(types: list[str]) -> bool:
    return bool({"number", "integer"} & set(types))


def _empty_value(node: dict[str, Any]) -> tuple[bool, Any]:
    """(True, value) when a missing key of this schema has an unambiguous empty value."""
    types = schema_types(node)
    if "null" in types:
        return True, None
    if types == ["array"]:
        return True, []
    if types == ["object"]:
        out = {}
        props = node.get("properties") or {}
        for key in node.get("required", []):
            if key not in props:
                return False, None
            ok, value = _empty_value(props[key])
            if not ok:
                return False, None
            out[key] = value
        return True, out
    return False, None


def _is_currency_field(key: str | None) -> bool:
    return key is not None and (key == "currency" or key.endswith("_currency"))


def _normalize(value: Any, node: dict[str, Any], key: str | None, day_first: bool) -> Any:
    if not isinstance(node, dict) or not node:
        return value
    types = schema_types(node)

    if isinstance(value, str):
        s = value.strip()
        if "null" in types and s.lower() in NULL_MARKERS:
            return None
        if "string" in types:
            return _normalize_string(s, node, key, day_first)
        if _is_numeric(types):
            number = parse_number(s)
            if number is None:
                return s
            if "number" not in types:  # integer only
                return int(number) if number.is_integer() else s
            return number
        if "boolean" in types:
            return {"true": True, "false": False, "yes": True, "no": False}.get(s.lower(), s)
        return s

    if isinstance(value, int) and not isinstance(value, bool):
        if "string" in types and not _is_numeric(types) and node.get("format") is None:
            return str(value)  # "invoice_number": 12345 -> "12345"
        return value

    if isinstance(value, dict) and "object" in types:
        props = node.get("properties") or {}
        out = {k: _normalize(v, props[k], k, day_first) if k in props else v for k, v in value.items()}
        for k in node.get("required", []):
            if k not in out and k in props:
                ok, empty = _empty_value(props[k])
                if ok:
                    out[k] = empty
        return out

    if isinstance(value, list) and "array" in types:
        items = node.get("items") or {}
        return [_normalize(v, items, key, day_first) for v in value]

    return value


def _normalize_string(s: str, node: dict[str, Any], key: str | None, day_first: bool) -> str:
    if node.get("format") == "date":
        return parse_date(s, day_first=day_first) or s
    if _is_currency_field(key):
        s = normalize_currency(s) or s
    enum = node.get("enum")
    if enum and s not in enum:
        matches = [e for e in enum if isinstance(e, str) and e.casefold() == s.casefold()]
        if len(matches) == 1:
            s = matches[0]
    pattern = node.get("pattern")
    if pattern and not re.search(pattern, s):
        squeezed = re.sub(r"\s+", "", s).upper()  # "de89 3704 0044 ..." -> "DE893704..."
        if re.search(pattern, squeezed):
            s = squeezed
    return s


def normalize_fields(data: Any, json_schema: dict[str, Any], *, day_first: bool = True) -> Any:
    """``data`` with numbers, dates, currencies and blanks normalised along ``json_schema``.

    Returns a new value; what cannot be read is left as it was, for validation to
    report. ``json_schema`` may be the full file (``x-*`` keys are ignored).
    """
    return _normalize(data, json_schema, None, day_first)


# --- 3. validating ------------------------------------------------------------------


def _path(parts: Iterable[Any]) -> str:
    out = ""
    for part in parts:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "$"


def validate_fields(data: Any, schema: ExtractionSchema, *, max_message: int = 160) -> list[str]:
    """Every way ``data`` breaks the schema, as short ``"path: message"`` strings, sorted."""
    errors = []
    for err in schema.validator.iter_errors(data):
        message = err.message if len(err.message) <= max_message else err.message[: max_message - 3] + "..."
        errors.append(f"{_path(err.absolute_path)}: {message}")
    return sorted(set(errors))


def postprocess_extract(
    raw: str, schema: ExtractionSchema, *, day_first: bool = True, max_errors: int = 5
) -> tuple[dict[str, Any] | None, ErrorInfo | None]:
    """Model output -> (fields, None), or (None, ``invalid_output`` error). Never raises.

    The caller keeps ``raw`` in the page result when this fails.
    """
    try:
        data = extract_json(raw)
    except ValueError as exc:
        return None, ErrorInfo(code="invalid_output", message=f"no JSON object in the model output: {exc}")
    if not isinstance(data, dict):
        return None, ErrorInfo(code="invalid_output", message="the model output is not a JSON object")
    try:
        data = normalize_fields(data, schema.json_schema, day_first=day_first)
        errors = validate_fields(data, schema)
    except RecursionError:
        return None, ErrorInfo(code="invalid_output", message="the model output is nested too deeply")
    if errors:
        shown = "; ".join(errors[:max_errors])
        more = f" (and {len(errors) - max_errors} more)" if len(errors) > max_errors else ""
        return None, ErrorInfo(
            code="invalid_output",
            message=f"{len(errors)} field(s) do not match schema {schema.key}: {shown}{more}",
        )
    return data, None


# --- merging pages ------------------------------------------------------------------


def _has_value(value: Any) -> bool:
    if value is None:
        return False
    if isinstance(value, (list, dict, str)):
        return bool(value) if not isinstance(value, dict) else any(_has_value(v) for v in value.values())
    return True


def _merge_values(values: list[tuple[int, Any]], node: dict[str, Any]) -> tuple[Any, list[int]]:
    """Merge one field's per-page values (page, value), in page order -> (value, pages used)."""
    types = schema_types(node)
    present = [(page, v) for page, v in values if _has_value(v)]
    if "array" in types:
        merged: list[Any] = []
        pages = []
        for page, v in present:
            if isinstance(v, list):
                merged.extend(v)
                pages.append(page)
        if pages or "null" not in types:
            return merged, pages
        return None, []
    if "object" in types:
        props = node.get("properties") or {}
        objects = [(page, v) for page, v in present if isinstance(v, dict)]
        if not objects:
            ok, empty = _empty_value(node)
            return (empty if ok else None), []
        out: dict[str, Any] = {}
        used: set[int] = set()
        for key, sub in props.items():
            out[key], pages = _merge_values([(p, o.get(key)) for p, o in objects], sub)
            used.update(pages)
        return out, sorted(used)
    if not present:
        return None, []
    page, value = present[-1] if node.get(MERGE_KEY) == "last" else present[0]
    return value, [page]


def merge_pages(
    results: list[PageResult], schema: ExtractionSchema
) -> tuple[dict[str, Any], dict[str, list[int]]]:
    """One document's fields from its pages' fields, and where each top-level field came from.

    Only pages that succeeded and have fields count, in page order. Per field:

    - scalars: the first page with a non-null value wins; a property marked
      ``"x-docproc-merge": "last"`` (totals, closing balances) takes the last one
      instead. Other pages' differing values are dropped.
    - arrays (line items, transactions): concatenated in page order, not de-duplicated.
    - objects (vendor, buyer): merged field by field with the same rules.

    Provenance maps every top-level field of the schema to the sorted pages its
    value came from (``[]`` when no page had it). With no usable page: ``({}, {})``.
    """
    pages = sorted(
        (r for r in results if r.status == "succeeded" and isinstance(r.fields, dict)),
        key=lambda r: r.page,
    )
    if not pages:
        return {}, {}
    fields: dict[str, Any] = {}
    provenance: dict[str, list[int]] = {}
    for key, sub in (schema.json_schema.get("properties") or {}).items():
        fields[key], provenance[key] = _merge_values([(r.page, r.fields.get(key)) for r in pages], sub)
    return fields, provenance


# --- ocr / tables output ------------------------------------------------------------

_OPEN_FENCE_RE = re.compile(r"^```[ \t]*(markdown|md)?[ \t]*\r?\n", re.IGNORECASE)


def clean_text_output(raw: str) -> str:
    """The text without a fence wrapping all of it (```` ```markdown ````) and outer whitespace.

    A ```` ```markdown ```` / ```` ```md ```` opening fence is removed (and its closing
    fence, when the output was not cut off); a bare ```` ``` ```` pair is removed only
    when it is the only fence pair, so a page that is itself code keeps its fences.
    """
    text = (raw or "").strip()
    m = _OPEN_FENCE_RE.match(text)
    if not m:
        return text
    body = text[m.end():]
    closes_at_end = re.search(r"\n?```\s*$", body)
    if m.group(1) is None:  # bare ```: only when the whole text is one fenced block
        if not closes_at_end or "```" in body[: closes_at_end.start()]:
            return text
    if closes_at_end:
        body = body[: closes_at_end.start()]
    return body.strip()
