"""The shipped extraction schemas and the registry that loads and checks them."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import xgrammar as xg

from docproc.base.errors import ConfigurationError, InvalidSchemaFile, UnknownSchema
from docproc.base.settings import REPO_ROOT, Settings
from docproc.jobs.schemas import ExtractionSchema, SchemaRegistry, get_registry
from workers.engines.schema_bounds import closing_reserve, grammar_schema
from workers.postprocess import normalize_fields, validate_fields

SCHEMAS_DIR = REPO_ROOT / "extraction_schemas"
EXAMPLES_DIR = Path(__file__).parent / "data" / "schema_examples"
SHIPPED = ["bank_statement", "identity_document", "invoice", "purchase_order", "receipt"]
# every shipped version; an example for each lies in tests/data/schema_examples under the schema's file name
SHIPPED_KEYS = ["bank_statement@1", "identity_document@1", "invoice@1", "invoice@2", "purchase_order@1", "receipt@1"]


@pytest.fixture(scope="module")
def registry() -> SchemaRegistry:
    return SchemaRegistry.load(SCHEMAS_DIR)


def example(name: str) -> dict:
    """The example of a schema: ``"invoice"`` -> invoice.json (version 1), ``"invoice@2"`` -> invoice.v2.json."""
    name, _, version = name.partition("@")
    filename = f"{name}.v{version}.json" if version and version != "1" else f"{name}.json"
    return json.loads((EXAMPLES_DIR / filename).read_text(encoding="utf-8"))


def property_paths(node: dict, prefix: str = "") -> set[str]:
    """Every property path of a schema: ``vendor.iban``, ``line_items[].tax_rate`` ..."""
    paths: set[str] = set()
    for prop, sub in (node.get("properties") or {}).items():
        path = f"{prefix}{prop}"
        paths.add(path)
        paths |= property_paths(sub, f"{path}.")
        if isinstance(sub.get("items"), dict):
            paths |= property_paths(sub["items"], f"{path}[].")
    return paths


def write(directory: Path, filename: str, doc: dict | str) -> Path:
    path = directory / filename
    path.write_text(doc if isinstance(doc, str) else json.dumps(doc), encoding="utf-8")
    return path


def minimal_schema(name: str = "memo", version: str = "1") -> dict:
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "Memo",
        "description": "An internal memo.",
        "x-docproc": {"name": name, "version": version, "prompt_hints": ["Dates as YYYY-MM-DD."]},
        "type": "object",
        "properties": {
            "subject": {"type": ["string", "null"], "description": "Subject line"},
            "sent": {"type": ["string", "null"], "format": "date", "description": "Date sent"},
            "author": {
                "type": "object",
                "description": "Who wrote it",
                "properties": {"name": {"type": ["string", "null"], "description": "Full name"}},
                "required": ["name"],
                "additionalProperties": False,
            },
        },
        "required": ["subject", "sent", "author"],
        "additionalProperties": False,
    }


# --- the shipped schemas --------------------------------------------------------------


def test_registry_loads_every_shipped_schema(registry: SchemaRegistry) -> None:
    assert registry.names() == SHIPPED
    assert len(registry) == len(SHIPPED_KEYS)
    assert [s.key for s in registry] == SHIPPED_KEYS
    for schema in registry:
        assert isinstance(schema, ExtractionSchema)
        expected_file = f"{schema.name}.json" if schema.version == "1" else f"{schema.name}.v{schema.version}.json"
        assert schema.path is not None and schema.path.name == expected_file
        assert schema.title and schema.description and schema.prompt_hints


@pytest.mark.parametrize("name", SHIPPED_KEYS)
def test_each_schema_has_a_valid_realistic_example(registry: SchemaRegistry, name: str) -> None:
    schema = registry.get(name)
    assert validate_fields(example(name), schema) == []


@pytest.mark.parametrize("name", SHIPPED_KEYS)
def test_example_with_wrong_values_is_rejected(registry: SchemaRegistry, name: str) -> None:
    """The schemas really constrain: a bad date and an unknown key are both reported."""
    schema = registry.get(name)
    bad = example(name)
    date_field = next(k for k, v in schema.json_schema["properties"].items() if v.get("format") == "date")
    bad[date_field] = "31.02.2026"
    bad["notes"] = "added by the model"
    errors = validate_fields(bad, schema)
    assert any(e.startswith(f"{date_field}: ") and "date" in e for e in errors), errors
    assert any("notes" in e and "Additional properties" in e for e in errors), errors


def test_get_by_name_and_by_key(registry: SchemaRegistry) -> None:
    # a bare name is the latest version (README, "Extraction schemas"); older ones stay reachable by key
    assert registry.get("invoice") is registry.get("invoice@2")
    assert registry.get("invoice").key == "invoice@2"
    assert registry.get("invoice@1").version == "1" and registry.get("invoice@1") is not registry.get("invoice")
    assert registry.get("receipt") is registry.get("receipt@1")
    assert "invoice" in registry and "invoice@1" in registry and "invoice@2" in registry
    assert "invoice@7" not in registry


def test_unknown_name_lists_the_known_ones(registry: SchemaRegistry) -> None:
    with pytest.raises(UnknownSchema) as info:
        registry.get("waybill")
    assert info.value.code == "unknown_schema"
    assert info.value.details["known"] == SHIPPED
    assert "invoice" in info.value.message and "waybill" in info.value.message


def test_unknown_version_lists_the_known_versions(registry: SchemaRegistry) -> None:
    with pytest.raises(UnknownSchema) as info:
        registry.get("invoice@3")
    assert info.value.details["known_versions"] == ["1", "2"]
    with pytest.raises(UnknownSchema):
        registry.get("invoice@latest")


def test_field_guide_lists_every_field_path_with_type_and_description(registry: SchemaRegistry) -> None:
    schema = registry.get("invoice")
    guide = schema.field_guide().splitlines()
    tax_id_desc = schema.json_schema["properties"]["vendor"]["properties"]["tax_id"]["description"]
    assert f"  - vendor.tax_id (string|null): {tax_id_desc}" in guide
    assert any(line.startswith("- issue_date (date|null): ") for line in guide)
    assert any(line.startswith("- line_items (array of object): ") for line in guide)
    assert any(line.startswith("  - line_items[].unit_price (number|null): ") for line in guide)
    # one line per property at every level
    def count(node: dict) -> int:
        n = 0
        for sub in node.get("properties", {}).values():
            n += 1 + count(sub) + count(sub.get("items", {}))
        return n
    assert len(guide) == count(schema.json_schema)


def test_field_guide_shows_enums(registry: SchemaRegistry) -> None:
    guide = registry.get("identity_document").field_guide()
    assert '- sex (string|null): Sex as printed: F, M or X; one of "F", "M", "X", null' in guide.splitlines()


@pytest.mark.parametrize("name", SHIPPED_KEYS)
def test_model_schema_drops_docproc_keys_only(registry: SchemaRegistry, name: str) -> None:
    schema = registry.get(name)
    before = copy.deepcopy(schema.json_schema)
    model = schema.model_schema()
    text = json.dumps(model)
    assert '"x-' not in text
    assert "x-docproc" in schema.json_schema  # the original is untouched
    assert schema.json_schema == before
    assert list(model["properties"]) == list(schema.json_schema["properties"])  # order kept: xgrammar emits in it
    assert model["required"] == schema.json_schema["required"]
    model["properties"].clear()
    assert schema.json_schema == before  # a copy, not a view


# --- xgrammar ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def grammar_compiler() -> xg.GrammarCompiler:
    """A byte-level vocabulary (every byte one token) plus an end token: a real, tiny tokenizer."""
    vocab = [bytes([i]) for i in range(256)] + [b"<|im_end|>"]
    info = xg.TokenizerInfo(vocab, xg.VocabType.RAW, vocab_size=len(vocab), stop_token_ids=[256])
    return xg.GrammarCompiler(info, max_threads=1)


def accepts(compiled: xg.CompiledGrammar, text: str) -> bool:
    matcher = xg.GrammarMatcher(compiled)
    return matcher.accept_string(text) and matcher.is_completed()


@pytest.mark.parametrize("name", SHIPPED_KEYS)
def test_schema_compiles_with_xgrammar_and_constrains(
    registry: SchemaRegistry, grammar_compiler: xg.GrammarCompiler, name: str
) -> None:
    schema = registry.get(name)
    compiled = grammar_compiler.compile_json_schema(schema.model_schema_json(), any_whitespace=False)
    good = example(name)
    # any_whitespace=False means json.dumps' default separators, keys in schema order
    assert accepts(compiled, json.dumps(good, ensure_ascii=False))

    bad_currency = dict(good)
    pattern_field = next(k for k, v in schema.json_schema["properties"].items() if "pattern" in v)
    bad_currency[pattern_field] = "not a code"
    assert not accepts(compiled, json.dumps(bad_currency, ensure_ascii=False))

    date_field = next(k for k, v in schema.json_schema["properties"].items() if v.get("format") == "date")
    bad_date = dict(good, **{date_field: "14.03.2026"})
    assert not accepts(compiled, json.dumps(bad_date, ensure_ascii=False))

    extra = dict(good, notes="x")
    assert not accepts(compiled, json.dumps(extra, ensure_ascii=False))


def test_xgrammar_requires_schema_property_order(registry: SchemaRegistry, grammar_compiler) -> None:
    """What the engine relies on: keys come out in the schema's order."""
    compiled = grammar_compiler.compile_json_schema(registry.get("invoice").model_schema_json(), any_whitespace=False)
    good = example(registry.get("invoice").key)
    assert accepts(compiled, json.dumps(good))
    reordered = {"total": good["total"], **{k: v for k, v in good.items() if k != "total"}}
    assert not accepts(compiled, json.dumps(reordered))


