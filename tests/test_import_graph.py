"""The package's import graph has no cycle, between modules or between its layers.

Every ``import`` statement counts, also those inside functions (a lazy import hides a cycle
from the interpreter, not from a reader). Layers are the first-level subpackages and modules of
``brainfm`` (``bidsapp``, ``workflows``, ``interfaces``, ``reports``, ``models`` ...); the
package root (``brainfm/__init__.py``: the version) is left out, as every layer reads it.
"""

from __future__ import annotations

import ast
from pathlib import Path

import networkx as nx

PACKAGE = Path(__file__).resolve().parents[1] / "brainfm"


def _module_names() -> dict[str, Path]:
    names = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        names[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return names


def _imported(node: ast.AST, package: str) -> list[str]:
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    if isinstance(node, ast.ImportFrom):
        base = node.module or ""
        if node.level:
            parent = package.split(".")[: len(package.split(".")) - node.level + 1]
            base = ".".join([*parent, base] if base else parent)
        return [base, *(f"{base}.{alias.name}" for alias in node.names)]
    return []


def import_graph() -> nx.DiGraph:
    """Module-to-module edges of every brainfm import (and to the packages it runs)."""
    modules = _module_names()
    graph = nx.DiGraph()
    graph.add_nodes_from(modules)
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text())):
            for target in _imported(node, package):
                while target and target not in modules:  # an attribute: its module
                    target = target.rpartition(".")[0]
                parts = target.split(".")
                # importing a.b.c runs a/__init__ and a/b/__init__ too (not one's own parents)
                for k in range(2, len(parts) + 1):
                    dep = ".".join(parts[:k])
                    if dep in modules and dep != name and not name.startswith(dep + "."):
                        graph.add_edge(name, dep)
    return graph


def layer(module: str) -> str:
    return ".".join(module.split(".")[:2])


def test_no_cycle_between_modules():
    cycles = list(nx.simple_cycles(import_graph()))
    assert cycles == [], [" -> ".join(c) for c in cycles]


def test_no_cycle_between_layers():
    layers = nx.DiGraph()
    for a, b in import_graph().edges:
        if layer(a) != layer(b):
            layers.add_edge(layer(a), layer(b))
    cycles = list(nx.simple_cycles(layers))
    assert cycles == [], [" -> ".join(c) for c in cycles]


def test_the_graph_sees_lazy_imports():
    """The walk reads imports inside functions (the CLI imports the group level lazily)."""
    assert import_graph().has_edge("brainfm.bidsapp.cli", "brainfm.bidsapp.group")
