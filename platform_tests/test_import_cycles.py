"""No import cycles among mlplatform modules, counting imports inside functions too.

A function-local import that exists to dodge a cycle is still a cycle in the design: the graph below
takes every `import` that can run (module level or in a function), and leaves out only
`if TYPE_CHECKING:` blocks, which never run.
"""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

import mlplatform

PACKAGE_DIR = Path(mlplatform.__file__).resolve().parent


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE_DIR.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def all_modules() -> dict[str, Path]:
    return {module_name(path): path for path in sorted(PACKAGE_DIR.rglob("*.py"))}


def _is_type_checking_block(node: ast.AST) -> bool:
    test = node.test if isinstance(node, ast.If) else None
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _runnable_imports(tree: ast.AST) -> list[ast.Import | ast.ImportFrom]:
    found: list[ast.Import | ast.ImportFrom] = []
    pending = [tree]
    while pending:
        node = pending.pop()
        if isinstance(node, ast.Import | ast.ImportFrom):
            found.append(node)
        children = list(ast.iter_child_nodes(node))
        if _is_type_checking_block(node):
            children = list(node.orelse)  # type: ignore[attr-defined]
        pending.extend(children)
    return found


def imported_modules(module: str, path: Path, known: set[str]) -> set[str]:
    """The mlplatform modules `module` imports: `from a import b` counts `a.b` when b is a module."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    targets: set[str] = set()
    for node in _runnable_imports(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        else:
            base = node.module or ""
            if node.level:
                anchor = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{anchor}.{base}" if base else anchor
            names = [
                f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base for alias in node.names
            ]
        targets |= {name for name in names if name in known and name != module}
    return targets


def import_graph() -> dict[str, set[str]]:
    modules = all_modules()
    known = set(modules)
    return {name: imported_modules(name, path, known) for name, path in modules.items()}


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every strongly connected component of more than one module (Tarjan), each as a sorted list."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph.get(node, ())):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return cycles


def test_the_cycle_finder_sees_a_cycle_made_by_a_function_local_import(tmp_path: Path) -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert find_cycles(graph) == [["a", "b", "c"]]
    source = "import os\n\ndef late():\n    from mlplatform import cli\n"
    module = tmp_path / "mlplatform" / "late.py"
    module.parent.mkdir()
    module.write_text(source)
    tree_targets = {
        n.module for n in _runnable_imports(ast.parse(source)) if isinstance(n, ast.ImportFrom) and n.module
    }
    assert tree_targets == {"mlplatform"}
    typed_only = "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from mlplatform import cli\n"
    assert [n for n in _runnable_imports(ast.parse(typed_only)) if n.module == "mlplatform"] == []


def test_the_graph_holds_the_known_edges() -> None:
    graph = import_graph()
    assert "mlplatform.settings" in graph["mlplatform.cli"]
    assert "mlplatform.runner" in graph["mlplatform.cli"], "cli imports runner (inside cmd_run)"


def test_no_import_cycles_among_mlplatform_modules() -> None:
    assert find_cycles(import_graph()) == []


@pytest.mark.parametrize("module", sorted(all_modules()))
def test_every_module_imports_on_its_own(module: str) -> None:
    importlib.import_module(module)