# --- invoice version 2 -------------------------------------------------------------------


V2_ADDED = {"vendor.iban", "vendor.bic", "line_items[].tax_rate"}


def node_at(schema: dict, path: str) -> dict:
    node = schema
    for part in path.split("."):
        if part.endswith("[]"):
            node = node["properties"][part[:-2]]["items"]
        else:
            node = node["properties"][part]
    return node


def test_shipped_invoice_v2_resolves_and_is_a_superset_of_v1(registry: SchemaRegistry) -> None:
    v1, v2 = registry.get("invoice@1"), registry.get("invoice@2")
    assert (v2.name, v2.version, v2.key) == ("invoice", "2", "invoice@2")
    assert v2.path == SCHEMAS_DIR / "invoice.v2.json" and v1.path == SCHEMAS_DIR / "invoice.json"
    assert registry.get("invoice") is v2  # the latest
    old, new = property_paths(v1.json_schema), property_paths(v2.json_schema)
    assert old <= new, old - new  # every v1 field path is still there ...
    assert new - old == V2_ADDED
    for path in old:  # ... with the same type, format and pattern
        a, b = node_at(v1.json_schema, path), node_at(v2.json_schema, path)
        assert {k: a.get(k) for k in ("type", "format", "pattern", "enum")} == \
               {k: b.get(k) for k in ("type", "format", "pattern", "enum")}, path
    # v1's prompt hints are kept, in order, before the new ones
    assert v2.prompt_hints[: len(v1.prompt_hints)] == v1.prompt_hints
    assert list(v2.json_schema["properties"]) == list(v1.json_schema["properties"])  # top-level order kept


