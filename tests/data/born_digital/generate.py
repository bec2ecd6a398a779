"""Builds the labelled born-digital set that benchmarks/text_quality.py scores.

Run ``python tests/data/born_digital/generate.py`` to write the PDFs and
``labels.json`` beside this file. Every check below is written from the content
this script puts on the page (the strings are literals here), never from any
engine's output.

Check kinds (``page`` is 1-based):
  present   the text occurs in the page's body text (tables included)
  absent    the text does not occur in the page's body text
  once      the text occurs exactly once (neither lost nor duplicated)
  order     ``before`` occurs, ``after`` occurs, and ``before`` comes first
  cell      the table holding ``table_with`` has ``text`` in cell (row, col), row 0 the header
  model     the page's text layer must not be trusted (routed to a model)
  trusted   the page's text layer must be read as text (not routed to a model)
Texts compare with whitespace collapsed; cells compare with whitespace removed.
"""

from __future__ import annotations

import io
import json
import random
from pathlib import Path

import pymupdf
from PIL import Image, ImageDraw

HERE = Path(__file__).resolve().parent
LETTER = (612.0, 792.0)
WORDS = (
    "water river basin flow storage season survey volume channel rainfall gauge station model estimate "
    "network demand supply region district record annual monthly capacity reservoir pressure quality "
    "sample measure report change trend level increase decrease average period method result system"
).split()


def sentence_text(seed: int, n_words: int) -> str:
    rng = random.Random(seed)
    words = [rng.choice(WORDS) for _ in range(n_words)]
    return " ".join(words).capitalize() + "."


def wrap(text: str, width: float, size: float, font: str = "helv") -> list[str]:
    lines, line = [], ""
    for word in text.split():
        trial = f"{line} {word}".strip()
        if pymupdf.get_text_length(trial, fontname=font, fontsize=size) > width and line:
            lines.append(line)
            line = word
        else:
            line = trial
    if line:
        lines.append(line)
    return lines


def paragraph(page, x: float, y: float, width: float, text: str, size: float = 9.5, font: str = "helv") -> float:
    """Write ``text`` wrapped to ``width`` from baseline ``y``; returns the y after it."""
    lead = size * 1.3
    for line in wrap(text, width, size, font):
        page.insert_text((x, y), line, fontsize=size, fontname=font)
        y += lead
    return y + lead * 0.6


def numbered(page, x: float, y: float, width: float, number: int, key: str, seed: int) -> float:
    return paragraph(page, x, y, width, f"{number}. {key} " + sentence_text(seed, 34))


def hline(page, x0: float, x1: float, y: float, width: float = 0.8) -> None:
    page.draw_line((x0, y), (x1, y), width=width)


def vline(page, x: float, y0: float, y1: float) -> None:
    page.draw_line((x, y0), (x, y1), width=0.8)


def right(page, x1: float, y: float, text: str, size: float = 9.5, font: str = "helv") -> None:
    """Right-aligned text ending at ``x1``."""
    page.insert_text((x1 - pymupdf.get_text_length(text, fontname=font, fontsize=size), y), text,
                     fontsize=size, fontname=font)


def centred(page, x0: float, x1: float, y: float, text: str, size: float = 9.5, font: str = "helv") -> None:
    w = pymupdf.get_text_length(text, fontname=font, fontsize=size)
    page.insert_text(((x0 + x1 - w) / 2, y), text, fontsize=size, fontname=font)


def present(page: int, text: str) -> dict:
    return {"page": page, "kind": "present", "text": text}


def absent(page: int, text: str) -> dict:
    return {"page": page, "kind": "absent", "text": text}


def once(page: int, text: str) -> dict:
    return {"page": page, "kind": "once", "text": text}


def order(page: int, before: str, after: str) -> dict:
    return {"page": page, "kind": "order", "before": before, "after": after}


def cell(page: int, table_with: str, row: int, col: int, text: str) -> dict:
    return {"page": page, "kind": "cell", "table_with": table_with, "row": row, "col": col, "text": text}


def model(page: int) -> dict:
    return {"page": page, "kind": "model"}


def trusted(page: int) -> dict:
    return {"page": page, "kind": "trusted"}


# ----------------------------------------------------------------- layouts


def two_columns():
    doc = pymupdf.open()
    keys = ["Alder", "Birch", "Cedar", "Dogwood", "Elm", "Fir", "Ginkgo", "Hazel"]
    p = doc.new_page(width=LETTER[0], height=LETTER[1])
    centred(p, 50, 562, 70, "Regional Water Management Report", 20, "hebo")
    centred(p, 50, 562, 92, "Prepared by the Basin Authority", 10)
    y = 130
    for i in range(4):
        y = numbered(p, 50, y, 245, 150 + i, keys[i], i)
    y = 130
    for i in range(4, 8):
        y = numbered(p, 317, y, 245, 150 + i, keys[i], i)
    p2 = doc.new_page(width=LETTER[0], height=LETTER[1])
    keys2 = ["Juniper", "Larch", "Maple", "Oak", "Pine", "Rowan", "Spruce", "Willow"]
    y = 60
    for i in range(2):
        y = numbered(p2, 50, y, 245, 160 + i, keys2[i], 10 + i)
    y = 60
    for i in range(2, 4):
        y = numbered(p2, 317, y, 245, 160 + i, keys2[i], 10 + i)
    y = 330
    p2.insert_text((50, y), "Figure 2. Inflow to the northern reservoirs across all seasons of the year", fontsize=10,
                   fontname="hebo")
    p2.draw_rect(pymupdf.Rect(50, y + 8, 562, y + 90), width=0.8)
    y = 450
    for i in range(4, 6):
        y = numbered(p2, 50, y, 245, 160 + i, keys2[i], 10 + i)
    y = 450
    for i in range(6, 8):
        y = numbered(p2, 317, y, 245, 160 + i, keys2[i], 10 + i)
    p3 = doc.new_page(width=LETTER[0], height=LETTER[1])
    p3.insert_text((50, 36), "Regional Water Management Report", fontsize=8)
    right(p3, 562, 36, "3", 8)
    y = paragraph(p3, 50, 70, 245, "170. Quince " + sentence_text(20, 50))
    y = paragraph(p3, 50, y, 245, "171. Redwood " + sentence_text(21, 40))
    p3.insert_text((50, y + 4), "3. Methods", fontsize=12, fontname="hebo")
    y = paragraph(p3, 317, 70, 245, "172. Sequoia " + sentence_text(22, 30))
    paragraph(p3, 317, y, 245, "173. Tamarack " + sentence_text(23, 44))
    gx, top = [50, 250, 330, 410, 490, 562], 320
    heads = ["Reservoir", "Capacity", "Inflow", "Outflow", "Level"]
    vals = [["North Lake", "1,200", "340", "310", "92%"], ["Stone Dam", "860", "120", "135", "78%"]]
    for r in range(4):
        hline(p3, gx[0], gx[-1], top + r * 18)
    for x in gx:
        vline(p3, x, top, top + 54)
    for r, row in enumerate([heads, *vals]):
        for k, v in enumerate(row):
            p3.insert_text((gx[k] + 4, top + r * 18 + 13), v, fontsize=9.5, fontname="hebo" if r == 0 else "helv")
    y = paragraph(p3, 50, 410, 245, "174. Umbrella pine " + sentence_text(24, 40))
    paragraph(p3, 317, 410, 245, "175. Viburnum " + sentence_text(25, 40))
    p3.insert_text((50, 700), "1 Capacities are given in millions of cubic metres.", fontsize=7.5)
    checks = [
        order(3, "171. Redwood", "3. Methods"),
        order(3, "3. Methods", "172. Sequoia"),
        order(3, "173. Tamarack", "North Lake"),
        order(3, "Stone Dam", "174. Umbrella pine"),
        order(3, "174. Umbrella pine", "175. Viburnum"),
        order(3, "175. Viburnum", "Capacities are given in millions"),
        cell(3, "Stone Dam", 0, 4, "Level"),
        cell(3, "Stone Dam", 2, 1, "860"),
        order(1, "Regional Water Management Report", "150. Alder"),
        *[order(1, f"{150 + i}. {keys[i]}", f"{151 + i}. {keys[i + 1]}")
          for i in range(7)],
        once(1, "153. Dogwood"),
        order(2, "160. Juniper", "162. Maple"),
        order(2, "161. Larch", "162. Maple"),
        order(2, "163. Oak", "Figure 2. Inflow"),
        order(2, "Figure 2. Inflow", "164. Pine"),
        order(2, "165. Rowan", "166. Spruce"),
        order(2, "166. Spruce", "167. Willow"),
    ]
    return doc, checks


def three_columns():
    doc = pymupdf.open()
    p = doc.new_page(width=LETTER[0], height=LETTER[1])
    centred(p, 40, 572, 60, "The Valley Courier", 22, "hebo")
    cols = [(40, 200), (216, 376), (392, 552)]
    sections = [
        [("Local News", "Town council approves the bridge"), ("Schools", "Enrolment rises again")],
        [("Sports", "Rowing club wins the regatta"), ("Arts", "Gallery opens a print room")],
        [("Weather", "A dry week ahead for farmers"), ("Notices", "Library hours change in May")],
    ]
    for c, (x0, x1) in enumerate(cols):
        y = 100
        for s, (head, lead) in enumerate(sections[c]):
            p.insert_text((x0, y), head, fontsize=12, fontname="hebo")
            y = paragraph(p, x0, y + 16, x1 - x0, f"{lead}. " + sentence_text(c * 10 + s, 40), 9)
            y += 10
    p2 = doc.new_page(width=LETTER[0], height=LETTER[1])
    y = paragraph(p2, 40, 60, 250, "Editor's note. " + sentence_text(31, 60), 9)
    paragraph(p2, 302, 60, 250, "Letters policy. " + sentence_text(32, 60), 9)
    centred(p2, 40, 552, 200, "Market Prices This Week", 14, "hebo")
    for c, (x0, x1) in enumerate(cols):
        paragraph(p2, x0, 230, x1 - x0, ["Grain prices held", "Livestock sales rose", "Vegetable stalls busy"][c] + ". "
                  + sentence_text(33 + c, 45), 9)
    p3 = doc.new_page(width=LETTER[0], height=LETTER[1])
    y = paragraph(p3, 40, 60, 160, "Harvest festival plans. " + sentence_text(35, 70), 9)
    p3.insert_text((40, y + 2), "Road Works", fontsize=12, fontname="hebo")
    y = paragraph(p3, 216, 60, 160, "The bypass closes at night. " + sentence_text(36, 80), 9)
    paragraph(p3, 392, 60, 160, "Choir seeks tenors. " + sentence_text(37, 30), 9)
    centred(p3, 40, 552, 420, "Continued on page 4: more local stories and the full events calendar", 9, "hebo")
    checks = [
        order(3, "Harvest festival plans.", "Road Works"),
        order(3, "Road Works", "The bypass closes at night."),
        order(3, "The bypass closes at night.", "Choir seeks tenors."),
        order(3, "Choir seeks tenors.", "Continued on page 4"),
        order(2, "Editor's note.", "Letters policy."),
        order(2, "Letters policy.", "Market Prices This Week"),
        order(2, "Market Prices This Week", "Grain prices held"),
        order(2, "Grain prices held", "Livestock sales rose"),
        order(2, "Livestock sales rose", "Vegetable stalls busy"),
        order(1, "The Valley Courier", "Local News"),
        order(1, "Local News", "Town council approves the bridge"),
        order(1, "Town council approves the bridge", "Schools"),
        order(1, "Enrolment rises again", "Sports"),
        order(1, "Sports", "Rowing club wins the regatta"),
        order(1, "Gallery opens a print room", "Weather"),
        order(1, "A dry week ahead for farmers", "Notices"),
        present(1, "Library hours change in May"),
    ]
    return doc, checks


