"""torch_bam's modules import each other without cycles, function-level imports included."""

import ast
from pathlib import Path

import torch_bam

ROOT = Path(torch_bam.__file__).parent


def _module_name(path: Path) -> str:
    parts = ["torch_bam", *path.relative_to(ROOT).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _resolve(module: str, is_package: bool, node: ast.ImportFrom) -> list[str]:
    """The torch_bam modules an ``import``/``from ... import`` names (packages and modules)."""
    if node.level:
        base = module.split(".")
        base = base[: len(base) - node.level + (1 if is_package else 0)]
        target = ".".join(base + ([node.module] if node.module else []))
    else:
        target = node.module or ""
    # `from .pkg import name` may import the submodule pkg.name: count both.
    return [target] + [f"{target}.{alias.name}" for alias in node.names]


def import_graph() -> dict[str, set[str]]:
    files = sorted(ROOT.rglob("*.py"))
    modules = {_module_name(f): f for f in files}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        is_package = path.name == "__init__.py"
        edges: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):  # every scope
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                targets = _resolve(name, is_package, node)
            else:
                continue
            edges |= {t for t in targets if t in modules and t != name}
        graph[name] = edges
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return path[path.index(nxt) :] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def _parents_ok(graph):
    # A package's __init__ runs before its submodules: `pkg.mod -> pkg` is not a cycle unless
    # the package imports back. Drop the edge from a submodule to its own parent packages.
    return {
        m: {t for t in edges if not m.startswith(t + ".")} for m, edges in graph.items()
    }


def test_no_import_cycles():
    cycle = _cycle(_parents_ok(import_graph()))
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_the_checker_finds_a_cycle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}
    assert _cycle(graph) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


def test_the_graph_sees_function_level_and_relative_imports():
    graph = import_graph()
    assert "torch_bam.dispatch" in graph["torch_bam.bam"]  # a relative module-level import
    assert "torch_bam.cuda.kernels" in graph["torch_bam.cuda.block"]  # inside a function


def test_bam_imports_nothing_that_imports_it_back():
    graph = _parents_ok(import_graph())
    seen, todo = set(), list(graph["torch_bam.bam"])
    while todo:
        m = todo.pop()
        if m not in seen:
            seen.add(m)
            todo += graph[m]
    assert "torch_bam.bam" not in seen