def test_invoice_v2_sample_document_validates(registry: SchemaRegistry, grammar_compiler) -> None:
    v2 = registry.get("invoice@2")
    sample = example("invoice@2")
    assert validate_fields(sample, v2) == []
    compiled = grammar_compiler.compile_json_schema(v2.model_schema_json(), any_whitespace=False)
    assert accepts(compiled, json.dumps(sample, ensure_ascii=False))
    # as a model copies it from the page: spaced IBAN, lower-case BIC, "19 %"
    printed = copy.deepcopy(sample)
    printed["vendor"].update(iban="de89 3704 0044 0532 0130 00", bic="cobadeffxxx")
    printed["line_items"][0]["tax_rate"] = "19 %"
    assert normalize_fields(printed, v2.json_schema) == sample
    # what is not an IBAN / BIC is rejected by the validator and by the grammar
    for field, value in (("iban", "DE89-3704-0044"), ("iban", "89DE370400440532013000"), ("bic", "COBADEFFX")):
        bad = copy.deepcopy(sample)
        bad["vendor"][field] = value
        assert any(e.startswith(f"vendor.{field}: ") for e in validate_fields(bad, v2)), (field, value)
        assert not accepts(compiled, json.dumps(bad, ensure_ascii=False)), (field, value)
    # a v1 result, its new fields filled with null, is a valid v2 result
    upgraded = normalize_fields(example("invoice@1"), v2.json_schema)
    assert validate_fields(upgraded, v2) == []
    assert upgraded["vendor"]["iban"] is None and upgraded["line_items"][0]["tax_rate"] is None


