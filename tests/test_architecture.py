"""The layers of docs/architecture.md hold: every import goes to the same layer or below, and no cycle.

The layer of each module is read from the table in docs/architecture.md, so the
document and the code cannot drift apart: a module missing from the table, or a
table row naming a module that does not exist, fails here.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "bayes_annot"
DOC = ROOT / "docs" / "architecture.md"

LAYERS = ["errors", "data", "model", "engines", "fit / results", "workflows", "report, cli"]

#: Upward imports that are allowed, each (importer, imported): the result's convenience
#: methods that hand the result to a higher layer (docs/architecture.md, "The one exception").
FRONT_DOORS = {("bayes_annot.fit", "bayes_annot.report")}


def package_modules() -> dict[str, Path]:
    modules = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        modules[".".join(parts)] = path
    return modules


def import_graph(modules: dict[str, Path]) -> dict[str, set[str]]:
    """Every import of every module (module level and inside functions), resolved to package modules."""
    graph = {name: set() for name in modules}
    for name, path in modules.items():
        is_package = path.name == "__init__.py"
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = name.split(".") if is_package else name.split(".")[:-1]
                    base = base[: len(base) - (node.level - 1)]
                    stem = ".".join(base + ([node.module] if node.module else []))
                else:
                    stem = node.module or ""
                targets = [stem] + [f"{stem}.{alias.name}" for alias in node.names]
            else:
                continue
            for target in targets:
                while target and target not in modules:
                    target = target.rpartition(".")[0]
                if target and target != name:
                    graph[name].add(target)
    return graph


def documented_layers() -> dict[str, str]:
    rows = re.findall(r"^\|\s*([^|]+?)\s*\|\s*`([\w.]+)`\s*\|", DOC.read_text(), flags=re.M)
    layers = {}
    for layer, module in rows:
        assert layer in LAYERS, f"docs/architecture.md: unknown layer {layer!r} for {module}"
        assert module not in layers, f"docs/architecture.md names {module} twice"
        layers[module] = layer
    return layers


@pytest.fixture(scope="module")
def graph():
    return import_graph(package_modules())


def test_every_module_is_documented_and_every_documented_module_exists():
    modules = set(package_modules())
    documented = set(documented_layers())
    assert not modules - documented, f"modules missing from docs/architecture.md: {sorted(modules - documented)}"
    assert not documented - modules, f"docs/architecture.md names modules that do not exist: {sorted(documented - modules)}"


def test_imports_go_down_the_layers(graph):
    layer = documented_layers()
    rank = {name: LAYERS.index(layer[name]) for name in layer}
    upward = sorted(
        (source, target) for source, targets in graph.items() for target in targets
        if source in rank and target in rank and rank[target] > rank[source]
    )
    unexpected = [edge for edge in upward if edge not in FRONT_DOORS]
    assert not unexpected, "imports that go up the layers:\n" + "\n".join(
        f"  {s} ({layer[s]}) imports {t} ({layer[t]})" for s, t in unexpected
    )
    stale = FRONT_DOORS - set(upward)
    assert not stale, f"FRONT_DOORS lists imports that no longer exist: {sorted(stale)}"


def test_import_graph_is_acyclic(graph):
    # iterative depth-first search; a back edge is a cycle
    state: dict[str, int] = {}
    for root in sorted(graph):
        if state.get(root):
            continue
        stack = [(root, iter(sorted(graph[root])))]
        path = [root]
        state[root] = 1
        while stack:
            node, children = stack[-1]
            child = next(children, None)
            if child is None:
                state[node] = 2
                stack.pop()
                path.pop()
                continue
            if state.get(child) == 1:
                cycle = path[path.index(child):] + [child]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if not state.get(child):
                state[child] = 1
                path.append(child)
                stack.append((child, iter(sorted(graph[child]))))


def test_the_check_catches_an_upward_import(tmp_path):
    """The checker itself can fail: an engine importing fit is reported."""
    modules = {"pkg.engine": tmp_path / "engine.py", "pkg.fit": tmp_path / "fit.py"}
    modules["pkg.engine"].write_text("def f():\n    from .fit import fit\n")
    modules["pkg.fit"].write_text("from .engine import f\n")
    graph = import_graph(modules)
    assert graph == {"pkg.engine": {"pkg.fit"}, "pkg.fit": {"pkg.engine"}}
