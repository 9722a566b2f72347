"""The package's structure: no import cycles in ``csdraft/`` (imports inside functions count)
and no module over ``MAX_LINES`` lines."""

from __future__ import annotations

import ast
from pathlib import Path

import csdraft

PACKAGE = Path(csdraft.__file__).parent
MAX_LINES = 600


def module_name(path: Path, root: Path = PACKAGE) -> str:
    """``csdraft/engine/cascade.py`` -> ``csdraft.engine.cascade`` (a package: its folder)."""
    parts = [root.name, *path.relative_to(root).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported(tree: ast.AST, module: str, is_package: bool, modules: set[str]) -> set[str]:
    """The modules of ``modules`` that ``tree`` imports anywhere (functions included):
    ``from a.b import c`` is ``a.b.c`` when that is a module, else ``a.b``; relative imports
    are resolved against ``module``."""
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                here = module.split(".") if is_package else module.split(".")[:-1]
                here = here[: len(here) - (node.level - 1)]
                base = ".".join([*here, base] if base else here)
            names = [f"{base}.{a.name}" for a in node.names]
            names = [name if name in modules else base for name in names]
        else:
            continue
        for name in names:
            while name and name not in modules:  # ``import a.b.c``: the deepest known module
                name = name.rpartition(".")[0]
            if name and name != module:
                out.add(name)
    return out


def import_graph(root: Path = PACKAGE) -> dict[str, set[str]]:
    """Module -> the package's modules it imports."""
    files = {module_name(p, root): p for p in sorted(root.rglob("*.py"))}
    modules = set(files)
    return {
        m: imported(ast.parse(p.read_text()), m, p.name == "__init__.py", modules)
        for m, p in files.items()
    }


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle (its modules, the first repeated at the end), or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(m: str) -> list[str] | None:
        state[m] = 1
        path.append(m)
        for n in sorted(graph.get(m, ())):
            if state.get(n) == 1:
                return [*path[path.index(n) :], n]
            if n not in state and (cycle := visit(n)):
                return cycle
        path.pop()
        state[m] = 2
        return None

    for m in sorted(graph):
        if m not in state and (cycle := visit(m)):
            return cycle
    return None


def all_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected groups of more than one module (each holds a cycle)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    groups: list[list[str]] = []

    def connect(m: str) -> None:
        index[m] = low[m] = len(index)
        stack.append(m)
        for n in graph.get(m, ()):
            if n not in index:
                connect(n)
                low[m] = min(low[m], low[n])
            elif n in stack:
                low[m] = min(low[m], index[n])
        if low[m] == index[m]:
            group = []
            while True:
                n = stack.pop()
                group.append(n)
                if n == m:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    for m in sorted(graph):
        if m not in index:
            connect(m)
    return sorted(groups)


def test_no_import_cycles():
    graph = import_graph()
    groups = all_cycles(graph)
    cycles = []
    for group in groups:
        sub = {m: graph[m] & set(group) for m in group}
        cycles.append(" -> ".join(find_cycle(sub) or group))
    assert not cycles, "import cycles in csdraft/:\n" + "\n".join(cycles)


def long_modules(root: Path = PACKAGE) -> dict[str, int]:
    """Modules over ``MAX_LINES`` lines and their lengths."""
    lengths = {module_name(p, root): len(p.read_text().splitlines()) for p in root.rglob("*.py")}
    return {m: n for m, n in sorted(lengths.items()) if n > MAX_LINES}


def test_no_module_over_600_lines():
    long = long_modules()
    assert not long, f"modules over {MAX_LINES} lines: {long}"


# The checks themselves can fail:


def _package(tmp_path: Path, files: dict[str, str]) -> Path:
    root = tmp_path / "csdraft"
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


def test_a_lazy_import_cycle_is_found(tmp_path):
    root = _package(
        tmp_path,
        {
            "__init__.py": "",
            "a.py": "from csdraft.pkg import b\n",
            "pkg/__init__.py": "",
            "pkg/b.py": "def f():\n    from csdraft import a\n",
        },
    )
    graph = import_graph(root)
    assert graph["csdraft.a"] == {"csdraft.pkg.b"}
    assert graph["csdraft.pkg.b"] == {"csdraft.a"}
    assert find_cycle(graph) == ["csdraft.a", "csdraft.pkg.b", "csdraft.a"]
    assert all_cycles(graph) == [["csdraft.a", "csdraft.pkg.b"]]


def test_a_name_from_a_package_is_an_edge_to_the_package(tmp_path):
    root = _package(
        tmp_path,
        {
            "__init__.py": "",
            "pkg/__init__.py": "from csdraft.pkg.c import X\n",
            "pkg/c.py": "X = 1\n",
            "d.py": "from csdraft.pkg import X\nfrom .pkg import c\nimport csdraft.pkg.c\n",
        },
    )
    graph = import_graph(root)
    assert graph["csdraft.d"] == {"csdraft.pkg", "csdraft.pkg.c"}
    assert graph["csdraft.pkg"] == {"csdraft.pkg.c"}
    assert find_cycle(graph) is None and all_cycles(graph) == []


def test_the_size_limit_counts_lines(tmp_path):
    root = _package(
        tmp_path,
        {"__init__.py": "", "ok.py": "x = 1\n" * MAX_LINES, "long.py": "x = 1\n" * (MAX_LINES + 1)},
    )
    assert long_modules(root) == {"csdraft.long": MAX_LINES + 1}