# ------------------------------------------------------------------ tables


def header_tables():
    doc = pymupdf.open()
    # page 1: booktabs style, three horizontal rules, no verticals
    p = doc.new_page(width=LETTER[0], height=LETTER[1])
    p.insert_text((50, 60), "Table 1. Station records", fontsize=11, fontname="hebo")
    xs = [50, 200, 300, 400, 500]
    hline(p, 50, 520, 75)
    for x, h in zip(xs, ["Station", "Elevation", "Rainfall", "Runoff"]):
        p.insert_text((x, 90), h, fontsize=10, fontname="hebo")
    hline(p, 50, 520, 97, 0.5)
    data = [["Upper Creek", "412", "1,204", "388"], ["Mill Bridge", "275", "987", "301"],
            ["Harbour Gate", "12", "860", "254"]]
    for r, row in enumerate(data):
        for x, v in zip(xs, row):
            p.insert_text((x, 112 + r * 16), v, fontsize=10)
    hline(p, 50, 520, 112 + 2 * 16 + 7)
    p.insert_text((50, 190), "Runoff is given in millimetres over the catchment.", fontsize=10)
    # a fully ruled grid with a two-row header: a group label over two columns each
    p.insert_text((50, 240), "Table 2. Revenue and costs by region", fontsize=11, fontname="hebo")
    gx = [50, 170, 260, 350, 440, 530]
    top, rh = 250, 18
    rows = 6
    for r in range(rows + 1):
        if r == 1:
            hline(p, gx[1], gx[-1], top + r * rh)
        else:
            hline(p, gx[0], gx[-1], top + r * rh)
    for i, x in enumerate(gx):
        if i in (2, 4):
            vline(p, x, top + rh, top + rows * rh)
        else:
            vline(p, x, top, top + rows * rh)
    p.insert_text((56, top + rh + 4), "Region", fontsize=10, fontname="hebo")
    centred(p, gx[1], gx[3], top + 13, "Revenue", 10, "hebo")
    centred(p, gx[3], gx[5], top + 13, "Costs", 10, "hebo")
    for i, y in enumerate(["2024", "2025", "2024", "2025"]):
        centred(p, gx[1 + i], gx[2 + i], top + rh + 13, y, 10, "hebo")
    body = [["North", "310", "342", "120", "131"], ["South", "285", "301", "99", "104"],
            ["East", "190", "222", "88", "93"], ["West", "402", "455", "150", "161"]]
    for r, row in enumerate(body):
        y = top + (r + 2) * rh + 13
        p.insert_text((56, y), row[0], fontsize=10)
        for i, v in enumerate(row[1:]):
            right(p, gx[2 + i] - 8, y, v, 10)
    checks = [
        cell(1, "Upper Creek", 0, 0, "Station"),
        cell(1, "Upper Creek", 0, 3, "Runoff"),
        cell(1, "Upper Creek", 1, 0, "Upper Creek"),
        cell(1, "Upper Creek", 3, 2, "860"),
        once(1, "Elevation"),
        cell(1, "North", 0, 0, "Region"),
        cell(1, "North", 0, 1, "Revenue"),
        cell(1, "North", 0, 1, "2024"),
        cell(1, "North", 0, 4, "Costs"),
        cell(1, "North", 0, 4, "2025"),
        cell(1, "North", 1, 0, "North"),
        cell(1, "North", 4, 2, "455"),
        order(1, "Table 1. Station records", "Upper Creek"),
        order(1, "Harbour Gate", "Runoff is given in millimetres"),
    ]
    return doc, checks


def multiline_cells():
    doc = pymupdf.open()
    p = doc.new_page(width=LETTER[0], height=LETTER[1])
    p.insert_text((50, 60), "Table 3. Training data mix", fontsize=11, fontname="hebo")
    gx = [50, 200, 420, 540]
    rows = [
        (["Dataset", "Description", "Tokens"], 1),
        (["StarCoder\nfiltered version\nfrom OLMoE Mix", "Permissively licensed source code\nfrom public repositories",
          "1.3T"], 3),
        (["Wikipedia", "Encyclopedia articles in\nall languages", "4.2B"], 2),
        (["Semantic Scholar\npapers", "Open access research papers", "57B"], 2),
    ]
    y = 70
    hline(p, gx[0], gx[-1], y)
    for cells, n in rows:
        h = 6 + 12 * n
        for i, text in enumerate(cells):
            for k, line in enumerate(text.split("\n")):
                p.insert_text((gx[i] + 5, y + 14 + 12 * k), line, fontsize=10, fontname="hebo" if y == 70 else "helv")
        y += h
        hline(p, gx[0], gx[-1], y)
    for x in gx:
        vline(p, x, 70, y)
    # unruled: wrapped descriptions, top-aligned, rows apart by a blank gap
    p.insert_text((50, 290), "Table 4. Equipment list", fontsize=11, fontname="hebo")
    ux = [50, 150, 430]
    for x, h in zip(ux, ["Item", "Purpose", "Count"]):
        p.insert_text((x, 310), h, fontsize=10, fontname="hebo")
    items = [("Pump A", "Lifts water from the lower basin into the\nholding tank during dry months", "4"),
             ("Valve kit", "Spare seals and gaskets for the main line", "12"),
             ("Flow meter", "Ultrasonic meter, clamp-on type, for pipes\nfrom 50 to 300 mm", "3")]
    y = 328
    for item, purpose, count in items:
        p.insert_text((ux[0], y), item, fontsize=10)
        lines = purpose.split("\n")
        for k, line in enumerate(lines):
            p.insert_text((ux[1], y + 12 * k), line, fontsize=10)
        right(p, ux[2] + 30, y, count, 10)
        y += 12 * len(lines) + 8
    p2 = doc.new_page(width=LETTER[0], height=LETTER[1])
    p2.insert_text((50, 60), "Table 5. Model variants", fontsize=11, fontname="hebo")
    bx = [50, 170, 360, 470]
    hline(p2, 50, 540, 70)
    for x, h in zip(bx, ["Model", "Training recipe", "Params", "Score"]):
        p2.insert_text((x, 84), h, fontsize=10, fontname="hebo")
    hline(p2, 50, 540, 90, 0.5)
    variants = [(["Base"], ["Pretrained on the web", "mix only"], "1.2B", "61.4"),
                (["Instruct", "(SFT + DPO)"], ["Base, then supervised", "tuning and preference", "optimisation"],
                 "1.2B", "68.9"),
                (["Long context"], ["Instruct, extended to", "32k tokens"], "1.3B", "67.2")]
    y = 104
    for name, recipe, params, score in variants:
        for k, line in enumerate(name):
            p2.insert_text((bx[0], y + 12 * k), line, fontsize=10)
        for k, line in enumerate(recipe):
            p2.insert_text((bx[1], y + 12 * k), line, fontsize=10)
        p2.insert_text((bx[2], y), params, fontsize=10)
        p2.insert_text((bx[3], y), score, fontsize=10)
        y += 12 * max(len(name), len(recipe)) + 8
    hline(p2, 50, 540, y - 6)
    p3 = doc.new_page(width=LETTER[0], height=LETTER[1])
    p3.insert_text((50, 60), "Cash flow summary", fontsize=12, fontname="hebo")
    right(p3, 420, 84, "2025", 9.5, "hebo")
    right(p3, 520, 84, "2024", 9.5, "hebo")
    flows = [(["Net cash provided by operating activities"], "4,210", "3,877"),
             (["Net cash used in investing activities, including", "purchases of property and equipment"], "(1,932)",
              "(2,104)"),
             (["Net increase (decrease) in cash and cash", "equivalents and restricted cash"], "2,278", "1,773"),
             (["Cash at end of year"], "9,614", "7,336")]
    y = 102
    for label, a, b in flows:
        for k, line in enumerate(label):
            p3.insert_text((50, y), line, fontsize=9.5)
            if k == len(label) - 1:
                right(p3, 420, y, a)
                right(p3, 520, y, b)
            y += 14
    checks = [
        cell(3, "Cash at end of year", 2, 0,
             "Net cash used in investing activities, including purchases of property and equipment"),
        cell(3, "Cash at end of year", 2, 1, "(1,932)"),
        cell(3, "Cash at end of year", 3, 0,
             "Net increase (decrease) in cash and cash equivalents and restricted cash"),
        cell(3, "Cash at end of year", 3, 2, "1,773"),
        cell(3, "Cash at end of year", 4, 1, "9,614"),
        cell(2, "Long context", 0, 1, "Training recipe"),
        cell(2, "Long context", 1, 1, "Pretrained on the web mix only"),
        cell(2, "Long context", 2, 0, "Instruct (SFT + DPO)"),
        cell(2, "Long context", 2, 1, "Base, then supervised tuning and preference optimisation"),
        cell(2, "Long context", 2, 3, "68.9"),
        cell(2, "Long context", 3, 1, "Instruct, extended to 32k tokens"),
        once(2, "preference optimisation"),
        cell(1, "Wikipedia", 0, 0, "Dataset"),
        cell(1, "Wikipedia", 1, 0, "StarCoder filtered version from OLMoE Mix"),
        cell(1, "Wikipedia", 1, 1, "Permissively licensed source code from public repositories"),
        cell(1, "Wikipedia", 1, 2, "1.3T"),
        cell(1, "Wikipedia", 3, 0, "Semantic Scholar papers"),
        once(1, "from OLMoE Mix"),
        once(1, "all languages"),
        cell(1, "Valve kit", 0, 1, "Purpose"),
        cell(1, "Valve kit", 1, 1, "Lifts water from the lower basin into the holding tank during dry months"),
        cell(1, "Valve kit", 3, 1, "Ultrasonic meter, clamp-on type, for pipes from 50 to 300 mm"),
        cell(1, "Valve kit", 3, 2, "3"),
        once(1, "holding tank during dry months"),
    ]
    return doc, checks


