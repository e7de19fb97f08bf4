"""Champion history, promotion and rollback against a real MLflow store (SQLite in a temp dir)."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest

from mlplatform.contracts import CHALLENGER_ALIAS, CHAMPION_ALIAS
from mlplatform.core.training import lightgbm_params, predict, train_lightgbm
from mlplatform.models.registry import (
    RegistryError,
    champion_history,
    load_version,
    log_lightgbm_model,
    promote,
    register_version,
    rollback,
)
from mlplatform.resources.mlflow import MlflowResource
from platform_tests.conftest import subprocess_env

MODEL = "toy"


@pytest.fixture(scope="module")
def resource(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MlflowResource]:
    root = tmp_path_factory.mktemp("registry")
    # No stray URI may point the resource elsewhere; conftest's restore_mlflow_env puts them back.
    for name in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI"):
        os.environ.pop(name, None)
    yield MlflowResource(
        tracking_uri=f"sqlite:///{root / 'mlflow.db'}", artifact_location=(root / "artifacts").as_uri()
    )


@pytest.fixture(scope="module")
def frame() -> pd.DataFrame:
    rng = np.random.default_rng(0)
    data = pd.DataFrame({"x": rng.normal(size=300), "colour": rng.choice(["red", "blue"], size=300)})
    data["y"] = 2 * data["x"] + (data["colour"] == "red")
    return data


@pytest.fixture(scope="module")
def versions(
    resource: MlflowResource, frame: pd.DataFrame, tmp_path_factory: pytest.TempPathFactory
) -> list[int]:
    """Three registered versions of MODEL, none promoted yet."""
    found = []
    features = frame[["x", "colour"]]
    for rounds in (5, 10, 20):
        model = train_lightgbm(
            "regression", features, frame["y"], None, None, lightgbm_params("regression", None, {}), rounds, 5
        )
        with resource.start_run(MODEL) as run:
            info = log_lightgbm_model(model, features.head(3), tmp_path_factory.mktemp("work"))
            found.append(
                int(register_version(resource, MODEL, info, run.info.run_id, {"rounds": rounds}).version)
            )
    return found


def champion(resource: MlflowResource) -> int | None:
    version = resource.get_alias_version(MODEL, CHAMPION_ALIAS)
    return None if version is None else int(version.version)


def test_new_versions_are_challengers_and_load_back_from_text(
    resource: MlflowResource, versions: list[int], frame: pd.DataFrame
) -> None:
    assert versions == [1, 2, 3]
    assert int(resource.get_alias_version(MODEL, CHALLENGER_ALIAS).version) == 3
    loaded = load_version(resource, MODEL, 1)
    assert loaded.feature_names == ["x", "colour"] and loaded.categorical_levels == {
        "colour": ["blue", "red"]
    }
    assert np.isfinite(predict(loaded, frame)).all()
    assert resource.client().get_model_version(MODEL, "1").tags["rounds"] == "5"


def test_promotions_build_a_history_that_rollback_undoes(
    resource: MlflowResource, versions: list[int]
) -> None:
    with pytest.raises(RegistryError, match="no earlier champion"):
        rollback(resource, MODEL)
    assert promote(resource, MODEL, 1).previous is None
    change = promote(resource, MODEL, 3)
    assert (change.previous, change.current, champion(resource)) == (1, 3, 3)
    assert champion_history(resource, MODEL) == [1, 3]
    assert resource.client().get_model_version(MODEL, "3").tags["previous_champion"] == "1"

    # --to pushes onto the history, a plain rollback pops: 3 -> 2 -> 3 -> 1.
    assert rollback(resource, MODEL, to=2).current == 2
    assert champion_history(resource, MODEL) == [1, 3, 2]
    assert (rollback(resource, MODEL).current, champion(resource)) == (3, 3)
    assert (rollback(resource, MODEL).current, champion(resource)) == (1, 1)
    assert champion_history(resource, MODEL) == [1]
    with pytest.raises(RegistryError, match="no earlier champion"):
        rollback(resource, MODEL)


def test_rollback_refuses_what_it_cannot_do(resource: MlflowResource, versions: list[int]) -> None:
    with pytest.raises(RegistryError, match=r"toy has no version 7 \(versions: \[1, 2, 3\]\)"):
        rollback(resource, MODEL, to=7)
    current = champion(resource) or promote(resource, MODEL, 2).current
    with pytest.raises(RegistryError, match="already the champion"):
        rollback(resource, MODEL, to=current)
    with pytest.raises(RegistryError, match="no registered model 'missing'"):
        rollback(resource, "missing")


def test_the_logged_model_is_a_pyfunc_without_pickle(
    resource: MlflowResource, versions: list[int], frame: pd.DataFrame, tmp_path: Path
) -> None:
    with resource.fluent_api():  # the fluent API reads process-wide URIs
        root = Path(mlflow.artifacts.download_artifacts(f"models:/{MODEL}/2", dst_path=str(tmp_path)))
        pyfunc = mlflow.pyfunc.load_model(f"models:/{MODEL}/2")
    files = {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()}
    assert {"MLmodel", "lightgbm_pyfunc.py", "artifacts/lightgbm/model.txt", "input_example.json"} <= files
    assert not [name for name in files if name.endswith((".pkl", ".pickle"))]
    assert list(pyfunc.predict(frame[["x", "colour"]])) == pytest.approx(
        list(predict(load_version(resource, MODEL, 2), frame))
    )


@pytest.mark.e2e  # starts `mlplatform rollback` processes
def test_rollback_command_in_a_subprocess_moves_the_champion(
    resource: MlflowResource, frame: pd.DataFrame, tmp_path: Path
) -> None:
    """`mlplatform rollback` as a user runs it, against a store named by MLFLOW_TRACKING_URI."""
    name = "toy_cli"
    features = frame[["x", "colour"]]
    for rounds in (5, 10):
        model = train_lightgbm(
            "regression", features, frame["y"], None, None, lightgbm_params("regression", None, {}), rounds, 5
        )
        with resource.start_run(name) as run:
            info = log_lightgbm_model(model, features.head(3), tmp_path / f"work{rounds}")
            register_version(resource, name, info, run.info.run_id, {"rounds": rounds})
    promote(resource, name, 1)
    promote(resource, name, 2)
    home = tmp_path / "home"

    def mlplatform_rollback(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["mlplatform", "rollback", "--dataset", name, *args],
            cwd=tmp_path,
            env=subprocess_env(home, MLFLOW_TRACKING_URI=resource.tracking_uri),
            capture_output=True,
            text=True,
            timeout=120,
        )

    back = mlplatform_rollback()
    assert back.returncode == 0, back.stderr
    assert back.stdout.splitlines() == [
        f"{name}: champion moved from version 2 to version 1 (MLflow registry {resource.tracking_uri})",
        f"re-score with it: mlplatform rescore --dataset {name}",
    ]
    assert int(resource.get_alias_version(name, CHAMPION_ALIAS).version) == 1
    assert champion_history(resource, name) == [1]

    forward = mlplatform_rollback("--to", "2", "--home", str(home))
    assert forward.returncode == 0, forward.stderr
    assert "champion moved from version 1 to version 2" in forward.stdout
    assert f"mlplatform rescore --dataset {name} --home {home}" in forward.stdout
    assert int(resource.get_alias_version(name, CHAMPION_ALIAS).version) == 2
    assert champion_history(resource, name) == [1, 2]
