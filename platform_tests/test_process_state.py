"""Process-wide state has owners: os.environ is written at entry points only, and MLflow's fluent URIs
only inside a block that puts them back (resources/test_mlflow_resource.py checks that block)."""

from __future__ import annotations

import ast
from collections.abc import Iterator

import pytest

from mlplatform.settings import ENV_DEFAULTS, apply_mlflow_env_defaults
from platform_tests.test_import_cycles import all_modules

# (module, function) allowed to write os.environ, and why.
ENVIRON_WRITERS = {
    # Puts back the MLFLOW_*_URI variables that mlflow.set_tracking_uri / set_registry_uri export.
    ("mlplatform.resources.mlflow", "fluent_api"),
    # Puts back what distributed's nannies write into os.environ when a LocalCluster starts its workers
    # (OMP_NUM_THREADS=1, ...): the driver's own LightGBM must keep its threads.
    ("mlplatform.resources.dask", "_driver_environ_kept"),
}
# The entry points that apply MLflow's environment defaults (settings.apply_mlflow_env_defaults writes
# os.environ through a parameter, which the scanner above cannot follow).
ENV_DEFAULTS_CALLERS = {
    ("mlplatform.cli", "process_settings"),
    ("mlplatform.definitions", "<module>"),
    ("mlplatform.component", "build_defs"),
}
_WRITING_METHODS = {"setdefault", "pop", "update", "clear", "popitem", "__setitem__", "__delitem__"}


def _is_os_environ(node: ast.AST) -> bool:
    return (
        isinstance(node, ast.Attribute)
        and node.attr == "environ"
        and isinstance(node.value, ast.Name)
        and node.value.id == "os"
    )


def nodes_in_functions(source: str) -> Iterator[tuple[str, ast.AST]]:
    """Every node of `source` with the name of the function around it (`<module>` at the top)."""

    def visit(node: ast.AST, function: str) -> Iterator[tuple[str, ast.AST]]:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            function = node.name
        yield function, node
        for child in ast.iter_child_nodes(node):
            yield from visit(child, function)

    return visit(ast.parse(source), "<module>")


def _writes_environ(node: ast.AST) -> bool:
    targets: list[ast.AST] = []
    if isinstance(node, ast.Assign | ast.Delete):
        targets = list(node.targets)
    elif isinstance(node, ast.AugAssign | ast.AnnAssign):
        targets = [node.target]
    if any(isinstance(t, ast.Subscript) and _is_os_environ(t.value) for t in targets):
        return True
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
        method = node.func
        writes_environ = _is_os_environ(method.value) and method.attr in _WRITING_METHODS
        os_call = isinstance(method.value, ast.Name) and method.value.id == "os"
        return writes_environ or (os_call and method.attr in ("putenv", "unsetenv"))
    return False


def environ_writes(source: str) -> list[tuple[str, int]]:
    """(enclosing function, line) of each write to os.environ: item assignment or deletion, a mutating
    method, os.putenv / os.unsetenv."""
    return [(function, node.lineno) for function, node in nodes_in_functions(source) if _writes_environ(node)]


def test_the_scanner_sees_each_kind_of_write() -> None:
    source = (
        "import os\n"
        "os.environ['A'] = '1'\n"
        "def f():\n    os.environ.setdefault('B', '2')\n    del os.environ['A']\n"
        "def g():\n    os.putenv('C', '3')\n    os.environ.get('D')\n"
    )
    assert environ_writes(source) == [("<module>", 2), ("f", 4), ("f", 5), ("g", 7)]


@pytest.mark.parametrize("module", sorted(all_modules()))
def test_no_module_writes_the_environment_outside_its_entry_point(module: str) -> None:
    writes = environ_writes(all_modules()[module].read_text())
    assert [(function, line) for function, line in writes if (module, function) not in ENVIRON_WRITERS] == []


def test_the_env_defaults_never_override_the_users_values() -> None:
    environ = {"MLFLOW_HTTP_REQUEST_TIMEOUT": "2"}
    apply_mlflow_env_defaults(environ)
    assert environ == {**ENV_DEFAULTS, "MLFLOW_HTTP_REQUEST_TIMEOUT": "2"}
    assert environ["MLFLOW_DISABLE_TELEMETRY"] == "true"


def _applies_env_defaults(node: ast.AST) -> bool:
    if not isinstance(node, ast.Call) or node.args or node.keywords:
        return False
    return (getattr(node.func, "id", None) or getattr(node.func, "attr", None)) == "apply_mlflow_env_defaults"


def env_defaults_calls(source: str) -> list[tuple[str, int]]:
    """(enclosing function, line) of each `apply_mlflow_env_defaults()` that writes os.environ (no argument)."""
    return [
        (function, node.lineno)
        for function, node in nodes_in_functions(source)
        if _applies_env_defaults(node)
    ]


def test_only_the_entry_points_apply_the_mlflow_environment_defaults() -> None:
    calls = {
        (module, function)
        for module, path in all_modules().items()
        for function, _ in env_defaults_calls(path.read_text())
    }
    assert calls == ENV_DEFAULTS_CALLERS


def test_the_code_location_sets_passive_openmp_waits_before_lightgbm_loads_unless_the_user_chose() -> None:
    import os
    import subprocess
    import sys

    # Records OMP_WAIT_POLICY at the moment LightGBM is first imported: OpenMP reads it only then.
    probe = """
import os, sys
seen = []
class Spy:
    def find_spec(self, name, path=None, target=None):
        if name == "lightgbm" and not seen:
            seen.append(os.environ.get("OMP_WAIT_POLICY", "unset"))
        return None
sys.meta_path.insert(0, Spy())
import mlplatform.definitions
print(seen[0] if seen else "lightgbm-not-imported")
"""
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    first = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, check=True)
    assert first.stdout.split() == ["PASSIVE"]
    mine = {**env, "OMP_WAIT_POLICY": "ACTIVE"}
    kept = subprocess.run([sys.executable, "-c", probe], env=mine, capture_output=True, text=True, check=True)
    assert kept.stdout.split() == ["ACTIVE"]