def currency():
    doc = pymupdf.open()
    p = doc.new_page(width=LETTER[0], height=LETTER[1])
    p.insert_text((50, 60), "Consolidated Statements of Operations", fontsize=12, fontname="hebo")
    p.insert_text((50, 76), "(in millions)", fontsize=9)
    centred(p, 330, 540, 100, "Year Ended December 31,", 9.5, "hebo")
    hline(p, 330, 540, 104, 0.5)
    right(p, 420, 118, "2025", 9.5, "hebo")
    right(p, 540, 118, "2024", 9.5, "hebo")
    rows = [("Revenue", "$", "5,812", "$", "4,953"), ("Cost of revenue", "$", "178", "$", "141"),
            ("Research and development", "", "3,423", "", "2,532"), ("Sales and marketing", "", "1,206", "", "1,118"),
            ("Total costs and expenses", "$", "4,807", "$", "3,791"),
            ("Income from operations", "$", "1,005", "$", "1,162")]
    for r, (label, c1, v1, c2, v2) in enumerate(rows):
        y = 136 + r * 16
        p.insert_text((50, y), label, fontsize=9.5)
        if c1:
            p.insert_text((340, y), c1, fontsize=9.5)
            p.insert_text((460, y), c2, fontsize=9.5)
        right(p, 420, y, v1)
        right(p, 540, y, v2)
    hline(p, 380, 420, 136 + 3 * 16 + 4, 0.5)
    hline(p, 500, 540, 136 + 3 * 16 + 4, 0.5)
    # a euro table with the currency code after the number, in its own column
    p.insert_text((50, 290), "Operating costs by site", fontsize=12, fontname="hebo")
    for x, h in zip((50, 260, 400), ("Site", "Energy", "Staff")):
        p.insert_text((x, 310), h, fontsize=9.5, fontname="hebo")
    for r, (site, e, s) in enumerate([("Dortmund", "12.400", "88.150"), ("Leipzig", "9.870", "71.300"),
                                       ("Bremen", "15.020", "93.410")]):
        y = 328 + r * 16
        p.insert_text((50, y), site, fontsize=9.5)
        right(p, 320, y, e)
        p.insert_text((326, y), "EUR", fontsize=9.5)
        right(p, 460, y, s)
        p.insert_text((466, y), "EUR", fontsize=9.5)
    t1 = "Cost of revenue"
    checks = [
        cell(1, t1, 2, 0, "Cost of revenue"),
        cell(1, t1, 2, 1, "$178"),
        cell(1, t1, 2, 2, "$141"),
        cell(1, t1, 3, 1, "3,423"),
        cell(1, t1, 3, 2, "2,532"),
        cell(1, t1, 1, 1, "$5,812"),
        cell(1, t1, 6, 2, "$1,162"),
        cell(1, t1, 0, 1, "2025"),
        cell(1, "Dortmund", 1, 1, "12.400EUR"),
        cell(1, "Dortmund", 3, 2, "93.410EUR"),
        cell(1, "Dortmund", 0, 2, "Staff"),
    ]
    return doc, checks


def unruled_tables():
    doc = pymupdf.open()
    p = doc.new_page(width=LETTER[0], height=LETTER[1])
    p.insert_text((50, 60), "Northwind Supplies Ltd", fontsize=16, fontname="hebo")
    p.insert_text((50, 80), "Invoice number: NW-88213", fontsize=10)
    p.insert_text((50, 94), "Date: 2026-02-11", fontsize=10)
    xs = (50, 330, 400, 500)
    for x, h in zip(xs, ("Description", "Qty", "Unit price", "Amount")):
        p.insert_text((x, 140), h, fontsize=10, fontname="hebo")
    items = [("Copper pipe 15 mm, 3 m", "20", "7.80", "156.00"), ("Elbow joint 15 mm", "40", "0.95", "38.00"),
             ("Solder wire 250 g", "3", "12.40", "37.20"), ("Pipe clips (pack of 50)", "2", "6.10", "12.20")]
    for r, row in enumerate(items):
        y = 160 + r * 18
        p.insert_text((xs[0], y), row[0], fontsize=10)
        for x, v in zip((360, 450, 540), row[1:]):
            right(p, x, y, v, 10)
    p.insert_text((400, 250), "Total", fontsize=10, fontname="hebo")
    right(p, 540, 250, "243.40", 10, "hebo")
    p.insert_text((50, 300), "Payment within 30 days to the account shown overleaf.", fontsize=10)
    p2 = doc.new_page(width=LETTER[0], height=LETTER[1])
    p2.insert_text((50, 60), "Spare parts list", fontsize=14, fontname="hebo")
    xs2 = (50, 140, 360, 450)
    for x, h in zip(xs2, ("Part no.", "Name", "Qty", "Weight (kg)")):
        p2.insert_text((x, 100), h, fontsize=10, fontname="hebo")
    parts = [("P-1001", "Impeller housing", "1", "4.20"), ("P-1002", "Shaft seal", "2", "0.15"),
             ("P-1003", "Bearing, front", "2", "0.40"), ("P-1004", "Bearing, rear", "2", "0.38"),
             ("P-1005", "Motor mount bracket", "4", "1.10")]
    for r, row in enumerate(parts):
        y = 120 + r * 16
        for x, v in zip(xs2, row):
            p2.insert_text((x, y), v, fontsize=10)
    p3 = doc.new_page(width=LETTER[0], height=LETTER[1])
    y = paragraph(p3, 50, 60, 500, "The meter readings below were taken on the first working day of each quarter "
                  "by the district inspector.", 10)
    ux = [50, 190, 260, 330, 400, 470]
    for x, h in zip(ux, ["Meter", "Q1", "Q2", "Q3", "Q4", "Year"]):
        p3.insert_text((x, y + 4), h, fontsize=10, fontname="hebo")
    readings = [["Main street", "410", "395", "", "402", "1,207"], ["Station road", "220", "", "231", "240", "691"],
                ["Mill lane", "98", "102", "110", "", "310"], ["Church hill", "", "75", "81", "79", "235"]]
    for r, row in enumerate(readings):
        for x, v in zip(ux, row):
            p3.insert_text((x, y + 22 + 16 * r), v, fontsize=10)
    p3.insert_text((ux[0], y + 22 + 16 * 4), "All meters", fontsize=10, fontname="hebo")
    p3.insert_text((ux[5], y + 22 + 16 * 4), "2,443", fontsize=10, fontname="hebo")
    p4 = doc.new_page(width=LETTER[0], height=LETTER[1])
    p4.insert_text((50, 60), "Credit note CN-2291", fontsize=14, fontname="hebo")
    cx = (50, 300, 380, 470)
    p4.insert_text((cx[2], 96), "Unit", fontsize=10, fontname="hebo")
    for x, h in zip(cx, ("Item", "Qty", "price", "Amount")):
        p4.insert_text((x, 108), h, fontsize=10, fontname="hebo")
    returned = [("Returned valve kit", "2", "18.50", "(37.00)"), ("Damaged flow meter", "1", "240.00", "(240.00)"),
                ("Restocking fee", "1", "25.00", "25.00")]
    for r, row in enumerate(returned):
        yy = 126 + 16 * r
        for x, v in zip(cx, row):
            p4.insert_text((x, yy), v, fontsize=10)
    p4.insert_text((cx[2], 190), "Credit total", fontsize=10, fontname="hebo")
    p4.insert_text((cx[3] + 20, 190), "(252.00)", fontsize=10, fontname="hebo")
    # page 5: a bank statement, debit and credit columns mostly empty, right-aligned amounts
    p5 = doc.new_page(width=LETTER[0], height=LETTER[1])
    p5.insert_text((50, 60), "Statement of account 0042-118877", fontsize=13, fontname="hebo")
    sx = (50, 120, 400, 470, 540)
    p5.insert_text((sx[0], 100), "Date", fontsize=9.5, fontname="hebo")
    p5.insert_text((sx[1], 100), "Description", fontsize=9.5, fontname="hebo")
    for x, h in zip(sx[2:], ("Debit", "Credit", "Balance")):
        right(p5, x, 100, h, 9.5, "hebo")
    entries = [("01.03.", "Opening balance", "", "", "1,520.40"), ("03.03.", "Card payment Hardware Store", "84.20", "",
                "1,436.20"), ("07.03.", "Salary March", "", "2,950.00", "4,386.20"),
               ("12.03.", "Standing order rent", "1,100.00", "", "3,286.20"),
               ("28.03.", "Interest", "", "1.35", "3,287.55")]
    for r, (d, desc, debit, credit, bal) in enumerate(entries):
        yy = 118 + 15 * r
        p5.insert_text((sx[0], yy), d, fontsize=9.5)
        p5.insert_text((sx[1], yy), desc, fontsize=9.5)
        for x, v in zip(sx[2:], (debit, credit, bal)):
            if v:
                right(p5, x, yy, v)
    # page 6: a timetable, times centred under their stop names
    p6 = doc.new_page(width=LETTER[0], height=LETTER[1])
    p6.insert_text((50, 60), "Bus 42 weekday timetable", fontsize=13, fontname="hebo")
    stops = ["Harbour", "Market Square", "Hospital", "Ridge Road"]
    tx = [110, 230, 350, 470]
    for x, stop in zip(tx, stops):
        centred(p6, x - 50, x + 50, 96, stop, 9.5, "hebo")
    times = [["06:15", "06:24", "06:31", "06:40"], ["07:15", "07:25", "07:33", "07:43"],
             ["08:15", "08:26", "08:35", "08:46"], ["09:15", "09:24", "", "09:38"]]
    for r, row in enumerate(times):
        for x, t in zip(tx, row):
            if t:
                centred(p6, x - 50, x + 50, 114 + 15 * r, t, 9.5)
    p6.insert_text((50, 190), "The 09:15 does not stop at the hospital.", fontsize=9.5)
    # page 7: a two-column paper with a small unruled table in the left column, prose on the right
    p7 = doc.new_page(width=LETTER[0], height=LETTER[1])
    y = paragraph(p7, 50, 60, 245, "Results. " + sentence_text(140, 45))
    p7.insert_text((50, y), "Table 6. Error by method", fontsize=9.5, fontname="hebo")
    for x, h in zip((50, 170, 240), ("Method", "MAE", "RMSE")):
        p7.insert_text((x, y + 16), h, fontsize=9.5, fontname="hebo")
    for r, row in enumerate([("Persistence", "4.12", "5.80"), ("Linear model", "3.05", "4.41"),
                             ("Gradient boosting", "2.31", "3.37")]):
        for x, v in zip((50, 170, 240), row):
            p7.insert_text((x, y + 32 + 14 * r), v, fontsize=9.5)
    paragraph(p7, 50, y + 90, 245, "Boosting is best. " + sentence_text(141, 30))
    paragraph(p7, 317, 60, 245, "Discussion. " + sentence_text(142, 140))
    # page 8: a balance sheet: plain-weight header, section rows with no numbers, indented items
    p8 = doc.new_page(width=LETTER[0], height=LETTER[1])
    p8.insert_text((50, 60), "Balance sheet at 31 December", fontsize=12, fontname="hebo")
    right(p8, 430, 90, "2025", 9.5)
    right(p8, 520, 90, "2024", 9.5)
    sheet = [("Assets", "", "", 0), ("Cash and equivalents", "9,614", "7,336", 12),
             ("Receivables", "2,210", "2,045", 12),
             ("Inventories", "1,380", "1,512", 12), ("Total assets", "13,204", "10,893", 0), ("Liabilities", "", "", 0),
             ("Payables", "1,905", "1,766", 12), ("Borrowings", "3,000", "3,500", 12),
             ("Total liabilities", "4,905", "5,266", 0)]
    for r, (label, a, b, indent) in enumerate(sheet):
        yy = 108 + 15 * r
        p8.insert_text((50 + indent, yy), label, fontsize=9.5)
        if a:
            right(p8, 430, yy, a)
            right(p8, 520, yy, b)
    # page 9: a dense results table of a paper: eight columns at 7.5 pt, narrow gaps, three rules
    p9 = doc.new_page(width=LETTER[0], height=LETTER[1])
    p9.insert_text((50, 60), "Table 7. Accuracy by benchmark", fontsize=9, fontname="hebo")
    dx = [50, 150, 200, 250, 300, 350, 400, 450]
    heads = ["Model", "MMLU", "GSM8K", "ARC-C", "HellaS", "TruthQA", "Wino", "Avg."]
    hline(p9, 50, 480, 68)
    for x, h in zip(dx, heads):
        p9.insert_text((x, 78), h, fontsize=7.5, fontname="hebo")
    hline(p9, 50, 480, 82, 0.4)
    results = [["Llama-2-7B", "45.3", "14.6", "53.1", "78.6", "38.8", "74.0", "50.7"],
               ["Mistral-7B", "62.5", "40.0", "61.1", "83.3", "42.6", "78.4", "61.3"],
               ["Qwen1.5-7B", "61.0", "62.5", "54.2", "78.5", "51.1", "71.2", "63.1"],
               ["Gemma-7B", "64.3", "46.4", "61.1", "82.2", "44.8", "79.0", "63.0"]]
    for r, row in enumerate(results):
        for x, v in zip(dx, row):
            p9.insert_text((x, 92 + 10 * r), v, fontsize=7.5)
    hline(p9, 50, 480, 92 + 10 * 3 + 4)
    # page 10: small tables in a letter: a two-row contact list, a plain-weight opening-hours table
    p10 = doc.new_page(width=LETTER[0], height=LETTER[1])
    y = paragraph(p10, 50, 60, 500, "Dear customer, the new service desk opens on 2 May. Please use the numbers "
                  "below from that date.", 10)
    for r, row in enumerate([("Team", "Phone", "E-mail"), ("Billing", "+44 20 7946 0012", "billing@example.com"),
                             ("Repairs", "+44 20 7946 0099", "repairs@example.com")]):
        for x, v in zip((50, 180, 330), row):
            p10.insert_text((x, y + 10 + 16 * r), v, fontsize=10, fontname="hebo" if r == 0 else "helv")
    y = paragraph(p10, 50, y + 80, 500, "Opening hours of the desk:", 10)
    for r, row in enumerate([("Day", "Opens", "Closes"), ("Monday to Thursday", "08:00", "18:00"),
                             ("Friday", "08:00", "16:00"), ("Saturday", "10:00", "13:00")]):
        for x, v in zip((50, 200, 280), row):
            p10.insert_text((x, y + 16 * r), v, fontsize=10)
    paragraph(p10, 50, y + 90, 500, "Kind regards, the service team.", 10)
    checks = [
        cell(10, "Repairs", 0, 1, "Phone"),
        cell(10, "Repairs", 1, 1, "+44 20 7946 0012"),
        cell(10, "Repairs", 2, 2, "repairs@example.com"),
        cell(10, "Saturday", 0, 2, "Closes"),
        cell(10, "Saturday", 1, 0, "Monday to Thursday"),
        cell(10, "Saturday", 3, 1, "10:00"),
        order(10, "Opening hours of the desk:", "Monday to Thursday"),
        order(10, "13:00", "Kind regards"),
        cell(9, "Mistral-7B", 0, 2, "GSM8K"),
        cell(9, "Mistral-7B", 0, 7, "Avg."),
        cell(9, "Mistral-7B", 2, 0, "Mistral-7B"),
        cell(9, "Mistral-7B", 3, 2, "62.5"),
        cell(9, "Mistral-7B", 4, 7, "63.0"),
        cell(9, "Mistral-7B", 1, 5, "38.8"),
        cell(8, "Receivables", 0, 1, "2025"),
        cell(8, "Receivables", 1, 0, "Assets"),
        cell(8, "Receivables", 3, 2, "2,045"),
        cell(8, "Receivables", 6, 0, "Liabilities"),
        cell(8, "Receivables", 8, 1, "3,000"),
        cell(8, "Receivables", 9, 2, "5,266"),
        cell(7, "Linear model", 0, 2, "RMSE"),
        cell(7, "Linear model", 3, 1, "2.31"),
        order(7, "Gradient boosting", "Boosting is best."),
        order(7, "Boosting is best.", "Discussion."),
        cell(5, "Salary March", 0, 3, "Credit"),
        cell(5, "Salary March", 2, 2, "84.20"),
        cell(5, "Salary March", 3, 3, "2,950.00"),
        cell(5, "Salary March", 4, 1, "Standing order rent"),
        cell(5, "Salary March", 5, 4, "3,287.55"),
        cell(6, "06:24", 0, 1, "Market Square"),
        cell(6, "06:24", 2, 2, "07:33"),
        cell(6, "06:24", 4, 3, "09:38"),
        order(6, "08:46", "The 09:15 does not stop"),
        cell(4, "Restocking fee", 0, 2, "Unit price"),
        cell(4, "Restocking fee", 0, 0, "Item"),
        cell(4, "Restocking fee", 2, 3, "(240.00)"),
        cell(4, "Restocking fee", 3, 2, "25.00"),
        present(4, "(252.00)"),
        present(3, "taken on the first working day of each quarter"),
        cell(3, "Station road", 0, 5, "Year"),
        cell(3, "Station road", 2, 3, "231"),
        cell(3, "Station road", 3, 3, "110"),
        cell(3, "Station road", 4, 2, "75"),
        cell(3, "Station road", 5, 5, "2,443"),
        once(3, "Church hill"),
        present(1, "NW-88213"),
        cell(1, "Elbow joint", 0, 0, "Description"),
        cell(1, "Elbow joint", 0, 2, "Unit price"),
        cell(1, "Elbow joint", 2, 0, "Elbow joint 15 mm"),
        cell(1, "Elbow joint", 2, 3, "38.00"),
        cell(1, "Elbow joint", 4, 1, "2"),
        present(1, "243.40"),
        once(1, "Solder wire 250 g"),
        cell(2, "Shaft seal", 0, 3, "Weight (kg)"),
        cell(2, "Shaft seal", 3, 1, "Bearing, front"),
        cell(2, "Shaft seal", 5, 0, "P-1005"),
        cell(2, "Shaft seal", 5, 3, "1.10"),
        once(2, "Motor mount bracket"),
    ]
    return doc, checks


