"""The shape of the code, read from the source (``ast``, nothing imported or run).

The flow is one way: ``api -> docproc <- workers``. The core (``docproc/``) imports neither
the API nor the workers, except its command line (``docproc/cli/``), which starts them; the
API imports no worker module. Inside the core, the subpackages form layers, each importing
only its own and lower ones, and no module imports itself back through others (no cycle):

    base < jobs < delivery < submission < housekeeping < cli

Every import counts, at module level or inside a function, ``TYPE_CHECKING`` ones too: a
lazy import is still an arrow. ``docs/architecture.md`` describes this tree; the last tests
check that it names every module and package there is, and nothing that is gone.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PACKAGES = ("docproc", "api", "workers")
CORE_LAYERS = ("base", "jobs", "delivery", "submission", "housekeeping", "cli")
ENTRY_POINTS = "docproc.cli"  # the core's command line may start the API and the workers


@dataclass(frozen=True)
class Arrow:
    source: str  # the importing module
    target: str  # the imported module (the longest prefix that is a module of the tree)
    line: int


def modules(root: Path) -> dict[str, Path]:
    """Every module of the three packages under ``root``: dotted name -> file."""
    found = {}
    for package in PACKAGES:
        for path in sorted((root / package).rglob("*.py")):
            parts = path.relative_to(root).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            found[name] = path
    return found


def _resolve(name: str, known: dict[str, Path]) -> str | None:
    """The module ``name`` refers to: itself, or the longest known prefix (``a.b.attr`` -> ``a.b``)."""
    while name:
        if name in known:
            return name
        name = name.rpartition(".")[0]
    return None


def arrows(known: dict[str, Path]) -> Iterator[Arrow]:
    """Every import between modules of the tree."""
    for source, path in known.items():
        is_package = path.name == "__init__.py"
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:  # relative: from the importing module's package
                    anchor = source.split(".")[: len(source.split(".")) - node.level + is_package]
                    base = ".".join([*anchor, *([base] if base else [])])
                # ``from a import b`` names module ``a.b`` when it is one, else an attribute of ``a``
                targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base
                           for alias in node.names]
            else:
                continue
            for resolved in sorted({_resolve(target, known) for target in targets} - {None, source}):
                yield Arrow(source, resolved, node.lineno)


def _top(name: str) -> str:
    return name.split(".")[0]


def _layer(name: str) -> int | None:
    parts = name.split(".")
    return CORE_LAYERS.index(parts[1]) if len(parts) > 1 and parts[1] in CORE_LAYERS else None


def against_the_flow(all_arrows: Iterable[Arrow]) -> list[str]:
    """Arrows that break ``api -> docproc <- workers`` or the core's layers."""
    wrong = []
    for a in all_arrows:
        src, dst = _top(a.source), _top(a.target)
        if src == "docproc" and dst in ("api", "workers") and not (
                a.source == ENTRY_POINTS or a.source.startswith(ENTRY_POINTS + ".")):
            wrong.append(f"{a.source}:{a.line} imports {a.target} (the core imports no API or worker module)")
        elif src == "api" and dst == "workers":
            wrong.append(f"{a.source}:{a.line} imports {a.target} (the API imports no worker module)")
        elif src == dst == "docproc":
            low, high = _layer(a.target), _layer(a.source)
            if low is not None and high is not None and low > high:
                wrong.append(f"{a.source}:{a.line} imports {a.target} "
                             f"({CORE_LAYERS[high]} is below {CORE_LAYERS[low]})")
    return wrong


def cycles(all_arrows: Iterable[Arrow], within: str = "docproc") -> list[list[str]]:
    """The import cycles among the modules of package ``within`` (Tarjan's strongly connected
    components of more than one module), each sorted."""
    graph: dict[str, set[str]] = {}
    for a in all_arrows:
        if _top(a.source) == within and _top(a.target) == within:
            graph.setdefault(a.source, set()).add(a.target)
            graph.setdefault(a.target, set())
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


# ---------------------------------------------------------------------------- the tree


@pytest.fixture(scope="module")
def tree_arrows() -> list[Arrow]:
    return list(arrows(modules(REPO)))


def test_no_import_runs_against_the_flow(tree_arrows):
    assert against_the_flow(tree_arrows) == []


def test_the_core_has_no_import_cycle(tree_arrows):
    assert cycles(tree_arrows) == []


def test_every_core_module_lives_in_a_layer():
    loose = [name for name in modules(REPO) if _top(name) == "docproc" and name.count(".") == 1
             and name.split(".")[1] not in (*CORE_LAYERS, "__main__")]
    assert loose == []
    assert sorted(p.name for p in (REPO / "docproc").iterdir() if p.is_dir() and p.name != "__pycache__") == \
        sorted(CORE_LAYERS)


# ----------------------------------------------------- the checks catch what they look for


def _plant(root: Path, files: dict[str, str]) -> list[Arrow]:
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    for package in PACKAGES:
        (root / package).mkdir(exist_ok=True)
    return list(arrows(modules(root)))


def test_the_checks_find_a_planted_arrow_against_the_flow_and_a_cycle(tmp_path):
    planted = _plant(tmp_path, {
        "docproc/__init__.py": "",
        "docproc/base/__init__.py": "",
        "docproc/base/settings.py": "from docproc.jobs import store\n",  # base above jobs: wrong
        "docproc/jobs/__init__.py": "",
        "docproc/jobs/store.py": "def f():\n    from workers.tasks import run\n",  # lazy, still wrong
        "docproc/jobs/leases.py": "from . import store\nfrom .results import X\n",
        "docproc/jobs/results.py": "import docproc.jobs.leases\n",  # leases -> results -> leases
        "docproc/cli/__init__.py": "",
        "docproc/cli/commands.py": "from workers import tasks\nfrom api.app import create_app\n",  # allowed
        "api/__init__.py": "",
        "api/app.py": "from workers.celery_app import app\n",  # wrong
        "workers/__init__.py": "",
        "workers/tasks.py": "from docproc.jobs.store import f\n",  # the right way
        "workers/celery_app.py": "",
    })
    assert sorted(against_the_flow(planted)) == [
        "api.app:1 imports workers.celery_app (the API imports no worker module)",
        "docproc.base.settings:1 imports docproc.jobs.store (base is below jobs)",
        "docproc.jobs.store:2 imports workers.tasks (the core imports no API or worker module)",
    ]
    assert cycles(planted) == [["docproc.jobs.leases", "docproc.jobs.results"]]


# ------------------------------------------------------------------------ the document


def _named_paths(text: str) -> set[str]:
    """Paths of the three packages named in backticks, e.g. `docproc/jobs/store.py`, `api/routes/`."""
    return {m.rstrip("/") for m in re.findall(r"`((?:docproc|api|workers)/[\w/]*(?:\.py)?)`", text)}


def _tree_paths() -> set[str]:
    paths = set()
    for name, path in modules(REPO).items():
        rel = path.relative_to(REPO)
        if path.name == "__init__.py":
            paths.add(str(rel.parent))
        elif path.name != "__main__.py":
            paths.add(str(rel))
    return paths


def test_the_architecture_document_names_every_module_and_nothing_gone():
    named = _named_paths((REPO / "docs" / "architecture.md").read_text())
    tree = _tree_paths()
    assert sorted(tree - named) == [], "modules the document does not describe"
    assert sorted(named - tree) == [], "paths the document names that are not in the tree"


def test_the_readme_layout_names_only_what_exists():
    named = _named_paths((REPO / "README.md").read_text())
    assert sorted(named - _tree_paths()) == []
