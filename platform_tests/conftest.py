"""Shared fixtures: every test gets its own platform home in a temp dir; nothing touches the network."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import yaml

from mlplatform.home import DAGSTER_YAML, prepare_home
from mlplatform.settings import apply_mlflow_env_defaults, load_settings
from mlplatform.specs.loader import BUNDLED_SPECS_DIR
from platform_tests.postgres import postgres_cluster  # noqa: F401  (session fixture, for every folder)

# The test process is an entry point too: MLflow's HTTP timeouts etc. as `mlplatform` sets them.
apply_mlflow_env_defaults()

REPO_ROOT = Path(__file__).resolve().parents[1]
BIKE_CSV = BUNDLED_SPECS_DIR.parent / "datasets" / "data" / "bike_sharing_hour.csv"
BIKE_ROWS = 17_379


@pytest.fixture
def platform_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh $MLPLATFORM_HOME with its own Dagster instance (SQLite) and no extra specs."""
    home = tmp_path / "home"
    for name in ("MLPLATFORM_SPECS", "MLPLATFORM_WAREHOUSE", "MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("MLPLATFORM_HOME", str(home))
    monkeypatch.setenv("DAGSTER_HOME", str(home / "dagster"))
    prepare_home(load_settings())
    return home


@pytest.fixture(autouse=True)
def restore_mlflow_env() -> Iterator[None]:
    """MLflow exports the URIs it is pointed at (and keeps them process-wide); keep them from leaking
    into later tests, whose clients would otherwise read another test's registry."""
    import mlflow

    saved = {name: os.environ.get(name) for name in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")}
    yield
    mlflow.set_tracking_uri(None)
    mlflow.set_registry_uri(None)
    for name, value in saved.items():
        os.environ.pop(name, None)
        if value is not None:
            os.environ[name] = value


def bike_spec_dict() -> dict:
    return yaml.safe_load((BUNDLED_SPECS_DIR / "bike_sharing.yaml").read_text())


@pytest.fixture
def write_spec(tmp_path: Path) -> Callable[..., Path]:
    """Write a spec (dict or text) into a temp spec folder; returns the file path."""
    folder = tmp_path / "specs"
    folder.mkdir(exist_ok=True)

    def write(spec: dict | str, filename: str = "spec.yaml") -> Path:
        path = folder / filename
        path.write_text(spec if isinstance(spec, str) else yaml.safe_dump(spec, sort_keys=False))
        return path

    return write


@pytest.fixture
def use_extra_specs(monkeypatch: pytest.MonkeyPatch) -> Callable[[Path], None]:
    def use(folder: Path) -> None:
        monkeypatch.setenv("MLPLATFORM_SPECS", str(folder))

    return use


def subprocess_env(home: Path, **extra: str) -> dict[str, str]:
    """Environment for a CLI subprocess with its own platform home (Dagster needs the folder to exist)."""
    config = home / "dagster" / "dagster.yaml"
    if not config.exists():
        config.parent.mkdir(parents=True, exist_ok=True)
        config.write_text(DAGSTER_YAML)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLPLATFORM_", "MLFLOW_", "DAGSTER_"))}
    env.update(MLPLATFORM_HOME=str(home), DAGSTER_HOME=str(home / "dagster"), **extra)
    return env


def mlplatform_cli(
    *args: str, home: Path, timeout: float = 120, **env: str
) -> subprocess.CompletedProcess[str]:
    """`mlplatform ARGS` in a subprocess, as a user runs it, against the platform home `home`."""
    return subprocess.run(
        ["mlplatform", *args],
        cwd=home.parent,
        env=subprocess_env(home, **env),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