def unruled_statements():
    """Harder unruled tables as enterprise documents set them: a bank statement whose
    descriptions run over several lines, an income statement ($ signs in their own place,
    parenthesised negatives whose ")" hangs past the digits, indented items, a note column,
    a dash for nil), headers on two lines in every column, a charges table in the right-hand
    column beside a column of prose and a summary with a wide gap before its amounts, and
    a factsheet with two tables side by side in the page's two columns, and transactions
    dated on a day's first entry only, with the balance on its last; an invoice whose item
    descriptions wrap, with a VAT summary under it, and a payslip's payments and deductions
    side by side; a balance sheet whose labels run on in dot leaders; a proposal's budget
    whose cells are centred vertically beside wrapped work-package names; a statement whose
    entries give their amounts on their last line; a risk register with running text in a column;
    a management report with group headings over pairs of columns."""
    doc = pymupdf.open()
    # page 1: a bank statement; amounts on an entry's first line, its description goes on below
    p = doc.new_page(width=LETTER[0], height=LETTER[1])
    p.insert_text((50, 60), "Harbour Bank plc", fontsize=14, fontname="hebo")
    p.insert_text((50, 80), "Current account statement, 1 March to 31 March 2026", fontsize=10)
    p.insert_text((50, 94), "Account 20-44-91 73310582", fontsize=10)
    p.insert_text((50, 130), "Date", fontsize=9, fontname="hebo")
    p.insert_text((110, 130), "Description", fontsize=9, fontname="hebo")
    for x, h in zip((420, 490, 560), ("Paid out", "Paid in", "Balance")):
        right(p, x, 130, h, 9, "hebo")
    entries = [("01 Mar", ["Balance brought forward"], "", "", "2,804.16"),
               ("02 Mar", ["Direct debit", "Severn Water Ltd", "Ref. SW-440918"], "46.80", "", "2,757.36"),
               ("05 Mar", ["Faster payment received", "From: J Okafor", "Ref. Invoice 1187"], "", "1,250.00",
                "4,007.36"),
               ("09 Mar", ["Card payment", "Fenwick Office Supplies, Leeds"], "132.45", "", "3,874.91"),
               ("14 Mar", ["Standing order", "Landlord Property Mgmt"], "950.00", "", "2,924.91"),
               ("27 Mar", ["Interest paid"], "", "0.84", "2,925.75"),
               ("31 Mar", ["Balance carried forward"], "", "", "2,925.75")]
    y = 148
    for date, desc, out, paid_in, bal in entries:
        p.insert_text((50, y), date, fontsize=9)
        for k, line in enumerate(desc):
            p.insert_text((110, y + 11 * k), line, fontsize=9)
        for x, v in zip((420, 490, 560), (out, paid_in, bal)):
            if v:
                right(p, x, y, v, 9)
        y += 11 * len(desc) + 5
    p.insert_text((110, y), "Totals", fontsize=9, fontname="hebo")
    right(p, 420, y, "1,129.25", 9, "hebo")
    right(p, 490, y, "1,250.84", 9, "hebo")
    p.insert_text((50, y + 40), "Harbour Bank plc is authorised by the Prudential Regulation Authority.", fontsize=8)
    # page 2: an income statement
    p2 = doc.new_page(width=LETTER[0], height=LETTER[1])
    p2.insert_text((50, 60), "Consolidated Statement of Operations", fontsize=12, fontname="hebo")
    p2.insert_text((50, 75), "(in thousands of US dollars, except per-share amounts)", fontsize=9)
    centred(p2, 385, 540, 100, "Year ended 31 December", 9, "hebo")
    p2.insert_text((322, 114), "Note", fontsize=9, fontname="hebo")
    right(p2, 450, 114, "2025", 9, "hebo")
    right(p2, 540, 114, "2024", 9, "hebo")
    paren = pymupdf.get_text_length(")", fontname="helv", fontsize=9)

    def amount(page, x1, yy, v, font="helv"):
        if v.startswith("$"):
            page.insert_text((x1 - 62, yy), "$", fontsize=9, fontname=font)
            v = v[2:]
        right(page, x1 + (paren if v.endswith(")") else 0), yy, v, 9, font)

    statement = [("Revenue", 0, "3", "$ 48,212", "$ 41,005"), ("Cost of sales", 0, "", "(21,430)", "(18,877)"),
                 ("Gross profit", 0, "", "26,782", "22,128"), ("Operating expenses", 0, "", "", ""),
                 ("Selling and marketing", 12, "", "(8,115)", "(7,420)"),
                 ("Research and development", 12, "4", "(6,480)", "(5,102)"),
                 ("General and administrative", 12, "", "(5,992)", "(5,310)"),
                 ("Impairment of goodwill", 12, "5", "(1,250)", "-"),
                 ("Operating income", 0, "", "4,945", "4,296"), ("Finance costs, net", 0, "6", "(712)", "(655)"),
                 ("Income before tax", 0, "", "4,233", "3,641"), ("Income tax expense", 0, "7", "(1,031)", "(902)"),
                 ("Net income", 0, "", "$ 3,202", "$ 2,739"), ("Earnings per share, basic", 0, "8", "$ 0.64",
                                                                  "$ 0.55")]
    for r, (label, indent, note, a, b) in enumerate(statement):
        yy = 132 + 15 * r
        font = "hebo" if label in ("Gross profit", "Operating income", "Net income") else "helv"
        p2.insert_text((50 + indent, yy), label, fontsize=9, fontname=font)
        if note:
            centred(p2, 322, 342, yy, note, 9)
        if a:
            amount(p2, 450, yy, a, font)
            amount(p2, 540, yy, b, font)
    p2.insert_text((50, 370), "The notes on pages 12 to 31 form part of these financial statements.", fontsize=9)
    # page 3: a dispatch note whose column headers are set on two lines, single-line ones at the foot
    p3 = doc.new_page(width=LETTER[0], height=LETTER[1])
    p3.insert_text((50, 60), "Dispatch note DN-50712", fontsize=13, fontname="hebo")
    p3.insert_text((50, 78), "Customer: Alder & Finch Ltd, Unit 4, Canal Wharf, Leeds", fontsize=10)
    p3.insert_text((50, 120), "Item", fontsize=9, fontname="hebo")
    p3.insert_text((50, 131), "code", fontsize=9, fontname="hebo")
    p3.insert_text((120, 131), "Description", fontsize=9, fontname="hebo")
    for x, (h1, h2) in zip((400, 470, 540), (("Quantity", "ordered"), ("Quantity", "shipped"), ("Back-", "ordered"))):
        right(p3, x, 120, h1, 9, "hebo")
        right(p3, x, 131, h2, 9, "hebo")
    lines = [("AF-2201", "Steel shelving unit, 5 tier", "12", "12", "0"),
             ("AF-2215", "Wall bracket, galvanised", "40", "32", "8"), ("AF-3020", "Cable tray 2 m", "25", "25", "0"),
             ("AF-3104", "Floor anchor set", "60", "45", "15"), ("AF-4410", "Label holder strip", "100", "100", "0")]
    for r, row in enumerate(lines):
        yy = 149 + 14 * r
        p3.insert_text((50, yy), row[0], fontsize=9)
        p3.insert_text((120, yy), row[1], fontsize=9)
        for x, v in zip((400, 470, 540), row[2:]):
            right(p3, x, yy, v, 9)
    p3.insert_text((120, 149 + 14 * 5), "Totals", fontsize=9, fontname="hebo")
    for x, v in zip((400, 470, 540), ("237", "214", "23")):
        right(p3, x, 149 + 14 * 5, v, 9, "hebo")
    p3.insert_text((50, 260), "Back-ordered items follow within ten working days.", fontsize=9)
    # page 4: a charges table in the right-hand column beside prose; a full-width summary below
    p4 = doc.new_page(width=LETTER[0], height=LETTER[1])
    p4.insert_text((50, 60), "Your business account: charges for March 2026", fontsize=13, fontname="hebo")
    y = paragraph(p4, 50, 90, 240, "How we charge. Charges are worked out over each monthly charging period and "
                  "taken from your account on the first working day of the next month. We tell you the amount at "
                  "least fourteen days before we take it, so that you can make sure there is enough money in the "
                  "account.", 9.5)
    paragraph(p4, 50, y, 240, "Cash paid in is charged per hundred pounds or part of it, whether you pay it in at "
              "a branch, at a post office or through a deposit machine. Electronic payments out include standing "
              "orders and direct debits.", 9.5)
    p4.insert_text((320, 90), "Service", fontsize=9.5, fontname="hebo")
    right(p4, 562, 90, "Charge", 9.5, "hebo")
    tariff = [("Monthly account fee", "£6.50"), ("Electronic payment out", "£0.20"), ("Cheque paid in", "£0.65"),
              ("Cash paid in, per £100", "£0.75"), ("Unpaid item", "£15.00"), ("Replacement card", "free")]
    for r, (service, fee) in enumerate(tariff):
        p4.insert_text((320, 108 + 15 * r), service, fontsize=9.5)
        right(p4, 562, 108 + 15 * r, fee, 9.5)
    p4.insert_text((50, 300), "Summary of charges", fontsize=11, fontname="hebo")
    p4.insert_text((50, 322), "Description", fontsize=9.5, fontname="hebo")
    right(p4, 562, 322, "Amount", 9.5, "hebo")
    summary = [("Account maintenance, March 2026", "£6.50"), ("Electronic payments out (182 at £0.20)", "£36.40"),
               ("Cheques paid in (2 at £0.65)", "£1.30"), ("Cash paid in (£600 at £0.75 per £100)", "£4.50")]
    for r, (what, amt) in enumerate(summary):
        p4.insert_text((50, 340 + 15 * r), what, fontsize=9.5)
        right(p4, 562, 340 + 15 * r, amt, 9.5)
    p4.insert_text((50, 340 + 15 * 4), "Total charges", fontsize=9.5, fontname="hebo")
    right(p4, 562, 340 + 15 * 4, "£48.70", 9.5, "hebo")
    # page 5: a fund factsheet, two tables side by side in the page's two columns
    p5 = doc.new_page(width=LETTER[0], height=LETTER[1])
    p5.insert_text((50, 60), "Meridian Global Equity Fund", fontsize=14, fontname="hebo")
    paragraph(p5, 50, 84, 512, "Factsheet at 31 March 2026. The fund invests in large and medium-sized companies "
              "worldwide and aims to beat the MSCI World index over any five-year period.", 9.5)
    p5.insert_text((50, 140), "Top ten holdings", fontsize=10.5, fontname="hebo")
    p5.insert_text((320, 140), "Sector allocation", fontsize=10.5, fontname="hebo")
    p5.insert_text((50, 158), "Holding", fontsize=9, fontname="hebo")
    right(p5, 280, 158, "Weight", 9, "hebo")
    p5.insert_text((320, 158), "Sector", fontsize=9, fontname="hebo")
    right(p5, 562, 158, "Weight", 9, "hebo")
    holdings = [("Arden Semiconductor", "5.8%"), ("Bellweather Software", "5.1%"), ("Calloway Health", "4.2%"),
                ("Dunmore Energy", "3.6%"), ("Eastgate Bank", "3.3%"), ("Fairholm Retail", "2.9%"),
                ("Glenrock Mining", "2.7%"), ("Hartley Insurance", "2.5%"), ("Ivybridge Telecom", "2.2%"),
                ("Juniper Logistics", "2.0%")]
    sectors = [("Information technology", "24.6%"), ("Financials", "16.2%"), ("Health care", "12.9%"),
               ("Industrials", "11.4%"), ("Consumer discretionary", "10.1%"), ("Energy", "6.8%"),
               ("Other", "18.0%")]
    for r, (name, w) in enumerate(holdings):
        p5.insert_text((50, 174 + 13 * r), name, fontsize=9)
        right(p5, 280, 174 + 13 * r, w, 9)
    for r, (name, w) in enumerate(sectors):
        p5.insert_text((320, 174 + 13 * r), name, fontsize=9)
        right(p5, 562, 174 + 13 * r, w, 9)
    p5.insert_text((50, 330), "Past performance is not a guide to future returns.", fontsize=9)
    # page 6: transactions with the date on a day's first entry only and the balance on its last
    p6 = doc.new_page(width=LETTER[0], height=LETTER[1])
    p6.insert_text((50, 60), "Your transactions", fontsize=13, fontname="hebo")
    p6.insert_text((50, 100), "Date", fontsize=9, fontname="hebo")
    p6.insert_text((110, 100), "Details", fontsize=9, fontname="hebo")
    for x, h in zip((420, 490, 560), ("Money out", "Money in", "Balance")):
        right(p6, x, 100, h, 9, "hebo")
    days = [("03 Apr", ["Balance brought forward"], "", "", "1,206.30"),
            ("04 Apr", ["Card payment", "Tesco Stores 2231"], "23.18", "", ""),
            ("", ["Card payment", "Shell Fuel Kendal"], "41.07", "", ""),
            ("", ["Transfer from savings"], "", "200.00", "1,342.05"),
            ("06 Apr", ["Direct debit", "Council tax"], "132.00", "", "1,210.05"),
            ("08 Apr", ["Cash withdrawal"], "60.00", "", ""),
            ("", ["Faster payment received", "A Patel, rent share"], "", "375.00", "1,525.05")]
    y = 118
    for date, desc, out, paid_in, bal in days:
        if date:
            p6.insert_text((50, y), date, fontsize=9)
        for k, line in enumerate(desc):
            p6.insert_text((110, y + 11 * k), line, fontsize=9)
        for x, v in zip((420, 490, 560), (out, paid_in, bal)):
            if v:
                right(p6, x, y, v, 9)
        y += 11 * len(desc) + 5
    p6.insert_text((50, y + 30), "Balances are shown at the end of each day.", fontsize=8)
    # page 7: an invoice whose item descriptions wrap (amounts on the first line), a VAT summary under it
    p7 = doc.new_page(width=LETTER[0], height=LETTER[1])
    p7.insert_text((50, 60), "Kestrel Print & Design Ltd", fontsize=14, fontname="hebo")
    p7.insert_text((50, 78), "12 Mill Yard, Kendal LA9 4QR  VAT reg. GB 284 7710 93", fontsize=9)
    p7.insert_text((380, 110), "Invoice no. KP-24077", fontsize=10, fontname="hebo")
    p7.insert_text((380, 124), "Invoice date 14 April 2026", fontsize=10)
    ix = (360, 440, 490, 560)
    p7.insert_text((50, 160), "Description", fontsize=9, fontname="hebo")
    for x, h in zip(ix, ("Qty", "Unit price", "VAT", "Amount")):
        right(p7, x, 160, h, 9, "hebo")
    goods = [(["Business cards, 400 gsm silk, double-sided,", "full colour, 85 x 55 mm"], "500", "0.09", "45.00"),
             (["Tri-fold leaflets, A4, 170 gsm gloss"], "2,000", "0.11", "220.00"),
             (["Design time: leaflet layout and", "two rounds of proof corrections"], "3.5", "40.00", "140.00"),
             (["Delivery, next working day"], "1", "12.50", "12.50")]
    y = 178
    for desc, qty, unit, amt in goods:
        for k, line in enumerate(desc):
            p7.insert_text((50, y + 11 * k), line, fontsize=9)
        for x, v in zip(ix, (qty, unit, "20%", amt)):
            right(p7, x, y, v, 9)
        y += 11 * len(desc) + 6
    for k, (label, v) in enumerate((("Subtotal", "417.50"), ("VAT at 20%", "83.50"), ("Total due (GBP)", "501.00"))):
        p7.insert_text((380, y + 14 + 14 * k), label, fontsize=9, fontname="hebo" if k == 2 else "helv")
        right(p7, 560, y + 14 + 14 * k, v, 9, "hebo" if k == 2 else "helv")
    p7.insert_text((50, y + 90), "Please pay within 14 days quoting the invoice number.", fontsize=9)
    # page 8: a payslip: payments and deductions side by side, rows level, each with its total
    p8 = doc.new_page(width=LETTER[0], height=LETTER[1])
    p8.insert_text((50, 60), "Payslip", fontsize=14, fontname="hebo")
    p8.insert_text((50, 78), "Employee: R. Lindqvist, employee no. 10442, pay date 28 April 2026", fontsize=9)
    p8.insert_text((50, 120), "Payments", fontsize=9, fontname="hebo")
    for x, h in zip((220, 275, 330), ("Units", "Rate", "Amount")):
        right(p8, x, 120, h, 9, "hebo")
    p8.insert_text((370, 120), "Deductions", fontsize=9, fontname="hebo")
    right(p8, 562, 120, "Amount", 9, "hebo")
    pay = [("Basic salary", "", "", "3,125.00"), ("Overtime 1.5x", "6.0", "27.04", "162.24"),
           ("Shift allowance", "", "", "85.00"), ("Bonus", "", "", "40.26"), ("Total payments", "", "", "3,412.50")]
    deduct = [("Income tax", "498.20"), ("National Insurance", "212.64"), ("Pension 5%", "156.25"),
              ("Student loan", "45.31"), ("Total deductions", "912.40")]
    for r, ((label, units, rate, amt), (dlabel, damt)) in enumerate(zip(pay, deduct)):
        yy = 138 + 14 * r + (6 if r == 4 else 0)
        font = "hebo" if r == 4 else "helv"
        p8.insert_text((50, yy), label, fontsize=9, fontname=font)
        for x, v in zip((220, 275, 330), (units, rate, amt)):
            if v:
                right(p8, x, yy, v, 9, font)
        p8.insert_text((370, yy), dlabel, fontsize=9, fontname=font)
        right(p8, 562, yy, damt, 9, font)
    p8.insert_text((370, 240), "Net pay", fontsize=10, fontname="hebo")
    right(p8, 562, 240, "2,500.10", 10, "hebo")
    # page 9: a balance sheet whose labels run on in dot leaders to the amounts
    p9 = doc.new_page(width=LETTER[0], height=LETTER[1])
    p9.insert_text((50, 60), "Statement of financial position at 31 December", fontsize=12, fontname="hebo")
    p9.insert_text((50, 75), "(in thousands of euros)", fontsize=9)
    right(p9, 450, 100, "2025", 9, "hebo")
    right(p9, 540, 100, "2024", 9, "hebo")
    position = [("Current assets", "", ""), ("Cash and cash equivalents", "1,842", "1,506"),
                ("Trade receivables", "2,317", "2,094"), ("Inventories", "1,128", "1,240"),
                ("Prepayments", "204", "187"), ("Total current assets", "5,491", "5,027")]
    for r, (label, a, b) in enumerate(position):
        yy = 118 + 15 * r
        font = "helv" if a and r < 5 else "hebo"
        if a:
            label += " "
            while pymupdf.get_text_length(label + ". ", fontname=font, fontsize=9) < 330:
                label += ". "
            right(p9, 450, yy, a, 9, font)
            right(p9, 540, yy, b, 9, font)
        p9.insert_text((50, yy), label.rstrip(), fontsize=9, fontname=font)
    p9.insert_text((50, 230), "The accompanying notes are an integral part of this statement.", fontsize=9)
    # page 10: a proposal's budget as a word processor sets it: the other cells centred
    # vertically beside a work package's wrapped name
    p10 = doc.new_page(width=LETTER[0], height=LETTER[1])
    p10.insert_text((50, 60), "4.2 Budget by work package", fontsize=11, fontname="hebo")
    paragraph(p10, 50, 80, 510, "The consortium requests the following budget; months count from the start "
              "of the project.", 9.5)
    bx = (270, 390, 470, 560)
    p10.insert_text((50, 124), "Work package", fontsize=9, fontname="hebo")
    p10.insert_text((bx[0], 124), "Lead", fontsize=9, fontname="hebo")
    for x, h in zip(bx[1:], ("Months", "Person-months", "Cost (EUR)")):
        right(p10, x, 124, h, 9, "hebo")
    packages = [(["WP1 Requirements and", "stakeholder interviews"], "Univ. Tartu", "1-3", "6", "48,000"),
                (["WP2 Prototype"], "Medisoft", "4-9", "24", "192,000"),
                (["WP3 Field trials in three", "partner hospitals"], "Univ. Tartu", "10-18", "45", "360,000"),
                (["WP4 Evaluation, reporting", "and dissemination of", "results"], "Medisoft", "16-24", "12",
                 "96,000"),
                (["Total"], "", "", "87", "696,000")]
    y = 142
    for name, lead, months, pm, cost in packages:
        font = "hebo" if name == ["Total"] else "helv"
        mid = y + 11 * (len(name) - 1) / 2
        for k, line in enumerate(name):
            p10.insert_text((50, y + 11 * k), line, fontsize=9, fontname=font)
        if lead:
            p10.insert_text((bx[0], mid), lead, fontsize=9)
        for x, v in zip(bx[1:], (months, pm, cost)):
            if v:
                right(p10, x, mid, v, 9, font)
        y += 11 * len(name) + 9
    # page 11: a statement whose entries give their amounts on their last line
    p11 = doc.new_page(width=LETTER[0], height=LETTER[1])
    p11.insert_text((50, 60), "Account statement 4/2026", fontsize=13, fontname="hebo")
    p11.insert_text((50, 76), "IBAN DE44 5001 0517 5407 3249 31", fontsize=9)
    p11.insert_text((50, 110), "Date", fontsize=9, fontname="hebo")
    p11.insert_text((110, 110), "Transaction details", fontsize=9, fontname="hebo")
    right(p11, 480, 110, "Amount EUR", 9, "hebo")
    right(p11, 560, 110, "Balance EUR", 9, "hebo")
    bookings = [("01.04.", ["SEPA Direct Debit", "Stadtwerke Muenchen GmbH", "Mandate ID SWM-22871"], "-84.00",
                 "1,916.00"),
                ("03.04.", ["Card Payment", "REWE Markt 4411"], "-23.40", "1,892.60"),
                ("05.04.", ["Credit Transfer", "Lohn April"], "2,410.00", "4,302.60"),
                ("07.04.", ["Standing Order", "Hausverwaltung Becker", "Miete April"], "-1,150.00", "3,152.60")]
    y = 128
    for date, desc, amt, bal in bookings:
        p11.insert_text((50, y), date, fontsize=9)
        for k, line in enumerate(desc):
            p11.insert_text((110, y + 11 * k), line, fontsize=9)
        right(p11, 480, y + 11 * (len(desc) - 1), amt, 9)
        right(p11, 560, y + 11 * (len(desc) - 1), bal, 9)
        y += 11 * len(desc) + 6
    # page 12: a risk register whose middle column holds a few lines of running text per row
    p12 = doc.new_page(width=LETTER[0], height=LETTER[1])
    p12.insert_text((50, 60), "Project risk register", fontsize=12, fontname="hebo")
    for x, h in zip((50, 90, 190, 440, 500), ("ID", "Risk", "Mitigation", "Likelihood", "Impact")):
        p12.insert_text((x, 90), h, fontsize=9, fontname="hebo")
    risks = [("R1", "Key supplier fails",
              "Qualify a second supplier for the housing and keep six weeks of stock at the plant in Leeds", "Low",
              "High"),
             ("R2", "Staff turnover",
              "Pair each specialist with a deputy and document the build procedure in the quality system", "Medium",
              "Medium"),
             ("R3", "Late certification",
              "Book the test house early and run a pre-compliance test on the second prototype", "Medium", "High")]
    y = 108
    for rid, risk, mitigation, likelihood, impact in risks:
        lines = wrap(mitigation, 230, 9)
        for x, v in zip((50, 90, 440, 500), (rid, risk, likelihood, impact)):
            p12.insert_text((x, y), v, fontsize=9)
        for k, line in enumerate(lines):
            p12.insert_text((190, y + 11 * k), line, fontsize=9)
        y += 11 * len(lines) + 7
    # page 13: a management report: group headings over pairs of columns, a short rule under each
    p13 = doc.new_page(width=LETTER[0], height=LETTER[1])
    p13.insert_text((50, 60), "Budget against actual, by department", fontsize=12, fontname="hebo")
    p13.insert_text((50, 74), "(in thousands of euros)", fontsize=9)
    centred(p13, 250, 390, 100, "Budget", 9, "hebo")
    centred(p13, 420, 560, 100, "Actual", 9, "hebo")
    hline(p13, 250, 390, 104, 0.4)
    hline(p13, 420, 560, 104, 0.4)
    p13.insert_text((50, 116), "Department", fontsize=9, fontname="hebo")
    for x, h in zip((310, 390, 480, 560), ("H1", "H2", "H1", "H2")):
        right(p13, x, 116, h, 9, "hebo")
    spend = [("Finance", "410", "420", "398", "431"), ("Human resources", "220", "215", "231", "209"),
             ("IT services", "1,050", "1,120", "1,187", "1,096"), ("Facilities", "640", "655", "602", "671"),
             ("Total", "2,320", "2,410", "2,418", "2,407")]
    for r, row in enumerate(spend):
        yy = 134 + 15 * r + (4 if r == 4 else 0)
        font = "hebo" if r == 4 else "helv"
        p13.insert_text((50, yy), row[0], fontsize=9, fontname=font)
        for x, v in zip((310, 390, 480, 560), row[1:]):
            right(p13, x, yy, v, 9, font)
    checks = [
        cell(1, "Severn Water", 0, 2, "Paid out"),
        cell(1, "Severn Water", 0, 4, "Balance"),
        cell(1, "Severn Water", 1, 1, "Balance brought forward"),
        cell(1, "Severn Water", 2, 1, "Direct debit Severn Water Ltd Ref. SW-440918"),
        cell(1, "Severn Water", 2, 2, "46.80"),
        cell(1, "Severn Water", 2, 4, "2,757.36"),
        cell(1, "Severn Water", 3, 1, "Faster payment received From: J Okafor Ref. Invoice 1187"),
        cell(1, "Severn Water", 3, 3, "1,250.00"),
        cell(1, "Severn Water", 4, 0, "09 Mar"),
        cell(1, "Severn Water", 4, 1, "Card payment Fenwick Office Supplies, Leeds"),
        cell(1, "Severn Water", 6, 3, "0.84"),
        cell(1, "Severn Water", 7, 4, "2,925.75"),
        cell(1, "Severn Water", 8, 2, "1,129.25"),
        once(1, "Ref. SW-440918"),
        order(1, "Account 20-44-91", "Balance brought forward"),
        cell(2, "Gross profit", 0, 1, "Note"),
        cell(2, "Gross profit", 0, 2, "2025"),
        cell(2, "Gross profit", 0, 3, "2024"),
        cell(2, "Gross profit", 1, 2, "$48,212"),
        cell(2, "Gross profit", 2, 2, "(21,430)"),
        cell(2, "Gross profit", 4, 0, "Operating expenses"),
        cell(2, "Gross profit", 5, 0, "Selling and marketing"),
        cell(2, "Gross profit", 5, 3, "(7,420)"),
        cell(2, "Gross profit", 8, 1, "5"),
        cell(2, "Gross profit", 8, 2, "(1,250)"),
        cell(2, "Gross profit", 8, 3, "-"),
        cell(2, "Gross profit", 12, 1, "7"),
        cell(2, "Gross profit", 13, 2, "$3,202"),
        cell(2, "Gross profit", 14, 3, "$0.55"),
        cell(3, "Wall bracket", 0, 0, "Item code"),
        cell(3, "Wall bracket", 0, 1, "Description"),
        cell(3, "Wall bracket", 0, 2, "Quantity ordered"),
        cell(3, "Wall bracket", 0, 4, "Back-ordered"),
        cell(3, "Wall bracket", 2, 1, "Wall bracket, galvanised"),
        cell(3, "Wall bracket", 4, 4, "15"),
        cell(3, "Wall bracket", 6, 2, "237"),
        cell(4, "Unpaid item", 0, 0, "Service"),
        cell(4, "Unpaid item", 1, 0, "Monthly account fee"),
        cell(4, "Unpaid item", 4, 1, "£0.75"),
        cell(4, "Unpaid item", 6, 1, "free"),
        once(4, "Monthly account fee"),
        order(4, "How we charge.", "Monthly account fee"),
        cell(4, "Cheques paid in", 0, 1, "Amount"),
        cell(4, "Cheques paid in", 2, 0, "Electronic payments out (182 at £0.20)"),
        cell(4, "Cheques paid in", 2, 1, "£36.40"),
        cell(4, "Cheques paid in", 5, 1, "£48.70"),
        cell(5, "Bellweather", 0, 0, "Holding"),
        cell(5, "Bellweather", 2, 0, "Bellweather Software"),
        cell(5, "Bellweather", 2, 1, "5.1%"),
        cell(5, "Bellweather", 10, 1, "2.0%"),
        cell(5, "Financials", 0, 0, "Sector"),
        cell(5, "Financials", 2, 1, "16.2%"),
        cell(5, "Financials", 7, 0, "Other"),
        cell(5, "Financials", 7, 1, "18.0%"),
        order(5, "Juniper Logistics", "Information technology"),
        order(5, "Other", "Past performance is not a guide"),
        cell(6, "Shell Fuel", 0, 1, "Details"),
        cell(6, "Shell Fuel", 2, 0, "04 Apr"),
        cell(6, "Shell Fuel", 2, 1, "Card payment Tesco Stores 2231"),
        cell(6, "Shell Fuel", 3, 1, "Card payment Shell Fuel Kendal"),
        cell(6, "Shell Fuel", 3, 2, "41.07"),
        cell(6, "Shell Fuel", 4, 1, "Transfer from savings"),
        cell(6, "Shell Fuel", 4, 3, "200.00"),
        cell(6, "Shell Fuel", 4, 4, "1,342.05"),
        cell(6, "Shell Fuel", 5, 0, "06 Apr"),
        cell(6, "Shell Fuel", 6, 2, "60.00"),
        cell(6, "Shell Fuel", 7, 1, "Faster payment received A Patel, rent share"),
        cell(6, "Shell Fuel", 7, 4, "1,525.05"),
        cell(7, "Tri-fold", 0, 2, "Unit price"),
        cell(7, "Tri-fold", 1, 0, "Business cards, 400 gsm silk, double-sided, full colour, 85 x 55 mm"),
        cell(7, "Tri-fold", 1, 4, "45.00"),
        cell(7, "Tri-fold", 2, 1, "2,000"),
        cell(7, "Tri-fold", 3, 0, "Design time: leaflet layout and two rounds of proof corrections"),
        cell(7, "Tri-fold", 3, 1, "3.5"),
        cell(7, "Tri-fold", 4, 2, "12.50"),
        cell(7, "Tri-fold", 4, 3, "20%"),
        present(7, "KP-24077"),
        present(7, "501.00"),
        order(7, "Delivery, next working day", "Total due (GBP)"),
        cell(8, "Overtime", 0, 0, "Payments"),
        cell(8, "Overtime", 0, 3, "Amount"),
        cell(8, "Overtime", 2, 1, "6.0"),
        cell(8, "Overtime", 2, 3, "162.24"),
        cell(8, "Overtime", 5, 0, "Total payments"),
        cell(8, "Overtime", 5, 3, "3,412.50"),
        cell(8, "National Insurance", 0, 0, "Deductions"),
        cell(8, "National Insurance", 2, 1, "212.64"),
        cell(8, "National Insurance", 5, 0, "Total deductions"),
        cell(8, "National Insurance", 5, 1, "912.40"),
        order(8, "Total payments", "Income tax"),
        present(8, "2,500.10"),
        cell(9, "Trade receivables", 0, 1, "2025"),
        cell(9, "Trade receivables", 0, 2, "2024"),
        cell(9, "Trade receivables", 1, 0, "Current assets"),
        cell(9, "Trade receivables", 2, 1, "1,842"),
        cell(9, "Trade receivables", 3, 0, "Trade receivables"),
        cell(9, "Trade receivables", 3, 2, "2,094"),
        cell(9, "Trade receivables", 6, 0, "Total current assets"),
        cell(9, "Trade receivables", 6, 1, "5,491"),
        once(9, "Inventories"),
        cell(10, "WP2 Prototype", 0, 4, "Cost (EUR)"),
        cell(10, "WP2 Prototype", 1, 0, "WP1 Requirements and stakeholder interviews"),
        cell(10, "WP2 Prototype", 1, 1, "Univ. Tartu"),
        cell(10, "WP2 Prototype", 1, 4, "48,000"),
        cell(10, "WP2 Prototype", 2, 0, "WP2 Prototype"),
        cell(10, "WP2 Prototype", 2, 3, "24"),
        cell(10, "WP2 Prototype", 3, 0, "WP3 Field trials in three partner hospitals"),
        cell(10, "WP2 Prototype", 3, 2, "10-18"),
        cell(10, "WP2 Prototype", 4, 0, "WP4 Evaluation, reporting and dissemination of results"),
        cell(10, "WP2 Prototype", 4, 4, "96,000"),
        cell(10, "WP2 Prototype", 5, 4, "696,000"),
        once(10, "partner hospitals"),
        cell(11, "Stadtwerke", 0, 2, "Amount EUR"),
        cell(11, "Stadtwerke", 1, 0, "01.04."),
        cell(11, "Stadtwerke", 1, 1, "SEPA Direct Debit Stadtwerke Muenchen GmbH Mandate ID SWM-22871"),
        cell(11, "Stadtwerke", 1, 2, "-84.00"),
        cell(11, "Stadtwerke", 2, 1, "Card Payment REWE Markt 4411"),
        cell(11, "Stadtwerke", 2, 3, "1,892.60"),
        cell(11, "Stadtwerke", 3, 0, "05.04."),
        cell(11, "Stadtwerke", 3, 2, "2,410.00"),
        cell(11, "Stadtwerke", 4, 1, "Standing Order Hausverwaltung Becker Miete April"),
        cell(11, "Stadtwerke", 4, 3, "3,152.60"),
        cell(12, "Staff turnover", 0, 2, "Mitigation"),
        cell(12, "Staff turnover", 1, 2, "Qualify a second supplier for the housing and keep six weeks of stock at "
             "the plant in Leeds"),
        cell(12, "Staff turnover", 2, 3, "Medium"),
        cell(12, "Staff turnover", 3, 1, "Late certification"),
        cell(12, "Staff turnover", 3, 4, "High"),
        once(12, "the quality system"),
        cell(13, "Human resources", 0, 0, "Department"),
        cell(13, "Human resources", 0, 1, "Budget H1"),
        cell(13, "Human resources", 0, 2, "Budget H2"),
        cell(13, "Human resources", 0, 3, "Actual H1"),
        cell(13, "Human resources", 0, 4, "Actual H2"),
        cell(13, "Human resources", 2, 0, "Human resources"),
        cell(13, "Human resources", 3, 3, "1,187"),
        cell(13, "Human resources", 5, 4, "2,407"),
    ]
    return doc, checks