@pytest.mark.parametrize("name", SHIPPED_KEYS)
def test_closing_reserve_is_finite_and_moderate(registry: SchemaRegistry, name: str) -> None:
    """The constrained decoder reserves this many tokens of every page's budget to close the JSON
    (workers/engines/schema_bounds.py): keep it well under the default extract budget."""
    schema = registry.get(name)
    reserve = closing_reserve(grammar_schema(schema.model_schema()))
    assert 0 < reserve <= Settings.model_fields["max_new_tokens_extract"].default // 2, reserve


# --- loading rules ----------------------------------------------------------------------


def _broken(mutate) -> dict:
    doc = minimal_schema()
    mutate(doc)
    return doc


BROKEN = {
    "not valid JSON": '{"title": "Memo",',
    "top level is a list": "[]",
    "invalid JSON Schema": _broken(lambda d: d["properties"]["subject"].update(type="strin")),
    "missing x-docproc": _broken(lambda d: d.pop("x-docproc")),
    "name differs from file name": _broken(lambda d: d["x-docproc"].update(name="letter")),
    "version not numeric": _broken(lambda d: d["x-docproc"].update(version="v1")),
    "prompt_hints not a list": _broken(lambda d: d["x-docproc"].update(prompt_hints="Dates as ISO")),
    "unknown x-docproc key": _broken(lambda d: d["x-docproc"].update(prompt_hint=["typo"])),
    "property without description": _broken(lambda d: d["properties"]["subject"].pop("description")),
    "nested property without description": _broken(
        lambda d: d["properties"]["author"]["properties"]["name"].pop("description")
    ),
    "nested object allows extra keys": _broken(lambda d: d["properties"]["author"].pop("additionalProperties")),
    "top level allows extra keys": _broken(lambda d: d.update(additionalProperties=True)),
    "uses $ref": _broken(
        lambda d: d["properties"].update(cc={"$ref": "#/properties/author", "description": "Copy to"})
    ),
    "uses oneOf": _broken(
        lambda d: d["properties"].update(
            cc={"oneOf": [{"type": "string"}, {"type": "null"}], "type": ["string", "null"], "description": "Copy"}
        )
    ),
    "top level not an object": _broken(lambda d: d.update(type="array", items={"type": "string"})),
    "no title": _broken(lambda d: d.pop("title")),
    "required names an unknown property": _broken(lambda d: d["required"].append("body")),
    "array without items": _broken(
        lambda d: d["properties"].update(tags={"type": "array", "description": "Tags"})
    ),
    "bad merge rule": _broken(lambda d: d["properties"]["subject"].update({"x-docproc-merge": "longest"})),
}


