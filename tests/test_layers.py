"""The package reads as the data path: data -> backbones/blocks -> models -> engine -> study -> papers -> app.

Imports are read with ``ast`` (nothing is imported), counting imports inside functions: a module may import
only from its own layer or the layers below it, and no two modules import each other, directly or round a
circle.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "adlib"

# Lower number = lower layer. A module not listed is the package's plumbing (io, results, metrics...): it may be
# imported from anywhere and may import only other plumbing or the data layer.
LAYERS = {
    "adlib.data": 0, "adlib.backbones": 1, "adlib.ssm": 1, "adlib.scans": 1, "adlib.models": 2,
    "adlib.featcache": 3, "adlib.engine": 3, "adlib.loco": 4, "adlib.study": 4, "adlib.plots": 4,
    "adlib.papers": 5, "adlib.app": 6, "adlib.__main__": 6,
}


def module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = {module_name(p): p for p in PACKAGE.rglob("*.py")}


def resolve(name: str) -> str | None:
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def imports(module: str) -> set[str]:
    path = MODULES[module]
    is_package = path.name == "__init__.py"
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = module.split(".") if is_package else module.split(".")[:-1]
                parts = parts[: len(parts) - node.level + 1]
                base = ".".join(parts + ([base] if base else []))
            targets = [f"{base}.{a.name}" for a in node.names] + [base]
        for target in targets:
            if target.split(".")[0] != "adlib":
                continue
            resolved = resolve(target)
            if resolved and resolved not in (module, "adlib") and not module.startswith(resolved + "."):
                found.add(resolved)
    return found


GRAPH = {m: imports(m) for m in MODULES}


def layer(module: str) -> int | None:
    best = None
    for prefix, level in LAYERS.items():
        if module == prefix or module.startswith(prefix + "."):
            if best is None or len(prefix) > len(best[0]):
                best = (prefix, level)
    return best[1] if best else None


def circles() -> list[list[str]]:
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in GRAPH[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for module in sorted(GRAPH):
        if module not in index:
            visit(module)
    return out


def test_no_import_circle():
    assert circles() == []


def test_the_circle_finder_finds_one(monkeypatch):
    """The check above can fail: two modules that import each other are reported."""
    monkeypatch.setitem(GRAPH, "adlib.engine", GRAPH["adlib.engine"] | {"adlib.study.grid"})
    monkeypatch.setitem(GRAPH, "adlib.study.grid", GRAPH["adlib.study.grid"] | {"adlib.engine"})
    assert ["adlib.engine", "adlib.study.grid"] in circles()


@pytest.mark.parametrize("module", sorted(MODULES))
def test_imports_go_down_the_data_path(module):
    own = layer(module)
    for target in sorted(GRAPH[module]):
        theirs = layer(target)
        if theirs is None:
            continue  # plumbing (io, results, metrics, plots helpers) serves every layer
        if own is None:
            assert theirs == 0, f"{module} (plumbing) imports {target} (layer {theirs}); plumbing may use only data"
        else:
            assert theirs <= own, f"{module} (layer {own}) imports {target} (layer {theirs}), a layer above it"


def test_the_application_layer_holds_the_commands():
    assert {"adlib.app.cli", "adlib.app.run", "adlib.app.reproduce", "adlib.app.report"} <= set(MODULES)
    assert not any(name in MODULES for name in ("adlib.cli", "adlib.run", "adlib.reproduce", "adlib.report"))
