"""Extraction schemas: the JSON Schema files in ``extraction_schemas/`` and their registry.

One file per document type and version. ``invoice.json`` holds a version (the one
its ``x-docproc`` block names); further versions live beside it as
``invoice.v2.json``, ``invoice.v3.json``... A bare name (``"invoice"``) means the
latest version, compared numerically; ``"invoice@1"`` means exactly that one.

Every file is checked at start-up, so a bad file stops the service at once with
:class:`~docproc.base.errors.InvalidSchemaFile` naming it, never at the first request:

- valid JSON Schema (draft 2020-12, ``Draft202012Validator.check_schema``);
- top level: ``title``, ``description``, ``type: object``, ``properties``, ``required``;
- every object has ``properties`` and ``additionalProperties: false``, and every
  property has a ``description`` (these go into the prompt);
- only keywords a grammar engine (xgrammar) compiles: no ``$ref``, ``oneOf``,
  ``anyOf``, ``allOf``, ``not``, ``if``/``then``/``else`` ...; nullable fields use
  type lists (``["string", "null"]``);
- an ``x-docproc`` block ``{"name", "version", "prompt_hints"}`` whose name and
  version agree with the file name;
- optional ``"x-docproc-merge": "first" | "last"`` on scalar properties: which page
  wins when pages of one document disagree (see ``workers.postprocess.merge_pages``).
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import cached_property, lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

import jsonschema

from docproc.base.errors import ConfigurationError, InvalidSchemaFile, UnknownSchema

if TYPE_CHECKING:
    from docproc.base.settings import Settings

NAME_RE = re.compile(r"^[a-z][a-z0-9_]*$")
VERSION_RE = re.compile(r"^[0-9]+(?:\.[0-9]+)*$")
FILE_RE = re.compile(r"^(?P<name>[a-z][a-z0-9_]*)(?:\.v(?P<version>[0-9]+(?:\.[0-9]+)*))?\.json$")

# Keywords xgrammar's JSON-schema compiler cannot honour (or that make the field
# guide ambiguous); rejected at load time so a schema never fails at the first request.
# What xgrammar 0.2.8 does with the rest (checked with its matcher): it enforces type
# lists, enum, const, pattern, format date (the shape only: 2026-02-30 passes, the
# validator's FormatChecker catches it), minimum/maximum, min/maxLength, min/maxItems
# and emits properties in the declared order (any_order=False); it ignores title,
# description, examples, default, x-* keys, uniqueItems, multipleOf on numbers, a
# pattern next to a format, and min/maxLength next to a format.
UNSUPPORTED_KEYWORDS = frozenset(
    {
        "$ref", "$dynamicRef", "$defs", "definitions", "oneOf", "anyOf", "allOf", "not",
        "if", "then", "else", "dependentSchemas", "dependentRequired", "patternProperties",
        "unevaluatedProperties", "unevaluatedItems", "prefixItems", "contains",
    }
)
MERGE_KEY = "x-docproc-merge"
MERGE_RULES = ("first", "last")
DOCPROC_KEYS = frozenset({"name", "version", "prompt_hints"})


def version_key(version: str) -> tuple[int, ...]:
    """``"1.10"`` -> ``(1, 10)``: versions compare numerically, not as text."""
    return tuple(int(part) for part in version.split("."))


def schema_types(node: dict[str, Any]) -> list[str]:
    """The JSON types a schema node allows, as a list (``type`` may be a string or a list)."""
    t = node.get("type")
    if t is None:
        return []
    return [t] if isinstance(t, str) else list(t)


def strip_extensions(node: Any) -> Any:
    """A deep copy of a schema without ``x-*`` keys (docproc's own annotations).

    Only keys of schema objects are dropped; the contents of ``enum``, ``const``,
    ``examples`` and ``default`` are data and kept as they are.
    """
    if isinstance(node, dict):
        out = {}
        for key, value in node.items():
            if key.startswith("x-"):
                continue
            if key in ("enum", "const", "examples", "default"):
                out[key] = copy.deepcopy(value)
            elif key == "properties" and isinstance(value, dict):
                out[key] = {name: strip_extensions(sub) for name, sub in value.items()}
            else:
                out[key] = strip_extensions(value)
        return out
    if isinstance(node, list):
        return [strip_extensions(v) for v in node]
    return node


@dataclass(frozen=True)
class ExtractionSchema:
    """One version of one document type's extraction schema."""

    name: str
    version: str
    title: str
    description: str
    json_schema: dict[str, Any] = field(repr=False, compare=False, hash=False)
    prompt_hints: tuple[str, ...] = ()
    path: Path | None = field(default=None, compare=False)

    @property
    def key(self) -> str:
        """``name@version``, e.g. ``"invoice@1"``."""
        return f"{self.name}@{self.version}"

    def model_schema(self) -> dict[str, Any]:
        """The schema as validators and grammar engines get it: a copy without ``x-*`` keys."""
        return strip_extensions(self.json_schema)

    def model_schema_json(self) -> str:
        """:meth:`model_schema` serialised compactly (what xgrammar and ``response_format`` take)."""
        return self._model_schema_json

    @cached_property
    def _model_schema_json(self) -> str:  # serialised once: the prompt and the grammar cache key use it per page
        return json.dumps(self.model_schema(), ensure_ascii=False, separators=(",", ":"))

    @cached_property
    def validator(self) -> jsonschema.Draft202012Validator:
        """A validator for :meth:`model_schema` that also checks ``format`` (dates)."""
        return jsonschema.Draft202012Validator(
            self.model_schema(), format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER
        )

    def field_guide(self) -> str:
        """The fields for the prompt: one line per field path, nested fields indented.

        ``- vendor.tax_id (string|null): VAT / tax identification number``; array items
        appear as ``line_items[].amount``; ``format: date`` shows as type ``date``.
        """
        lines: list[str] = []
        _guide_lines(self.json_schema, "", 0, lines)
        return "\n".join(lines)


def _type_label(node: dict[str, Any]) -> str:
    types = schema_types(node)
    fmt = node.get("format")
    labels = []
    for t in types:
        if t == "string" and fmt:
            labels.append(fmt)
        elif t == "array":
            item_types = schema_types(node.get("items") or {})
            labels.append(f"array of {'|'.join(item_types)}" if item_types else "array")
        else:
            labels.append(t)
    return "|".join(labels) or "any"


def _guide_lines(node: dict[str, Any], prefix: str, depth: int, lines: list[str]) -> None:
    for prop, sub in (node.get("properties") or {}).items():
        path = f"{prefix}{prop}"
        line = f"{'  ' * depth}- {path} ({_type_label(sub)}): {sub.get('description', '').strip()}"
        enum = sub.get("enum")
        if enum:
            line += "; one of " + ", ".join(json.dumps(v) for v in enum)
        lines.append(line)
        if "object" in schema_types(sub):
            _guide_lines(sub, f"{path}.", depth + 1, lines)
        elif "array" in schema_types(sub):
            items = sub.get("items") or {}
            if "object" in schema_types(items):
                _guide_lines(items, f"{path}[].", depth + 1, lines)


# --- checking a schema file ---------------------------------------------------------


def _check_node(node: Any, where: str, problems: list[str]) -> None:
    """Walk a schema node; append every rule it breaks (see the module docstring)."""
    if not isinstance(node, dict):
        problems.append(f"{where}: a schema must be an object")
        return
    bad = sorted(UNSUPPORTED_KEYWORDS & node.keys())
    if bad:
        problems.append(f"{where}: unsupported keyword(s) {', '.join(bad)}")
    types = schema_types(node)
    if not types:
        problems.append(f"{where}: missing 'type'")
    if "object" in types:
        props = node.get("properties")
        if not isinstance(props, dict) or not props:
            problems.append(f"{where}: an object needs non-empty 'properties'")
            props = {}
        if node.get("additionalProperties") is not False:
            problems.append(f"{where}: an object needs 'additionalProperties': false")
        required = node.get("required", [])
        unknown = [r for r in required if r not in props]
        if unknown:
            problems.append(f"{where}: 'required' names unknown properties {unknown}")
        for prop, sub in props.items():
            sub_where = f"{where}.{prop}" if where != "$" else prop
            if not isinstance(sub, dict):
                problems.append(f"{sub_where}: a schema must be an object")
                continue
            desc = sub.get("description")
            if not isinstance(desc, str) or not desc.strip():
                problems.append(f"{sub_where}: every property needs a 'description'")
            merge = sub.get(MERGE_KEY)
            if merge is not None:
                if merge not in MERGE_RULES:
                    problems.append(f"{sub_where}: {MERGE_KEY} must be one of {MERGE_RULES}")
                elif {"object", "array"} & set(schema_types(sub)):
                    problems.append(f"{sub_where}: {MERGE_KEY} applies to scalar fields only")
            _check_node(sub, sub_where, problems)
    if "array" in types:
        items = node.get("items")
        if not isinstance(items, dict):
            problems.append(f"{where}: an array needs an 'items' schema")
        else:
            _check_node(items, f"{where}[]", problems)


def _invalid(path: Path, problem: str) -> InvalidSchemaFile:
    return InvalidSchemaFile(f"{path.name}: {problem}", file=str(path))


def load_schema_file(path: Path) -> ExtractionSchema:
    """Read and check one schema file; any problem -> :class:`InvalidSchemaFile` naming it."""
    m = FILE_RE.match(path.name)
    if m is None:
        raise _invalid(path, "file name must be <name>.json or <name>.v<version>.json (lower case)")
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise _invalid(path, f"not readable JSON: {exc}") from exc
    if not isinstance(doc, dict):
        raise _invalid(path, "the top level must be a JSON object")
    try:
        jsonschema.Draft202012Validator.check_schema(doc)
    except jsonschema.SchemaError as exc:
        loc = "/".join(str(p) for p in exc.absolute_path) or "$"
        raise _invalid(path, f"not a valid JSON Schema at {loc}: {exc.message}") from exc

    problems: list[str] = []
    for key in ("title", "description"):
        if not isinstance(doc.get(key), str) or not doc[key].strip():
            problems.append(f"$: missing '{key}'")
    if schema_types(doc) != ["object"]:
        problems.append("$: the top level must have 'type': 'object'")
    if not isinstance(doc.get("required"), list):
        problems.append("$: missing 'required'")
    _check_node(doc, "$", problems)

    block = doc.get("x-docproc")
    if not isinstance(block, dict):
        problems.append("$: missing the 'x-docproc' block")
        block = {}
    else:
        extra = sorted(block.keys() - DOCPROC_KEYS)
        if extra:
            problems.append(f"x-docproc: unknown key(s) {extra}")
    name, version, hints = block.get("name"), block.get("version"), block.get("prompt_hints")
    if block:
        if not isinstance(name, str) or not NAME_RE.match(name):
            problems.append("x-docproc.name: must be a lower-case identifier")
        elif name != m["name"]:
            problems.append(f"x-docproc.name {name!r} does not match the file name {m['name']!r}")
        if not isinstance(version, str) or not VERSION_RE.match(version):
            problems.append('x-docproc.version: must be a string of dot-separated numbers, e.g. "1"')
        elif m["version"] is not None and version_key(version) != version_key(m["version"]):
            problems.append(f"x-docproc.version {version!r} does not match the file name's v{m['version']}")
        if not isinstance(hints, list) or not all(isinstance(h, str) and h.strip() for h in hints):
            problems.append("x-docproc.prompt_hints: must be a list of non-empty strings")
    if problems:
        raise _invalid(path, "; ".join(problems))

    return ExtractionSchema(
        name=name,
        version=version,
        title=doc["title"].strip(),
        description=doc["description"].strip(),
        json_schema=doc,
        prompt_hints=tuple(h.strip() for h in hints),
        path=path,
    )


# --- the registry -------------------------------------------------------------------


class SchemaRegistry:
    """Every extraction schema of a directory, by name and version."""

    def __init__(self, schemas: list[ExtractionSchema]) -> None:
        self._by_key: dict[str, ExtractionSchema] = {}
        for schema in sorted(schemas, key=lambda s: (s.name, version_key(s.version))):
            if schema.key in self._by_key:
                other = self._by_key[schema.key].path
                raise InvalidSchemaFile(
                    f"{schema.path.name if schema.path else schema.key}: version {schema.version} of "
                    f"{schema.name!r} is also defined in {other.name if other else '?'}",
                    file=str(schema.path),
                )
            self._by_key[schema.key] = schema
        self._latest: dict[str, ExtractionSchema] = {}
        for schema in self._by_key.values():  # sorted by version: the last one wins
            self._latest[schema.name] = schema

    @classmethod
    def load(cls, directory: str | Path) -> SchemaRegistry:
        """Load and check every ``*.json`` file of ``directory`` (not recursive, dot files skipped)."""
        directory = Path(directory)
        if not directory.is_dir():
            raise ConfigurationError(f"schemas directory {directory} does not exist", directory=str(directory))
        files = sorted(p for p in directory.glob("*.json") if not p.name.startswith("."))
        return cls([load_schema_file(p) for p in files])

    def get(self, name_or_key: str) -> ExtractionSchema:
        """``"invoice"`` -> the latest version; ``"invoice@1"`` -> exactly version 1."""
        name, sep, version = str(name_or_key).strip().partition("@")
        if not sep:
            schema = self._latest.get(name)
        else:
            schema = None
            if VERSION_RE.match(version):
                schema = next(
                    (s for s in self._by_key.values()
                     if s.name == name and version_key(s.version) == version_key(version)),
                    None,
                )
        if schema is not None:
            return schema
        if sep and name in self._latest:
            versions = [s.version for s in self._by_key.values() if s.name == name]
            raise UnknownSchema(
                f"schema {name!r} has no version {version!r}; known versions: {', '.join(versions)}",
                schema=name_or_key,
                known_versions=versions,
            )
        raise UnknownSchema(
            f"unknown schema {name_or_key!r}; known: {', '.join(self.names()) or '(none)'}",
            schema=name_or_key,
            known=self.names(),
        )

    def names(self) -> list[str]:
        """The document types, sorted."""
        return sorted(self._latest)

    def latest(self) -> list[ExtractionSchema]:
        """The latest version of every document type, sorted by name."""
        return [self._latest[n] for n in self.names()]

    def __iter__(self) -> Iterator[ExtractionSchema]:
        """Every schema, every version, sorted by name then version."""
        return iter(list(self._by_key.values()))

    def __len__(self) -> int:
        return len(self._by_key)

    def __contains__(self, name_or_key: object) -> bool:
        try:
            self.get(str(name_or_key))
        except UnknownSchema:
            return False
        return True


@lru_cache(maxsize=8)
def _load_cached(directory: str) -> SchemaRegistry:
    return SchemaRegistry.load(directory)


def get_registry(settings: Settings | None = None) -> SchemaRegistry:
    """The registry of ``settings.schemas_dir``, loaded once per directory."""
    if settings is None:
        from docproc.base.settings import get_settings

        settings = get_settings()
    return _load_cached(str(Path(settings.schemas_dir).resolve()))
