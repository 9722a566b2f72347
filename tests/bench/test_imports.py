"""bench's modules import each other without cycles, imports inside functions included."""

from __future__ import annotations

import ast
from pathlib import Path

import csdraft.bench

BENCH = Path(csdraft.bench.__file__).parent


def bench_imports() -> dict[str, set[str]]:
    """Each bench module's bench imports (module names, 'csdraft.bench' for the package)."""
    modules = {f.stem for f in BENCH.glob("*.py")} - {"__init__"}
    graph: dict[str, set[str]] = {}
    for name in modules:
        found = set()
        for node in ast.walk(ast.parse((BENCH / f"{name}.py").read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("csdraft.bench"):
                if node.module == "csdraft.bench":
                    found |= {a.name if a.name in modules else "__init__" for a in node.names}
                else:
                    found.add(node.module.removeprefix("csdraft.bench."))
        graph[name] = found
    graph["__init__"] = {"run"}
    return graph


def cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of ``graph``, or None."""
    state: dict[str, int] = {}

    def visit(node: str, path: list[str]) -> list[str] | None:
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt) :], nxt]  # in progress: on the path
            if nxt not in state and (found := visit(nxt, [*path, nxt])):
                return found
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (found := visit(start, [start])):
            return found
    return None


def test_bench_has_no_import_cycle():
    assert cycle(bench_imports()) is None


def test_the_cycle_check_finds_one():
    graph = {"report": {"quality"}, "quality": {"metrics", "report"}, "metrics": set()}
    assert cycle(graph) == ["quality", "report", "quality"]
