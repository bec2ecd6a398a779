"""Postprocessing model output: finding the JSON, normalising, validating, merging pages."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from docproc.base.settings import REPO_ROOT
from docproc.jobs.results import PageResult
from docproc.jobs.schemas import ExtractionSchema, SchemaRegistry
from workers.postprocess import (
    clean_text_output,
    extract_json,
    merge_pages,
    normalize_currency,
    normalize_fields,
    parse_date,
    parse_number,
    postprocess_extract,
    validate_fields,
)

EXAMPLES_DIR = Path(__file__).parent / "data" / "schema_examples"


@pytest.fixture(scope="module")
def registry() -> SchemaRegistry:
    return SchemaRegistry.load(REPO_ROOT / "extraction_schemas")


@pytest.fixture(scope="module")
def invoice(registry: SchemaRegistry) -> ExtractionSchema:
    """Version 1, pinned: the tests below use its example (tests/data/schema_examples/invoice.json);
    a bare "invoice" is the latest version (invoice.v2.json, tested in tests/test_schemas.py)."""
    return registry.get("invoice@1")


def example(name: str) -> dict:
    """``"invoice"`` -> invoice.json (version 1); ``"invoice@2"`` -> invoice.v2.json."""
    name, _, version = name.partition("@")
    filename = f"{name}.v{version}.json" if version and version != "1" else f"{name}.json"
    return json.loads((EXAMPLES_DIR / filename).read_text(encoding="utf-8"))


# --- extract_json ---------------------------------------------------------------------


def test_fenced_json_with_prose_around() -> None:
    raw = (
        "Sure! Here is the extracted data:\n\n```json\n"
        '{"invoice_number": "INV-7", "total": 12.5}\n'
        "```\n\nLet me know if you need anything else {or more}."
    )
    assert extract_json(raw) == {"invoice_number": "INV-7", "total": 12.5}


def test_prose_with_braces_before_the_object() -> None:
    raw = 'The fields {as requested} are: {"a": {"b": [1, 2]}, "c": "x"} -- done.'
    assert extract_json(raw) == {"a": {"b": [1, 2]}, "c": "x"}


def test_braces_and_quotes_inside_strings_do_not_count() -> None:
    raw = 'Result: {"description": "Bolts {M8} \\"zinc\\" }}", "n": 1} trailing } noise'
    assert extract_json(raw) == {"description": 'Bolts {M8} "zinc" }}', "n": 1}


def test_first_complete_object_wins_and_nested_objects_are_not_returned_alone() -> None:
    raw = '{"a": 1} and then {"a": 2}'
    assert extract_json(raw) == {"a": 1}
    # the first balanced candidate is broken: its inner object must not be returned
    raw = '{"outer": {"inner": 1} oops} then {"ok": true}'
    assert extract_json(raw) == {"ok": True}


def test_trailing_commas_are_repaired_but_not_inside_strings() -> None:
    raw = '```json\n{"items": [1, 2, ], "note": "a, ]", "v": {"x": 1,},}\n```'
    assert extract_json(raw) == {"items": [1, 2], "note": "a, ]", "v": {"x": 1}}


def test_truncated_output_is_reported_as_truncated() -> None:
    raw = '```json\n{"invoice_number": "INV-7", "line_items": [{"description": "Bolt'
    with pytest.raises(ValueError, match="truncated"):
        extract_json(raw)


def test_complete_inner_object_of_a_truncated_output_is_not_the_answer() -> None:
    raw = '{"invoice_number": "INV-7", "vendor": {"name": "ACME", "tax_id": null}, "line_items": [{"desc'
    with pytest.raises(ValueError, match="truncated"):
        extract_json(raw)


def test_mismatched_brackets_skip_the_whole_candidate() -> None:
    assert extract_json('{"a": {"b": 1}] and {"c": 2}') == {"c": 2}


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        ("", "empty"),
        ("   \n", "empty"),
        ("I could not read this document.", "no JSON object"),
        ("[1, 2, 3]", "no JSON object"),
        ('{"total": NaN}', "NaN"),
        ("{'total': 1}", "invalid JSON"),
    ],
)
def test_no_usable_object_raises_value_error(raw: str, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        extract_json(raw)


def test_pathological_braces_end_quickly() -> None:
    with pytest.raises(ValueError, match="truncated"):
        extract_json("{" * 200_000)


# --- numbers, dates, currencies ---------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("1.234,56", 1234.56),
        ("1,234.56", 1234.56),
        ("1 234,56", 1234.56),
        ("1\u00a0234,56", 1234.56),  # no-break space
        ("1\u202f234,56", 1234.56),  # narrow no-break space (French)
        ("1'234.50", 1234.5),  # Swiss
        ("€ 1.234,56", 1234.56),
        ("1.234,56 €", 1234.56),
        ("EUR 1.234,56", 1234.56),
        ("US$ 1,000", 1000.0),
        ("(12.00)", -12.0),
        ("(€ 1.234,56)", -1234.56),
        ("-€12.00", -12.0),
        ("12.00-", -12.0),
        ("120.00 DR", -120.0),
        ("120.00 CR", 120.0),
        ("12%", 12.0),
        ("12,5", 12.5),
        ("0,50", 0.5),
        ("1,234", 1234.0),  # lone comma + 3 digits: thousands
        ("1.234", 1.234),  # lone dot: decimal point
        ("1.234.567", 1234567.0),
        ("1,234,567.89", 1234567.89),
        ("-0", 0.0),
    ],
)
def test_parse_number(text: str, value: float) -> None:
    assert parse_number(text) == value


@pytest.mark.parametrize("text", ["abc", "", "-", "12.3.4", "1,2,3", "12 34", "12,345,67", "1e5", "EUR", "12."])
def test_parse_number_rejects(text: str) -> None:
    assert parse_number(text) is None


@pytest.mark.parametrize(
    ("text", "iso"),
    [
        ("2026-03-01", "2026-03-01"),
        ("2026-03-01T10:15:00Z", "2026-03-01"),
        ("01.03.2026", "2026-03-01"),
        ("1.3.26", "2026-03-01"),
        ("03/01/2026", "2026-01-03"),  # ambiguous: day first
        ("12/31/2026", "2026-12-31"),  # only month-first is a date
        ("2026/03/01", "2026-03-01"),
        ("20260301", "2026-03-01"),
        ("1 March 2026", "2026-03-01"),
        ("Mar 1, 2026", "2026-03-01"),
        ("Sunday, March 1st, 2026", "2026-03-01"),
        ("01-MAR-26", "2026-03-01"),
        ("1. März 2026", "2026-03-01"),
        ("le 1er mars 2026", "2026-03-01"),
        ("1 de marzo de 2026", "2026-03-01"),
        ("14 août 2025", "2025-08-14"),
        ("Dec. 5, 2025", "2025-12-05"),
        ("01.03.70", "1970-03-01"),
    ],
)
def test_parse_date(text: str, iso: str) -> None:
    assert parse_date(text) == iso


def test_parse_date_month_first_when_asked() -> None:
    assert parse_date("03/01/2026", day_first=False) == "2026-03-01"
    assert parse_date("31/12/2026", day_first=False) == "2026-12-31"


@pytest.mark.parametrize("text", ["31.02.2026", "13/13/2026", "March 2026", "hello", "2026-03-01 to 2026-03-31", "Q1 2026"])
def test_parse_date_rejects(text: str) -> None:
    assert parse_date(text) is None


@pytest.mark.parametrize(
    ("text", "code"),
    [("€", "EUR"), ("eur", "EUR"), (" EUR ", "EUR"), ("$", "USD"), ("US$", "USD"), ("£", "GBP"), ("Euro", "EUR"), ("chf", "CHF")],
)
def test_normalize_currency(text: str, code: str) -> None:
    assert normalize_currency(text) == code


def test_normalize_currency_rejects_unknown() -> None:
    assert normalize_currency("kr") is None and normalize_currency("dollars") is None


# --- normalize_fields ---------------------------------------------------------------------


def test_normalize_european_invoice(invoice: ExtractionSchema) -> None:
    data = {
        "invoice_number": "  RE-2026/118 ",
        "issue_date": "14.03.2026",
        "due_date": "13 April 2026",
        "vendor": {"name": "Müller Bürobedarf GmbH", "address": "Hauptstr. 3, 80331 München", "tax_id": "DE 123 456 789"},
        "buyer": {"name": "Globex", "address": None, "tax_id": ""},
        "purchase_order_number": "N/A",
        "payment_terms": "14 Tage netto",
        "currency": "€",
        "line_items": [
            {"description": "Papier A4", "quantity": "10", "unit_price": "4,99", "amount": "49,90"},
            {"description": "Toner", "quantity": 2, "unit_price": "1.049,00 €", "amount": "2.098,00"},
        ],
        "subtotal": "2.147,90",
        "tax": "408,10",
        "total": "€ 2.556,00",
    }
    out = normalize_fields(data, invoice.json_schema)
    assert out["invoice_number"] == "RE-2026/118"
    assert (out["issue_date"], out["due_date"]) == ("2026-03-14", "2026-04-13")
    assert out["currency"] == "EUR"
    assert out["purchase_order_number"] is None and out["buyer"]["tax_id"] is None
    assert out["vendor"]["tax_id"] == "DE 123 456 789"  # no pattern: kept as printed
    assert out["line_items"][0] == {"description": "Papier A4", "quantity": 10.0, "unit_price": 4.99, "amount": 49.9}
    assert out["line_items"][1]["unit_price"] == 1049.0 and out["line_items"][1]["amount"] == 2098.0
    assert (out["subtotal"], out["tax"], out["total"]) == (2147.9, 408.1, 2556.0)
    assert data["total"] == "€ 2.556,00"  # the input is not modified
    assert validate_fields(out, invoice) == []


def test_normalize_leaves_unreadable_values_for_validation(invoice: ExtractionSchema) -> None:
    data = {**example("invoice"), "total": "about four hundred", "issue_date": "sometime in March"}
    out = normalize_fields(data, invoice.json_schema)
    assert out["total"] == "about four hundred" and out["issue_date"] == "sometime in March"
    errors = validate_fields(out, invoice)
    assert any(e.startswith("total: ") for e in errors) and any(e.startswith("issue_date: ") for e in errors)


def test_normalize_fills_missing_keys_with_empty_values(invoice: ExtractionSchema) -> None:
    out = normalize_fields({"invoice_number": "INV-1"}, invoice.json_schema)
    assert out["invoice_number"] == "INV-1"
    assert out["vendor"] == {"name": None, "address": None, "tax_id": None}
    assert out["line_items"] == [] and out["total"] is None
    assert validate_fields(out, invoice) == []


def test_normalize_patterns_enums_and_integers(registry: SchemaRegistry) -> None:
    bank = registry.get("bank_statement")
    out = normalize_fields({"iban": "de89 3704 0044 0532 0130 00", "bic": "cobadeffxxx"}, bank.json_schema)
    assert out["iban"] == "DE89370400440532013000" and out["bic"] == "COBADEFFXXX"
    ident = registry.get("identity_document")
    out = normalize_fields({"document_type": "Passport", "sex": "f", "nationality": "deu"}, ident.json_schema)
    assert (out["document_type"], out["sex"], out["nationality"]) == ("passport", "F", "DEU")
    receipt = registry.get("receipt")
    out = normalize_fields({"receipt_number": 871, "card_last4": 4821, "payment_method": "CARD"}, receipt.json_schema)
    assert (out["receipt_number"], out["card_last4"], out["payment_method"]) == ("871", "4821", "card")


def test_bank_statement_debits_and_credits(registry: SchemaRegistry) -> None:
    bank = registry.get("bank_statement")
    raw = json.dumps(
        {
            "iban": "DE89 3704 0044 0532 0130 00",
            "currency": "EUR",
            "period_start": "01.03.2026",
            "period_end": "31.03.2026",
            "opening_balance": "12.450,17",
            "transactions": [
                {"date": "02.03.", "value_date": None, "description": "Miete", "amount": "1.200,00 DR", "balance": "11.250,17"},
                {"date": "05.03.2026", "value_date": "05.03.2026", "description": "Gutschrift", "amount": "+300,00", "balance": "11.550,17 CR"},
            ],
            "closing_balance": "(1.000,00)",
        }
    )
    fields, error = postprocess_extract(raw, bank)
    # "02.03." has no year: not guessed, so the page is reported invalid
    assert fields is None and error is not None
    assert "transactions[0].date" in error.message
    fields, error = postprocess_extract(raw.replace('"02.03."', '"02.03.2026"'), bank)
    assert error is None, error
    assert [t["amount"] for t in fields["transactions"]] == [-1200.0, 300.0]
    assert fields["transactions"][1]["balance"] == 11550.17
    assert fields["closing_balance"] == -1000.0 and fields["opening_balance"] == 12450.17


# --- postprocess_extract --------------------------------------------------------------------


def test_good_fenced_output(invoice: ExtractionSchema) -> None:
    expected = example("invoice")
    raw = "```json\n" + json.dumps(expected, indent=2) + "\n```"
    fields, error = postprocess_extract(raw, invoice)
    assert error is None and fields == expected


def test_prose_and_european_formats(invoice: ExtractionSchema) -> None:
    data = example("invoice")
    data.update(issue_date="14.03.2026", due_date="Apr 13, 2026", currency="eur", subtotal="400,00", tax="76,00", total="476,00 €")
    raw = "Here is the JSON for the invoice:\n" + json.dumps(data, ensure_ascii=False) + "\nI hope this helps!"
    fields, error = postprocess_extract(raw, invoice)
    assert error is None
    assert fields == example("invoice")


def test_truncated_output_is_invalid_output(invoice: ExtractionSchema) -> None:
    raw = json.dumps(example("invoice"))[:-40]
    fields, error = postprocess_extract(raw, invoice)
    assert fields is None
    assert error.code == "invalid_output" and "truncated" in error.message


def test_wrong_types_are_invalid_output_naming_the_paths(invoice: ExtractionSchema) -> None:
    data = example("invoice")
    data["line_items"][1]["amount"] = "ninety-nine"
    data["vendor"] = "ACME Tools GmbH"
    data["total"] = [476.0]
    fields, error = postprocess_extract(json.dumps(data), invoice)
    assert fields is None and error.code == "invalid_output"
    assert "3 field(s) do not match schema invoice@1" in error.message
    for path in ("line_items[1].amount: ", "vendor: ", "total: "):
        assert path in error.message


def test_unknown_keys_are_invalid_output(invoice: ExtractionSchema) -> None:
    data = {**example("invoice"), "iban": "DE89370400440532013000"}
    fields, error = postprocess_extract(json.dumps(data), invoice)
    assert fields is None and "'iban' was unexpected" in error.message


def test_many_errors_are_summarised(invoice: ExtractionSchema) -> None:
    data = example("invoice")
    data["line_items"] = [{"description": 1, "quantity": "x", "unit_price": "y", "amount": "z"}] * 3
    _, error = postprocess_extract(json.dumps(data), invoice)
    assert "(and " in error.message and error.message.count("; ") == 4


def test_no_json_is_invalid_output(invoice: ExtractionSchema) -> None:
    fields, error = postprocess_extract("The image is too blurry to read.", invoice)
    assert fields is None and error.code == "invalid_output" and "no JSON object" in error.message


json_values = st.recursive(
    st.none() | st.booleans() | st.floats(allow_nan=False) | st.integers() | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4),
    max_leaves=20,
)
invoice_keys = st.sampled_from(["invoice_number", "issue_date", "vendor", "line_items", "currency", "total", "x"])


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(raw=st.text(alphabet=st.sampled_from('{}[]",:\\ab1.-`\n '), max_size=80) | st.text(max_size=60))
def test_never_raises_on_arbitrary_text(invoice: ExtractionSchema, raw: str) -> None:
    fields, error = postprocess_extract(raw, invoice)
    assert (fields is None) != (error is None)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.dictionaries(invoice_keys, json_values, max_size=6))
def test_never_raises_on_arbitrary_objects(invoice: ExtractionSchema, data: dict) -> None:
    fields, error = postprocess_extract("```json\n" + json.dumps(data) + "\n```", invoice)
    if error is None:
        assert validate_fields(fields, invoice) == []
    else:
        assert fields is None and error.code == "invalid_output"


# --- merge_pages ----------------------------------------------------------------------------


def page(n: int, fields: dict | None, status: str = "succeeded") -> PageResult:
    return PageResult(page=n, status=status, engine="internvl", fields=fields)


def two_page_invoice(invoice: ExtractionSchema) -> list[PageResult]:
    p1 = normalize_fields(
        {
            "invoice_number": "INV-2026-0042",
            "issue_date": "2026-03-14",
            "due_date": "2026-04-13",
            "vendor": {"name": "ACME Tools GmbH", "address": "Werkzeugstrasse 7, 70173 Stuttgart", "tax_id": None},
            "buyer": {"name": "Globex Corporation", "address": "1 Globex Way, Springfield", "tax_id": None},
            "currency": "EUR",
            "line_items": [
                {"description": "Cordless drill 18V", "quantity": 2, "unit_price": 129.0, "amount": 258.0},
                {"description": "Drill bit set", "quantity": 5, "unit_price": 19.9, "amount": 99.5},
            ],
            "subtotal": 357.5,  # "carried forward" on page 1
        },
        invoice.json_schema,
    )
    p2 = normalize_fields(
        {
            "invoice_number": "INV-2026-0042",
            "vendor": {"name": "ACME Tools", "address": None, "tax_id": "DE123456789"},
            "payment_terms": "Net 30",
            "line_items": [{"description": "Safety goggles", "quantity": 10, "unit_price": 4.25, "amount": 42.5}],
            "subtotal": 400.0,
            "tax": 76.0,
            "total": 476.0,
        },
        invoice.json_schema,
    )
    assert validate_fields(p1, invoice) == [] and validate_fields(p2, invoice) == []
    return [page(2, p2), page(1, p1)]  # out of order on purpose


def test_merge_two_page_invoice_with_provenance(invoice: ExtractionSchema) -> None:
    fields, provenance = merge_pages(two_page_invoice(invoice), invoice)
    assert list(fields) == list(invoice.json_schema["properties"])
    assert fields["invoice_number"] == "INV-2026-0042" and provenance["invoice_number"] == [1]
    assert fields["vendor"] == {
        "name": "ACME Tools GmbH",  # first page wins
        "address": "Werkzeugstrasse 7, 70173 Stuttgart",
        "tax_id": "DE123456789",  # only on page 2
    }
    assert provenance["vendor"] == [1, 2] and provenance["buyer"] == [1]
    assert [li["description"] for li in fields["line_items"]] == ["Cordless drill 18V", "Drill bit set", "Safety goggles"]
    assert provenance["line_items"] == [1, 2]
    # totals are marked x-docproc-merge: last -> page 2's, not page 1's carried-forward subtotal
    assert (fields["subtotal"], fields["tax"], fields["total"]) == (400.0, 76.0, 476.0)
    assert provenance["subtotal"] == [2] and provenance["total"] == [2]
    assert fields["payment_terms"] == "Net 30" and provenance["payment_terms"] == [2]
    assert fields["purchase_order_number"] is None and provenance["purchase_order_number"] == []
    assert validate_fields(fields, invoice) == []


def test_merge_skips_failed_pages_and_pages_without_fields(invoice: ExtractionSchema) -> None:
    pages = two_page_invoice(invoice)
    bogus = {**pages[0].fields, "total": 999.0, "line_items": [{"description": "X", "quantity": 1, "unit_price": 1, "amount": 1}]}
    pages += [page(3, bogus, status="failed"), page(4, None)]
    fields, provenance = merge_pages(pages, invoice)
    assert fields["total"] == 476.0 and len(fields["line_items"]) == 3
    assert all(3 not in p and 4 not in p for p in provenance.values())


def test_merge_with_no_usable_page(invoice: ExtractionSchema) -> None:
    assert merge_pages([page(1, None, status="failed")], invoice) == ({}, {})
    assert merge_pages([], invoice) == ({}, {})


def test_merge_single_page_is_the_page(registry: SchemaRegistry) -> None:
    for schema in registry:
        data = example(schema.key)
        fields, provenance = merge_pages([page(1, data)], schema)
        assert fields == data
        assert all(pages in ([1], []) for pages in provenance.values())


def test_merge_bank_statement_balances(registry: SchemaRegistry) -> None:
    bank = registry.get("bank_statement")
    full = example("bank_statement")
    p1 = {**full, "transactions": full["transactions"][:2], "closing_balance": 14417.57}
    p2 = normalize_fields({"transactions": full["transactions"][2:], "closing_balance": 4617.57}, bank.json_schema)
    fields, provenance = merge_pages([page(1, p1), page(2, p2)], bank)
    assert fields == full
    assert provenance["opening_balance"] == [1] and provenance["closing_balance"] == [2]
    assert provenance["transactions"] == [1, 2]


# --- clean_text_output ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "clean"),
    [
        ("```markdown\n# Invoice\n\n| a | b |\n```", "# Invoice\n\n| a | b |"),
        ("  ```md\n# Title\n```  \n", "# Title"),
        ("```Markdown\n# Cut off", "# Cut off"),
        ("```\n# Title\ntext\n```", "# Title\ntext"),
        ("\n\n# Plain page\n\n", "# Plain page"),
        ("```python\nprint(1)\n```", "```python\nprint(1)\n```"),
        ("```\ncode\n```\ntext\n```\nmore\n```", "```\ncode\n```\ntext\n```\nmore\n```"),
        ("```markdown\nIntro\n```python\nx = 1\n```\n```", "Intro\n```python\nx = 1\n```"),
        ("", ""),
    ],
)
def test_clean_text_output(raw: str, clean: str) -> None:
    assert clean_text_output(raw) == clean
