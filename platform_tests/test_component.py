"""mlplatform.DatasetComponent: the platform inside a team's own dg project.

The fast tests load components in-process through Dagster's public component sandbox; the e2e test
builds a throwaway dg project and runs, as subprocesses, exactly what a user types.
"""

from __future__ import annotations

import csv
import importlib.metadata
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import duckdb
import pytest
import yaml
from dagster.components.testing import DefsFolderSandbox, create_defs_folder_sandbox

import mlplatform
from mlplatform.component import VALIDATION_CLI_ENV, DatasetComponent, component_settings
from mlplatform.component_scaffold import SAMPLE_COLUMNS, sample_rows
from mlplatform.contracts import Stage
from mlplatform.factory import build_definitions
from mlplatform.sensors.recovery import RECOVERY_SENSOR
from mlplatform.settings import load_settings
from mlplatform.specs.loader import SpecError, parse_spec
from mlplatform.specs.model import DatasetSpec
from platform_tests.conftest import subprocess_env


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "home"
    for name in ("MLPLATFORM_SPECS", "MLPLATFORM_WAREHOUSE", "MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.delenv(VALIDATION_CLI_ENV, raising=False)
    monkeypatch.setenv("MLPLATFORM_HOME", str(home))
    return home


@pytest.fixture
def sandbox(home: Path) -> Iterator[DefsFolderSandbox]:
    with create_defs_folder_sandbox() as sandbox:
        yield sandbox


def scaffold(sandbox: DefsFolderSandbox, folder: str) -> Path:
    return sandbox.scaffold_component(component_cls=DatasetComponent, defs_path=folder)


def write_defs(folder: Path, attributes: dict) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "defs.yaml"
    path.write_text(yaml.safe_dump({"type": "mlplatform.DatasetComponent", "attributes": attributes}))
    return path


def loans_attributes(sandbox_folder: Path) -> dict:
    return yaml.safe_load((sandbox_folder / "defs.yaml").read_text())["attributes"]


def asset_keys(defs: dg.Definitions) -> set[str]:
    return {key.to_user_string() for key in defs.resolve_all_asset_keys()}


def check_keys(defs: dg.Definitions) -> set[dg.AssetCheckKey]:
    return {key for checks in defs.asset_checks or [] for key in checks.check_keys}


def spec_error_in(error: BaseException) -> SpecError:
    """The SpecError at the root of Dagster's wrapping of a component's failure."""
    seen: BaseException | None = error
    while seen is not None and not isinstance(seen, SpecError):
        seen = seen.__cause__ or seen.__context__
    assert seen is not None, f"no SpecError behind {error!r}"
    return seen


def test_a_scaffolded_component_yields_what_our_code_location_builds_for_its_spec(
    sandbox: DefsFolderSandbox, home: Path
) -> None:
    folder = scaffold(sandbox, "loans")
    with sandbox.load_component_and_build_defs(defs_path=folder) as (component, defs):
        dg.Definitions.validate_loadable(defs)
    assert isinstance(component, DatasetComponent) and isinstance(component.spec, DatasetSpec)
    spec = component.spec
    assert spec.spec_path == folder / "defs.yaml"
    assert spec.source_pattern == str((folder / "loans.csv").resolve())  # relative to the defs.yaml folder
    assert asset_keys(defs) == {f"loans/{stage}" for stage in Stage}

    ours = build_definitions(load_settings(), specs=[spec])
    assert asset_keys(defs) == asset_keys(ours)
    assert check_keys(defs) == check_keys(ours) and check_keys(defs)
    assert {j.name for j in defs.jobs or []} == {j.name for j in ours.jobs or []}
    assert {s.name for s in defs.sensors or []} == {s.name for s in ours.sensors or []}
    assert {s.name for s in defs.schedules or []} == {s.name for s in ours.schedules or []}
    assert set(defs.resources or {}) == {"warehouse", "mlflow", "mlflow_plots", "dask"}
    assert defs.resources["warehouse"].database == str(home / "warehouse" / "{dataset}-warehouse.duckdb")


def test_the_sample_csv_is_deterministic_and_has_both_labels(sandbox: DefsFolderSandbox) -> None:
    first, second = scaffold(sandbox, "loans"), scaffold(sandbox, "again")
    assert (first / "loans.csv").read_bytes() == (second / "again.csv").read_bytes()
    with (first / "loans.csv").open(newline="") as file:
        rows = list(csv.DictReader(file))
    assert list(rows[0]) == list(SAMPLE_COLUMNS) and len(rows) == len(sample_rows())
    labels = [row["defaulted"] for row in rows]
    assert {"0", "1"} == set(labels) and 0.05 < labels.count("1") / len(labels) < 0.6


def test_two_components_load_together_with_one_recovery_sensor(sandbox: DefsFolderSandbox) -> None:
    scaffold(sandbox, "loans")
    scaffold(sandbox, "credit-cards")  # folder names that are no dataset name get a valid one
    with sandbox.build_all_defs() as defs:
        dg.Definitions.validate_loadable(defs)
    assert asset_keys(defs) == {f"{name}/{stage}" for name in ("loans", "credit_cards") for stage in Stage}
    sensors = [s.name for s in defs.sensors or []]
    assert sensors.count(RECOVERY_SENSOR) == 1
    assert {"loans__drift_sensor", "credit_cards__drift_sensor"} <= set(sensors)


def test_a_broken_spec_fails_check_naming_file_and_key_with_the_spec_file_message(
    sandbox: DefsFolderSandbox, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    good = scaffold(sandbox, "loans")
    attributes = loans_attributes(good)
    attributes["name"] = "cards"
    attributes["target"]["task"] = "binaryy"
    attributes["colums"] = {}
    broken = write_defs(sandbox.defs_folder_path / "cards", attributes)

    monkeypatch.setenv(VALIDATION_CLI_ENV, "1")  # what `dg check defs` sets
    with pytest.raises(Exception) as raised, sandbox.build_all_defs():
        pass
    message = str(spec_error_in(raised.value))
    assert message.startswith(f"spec file {broken}: ")
    assert "key 'target.task'" in message and "key 'colums': unknown key" in message

    spec_file = tmp_path / "cards.yaml"
    spec_file.write_text(yaml.safe_dump(attributes))
    with pytest.raises(SpecError) as as_spec_file:
        parse_spec(spec_file)
    assert message.replace(str(broken), "FILE") == str(as_spec_file.value).replace(str(spec_file), "FILE")


def test_elsewhere_a_broken_spec_is_its_own_error_sensor_and_the_others_load(
    sandbox: DefsFolderSandbox,
) -> None:
    attributes = loans_attributes(scaffold(sandbox, "loans"))
    attributes.update(name="cards", source={"path": "nowhere.csv"})
    missing = write_defs(sandbox.defs_folder_path / "cards", attributes)
    with sandbox.build_all_defs() as defs:
        dg.Definitions.validate_loadable(defs)
    assert asset_keys(defs) == {f"loans/{stage}" for stage in Stage}
    error_sensor = next(s for s in defs.sensors or [] if s.name == "cards__spec_error")
    expected = f"spec file {missing}: key 'source.path': file {missing.parent / 'nowhere.csv'} does not exist"
    assert expected in (error_sensor.description or "")


def test_a_second_component_of_one_dataset_name_is_broken_naming_the_first(
    sandbox: DefsFolderSandbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = scaffold(sandbox, "loans")
    attributes = loans_attributes(first)
    attributes["source"]["path"] = str(first / "loans.csv")
    second = write_defs(sandbox.defs_folder_path / "more_loans", attributes)
    monkeypatch.setenv(VALIDATION_CLI_ENV, "1")
    with pytest.raises(Exception) as raised, sandbox.build_all_defs():
        pass
    expected = f"spec file {second}: key 'name': 'loans' is already defined in {first / 'defs.yaml'}"
    assert str(spec_error_in(raised.value)) == expected


def test_three_components_of_one_name_load_with_one_error_sensor_each(sandbox: DefsFolderSandbox) -> None:
    first = scaffold(sandbox, "loans")
    attributes = loans_attributes(first)
    attributes["source"]["path"] = str(first / "loans.csv")
    for folder in ("more_loans", "most_loans"):
        write_defs(sandbox.defs_folder_path / folder, attributes)
    with sandbox.build_all_defs() as defs:
        dg.Definitions.validate_loadable(defs)
    assert asset_keys(defs) == {f"loans/{stage}" for stage in Stage}
    errors = sorted(s.name for s in defs.sensors or [] if "spec_error" in s.name)
    assert errors == ["loans__spec_error", "loans__spec_error_"]


def test_settings_default_to_a_home_in_the_project_root(tmp_path: Path) -> None:
    assert component_settings(tmp_path, {}).home == tmp_path / ".mlplatform"
    own = tmp_path / "elsewhere"
    settings = component_settings(tmp_path, {"MLPLATFORM_HOME": str(own)})
    assert settings == load_settings({"MLPLATFORM_HOME": str(own)})


def test_the_component_is_registered_for_dg_without_loading_dagster_on_import() -> None:
    entry_points = importlib.metadata.entry_points(group="dagster_dg_cli.registry_modules")
    values = {e.name: e.value for e in entry_points}
    assert values.get("mlplatform") == "mlplatform", "reinstall the package (pip install -e .) to register it"
    assert mlplatform.DatasetComponent is DatasetComponent and "DatasetComponent" in dir(mlplatform)
    code = "import sys, mlplatform.settings; print('dagster' in sys.modules)"
    probe = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert probe.stdout.strip() == "False", probe.stderr


# ---- a throwaway dg project, driven as a user drives it ----------------------------------------------

PROJECT_TOML = """\
[project]
name = "teamproj"
version = "0.1.0"

[tool.dg]
directory_type = "project"

[tool.dg.project]
root_module = "teamproj"

[tool.dg.cli.telemetry]
enabled = false
"""
DEFINITIONS_PY = """\
from pathlib import Path

import dagster as dg


@dg.definitions
def defs() -> dg.Definitions:
    return dg.load_from_defs_folder(path_within_project=Path(__file__).parent)
"""


def dg_command() -> str:
    """The `dg` of this interpreter's environment (the one mlplatform is installed in)."""
    beside = Path(sys.executable).parent / "dg"
    return str(beside) if beside.exists() else "dg"


def make_project(root: Path) -> Path:
    """A dg project with the package at its root (importable from the project folder, no install)."""
    package = root / "teamproj"
    (package / "defs").mkdir(parents=True)
    (root / "pyproject.toml").write_text(PROJECT_TOML)
    (package / "__init__.py").write_text("")
    (package / "defs" / "__init__.py").write_text("")
    (package / "definitions.py").write_text(DEFINITIONS_PY)
    return package / "defs"


def run_dg(project: Path, home: Path, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    env = subprocess_env(home)
    env.pop(VALIDATION_CLI_ENV, None)
    return subprocess.run(
        [dg_command(), *args], cwd=project, env=env, capture_output=True, text=True, timeout=timeout
    )


def csv_records(path: Path) -> int:
    with path.open(newline="") as file:
        return sum(1 for _ in csv.DictReader(file))


@pytest.mark.e2e
def test_a_team_project_scaffolds_lists_checks_and_materializes_datasets(tmp_path: Path) -> None:
    project, home = tmp_path / "teamproj", tmp_path / "home"
    defs_folder = make_project(project)

    for folder in ("loans", "credit-cards"):
        scaffolded = run_dg(project, home, "scaffold", "defs", "mlplatform.DatasetComponent", folder)
        assert scaffolded.returncode == 0, scaffolded.stdout + scaffolded.stderr
    loans_csv = defs_folder / "loans" / "loans.csv"
    assert (defs_folder / "loans" / "defs.yaml").is_file() and loans_csv.is_file()

    listed = run_dg(project, home, "list", "defs", "--json")
    assert listed.returncode == 0, listed.stderr
    listing = json.loads(listed.stdout)
    keys = {asset["asset_key"] for asset in listing["assets"]}
    assert keys == {f"{name}/{stage}" for name in ("loans", "credit_cards") for stage in Stage}
    sensors = [sensor["name"] for sensor in listing["sensors"]]
    assert sensors.count(RECOVERY_SENSOR) == 1 and "loans__new_data_sensor" in sensors
    assert {"loans__all", "loans__ingest", "loans__retrain"} <= {job["name"] for job in listing["jobs"]}
    assert {resource["name"] for resource in listing["resources"]} == {
        "warehouse",
        "mlflow",
        "mlflow_plots",
        "dask",
    }
    assert "loans/raw" in {check["asset_key"] for check in listing["asset_checks"]}

    checked = run_dg(project, home, "check", "defs")
    assert checked.returncode == 0 and "All definitions loaded successfully." in checked.stdout, (
        checked.stderr
    )

    first_stages = ",".join(f"loans/{stage}" for stage in (Stage.RAW, Stage.CLEAN, Stage.QUARANTINE))
    days = "2025-01-01...2025-03-01"  # the sample's 60 days
    launched = run_dg(
        project, home, "launch", "--assets", first_stages, "--partition-range", days, timeout=600
    )
    assert launched.returncode == 0, launched.stdout[-3000:] + launched.stderr[-3000:]
    with duckdb.connect(str(home / "warehouse" / "loans-warehouse.duckdb"), read_only=True) as conn:
        raw = conn.execute("SELECT count(*) FROM loans.raw").fetchone()
        kept = conn.execute(
            "SELECT (SELECT count(*) FROM loans.clean) + (SELECT count(*) FROM loans.quarantine)"
        ).fetchone()
    assert raw == (csv_records(loans_csv),) and kept == raw

    broken = defs_folder / "credit-cards" / "defs.yaml"
    broken.write_text(broken.read_text().replace("task: binary", "task: binaryy"))
    failed = run_dg(project, home, "check", "defs")
    output = failed.stdout + failed.stderr
    assert failed.returncode != 0
    assert f"spec file {broken}: key 'target.task': Input should be" in output
    assert "Error while building definitions for credit-cards" in output