# --------------------------------------------------------------- furniture


FOOTNOTES = ["gauge data come from the national archive.", "two stations were moved in 2019.",
             "winter readings are estimated.", "see the appendix for the full series."]


def running_headers():
    doc = pymupdf.open()
    starts = ["Groundwater recharge", "Sediment transport", "Flood frequency"]
    for n in range(3):
        p = doc.new_page(width=LETTER[0], height=LETTER[1])
        p.insert_text((50, 40), "Journal of Applied Hydrology | Volume 8 | Issue 3", fontsize=8)
        right(p, 562, 40, "March 2026", 8)
        hline(p, 50, 562, 46, 0.4)
        y = 80
        for k in range(5):
            lead = f"{starts[n]} section. " if k == 0 else ""
            y = paragraph(p, 50, y, 512, lead + sentence_text(n * 10 + k, 60), 10)
        centred(p, 50, 562, 760, f"Page {n + 1} of 3", 8)
    checks = []
    for n in range(3):
        checks += [
            absent(n + 1, "Journal of Applied Hydrology"),
            absent(n + 1, f"Page {n + 1} of 3"),
            present(n + 1, f"{starts[n]} section."),
        ]
    book = pymupdf.open()
    for n in range(4):
        p = book.new_page(width=LETTER[0], height=LETTER[1])
        number = 40 + n
        if n % 2 == 0:
            p.insert_text((50, 42), f"{number}   Water Balance Models", fontsize=10)
        else:
            right(p, 562, 42, f"Chapter 3. Catchment Storage   {number}", 10)
        y = 80
        for k in range(4):
            lead = f"Part {n + 1} opens here. " if k == 0 else ""
            y = paragraph(p, 50, y, 512, lead + sentence_text(50 + n * 5 + k, 70), 10)
        hline(p, 50, 150, 712, 0.4)
        p.insert_text((50, 726), f"{n + 1} Note {n + 1}: " + FOOTNOTES[n], fontsize=8)
        centred(p, 50, 562, 765, "www.hydrology.example.org", 8)
    book_checks = []
    for n in range(4):
        head = "Water Balance Models" if n % 2 == 0 else "Chapter 3. Catchment Storage"
        book_checks += [
            absent(n + 1, head),
            absent(n + 1, "www.hydrology.example.org"),
            present(n + 1, f"Note {n + 1}: " + FOOTNOTES[n]),
            present(n + 1, f"Part {n + 1} opens here."),
        ]
    # one page: header and footer told apart by position and size alone
    single = pymupdf.open()
    p = single.new_page(width=LETTER[0], height=LETTER[1])
    p.insert_text((50, 30), "CONFIDENTIAL - Internal use only", fontsize=7)
    p.insert_text((50, 80), "Quarterly Maintenance Summary", fontsize=16, fontname="hebo")
    y = 110
    for k in range(4):
        y = paragraph(p, 50, y, 512, sentence_text(40 + k, 50), 10)
    p.insert_text((50, 770), "(c) 2026 Acme Utilities. All rights reserved.", fontsize=7)
    right(p, 562, 770, "7", 7)
    single_checks = [
        absent(1, "CONFIDENTIAL - Internal use only"),
        absent(1, "All rights reserved"),
        present(1, "Quarterly Maintenance Summary"),
    ]
    return [(doc, checks, "running_headers.pdf"), (book, book_checks, "running_headers_book.pdf"),
            (single, single_checks, "single_page_furniture.pdf")]


