"""Packaging: `platform/` never shadows the standard library, and every CLI finds the code location."""

from __future__ import annotations

import importlib.util
import platform
import subprocess
import sys
import sysconfig
import tomllib
from pathlib import Path
from types import ModuleType

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from platform_tests.conftest import REPO_ROOT, subprocess_env
from platform_tests.servers import free_port, running, wait_for_asset_keys

STDLIB = Path(sysconfig.get_paths()["stdlib"]).resolve()


def test_platform_folder_is_not_a_package() -> None:
    assert not (REPO_ROOT / "platform" / "__init__.py").exists()
    assert (REPO_ROOT / "platform" / "mlplatform" / "__init__.py").exists()


def test_platform_is_the_standard_library_module_in_the_test_run() -> None:
    assert Path(platform.__file__).resolve().parent == STDLIB
    assert platform.python_version().startswith("3.")


@pytest.mark.e2e  # starts a Python process at the repo root
def test_platform_is_the_standard_library_module_in_a_subprocess_at_the_repo_root(tmp_path: Path) -> None:
    probe = "import platform, mlplatform.definitions; print(platform.__file__); print(platform.system())"
    out = subprocess.run(
        [sys.executable, "-c", probe],
        cwd=REPO_ROOT,
        env=subprocess_env(tmp_path / "home"),
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout.split()
    assert Path(out[0]).resolve().parent == STDLIB
    assert out[1] == platform.system()


@pytest.mark.e2e
def test_dagster_cli_materializes_a_partition_from_the_repo_root(tmp_path: Path) -> None:
    """The `dagster` CLI (which itself imports the standard library's `platform`) runs our assets."""
    home = tmp_path / "home"
    result = subprocess.run(
        [
            "dagster",
            "asset",
            "materialize",
            "-m",
            "mlplatform.definitions",
            "--select",
            "bike_sharing/raw",
            "--partition",
            "2011-01-02",
        ],
        cwd=REPO_ROOT,
        env=subprocess_env(home),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    assert "RUN_SUCCESS" in result.stderr + result.stdout


@pytest.mark.e2e
@pytest.mark.parametrize(
    "command",
    [
        ["dagster", "dev", "-w", "workspace.yaml"],
        ["dg", "dev", "--use-active-venv"],
    ],
    ids=["dagster-dev", "dg-dev"],
)
def test_dev_servers_show_the_asset_graph(command: list[str], tmp_path: Path) -> None:
    port = free_port()
    log = tmp_path / "server.log"
    home = tmp_path / "home"
    full = [*command, "--host", "127.0.0.1", "--port", str(port)]
    with running(full, subprocess_env(home), REPO_ROOT, log) as proc:
        keys = wait_for_asset_keys(port, proc, log)
    assert {
        "bike_sharing/raw",
        "bike_sharing/clean",
        "bike_sharing/quarantine",
        "bike_sharing/features",
    } <= set(keys)


@pytest.mark.e2e
def test_dg_launch_and_asset_listing_work_as_documented(tmp_path: Path) -> None:
    env = subprocess_env(tmp_path / "home")
    listing = subprocess.run(
        ["dagster", "asset", "list", "-m", "mlplatform.definitions"],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert listing.returncode == 0, listing.stderr[-2000:]
    assert {"bike_sharing/raw", "bike_sharing/predictions", "transactions/drift_report"} <= set(
        listing.stdout.split()
    )
    launch = subprocess.run(
        ["dg", "launch", "--assets", "key:bike_sharing/raw", "--partition-range", "2011-01-02...2011-01-09"],
        cwd=REPO_ROOT / "platform",
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert launch.returncode == 0, launch.stdout[-2000:] + launch.stderr[-3000:]
    assert "RUN_SUCCESS" in launch.stdout + launch.stderr


def _freezer() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "freeze_constraints", REPO_ROOT / ".ci" / "freeze_constraints.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _declared_requirements() -> list[Requirement]:
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
    declared = [*project["dependencies"]]
    for extra in project["optional-dependencies"].values():
        declared += [text for text in extra if not text.startswith("mlplatform[")]
    return [Requirement(text) for text in declared]


def _pins() -> dict[str, Version]:
    lines = (REPO_ROOT / ".ci" / "constraints.txt").read_text().splitlines()
    pairs = [line.split("==") for line in lines if line and not line.startswith("#")]
    return {canonicalize_name(name): Version(version) for name, version in pairs}


def test_every_dependency_stops_before_its_next_major_and_is_pinned_inside_its_range() -> None:
    pins = _pins()
    for requirement in _declared_requirements():
        uppers = [s for s in requirement.specifier if s.operator == "<"]
        assert uppers, f"{requirement} has no upper bound"
        name = canonicalize_name(requirement.name)
        if name in pins:  # the bench extra is not part of what CI installs
            assert requirement.specifier.contains(pins[name]), (
                f"{name}=={pins[name]} is outside {requirement}"
            )
    for name in ("dagster", "mlflow", "pandas", "lightgbm", "duckdb", "pandera"):
        assert name in pins, f"{name} is not pinned in .ci/constraints.txt"


def test_the_constraints_pin_exactly_what_the_test_install_brought() -> None:
    """CI installs with `-c .ci/constraints.txt`: afterwards the installed closure is the file, exactly."""
    installed = {name: Version(version) for name, version in _freezer().installed_closure().items()}
    pins = _pins()
    assert installed == pins, {
        "installed, not pinned": sorted(set(installed) - set(pins)),
        "pinned, not installed": sorted(set(pins) - set(installed)),
        "other version": sorted(n for n in set(installed) & set(pins) if installed[n] != pins[n]),
    }
