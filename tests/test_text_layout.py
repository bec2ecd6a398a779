"""The text engine on the labelled born-digital set (tests/data/born_digital): reading
order, tables, page furniture. Each test reads a page whose content generate.py wrote
and checks what a reader of that page would: the expectations come from the content."""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

import pymupdf
import pytest

import builders
from workers.engines.text import read_page
from workers.engines.text_layout import Item, reading_order
from workers.engines.text_lines import Word, drop_leaders
from workers.engines.text_tables import finish, is_body_number, is_numeric, merge_currency_columns
from workers.pipeline import process_document

DATA = Path(__file__).parent / "data" / "born_digital"


def page(name: str, number: int = 1):
    return pymupdf.open(DATA / name)[number - 1]


def table_with(tables, text: str):
    return next(t for t in tables if any(text in (c or "") for row in t.rows for c in row))


def before(text: str, a: str, b: str) -> bool:
    return 0 <= text.index(a) < text.index(b)


# ------------------------------------------------------------------ reading order


def test_two_columns_read_column_by_column_title_first():
    text = read_page(page("two_columns.pdf")).text
    keys = ["150. Alder", "151. Birch", "152. Cedar", "153. Dogwood", "154. Elm", "155. Fir", "156. Ginkgo",
            "157. Hazel"]
    positions = [text.index(k) for k in keys]
    assert positions == sorted(positions)
    assert text.startswith("# Regional Water Management Report")


def test_full_width_elements_stay_between_the_column_runs():
    text = read_page(page("two_columns.pdf", 2)).text
    assert before(text, "161. Larch", "162. Maple")  # left column read before the right
    assert before(text, "163. Oak", "Figure 2. Inflow") and before(text, "Figure 2. Inflow", "164. Pine")
    text = read_page(page("two_columns.pdf", 3)).text
    # a heading at the foot of the left column, a wide table between the runs, a footnote last
    assert before(text, "171. Redwood", "3. Methods") and before(text, "3. Methods", "172. Sequoia")
    assert before(text, "173. Tamarack", "| Reservoir |") and before(text, "| Stone Dam |", "174. Umbrella pine")
    assert text.rstrip().endswith("1 Capacities are given in millions of cubic metres.")


def test_three_columns_and_a_centred_title_narrower_than_the_page():
    text = read_page(page("three_columns.pdf")).text
    order = ["The Valley Courier", "Local News", "Schools", "Sports", "Arts", "Weather", "Notices"]
    assert [text.index(t) for t in order] == sorted(text.index(t) for t in order)
    text = read_page(page("three_columns.pdf", 2)).text  # two columns, a full-width heading, three columns
    order = ["Editor's note.", "Letters policy.", "Market Prices This Week", "Grain prices held",
             "Livestock sales rose", "Vegetable stalls busy"]
    assert [text.index(t) for t in order] == sorted(text.index(t) for t in order)


def test_reading_order_of_boxes():
    def item(name, x0, y0, x1, y1):
        return Item((x0, y0, x1, y1), name)

    # a title, two columns whose paragraph gaps line up, a full-width figure, two more columns
    items = [item("title", 100, 10, 500, 30), item("L1", 50, 40, 290, 100), item("R1", 310, 40, 550, 100),
             item("L2", 50, 110, 290, 160), item("R2", 310, 110, 550, 160), item("fig", 50, 170, 550, 200),
             item("L3", 50, 210, 290, 260), item("R3", 310, 210, 550, 240)]
    assert [i.markdown for i in reading_order(items)] == ["title", "L1", "L2", "R1", "R2", "fig", "L3", "R3"]
    # a note under the left one of two side-by-side tables, well below both, is read after them;
    # a paragraph close under a column that runs longer than the other goes on that column
    items = [item("L", 50, 150, 280, 294), item("R", 320, 150, 562, 254), item("note", 50, 323, 250, 333)]
    assert [i.markdown for i in reading_order(items)] == ["L", "R", "note"]
    items = [item("L1", 50, 40, 290, 300), item("R1", 310, 40, 550, 200), item("L2", 50, 307, 290, 400)]
    assert [i.markdown for i in reading_order(items)] == ["L1", "L2", "R1"]


# ------------------------------------------------------------------------ tables


def test_header_row_above_the_first_rule_is_part_of_the_table():
    tables = read_page(page("header_rows.pdf")).tables
    booktabs = table_with(tables, "Upper Creek")
    assert booktabs.rows[0] == ["Station", "Elevation", "Rainfall", "Runoff"]
    assert booktabs.rows[1] == ["Upper Creek", "412", "1,204", "388"]
    assert booktabs.markdown.splitlines()[0] == "| Station | Elevation | Rainfall | Runoff |"


