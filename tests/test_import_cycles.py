"""No import cycle inside ``quantart_runtime`` and ``quantart_export`` (each package imports one way).

Static, from the AST of every module of both packages (runtime/ and export/): every ``import`` and
``from ... import`` counts, at module level *and* inside functions, ``try`` and ``if`` blocks (a local
import only defers a cycle, it does not remove it); only ``if TYPE_CHECKING:`` blocks, which never run,
are left out. ``from pkg import name`` is an edge to the module ``pkg.name`` when that is a module, else
to ``pkg``; relative imports are resolved. Edges are to the named module only, not to the ``__init__``
of each package above it (as pylint's cyclic-import and import-linter count them). The backend
registry's lookup by name (``importlib.import_module`` of a module path held in
``quantart_runtime.backends.registry.BACKENDS``) is the plugin seam, not an edge.

A cycle fails naming its modules in import order, e.g.
``quantart_runtime.backends -> quantart_runtime.verify -> quantart_runtime.backends``.
"""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = {"quantart_runtime": ROOT / "runtime", "quantart_export": ROOT / "export"}


def _modules() -> dict[str, Path]:
    """{dotted module name: file} of every module of PACKAGES (packages as their ``__init__``)."""
    found = {}
    for package, folder in PACKAGES.items():
        for path in sorted(folder.rglob("*.py")):
            if "__pycache__" in path.parts:
                continue
            parts = list(path.relative_to(folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found[".".join([package, *parts])] = path
    return found


def _type_checking_nodes(tree: ast.AST) -> set[int]:
    """ids of the nodes inside ``if TYPE_CHECKING:`` / ``if typing.TYPE_CHECKING:`` blocks."""
    skip: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If):
            test = node.test
            name = test.id if isinstance(test, ast.Name) else test.attr if isinstance(test, ast.Attribute) else ""
            if name == "TYPE_CHECKING":
                for child in node.body:
                    skip.update(id(n) for n in ast.walk(child))
    return skip


def _edges(name: str, path: Path, modules: dict[str, Path]) -> dict[str, int]:
    """{imported module inside PACKAGES: first line} for module ``name``."""
    tree = ast.parse(path.read_text(), str(path))
    skip = _type_checking_nodes(tree)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out: dict[str, int] = {}

    def add(target: str, line: int) -> None:
        if target in modules and target != name:
            out.setdefault(target, line)

    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            for alias in node.names:
                add(alias.name, node.lineno)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - (node.level - 1)]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            for alias in node.names:
                sub = f"{source}.{alias.name}"
                add(sub if sub in modules else source, node.lineno)
    return out


def _cycles(graph: dict[str, dict[str, int]]) -> list[list[str]]:
    """One cycle (as a closed path) per strongly connected component with more than one module
    (Tarjan), a self-import included."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                components.append(comp)

    for v in sorted(graph):
        if v not in index:
            visit(v)
    cycles = []
    for comp in components:
        members = set(comp)
        start = min(comp)
        path, seen = [start], {start}
        while True:   # walk inside the component until a module repeats
            nxt = sorted(w for w in graph[path[-1]] if w in members)
            step = next((w for w in nxt if w not in seen), nxt[0])
            path.append(step)
            if step in seen:
                cycles.append(path[path.index(step):])
                break
            seen.add(step)
    return cycles


def _graph() -> dict[str, dict[str, int]]:
    modules = _modules()
    return {name: _edges(name, path, modules) for name, path in modules.items()}


def test_the_checker_finds_a_cycle(tmp_path):
    """The checker itself: a planted cycle is found, a function-level import is an edge, a
    TYPE_CHECKING one is not."""
    graph = {"a": {"b": 1}, "b": {"c": 1}, "c": {"a": 9}, "d": {"a": 1}}
    assert _cycles(graph) == [["a", "b", "c", "a"]]
    modules = {"quantart_runtime.verify": Path("y"), "quantart_runtime.memory": Path("z")}
    probe = tmp_path / "probe.py"
    probe.write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from . import memory\n"
                     "def f():\n    from .verify import plan_for\n")
    assert _edges("quantart_runtime.probe", probe, modules) == {"quantart_runtime.verify": 5}


def test_the_graph_covers_both_packages():
    graph = _graph()
    assert "quantart_runtime.backends.openvino" in graph and "quantart_export.pipeline" in graph
    assert "quantart_runtime.verify" in graph["quantart_runtime.backends"]   # function-level imports count
    assert any(m.startswith("quantart_runtime.") for m in graph["quantart_export.pipeline"])  # across both


def test_no_import_cycle_in_runtime_and_export():
    graph = _graph()
    cycles = _cycles(graph)
    text = ["  " + " -> ".join(c) + "  (lines: " + ", ".join(f"{a}:{graph[a][b]}" for a, b in zip(c, c[1:])) + ")"
            for c in cycles]
    assert not cycles, "import cycles:\n" + "\n".join(text)
