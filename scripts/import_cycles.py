"""List import cycles among bertforge's modules, imports inside functions included.

Every ``import`` / ``from ... import`` in src/bertforge/**/*.py is an edge (relative imports
resolved; ``from pkg import name`` goes to ``pkg.name`` when that is a module). Importing
``a.b.c`` also runs the packages ``a`` and ``a.b``: those are edges too, except to the importer's own
packages (always initialised before it). Imports under ``if TYPE_CHECKING:`` never run and are left
out unless ``--type-checking``. Exit status 1 when there is a cycle.

    python scripts/import_cycles.py [--type-checking]
"""

from __future__ import annotations

import argparse
import ast
import sys
from collections import deque
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent / "src"
PACKAGE = "bertforge"


@dataclass(frozen=True)
class Edge:
    source: str
    target: str
    line: int
    lazy: bool  # inside a function: runs when the function is called, not at import
    via: str  # the module named in the statement (target may be one of its packages)


def modules(root: Path) -> dict[str, Path]:
    """Module name -> file, for every .py file of the package (a package is its __init__.py)."""
    found = {}
    for path in sorted((root / PACKAGE).rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


def _type_checking_nodes(tree: ast.AST) -> set[int]:
    """ids of the import nodes under ``if TYPE_CHECKING:``."""
    skip: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If):
            test = node.test
            name = test.id if isinstance(test, ast.Name) else test.attr if isinstance(test, ast.Attribute) else None
            if name == "TYPE_CHECKING":
                for child in node.body:
                    skip.update(id(n) for n in ast.walk(child))
    return skip


def _lazy_nodes(tree: ast.AST) -> set[int]:
    """ids of the nodes inside a function (or lambda) body."""
    lazy: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            lazy.update(id(n) for n in ast.walk(node) if n is not node)
    return lazy


def imports(name: str, path: Path, known: dict[str, Path], type_checking: bool) -> list[Edge]:
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    skip = set() if type_checking else _type_checking_nodes(tree)
    lazy = _lazy_nodes(tree)
    is_package = path.name == "__init__.py"
    here = name.split(".") if is_package else name.split(".")[:-1]  # the package relative imports start from
    own = {".".join(name.split(".")[:k]) for k in range(1, len(name.split(".")))}  # the importer's packages
    edges = []
    for node in ast.walk(tree):
        if id(node) in skip or not isinstance(node, (ast.Import, ast.ImportFrom)):
            continue
        named: list[str] = []
        if isinstance(node, ast.Import):
            named = [a.name for a in node.names]
        else:
            base = here[: len(here) - node.level + 1] if node.level else []
            module = ".".join(base + ([node.module] if node.module else []))
            named = [f"{module}.{a.name}" if f"{module}.{a.name}" in known else module for a in node.names]
        for full in dict.fromkeys(named):
            if full != PACKAGE and not full.startswith(PACKAGE + "."):
                continue
            parts = full.split(".")
            targets = [".".join(parts[:k]) for k in range(1, len(parts) + 1)]
            for target in targets:
                if target in known and target != name and target not in own:
                    edges.append(Edge(name, target, node.lineno, id(node) in lazy, full))
    return edges


def strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's components with more than one module (or a module importing itself)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1 or v in graph[v]:
                out.append(sorted(component))

    sys.setrecursionlimit(10_000)
    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def shortest_cycle(graph: dict[str, set[str]], start: str, within: set[str]) -> list[str]:
    """The shortest path start -> ... -> start inside ``within`` (breadth first)."""
    previous: dict[str, str] = {}
    queue = deque([start])
    while queue:
        v = queue.popleft()
        for w in sorted(graph[v] & within):
            if w == start:
                path = [v]
                while path[-1] != start:
                    path.append(previous[path[-1]])
                return [*reversed(path), start]
            if w not in previous:
                previous[w] = v
                queue.append(w)
    return []


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--type-checking", action="store_true", help="count imports under `if TYPE_CHECKING:` too")
    args = parser.parse_args()
    known = modules(ROOT)
    edges = [e for name, path in known.items() for e in imports(name, path, known, args.type_checking)]
    graph: dict[str, set[str]] = {name: set() for name in known}
    for e in edges:
        graph[e.source].add(e.target)
    components = strongly_connected(graph)
    print(f"{len(known)} modules, {len({(e.source, e.target) for e in edges})} import edges "
          f"({sum(e.lazy for e in edges)} import statements inside functions)")
    if not components:
        print("no import cycle")
        return 0
    for component in components:
        members = set(component)
        print(f"\ncycle among {len(component)} modules: {', '.join(component)}")
        seen: set[tuple[str, ...]] = set()
        for start in component:
            cycle = shortest_cycle(graph, start, members)
            key = tuple(sorted(cycle[:-1]))
            if cycle and key not in seen:
                seen.add(key)
                print("  " + " -> ".join(cycle))
        for e in sorted(edges, key=lambda e: (e.source, e.line)):
            if e.source in members and e.target in members:
                where = known[e.source].relative_to(ROOT.parent)
                kind = "lazy" if e.lazy else "top-level"
                via = f" (via {e.via})" if e.via != e.target else ""
                print(f"    {where}:{e.line}: {e.source} -> {e.target}{via} [{kind}]")
    return 1


if __name__ == "__main__":
    sys.exit(main())
