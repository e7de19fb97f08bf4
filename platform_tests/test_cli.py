"""The `mlplatform` command as a user runs it: in a subprocess, against a temp home."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import dagster as dg
import pytest

from mlplatform.runner import stage_selection
from mlplatform.stages import runnable_stages
from platform_tests.conftest import bike_spec_dict, mlplatform_cli, subprocess_env


@pytest.mark.e2e  # starts `mlplatform` processes
def test_help_explains_every_command(tmp_path: Path) -> None:
    result = mlplatform_cli("--help", home=tmp_path / "home")
    assert result.returncode == 0
    for command in ("run", "specs"):
        assert command in result.stdout
    run_help = mlplatform_cli("run", "--help", home=tmp_path / "home")
    assert "--dataset" in run_help.stdout and "--home" in run_help.stdout
    assert "training_set, model, evaluation, predictions;" in " ".join(run_help.stdout.split())


def test_a_stage_selects_the_assets_its_step_writes_as_plain_keys() -> None:
    assert stage_selection("bike", None) is None
    selection = stage_selection("bike", ["clean", "predictions"])
    assert selection == [dg.AssetKey(["bike", name]) for name in ("clean", "quarantine", "predictions")]
    # A Stage (StrEnum) in a key's path would fail when Dagster serializes the run's job snapshot.
    assert {type(part) for key in selection for part in key.path} == {str}
    assert set(runnable_stages()) >= {"raw", "clean", "predictions"}


@pytest.mark.e2e  # starts `mlplatform` processes
def test_unknown_dataset_is_one_clear_line(tmp_path: Path) -> None:
    result = mlplatform_cli("run", "--dataset", "nope", home=tmp_path / "home")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "mlplatform: error: unknown dataset nope (known: bike_sharing, transactions)"
    ]


@pytest.mark.e2e  # starts `mlplatform` processes
def test_bad_spec_is_one_clear_line(tmp_path: Path, write_spec: Callable[..., Path]) -> None:
    spec = bike_spec_dict()
    spec["name"] = "broken"
    spec["columns"]["temp"]["type"] = "decimal"
    path = write_spec(spec, "broken.yaml")
    # A broken spec no longer stops the others: `run` alone would run the bundled datasets, so the
    # one-line error is what running the broken dataset itself gives (issue 10).
    for command in (["specs"], ["run", "--dataset", "broken"]):
        result = mlplatform_cli(*command, home=tmp_path / "home", MLPLATFORM_SPECS=str(path.parent))
        assert result.returncode == 2, result.stderr
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and "Traceback" not in result.stderr
        assert lines[0].startswith(f"mlplatform: error: spec file {path}: key 'columns.temp.type'")


@pytest.mark.e2e  # starts `mlplatform` processes
def test_missing_source_file_is_one_clear_line(tmp_path: Path, write_spec: Callable[..., Path]) -> None:
    spec = bike_spec_dict()
    spec["name"] = "moved"
    spec["source"]["path"] = str(tmp_path / "gone.csv")
    path = write_spec(spec, "moved.yaml")
    result = mlplatform_cli(
        "run", "--dataset", "moved", home=tmp_path / "home", MLPLATFORM_SPECS=str(path.parent)
    )
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip() == (
        f"mlplatform: error: spec file {path}: key 'source.path': file {tmp_path / 'gone.csv'} does not exist"
    )


@pytest.mark.e2e  # starts four Python processes that open the instance
def test_prepared_home_has_its_instance_storage_before_any_process_starts(platform_home: Path) -> None:
    """`mlplatform` creates the SQLite instance once, so a daemon and a webserver can start together.

    Two processes opening a fresh home at once both create its tables and one dies on a duplicate
    `alembic_version` row; on a prepared home they only read it.
    """
    dagster_home = platform_home / "dagster"
    for database in ("history/runs.db", "schedules/schedules.db"):
        with sqlite3.connect(dagster_home / database) as connection:
            assert connection.execute("SELECT count(*) FROM alembic_version").fetchone() == (1,)
    open_instance = "import dagster; dagster.DagsterInstance.get().dispose()"
    together = [
        subprocess.Popen(
            [sys.executable, "-c", open_instance],
            env=subprocess_env(platform_home),
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(4)
    ]
    for process in together:
        _, errors = process.communicate(timeout=120)
        assert process.returncode == 0, errors[-2000:]


@pytest.mark.e2e  # starts `mlplatform` processes
def test_specs_lists_the_bundled_datasets(tmp_path: Path) -> None:
    result = mlplatform_cli("specs", home=tmp_path / "home")
    assert result.returncode == 0, result.stderr
    assert "bike_sharing:" in result.stdout and "2011-01-01 00:00:00 .. 2012-12-31 23:00:00" in result.stdout


# The README's `mlplatform run` and the commands its summary prints: platform_tests/test_readme_commands.py.