def margin_text():
    doc = pymupdf.open()
    p = doc.new_page(width=LETTER[0], height=LETTER[1])
    p.insert_text((30, 700), "Downloaded from https://journals.example.org/ by guest on 14 March 2026 at 6:51",
                  fontsize=8, rotate=90)
    p.insert_text((590, 420), "arXiv:2603.01234v1 [physics.flu-dyn] 14 Mar 2026", fontsize=9, rotate=90)
    centred(p, 70, 560, 80, "Turbulent Mixing in Shallow Estuaries", 18, "hebo")
    centred(p, 70, 560, 102, "A. Ramirez and K. Osei", 11)
    p.insert_text((70, 140), "Abstract", fontsize=11, fontname="hebo")
    y = paragraph(p, 70, 158, 490, sentence_text(77, 70), 10)
    p.insert_text((70, y + 10), "1 Introduction", fontsize=11, fontname="hebo")
    paragraph(p, 70, y + 28, 490, sentence_text(78, 90), 10)
    p2 = doc.new_page(width=LETTER[0], height=LETTER[1])
    p2.insert_text((596, 500), "DRAFT - not for distribution", fontsize=10, rotate=90)
    lines = wrap("Our survey of twelve estuaries shows that mixing is strongest on spring tides and weakest "
                 "during neap tides, when the salt wedge reaches furthest upstream. " + sentence_text(79, 80), 480, 10)
    for k, line in enumerate(lines):
        y = 80 + 14 * k
        right(p2, 52, y, str(k + 1), 8)
        p2.insert_text((70, y), line, fontsize=10)
    first, second = lines[0].split()[-2:], lines[1].split()[:2]
    checks = [
        absent(2, "DRAFT - not for distribution"),
        present(2, " ".join(first + second)),
        present(2, " ".join(lines[2].split()[-2:] + lines[3].split()[:2])),
        absent(1, "Downloaded from"),
        absent(1, "arXiv:2603.01234v1"),
        order(1, "Turbulent Mixing in Shallow Estuaries", "A. Ramirez"),
        order(1, "A. Ramirez", "Abstract"),
        order(1, "Abstract", "1 Introduction"),
    ]
    return doc, checks


