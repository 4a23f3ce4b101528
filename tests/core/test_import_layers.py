"""The package's import graph, read from the source: no cycles, and every import goes downwards.

Layers, bottom up: ``core`` (imports only itself), the support modules (models, data, visualize,
explanation, synthetic), ``metrics``, ``methods``, ``api``, ``evaluation``, ``web``, ``cli``, and the
package root (the public surface). Function-level imports count: a lazy import is still a
dependency.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[2] / "src"
PKG = "saliencekit"
RANKS = {"core": 0, "models": 1, "data": 1, "visualize": 1, "explanation": 1, "synthetic": 1, "metrics": 2,
         "methods": 3, "api": 4, "evaluation": 5, "web": 6, "cli": 7}
ROOT_RANK = 8


def _modules() -> dict[str, Path]:
    out = {}
    for p in sorted((SRC / PKG).rglob("*.py")):
        parts = list(p.relative_to(SRC).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = p
    return out


def _resolve(mod: str, is_pkg: bool, node: ast.ImportFrom) -> str:
    if node.level == 0:
        return node.module or ""
    base = mod.split(".") if is_pkg else mod.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def import_graph() -> dict[str, set[str]]:
    mods = _modules()
    graph: dict[str, set[str]] = {m: set() for m in mods}
    for mod, path in mods.items():
        is_pkg = path.name == "__init__.py"
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            targets = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = _resolve(mod, is_pkg, node)
                # `from pkg import name`: the submodule pkg.name if it is one, else pkg itself
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in mods else base for a in node.names]
            for t in targets:
                while t and t not in mods and "." in t:   # `import a.b.c` of a module inside the package
                    t = t.rsplit(".", 1)[0]
                if t in mods and t != mod:
                    graph[mod].add(t)
    return graph


def rank(mod: str) -> int:
    parts = mod.split(".")
    return ROOT_RANK if len(parts) == 1 else RANKS[parts[1]]


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> list[str] | None:
        state[m] = 1
        stack.append(m)
        for n in sorted(graph[m]):
            if state.get(n) == 1:
                return stack[stack.index(n):] + [n]
            if n not in state:
                found = visit(n)
                if found:
                    return found
        stack.pop()
        state[m] = 2
        return None

    for m in sorted(graph):
        if m not in state:
            found = visit(m)
            if found:
                return found
    return None


def test_every_module_has_a_layer():
    unknown = sorted(m for m in _modules() if len(m.split(".")) > 1 and m.split(".")[1] not in RANKS)
    assert not unknown, f"modules outside the known layers (add them to RANKS): {unknown}"


def test_the_import_graph_has_no_cycle():
    assert find_cycle(import_graph()) is None, " -> ".join(find_cycle(import_graph()))


def test_imports_only_go_down_the_layers():
    graph = import_graph()
    upward = sorted(f"{m} -> {n}" for m, deps in graph.items() for n in deps if rank(n) > rank(m))
    assert not upward, "imports into a higher layer:\n" + "\n".join(upward)


def test_core_imports_nothing_outside_core():
    graph = import_graph()
    bad = sorted(f"{m} -> {n}" for m, deps in graph.items() if m.startswith(f"{PKG}.core")
                 for n in deps if not n.startswith(f"{PKG}.core"))
    assert not bad, "\n".join(bad)


@pytest.mark.parametrize("source,expected", [
    ("from ..methods import base\n", "saliencekit.methods.base"),
    ("def f():\n    from ...api import explain\n", "saliencekit.api"),
])
def test_the_checker_sees_relative_and_lazy_imports(tmp_path, monkeypatch, source, expected):
    """The checks above can fail: a planted upward import from core is found."""
    pkg = tmp_path / PKG
    (pkg / "core" / "sub").mkdir(parents=True)
    (pkg / "methods").mkdir()
    for d in ("", "core", "core/sub", "methods"):
        (pkg / d / "__init__.py").write_text("")
    (pkg / "api.py").write_text("")
    (pkg / "methods" / "base.py").write_text("")
    (pkg / "core" / ("sub/bad.py" if "..." in source else "bad.py")).write_text(source)
    monkeypatch.setattr(f"{__name__}.SRC", tmp_path)
    graph = import_graph()
    bad = next(m for m in graph if m.endswith(".bad"))
    assert graph[bad] == {expected}
    assert rank(expected) > rank(bad)
