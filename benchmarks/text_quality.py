"""Born-digital text quality: docproc's text engine vs plain PyMuPDF vs pymupdf4llm.

    python benchmarks/text_quality.py [--data tests/data/born_digital] [--systems docproc,pymupdf,pymupdf4llm]

Scores every system on the labelled set in ``tests/data/born_digital`` (built by
its ``generate.py``; the checks are described there) and prints the pass rate
per category side by side, then docproc's speed per page (the routing decision
plus the text engine) over the set and the invoices in ``samples/``.

Each system runs in its own subprocess, so that ``import pymupdf.layout`` (which
pymupdf4llm's layout mode needs, and which changes PyMuPDF's defaults) cannot
touch the others:

- ``pymupdf``: ``page.get_text()`` for the text, ``page.find_tables()`` for tables;
- ``pymupdf4llm``: ``pymupdf4llm.to_markdown(doc, page_chunks=True, header=False,
  footer=False)`` in layout mode (``import pymupdf.layout`` first); its tables are
  read back from the Markdown;
- ``docproc``: :func:`workers.text_routing.text_layer_issue` decides whether the page
  goes to the model; if not, :func:`workers.engines.text.read_page` reads it.

A baseline has no routing of its own: a page counts as "sent to a model" for it
when it gives no text at all.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "tests" / "data" / "born_digital"
SYSTEMS = ("docproc", "pymupdf4llm", "pymupdf")
SPEED_EXTRA = [ROOT / "samples" / "invoice.pdf"]


# ------------------------------------------------------------------ readers


def read_docproc(path: Path) -> list[dict]:
    sys.path.insert(0, str(ROOT))
    import pymupdf

    from workers.engines.text import read_page
    from workers.text_routing import text_layer_issue

    pages = []
    doc = pymupdf.open(path)
    for page in doc:
        start = time.perf_counter()
        issue = text_layer_issue(page)
        read = None if issue else read_page(page)
        ms = (time.perf_counter() - start) * 1000
        pages.append({
            "text": read.text if read else "",
            "tables": [t.rows for t in read.tables] if read else [],
            "model": issue is not None,
            "ms": ms,
        })
    return pages


def read_pymupdf(path: Path) -> list[dict]:
    import pymupdf

    pages = []
    for page in pymupdf.open(path):
        start = time.perf_counter()
        text = page.get_text()
        tables = [t.extract() for t in page.find_tables().tables]
        pages.append({"text": text, "tables": tables, "model": not text.strip(),
                      "ms": (time.perf_counter() - start) * 1000})
    return pages


def markdown_tables(md: str) -> list[list[list[str]]]:
    """The pipe tables of a Markdown text, as rows of cells (separator rows dropped)."""
    tables, current = [], []
    for line in md.splitlines() + [""]:
        s = line.strip()
        if s.startswith("|") and s.endswith("|") and len(s) > 1:
            cells = [c.strip() for c in re.split(r"(?<!\\)\|", s[1:-1])]
            if not all(re.fullmatch(r":?-{2,}:?", c) for c in cells if c):
                current.append(cells)
            elif not any(cells):
                current.append(cells)
        elif current:
            tables.append(current)
            current = []
    return tables


def read_pymupdf4llm(path: Path) -> list[dict]:
    import pymupdf
    import pymupdf.layout  # noqa: F401 - layout mode
    import pymupdf4llm

    doc = pymupdf.open(path)
    start = time.perf_counter()
    chunks = pymupdf4llm.to_markdown(doc, page_chunks=True, header=False, footer=False, show_progress=False)
    ms = (time.perf_counter() - start) * 1000 / max(len(chunks), 1)
    return [{"text": c["text"], "tables": markdown_tables(c["text"]), "model": not c["text"].strip(), "ms": ms}
            for c in chunks]


READERS = {"docproc": read_docproc, "pymupdf": read_pymupdf, "pymupdf4llm": read_pymupdf4llm}


# ------------------------------------------------------------------ scoring


def norm(text: str) -> str:
    text = text.replace("<br>", " ").replace("**", "")
    text = re.sub(r"\\([\\`*_{}\[\]()#+\-.!|$])", r"\1", text)
    return " ".join(text.split())


def squash(text: str | None) -> str:
    return "".join(norm(text or "").split())


def find_table(tables: list, needle: str) -> list | None:
    key = squash(needle)
    for rows in tables:
        if any(key in squash(cell) for row in rows for cell in row):
            return rows
    return None


def passes(check: dict, page: dict) -> bool:
    kind = check["kind"]
    if kind == "model":
        return page["model"]
    if kind == "trusted":
        return not page["model"]
    text = norm(page["text"])
    if kind == "present":
        return norm(check["text"]) in text
    if kind == "absent":
        return norm(check["text"]) not in text
    if kind == "once":
        return text.count(norm(check["text"])) == 1
    if kind == "order":
        a, b = text.find(norm(check["before"])), text.find(norm(check["after"]))
        return a >= 0 and b >= 0 and a < b
    if kind == "cell":
        rows = find_table(page["tables"], check["table_with"])
        if rows is None or check["row"] >= len(rows) or check["col"] >= len(rows[check["row"]]):
            return False
        return squash(check["text"]) in squash(rows[check["row"]][check["col"]])
    raise ValueError(f"unknown check kind {kind!r}")


def run_system(name: str, data: Path) -> dict:
    """One system's pages for every labelled file (and the speed extras), from a subprocess."""
    proc = subprocess.run([sys.executable, __file__, "--worker", name, "--data", str(data)],
                          capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"{name} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.splitlines()[-1])


def worker(name: str, data: Path) -> None:
    labels = json.loads((data / "labels.json").read_text())
    files = sorted({e["file"] for e in labels})
    read = READERS[name]
    read(data / files[0])  # warm-up: imports, and pymupdf4llm's layout model, load once
    out = {f: read(data / f) for f in files}
    for extra in SPEED_EXTRA:
        if extra.exists():
            out[str(extra)] = read(extra)
    print(json.dumps(out))


def score(labels: list[dict], pages: dict) -> dict[str, list[int]]:
    per: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for entry in labels:
        for check in entry["checks"]:
            ok = passes(check, pages[entry["file"]][check["page"] - 1])
            per[entry["category"]][0] += ok
            per[entry["category"]][1] += 1
    return per


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=DATA)
    ap.add_argument("--systems", default=",".join(SYSTEMS))
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--failures", metavar="SYSTEM", help="list the checks SYSTEM fails")
    args = ap.parse_args()
    if args.worker:
        worker(args.worker, args.data)
        return
    labels = json.loads((args.data / "labels.json").read_text())
    systems = [s for s in args.systems.split(",") if s]
    results = {s: run_system(s, args.data) for s in systems}
    scores = {s: score(labels, results[s]) for s in systems}
    categories = list(dict.fromkeys(e["category"] for e in labels))
    print(f"{'category':18}" + "".join(f"{s:>16}" for s in systems))
    totals = {s: [0, 0] for s in systems}
    for cat in categories:
        cells = []
        for s in systems:
            ok, n = scores[s][cat]
            totals[s][0] += ok
            totals[s][1] += n
            cells.append(f"{ok:>3}/{n:<3}{100 * ok / n:5.0f}%")
        print(f"{cat:18}" + "".join(f"{c:>16}" for c in cells))
    print(f"{'all':18}" + "".join(f"{t[0]:>3}/{t[1]:<3}{100 * t[0] / t[1]:5.0f}%".rjust(16) for t in totals.values()))
    if args.failures in results:
        for entry in labels:
            for check in entry["checks"]:
                if not passes(check, results[args.failures][entry["file"]][check["page"] - 1]):
                    print(f"{args.failures} fails:", entry["file"], json.dumps(check))
    print()
    for s in systems:
        ms = [p["ms"] for pages in results[s].values() for p in pages]
        slow = max(ms)
        print(f"{s:12} ms/page over {len(ms)} pages: median {statistics.median(ms):7.1f}, max {slow:7.1f}")


if __name__ == "__main__":
    main()