# --------------------------------------------------- text layers not to trust


def vector_glyphs(text: str, size: float) -> pymupdf.Document:
    """A one-page PDF holding ``text`` drawn as vector outlines, not as text."""
    src = pymupdf.open()
    page = src.new_page(width=520, height=size * 1.6)
    page.insert_text((4, size * 1.2), text, fontsize=size, fontname="hebo")
    svg = page.get_svg_image(text_as_path=True)
    return pymupdf.open(stream=pymupdf.open("svg", svg.encode()).convert_to_pdf(), filetype="pdf")


def graphics_titles():
    doc = pymupdf.open()
    p = doc.new_page(width=LETTER[0], height=LETTER[1])
    p.show_pdf_page(pymupdf.Rect(50, 40, 570, 40 + 22 * 1.6), vector_glyphs("Annual Safety Review 2026", 22), 0)
    y = 110
    for k in range(5):
        y = paragraph(p, 50, y, 512, sentence_text(90 + k, 55), 10)
    # a page with a small vector logo and real text: to be read as text
    p2 = doc.new_page(width=LETTER[0], height=LETTER[1])
    p2.draw_circle((70, 60), 14, fill=(0.1, 0.3, 0.7))
    p2.draw_rect(pymupdf.Rect(90, 48, 130, 72), fill=(0.8, 0.2, 0.2))
    p2.insert_text((150, 66), "Harbour Board Newsletter", fontsize=16, fontname="hebo")
    y = 110
    for k in range(4):
        y = paragraph(p2, 50, y, 512, sentence_text(95 + k, 55), 10)
    p3 = doc.new_page(width=LETTER[0], height=LETTER[1])
    p3.insert_text((50, 60), "Figure 4. Monthly inflow and storage", fontsize=12, fontname="hebo")
    for k, h in enumerate([120, 90, 150, 60, 200, 170, 110, 80]):
        p3.draw_rect(pymupdf.Rect(70 + 30 * k, 330 - h, 90 + 30 * k, 330), fill=(0.2, 0.4, 0.8))
        p3.insert_text((72 + 30 * k, 344), ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug"][k], fontsize=8)
    rng = random.Random(5)
    for _ in range(60):
        p3.draw_circle((340 + rng.random() * 200, 150 + rng.random() * 170), 2.5, fill=(0.8, 0.2, 0.2))
    p3.draw_line((330, 330), (550, 330))
    p3.draw_line((330, 330), (330, 140))
    p3.insert_text((400, 350), "Storage against inflow", fontsize=8)
    paragraph(p3, 50, 400, 500, "Storage follows inflow with a lag of about one month. " + sentence_text(99, 40), 10)
    checks = [
        trusted(3),
        present(3, "Storage follows inflow with a lag of about one month."),
        model(1),
        trusted(2),
        present(2, "Harbour Board Newsletter"),
    ]
    return doc, checks


def _png(im: Image.Image) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def scribbles(width: int, height: int, seed: int) -> bytes:
    """A grey 'handwritten' page: lines of cursive-like strokes, no real letters."""
    rng = random.Random(seed)
    im = Image.new("L", (width, height), 255)
    d = ImageDraw.Draw(im)
    for row in range(12):
        y = 60 + row * 40
        x = 40
        while x < width - 80:
            pts = []
            for _ in range(rng.randint(5, 12)):
                pts.append((x, y + rng.randint(-9, 9)))
                x += rng.randint(3, 7)
            d.line(pts, fill=30, width=2)
            x += rng.randint(8, 18)
    return _png(im)


def photo(width: int, height: int, seed: int) -> bytes:
    """A photo-like picture: sky, water and a few dark shapes, mid-tones everywhere."""
    rng = random.Random(seed)
    im = Image.new("RGB", (width, height))
    d = ImageDraw.Draw(im)
    for y in range(height):
        t = y / height
        d.line([(0, y), (width, y)], fill=(int(90 + 80 * t), int(130 + 40 * t), int(200 - 90 * t)))
    for _ in range(25):
        x, y = rng.randint(0, width), rng.randint(height // 2, height)
        d.ellipse([x, y, x + rng.randint(20, 90), y + rng.randint(10, 40)], fill=(rng.randint(30, 90),) * 3)
    buf = io.BytesIO()
    im.save(buf, format="JPEG", quality=80)
    return buf.getvalue()


def printed_scan(lines: list[str], size: float = 12) -> tuple[bytes, list[tuple[float, str]]]:
    """A 100 dpi greyscale 'scan' of ``lines`` on a letter page, and each line's baseline."""
    src = pymupdf.open()
    page = src.new_page(width=LETTER[0], height=LETTER[1])
    baselines = []
    for k, line in enumerate(lines):
        y = 90 + k * size * 1.6
        page.insert_text((60, y), line, fontsize=size, fontname="tiro")
        baselines.append((y, line))
    pix = page.get_pixmap(dpi=100, colorspace=pymupdf.csGRAY)
    return pix.tobytes("png"), baselines


SCAN_LINES = [
    "Minutes of the harbour committee meeting",
    "held on the third of February in the town hall.",
    "Present were the chair, the treasurer and five members.",
    "The committee agreed to repair the north jetty before",
    "the summer season and to ask the council for a grant.",
    "The treasurer reported a balance of four thousand pounds.",
]
CODE = """<?xml version="1.0"?>
<mime-info xmlns='http://www.freedesktop.org/standards/shared-mime-info'>
  <mime-type type="text/x-diff">
    <comment xml:lang="af">verskille tussen l\u00eaers</comment>
    <magic priority="50"><match type="string" offset="0" value="diff\\t"/></magic>
    <glob pattern="*.diff"/> <glob pattern="*.patch"/>
  </mime-type>
</mime-info>
int asn1_create_element(asn1_node definitions, const char *source_name, asn1_node *element);
if (result != ASN1_SUCCESS) { fprintf(stderr, "%s: %d\\n", __func__, result); return -1; }
x[i] = (a[i] * 0x1F) >> 3; // mask: 0xFF, 0b1010"""
GIBBERISH = "l1,; ~rn.u ;:'Il |i1.. ,.~ nrn1 ;lI: '.,i tl| ~;,1 uu.: I;l' rn~, .1|; lI;i ,:~' nn1. |l;,"


def bad_ocr():
    doc = pymupdf.open()
    full = pymupdf.Rect(0, 0, *LETTER)
    # 1: a handwritten page whose invisible text layer came from a bad OCR run
    p = doc.new_page(width=LETTER[0], height=LETTER[1])
    p.insert_image(full, stream=scribbles(850, 1100, 1))
    tokens = GIBBERISH.split()
    for row in range(12):
        y = (60 + row * 40) * 72 / 100 + 4
        p.insert_text((30, y), " ".join(tokens[row % 5: row % 5 + 8]), fontsize=9, render_mode=3)
    # 2: a scan with a good invisible OCR layer over its own lines: to be read as text
    png, baselines = printed_scan(SCAN_LINES)
    p2 = doc.new_page(width=LETTER[0], height=LETTER[1])
    p2.insert_image(full, stream=png)
    for y, line in baselines:
        p2.insert_text((60, y), line, fontsize=12, fontname="tiro", render_mode=3)
    # 3: a scan whose invisible layer sits where the page is blank: it disagrees with the page
    p3 = doc.new_page(width=LETTER[0], height=LETTER[1])
    p3.insert_image(full, stream=png)
    for y, line in baselines:
        p3.insert_text((60, y + 420), line, fontsize=12, fontname="tiro", render_mode=3)
    p4 = doc.new_page(width=LETTER[0], height=LETTER[1])
    p4.insert_image(full, stream=png)
    for y, line in baselines:
        slipped = line.replace("the ", "tbe ", 1).replace("o", "0", 1) if len(line) % 2 else line.replace("m", "rn", 1)
        p4.insert_text((60, y), slipped, fontsize=12, fontname="tiro", render_mode=3)
    # 5: born-digital code and markup: odd tokens, but the author's own text: read as text
    p5 = doc.new_page(width=LETTER[0], height=LETTER[1])
    p5.insert_text((50, 60), "Listing 2. The type definition", fontsize=12, fontname="hebo")
    for k, line in enumerate(CODE.splitlines()):
        p5.insert_text((50, 90 + 13 * k), line, fontsize=9.5, fontname="cour")
    checks = [
        trusted(5),
        present(5, 'offset="0" value="diff\\t"/>'),
        trusted(4),
        present(4, "five members"),
        model(1),
        absent(1, "rn.u"),
        trusted(2),
        present(2, "Minutes of the harbour committee meeting"),
        model(3),
    ]
    return doc, checks


def text_coverage():
    doc = pymupdf.open()
    p = doc.new_page(width=LETTER[0], height=LETTER[1])
    p.insert_text((72, 100), "Hello, world!", fontsize=12)
    png, _ = printed_scan(SCAN_LINES)
    p2 = doc.new_page(width=LETTER[0], height=LETTER[1])
    p2.insert_image(pymupdf.Rect(0, 0, *LETTER), stream=png)
    p2.insert_text((290, 770), "Page 1", fontsize=9)
    p3 = doc.new_page(width=LETTER[0], height=LETTER[1])
    p3.insert_text((72, 100), "Page 1", fontsize=12)
    p4 = doc.new_page(width=LETTER[0], height=LETTER[1])
    p4.insert_text((50, 60), "Site visit: the new weir", fontsize=14, fontname="hebo")
    p4.insert_image(pymupdf.Rect(50, 80, 562, 460), stream=photo(640, 480, 3))
    paragraph(p4, 50, 490, 512, "The weir was finished in April. " + sentence_text(120, 50), 10)
    checks = [
        trusted(4),
        present(4, "The weir was finished in April."),
        trusted(1),
        present(1, "Hello, world!"),
        model(2),
        trusted(3),
    ]
    return doc, checks


SET = [
    ("two_columns", two_columns, "two_columns.pdf"),
    ("three_columns", three_columns, "three_columns.pdf"),
    ("header_rows", header_tables, "header_rows.pdf"),
    ("multiline_cells", multiline_cells, "multiline_cells.pdf"),
    ("currency", currency, "currency.pdf"),
    ("unruled_tables", unruled_tables, "unruled_tables.pdf"),
    ("unruled_tables", unruled_statements, "unruled_statements.pdf"),
    ("running_headers", running_headers, None),
    ("margin_text", margin_text, "margin_text.pdf"),
    ("graphics_titles", graphics_titles, "graphics_titles.pdf"),
    ("bad_ocr_layer", bad_ocr, "bad_ocr_layer.pdf"),
    ("text_coverage", text_coverage, "text_coverage.pdf"),
]


def build(out: Path = HERE) -> list[dict]:
    labels = []
    for category, make, name in SET:
        made = make()
        docs = made if isinstance(made, list) else [(*made, name)]
        for doc, checks, filename in docs:
            doc.set_metadata({"producer": "docproc tests", "creator": "generate.py"})
            (out / filename).write_bytes(doc.tobytes(garbage=4, deflate=True, no_new_id=True))
            labels.append({"file": filename, "category": category, "checks": checks})
    (out / "labels.json").write_text(json.dumps(labels, indent=1) + "\n")
    return labels


if __name__ == "__main__":
    for entry in build():
        print(f"{entry['category']:16} {entry['file']:28} {len(entry['checks'])} checks")