def test_multi_row_header_is_joined_column_by_column():
    grid = table_with(read_page(page("header_rows.pdf")).tables, "North")
    assert grid.rows[0] == ["Region", "Revenue 2024", "Revenue 2025", "Costs 2024", "Costs 2025"]
    assert grid.rows[1] == ["North", "310", "342", "120", "131"]
    statement = table_with(read_page(page("currency.pdf")).tables, "Cost of revenue")
    assert statement.rows[0] == ["", "Year Ended December 31, 2025", "Year Ended December 31, 2024"]
    unit_price = table_with(read_page(page("unruled_tables.pdf", 4)).tables, "Restocking fee")
    assert unit_price.rows[0] == ["Item", "Qty", "Unit price", "Amount"]


def test_multi_line_cells_are_whole_and_said_once():
    read = read_page(page("multiline_cells.pdf"))
    ruled = table_with(read.tables, "Wikipedia")
    assert ruled.rows[1] == ["StarCoder filtered version from OLMoE Mix",
                             "Permissively licensed source code from public repositories", "1.3T"]
    unruled = table_with(read.tables, "Valve kit")
    assert unruled.rows[1] == ["Pump A", "Lifts water from the lower basin into the holding tank during dry months",
                               "4"]
    assert read.text.count("from OLMoE Mix") == 1 and read.text.count("holding tank") == 1
    booktabs = table_with(read_page(page("multiline_cells.pdf", 2)).tables, "Long context")
    assert booktabs.rows[2] == ["Instruct (SFT + DPO)", "Base, then supervised tuning and preference optimisation",
                                "1.2B", "68.9"]
    # a statement's label wraps, and its numbers sit on the label's last line
    flows = table_with(read_page(page("multiline_cells.pdf", 3)).tables, "Cash at end of year")
    assert flows.rows[3] == ["Net increase (decrease) in cash and cash equivalents and restricted cash", "2,278",
                             "1,773"]


def test_currency_signs_stay_with_their_numbers():
    statement = table_with(read_page(page("currency.pdf")).tables, "Cost of revenue")
    assert statement.rows[2] == ["Cost of revenue", "$ 178", "$ 141"]
    assert statement.rows[3] == ["Research and development", "3,423", "2,532"]  # same columns as the $ rows
    sites = table_with(read_page(page("currency.pdf")).tables, "Dortmund")
    assert sites.rows[0] == ["Site", "Energy", "Staff"]
    assert sites.rows[1] == ["Dortmund", "12.400 EUR", "88.150 EUR"]


def test_header_rows_join_only_over_merged_cells():
    spanned = [[False] * 3 for _ in range(3)]
    rows = [["", "Plan A", "Plan B"], ["Support", "Email", "Phone"], ["Storage", "10 GB", "1 TB"]]
    assert finish([r[:] for r in rows], spanned) == rows  # an empty corner cell is not a two-row header
    spanned[0][1] = spanned[0][2] = True  # "Plans" over both columns
    rows[0] = ["", "Plans", "Plans"]
    rows[1] = ["Feature", "A", "B"]
    assert finish(rows, spanned)[0] == ["Feature", "Plans A", "Plans B"]


def test_merge_currency_columns_and_numbers():
    rows = [["", "", "2025", "", "2024"], ["Revenue", "$", "5,812", "$", "4,953"], ["Costs", "", "178", "", "141"]]
    assert merge_currency_columns(rows) == [["", "2025", "2024"], ["Revenue", "$ 5,812", "$ 4,953"],
                                            ["Costs", "178", "141"]]
    assert merge_currency_columns([["Site", "Energy", ""], ["A", "12.4", "EUR"]]) == [["Site", "Energy"],
                                                                                      ["A", "12.4 EUR"]]
    assert is_numeric("(1,932)") and is_numeric("$ 178") and is_numeric("12.5 %") and not is_numeric("Q1")


def test_unruled_tables_are_found():
    read = read_page(page("unruled_tables.pdf"))
    (items,) = read.tables
    assert items.rows[0] == ["Description", "Qty", "Unit price", "Amount"]
    assert items.rows[2] == ["Elbow joint 15 mm", "40", "0.95", "38.00"]
    meters = table_with(read_page(page("unruled_tables.pdf", 3)).tables, "Station road")
    assert meters.rows[2] == ["Station road", "220", "", "231", "240", "691"]  # empty cells kept in place
    timetable = table_with(read_page(page("unruled_tables.pdf", 6)).tables, "06:24")
    assert timetable.rows[0] == ["Harbour", "Market Square", "Hospital", "Ridge Road"]