REASONS = {
    "not valid JSON": "not readable JSON",
    "top level is a list": "must be a JSON object",
    "invalid JSON Schema": "not a valid JSON Schema at properties/subject/type",
    "missing x-docproc": "missing the 'x-docproc' block",
    "name differs from file name": "does not match the file name",
    "version not numeric": "x-docproc.version",
    "prompt_hints not a list": "x-docproc.prompt_hints",
    "unknown x-docproc key": "unknown key(s) ['prompt_hint']",
    "property without description": "subject: every property needs a 'description'",
    "nested property without description": "author.name: every property needs a 'description'",
    "nested object allows extra keys": "author: an object needs 'additionalProperties': false",
    "top level allows extra keys": "$: an object needs 'additionalProperties': false",
    "uses $ref": "unsupported keyword(s) $ref",
    "uses oneOf": "unsupported keyword(s) oneOf",
    "top level not an object": "must have 'type': 'object'",
    "no title": "missing 'title'",
    "required names an unknown property": "unknown properties ['body']",
    "array without items": "tags: an array needs an 'items' schema",
    "bad merge rule": "x-docproc-merge must be one of",
}


@pytest.mark.parametrize("problem", list(BROKEN))
def test_broken_schema_file_is_rejected_naming_the_file(tmp_path: Path, problem: str) -> None:
    write(tmp_path, "invoice.json", json.loads((SCHEMAS_DIR / "invoice.json").read_text()))
    write(tmp_path, "memo.json", BROKEN[problem])
    with pytest.raises(InvalidSchemaFile) as info:
        SchemaRegistry.load(tmp_path)
    assert info.value.code == "invalid_schema_file"
    assert info.value.message.startswith("memo.json: ")
    assert REASONS[problem] in info.value.message
    assert info.value.details["file"] == str(tmp_path / "memo.json")


def test_minimal_schema_itself_loads(tmp_path: Path) -> None:
    """The base of the broken variants above is valid: each failure is its one mutation."""
    write(tmp_path, "memo.json", minimal_schema())
    assert SchemaRegistry.load(tmp_path).get("memo").key == "memo@1"


def test_bad_file_names_are_rejected(tmp_path: Path) -> None:
    write(tmp_path, "Memo.json", minimal_schema())
    with pytest.raises(InvalidSchemaFile, match="Memo.json"):
        SchemaRegistry.load(tmp_path)


def test_versions_compare_numerically_and_latest_wins(tmp_path: Path) -> None:
    write(tmp_path, "memo.json", minimal_schema(version="1"))
    write(tmp_path, "memo.v2.json", minimal_schema(version="2"))
    v10 = minimal_schema(version="10")
    v10["properties"]["subject"]["description"] = "Subject line (v10)"
    write(tmp_path, "memo.v10.json", v10)
    write(tmp_path, "notes.txt", "not a schema")
    write(tmp_path, ".memo.v99.json", "{ editor swap file")
    registry = SchemaRegistry.load(tmp_path)
    assert registry.names() == ["memo"]
    assert [s.key for s in registry] == ["memo@1", "memo@2", "memo@10"]
    assert registry.get("memo").version == "10"
    assert "(v10)" in registry.get("memo").field_guide()
    assert registry.get("memo@2").path == tmp_path / "memo.v2.json"
    assert registry.get("memo@1").path == tmp_path / "memo.json"


def test_versioned_file_name_must_match_its_block(tmp_path: Path) -> None:
    write(tmp_path, "memo.v2.json", minimal_schema(version="3"))
    with pytest.raises(InvalidSchemaFile, match="memo.v2.json"):
        SchemaRegistry.load(tmp_path)


def test_duplicate_version_is_rejected(tmp_path: Path) -> None:
    write(tmp_path, "memo.json", minimal_schema(version="2"))
    write(tmp_path, "memo.v2.json", minimal_schema(version="2"))
    with pytest.raises(InvalidSchemaFile, match="also defined"):
        SchemaRegistry.load(tmp_path)


def test_missing_directory_is_a_configuration_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="does not exist"):
        SchemaRegistry.load(tmp_path / "nope")


def test_get_registry_is_cached_per_directory(tmp_path: Path) -> None:
    write(tmp_path, "memo.json", minimal_schema())
    shipped = get_registry(Settings(schemas_dir=SCHEMAS_DIR))
    assert get_registry(Settings(schemas_dir=SCHEMAS_DIR)) is shipped
    other = get_registry(Settings(schemas_dir=tmp_path))
    assert other is not shipped and other.names() == ["memo"]
    assert get_registry().names() == SHIPPED  # the default settings point at the shipped folder