def test_statement_tables_as_enterprise_documents_set_them():
    statement = table_with(read_page(page("unruled_statements.pdf")).tables, "Severn Water")
    assert statement.rows[0] == ["Date", "Description", "Paid out", "Paid in", "Balance"]
    # a description over three lines is one cell; the amounts on its first line stay in its row
    assert statement.rows[2] == ["02 Mar", "Direct debit Severn Water Ltd Ref. SW-440918", "46.80", "", "2,757.36"]
    assert statement.rows[8] == ["", "Totals", "1,129.25", "1,250.84", ""]
    income = table_with(read_page(page("unruled_statements.pdf", 2)).tables, "Gross profit")
    # the heading over the $ signs and the years is said once per column
    assert income.rows[0] == ["", "Note", "Year ended 31 December 2025", "Year ended 31 December 2024"]
    assert income.rows[1] == ["Revenue", "3", "$ 48,212", "$ 41,005"]
    assert income.rows[4] == ["Operating expenses", "", "", ""]
    assert income.rows[8] == ["Impairment of goodwill", "5", "(1,250)", "-"]  # a ")" hanging past the digits
    # a header set on two lines in every column, a word hyphenated at its line end joined
    dispatch = table_with(read_page(page("unruled_statements.pdf", 3)).tables, "Wall bracket")
    assert dispatch.rows[0] == ["Item code", "Description", "Quantity ordered", "Quantity shipped", "Back-ordered"]
    assert dispatch.rows[1] == ["AF-2201", "Steel shelving unit, 5 tier", "12", "12", "0"]
    read = read_page(page("unruled_statements.pdf", 4))  # beside a column of prose, and a wide gap
    assert [t.rows[:2] for t in read.tables] == [
        [["Service", "Charge"], ["Monthly account fee", "£6.50"]],
        [["Description", "Amount"], ["Account maintenance, March 2026", "£6.50"]]]


def test_tables_side_by_side_are_two_tables():
    read = read_page(page("unruled_statements.pdf", 5))
    holdings, sectors = read.tables
    assert holdings.rows[:2] == [["Holding", "Weight"], ["Arden Semiconductor", "5.8%"]] and len(holdings.rows) == 11
    assert sectors.rows[:2] == [["Sector", "Weight"], ["Information technology", "24.6%"]] and len(sectors.rows) == 8
    # each table's title stays in the text above it; the left table is read before the right
    assert before(read.text, "Top ten holdings", "| Holding |") and before(read.text, "Juniper", "Sector allocation")
    assert before(read.text, "Sector allocation", "| Sector |")
    # a payslip: no titles, rows level on both sides, each side with its "Amount" column
    payments, deductions = read_page(page("unruled_statements.pdf", 8)).tables
    assert payments.rows[0] == ["Payments", "Units", "Rate", "Amount"]
    assert payments.rows[2] == ["Overtime 1.5x", "6.0", "27.04", "162.24"]
    assert deductions.rows[0] == ["Deductions", "Amount"] and deductions.rows[5] == ["Total deductions", "912.40"]


def test_dot_leaders_are_dropped_and_an_ellipsis_kept():
    words = [Word(0, 0, 1, 1, t) for t in ["Inventories", ".", ".", ".", ".", "1,128", "and", "...", "so", "........"]]
    assert [w.text for w in drop_leaders(words)] == ["Inventories", "1,128", "and", "...", "so"]
    position = table_with(read_page(page("unruled_statements.pdf", 9)).tables, "Trade receivables")
    assert position.rows[3] == ["Trade receivables", "2,317", "2,094"]


def test_cells_centred_beside_a_wrapped_cell_are_in_its_row():
    budget = table_with(read_page(page("unruled_statements.pdf", 10)).tables, "WP2 Prototype")
    assert budget.rows[1] == ["WP1 Requirements and stakeholder interviews", "Univ. Tartu", "1-3", "6", "48,000"]
    assert budget.rows[3][0] == "WP3 Field trials in three partner hospitals"  # its last line, below the numbers
    assert budget.rows[4] == ["WP4 Evaluation, reporting and dissemination of results", "Medisoft", "16-24", "12",
                              "96,000"]
    assert budget.rows[5] == ["Total", "", "", "87", "696,000"]  # a short row after a tall one is a row of its own


def test_an_entry_with_its_amounts_on_its_last_line_is_one_row():
    bookings = table_with(read_page(page("unruled_statements.pdf", 11)).tables, "Stadtwerke")
    assert bookings.rows[1] == ["01.04.", "SEPA Direct Debit Stadtwerke Muenchen GmbH Mandate ID SWM-22871", "-84.00",
                                "1,916.00"]
    assert bookings.rows[2] == ["03.04.", "Card Payment REWE Markt 4411", "-23.40", "1,892.60"]
    # the same kind of statement with the amounts on the first line, undated rows new entries
    transactions = table_with(read_page(page("unruled_statements.pdf", 6)).tables, "Shell Fuel")
    assert transactions.rows[3] == ["", "Card payment Shell Fuel Kendal", "41.07", "", ""]
    assert is_body_number("-84.00") and not is_body_number("01.04.") and not is_body_number("02.03.2026")
    assert is_body_number("12.400") and not is_body_number("2025")


def test_group_headings_over_pairs_of_columns_join_the_header():
    report = table_with(read_page(page("unruled_statements.pdf", 13)).tables, "Human resources")
    assert report.rows[0] == ["Department", "Budget H1", "Budget H2", "Actual H1", "Actual H2"]
    assert report.rows[1] == ["Finance", "410", "420", "398", "431"]
    # years right-aligned over their columns are the header row itself, not group headings
    flows = table_with(read_page(page("multiline_cells.pdf", 3)).tables, "Cash at end of year")
    assert flows.rows[0] == ["", "2025", "2024"] and flows.rows[1][1:] == ["4,210", "3,877"]


def test_one_table_with_a_text_column_after_numbers_is_not_cut():
    doc = pymupdf.open()
    p = doc.new_page()
    rows = [("Product", "Qty", "Warehouse", "Bin"), ("Hinge, brass", "12", "Leeds north", "A-04"),
            ("Door handle", "30", "Leeds north", "A-07"), ("Latch", "8", "Bristol", "C-11"),
            ("Padlock", "15", "Bristol", "C-12"), ("Total", "65", "", "")]  # a total under the left part only
    for r, row in enumerate(rows):
        for x, v in zip((50, 200, 260, 400), row):
            p.insert_text((x, 100 + 15 * r), v, fontsize=10)
    (table,) = read_page(p).tables
    assert table.rows[0] == ["Product", "Qty", "Warehouse", "Bin"]
    assert table.rows[3] == ["Latch", "8", "Bristol", "C-11"] and table.rows[5] == ["Total", "65", "", ""]


def test_a_table_in_one_column_of_a_paper_leaves_the_other_column_alone():
    read = read_page(page("unruled_tables.pdf", 7))
    (table,) = read.tables
    assert table.rows == [["Method", "MAE", "RMSE"], ["Persistence", "4.12", "5.80"], ["Linear model", "3.05", "4.41"],
                          ["Gradient boosting", "2.31", "3.37"]]
    assert "Discussion." in read.text and "Discussion." not in table.markdown


def test_two_columns_of_prose_are_not_a_table():
    for name, n in (("two_columns.pdf", 1), ("three_columns.pdf", 1), ("three_columns.pdf", 3)):
        assert read_page(page(name, n)).tables == []


def pieces(words) -> Counter:
    """Words cut after each hyphen: a header word hyphenated at a line end ("Back-" over
    "ordered") comes out joined ("Back-ordered") and is still the same two pieces."""
    return Counter(p for w in words for p in re.findall(r"[^-]+-?|-", w))


def words_of(text: str) -> Counter:
    text = re.sub(r"^#+ ", "", text, flags=re.MULTILINE).replace("\\|", "\u2502")
    return pieces(w for w in text.split() if w not in ("|", "|---") and not re.fullmatch(r"\|?(---\|)+", w))


@pytest.mark.parametrize("name", sorted(p.name for p in DATA.glob("*.pdf")))
def test_no_word_is_lost_or_said_twice(name):
    """Every word of the text layer comes out once: in the text (tables included), or in a
    header, footer or margin field; merged header cells may repeat a heading in the header row.
    Dot leaders ("Trade receivables . . . . 2,317") are not words, and go."""
    for pdf_page in pymupdf.open(DATA / name):
        read = read_page(pdf_page)
        words = [Word(*w[:5]) for w in pdf_page.get_text("words")]
        layer = pieces(w.text for w in drop_leaders(words))
        out = words_of(read.text) + pieces(w for line in read.headers + read.footers + read.margin
                                           for w in line.split())
        repeated_headings = pieces(w for t in read.tables for c in t.rows[0] for w in c.split())
        assert not layer - out, f"{name} p{pdf_page.number + 1} lost {layer - out}"
        extra = out - layer
        assert not extra - repeated_headings, f"{name} p{pdf_page.number + 1} repeated {extra}"


# --------------------------------------------------------------------- furniture


def test_running_headers_and_footers_across_pages():
    doc = pymupdf.open(DATA / "running_headers.pdf")
    for n, pdf_page in enumerate(doc, 1):
        read = read_page(pdf_page)
        assert read.headers == ["Journal of Applied Hydrology | Volume 8 | Issue 3", "March 2026"]
        assert read.footers == [f"Page {n} of 3"]
        assert "Journal of Applied Hydrology" not in read.text and f"Page {n} of 3" not in read.text
    book = pymupdf.open(DATA / "running_headers_book.pdf")
    for n, pdf_page in enumerate(book, 1):
        read = read_page(pdf_page)
        assert read.footers == ["www.hydrology.example.org"]
        assert len(read.headers) == 1 and str(39 + n) in read.headers[0]  # even and odd pages differ
        assert f"Note {n}:" in read.text  # a footnote near the bottom is body text


def test_headers_and_footers_on_a_single_page():
    read = read_page(page("single_page_furniture.pdf"))
    assert read.headers == ["CONFIDENTIAL - Internal use only"]
    assert read.footers == ["(c) 2026 Acme Utilities. All rights reserved.", "7"]
    assert read.text.startswith("# Quarterly Maintenance Summary")


def test_margin_text_apart_and_title_block_whole():
    read = read_page(page("margin_text.pdf"))
    assert sorted(read.margin) == [
        "Downloaded from https://journals.example.org/ by guest on 14 March 2026 at 6:51",
        "arXiv:2603.01234v1 [physics.flu-dyn] 14 Mar 2026",
    ]
    assert read.text.startswith("# Turbulent Mixing in Shallow Estuaries\n\nA. Ramirez and K. Osei\n\nAbstract")
    manuscript = read_page(page("margin_text.pdf", 2))
    numbers = [m for m in manuscript.margin if m != "DRAFT - not for distribution"]
    assert len(numbers) == len(manuscript.margin) - 1
    assert [int(n) for n in numbers] == list(range(1, len(numbers) + 1))  # the line numbers, top to bottom
    assert "neap tides, when the salt wedge" in " ".join(manuscript.text.split())


def test_page_fields_through_the_pipeline(settings):
    data = (DATA / "running_headers.pdf").read_bytes()
    result = process_document(data, task="ocr", engine="text", settings=settings)
    assert [p.footers for p in result.pages] == [["Page 1 of 3"], ["Page 2 of 3"], ["Page 3 of 3"]]
    assert all(p.text_layer is None and p.margin == [] for p in result.pages)


# ----------------------------------------------------------------------- invoices


@pytest.mark.parametrize(
    ("data", "pages", "number", "total"),
    [
        (lambda: (Path(__file__).parent.parent / "samples" / "invoice.pdf").read_bytes(), "1", "INV-2026-0042",
         "476.00"),
        (builders.invoice_pdf, "1", builders.INVOICE_NUMBER, builders.INVOICE_TOTAL),
        (lambda: (DATA / "unruled_tables.pdf").read_bytes(), "1", "NW-88213", "243.40"),
        (lambda: (DATA / "unruled_tables.pdf").read_bytes(), "4", "CN-2291", "(252.00)"),
    ],
)
def test_invoices_keep_their_number_and_total(settings, data, pages, number, total):
    result = process_document(data(), task="ocr", pages=pages, settings=settings)
    (p,) = result.pages
    assert result.engine == "text" and number in p.text and total in p.text
    assert process_document(data(), task="tables", pages=pages, settings=settings).pages[0].tables


def test_a_rotated_page_reads_as_it_was_set():
    doc = pymupdf.open(stream=builders.invoice_pdf(), filetype="pdf")
    upright = read_page(doc[0])
    doc[0].set_rotation(90)
    turned = read_page(doc[0])
    assert doc[0].rotation == 90  # given back as it was
    assert turned.text == upright.text and [t.rows for t in turned.tables] == [t.rows for t in upright.tables]
