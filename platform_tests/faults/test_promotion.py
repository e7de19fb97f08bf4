"""Evaluation and promotion act on the version their own run trained, and a failed promotion leaves
the champion where it was. Real MLflow stores (SQLite in a temp dir) and real Dagster instances."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import dagster as dg
import numpy as np
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from mlplatform.contracts import CHALLENGER_ALIAS as CHALLENGER
from mlplatform.contracts import CHAMPION_ALIAS as CHAMPION
from mlplatform.contracts import MlflowTag
from mlplatform.core.training import lightgbm_params, train_lightgbm
from mlplatform.factory import build_definitions
from mlplatform.materializations import version_materialized
from mlplatform.models.registry import (
    PromotionError,
    champion_history,
    log_lightgbm_model,
    promote,
    register_version,
)
from mlplatform.resources.mlflow import MlflowResource
from mlplatform.runner import run_datasets
from mlplatform.stages import runnable_stages
from platform_tests.e2e.test_ml_classification import generated_frame, spec_for

pytestmark = pytest.mark.usefixtures("restore_mlflow_env")

MODEL = "toy"
TOO_LONG = "9," * 60_000  # over MLflow's 100,000-character limit for a registry tag value
FAILURES_LEFT: dict[str, int] = {}  # tag key -> how many more calls setting it fail


class _OneCallTooLong:
    """The real client, except that calls of one method setting one tag key send a value MLflow
    refuses, FAILURES_LEFT[key] times."""

    def __init__(self, client: MlflowClient, method: str, key: str) -> None:
        self._client, self._method, self._key = client, method, key

    def __getattr__(self, name: str) -> Any:
        real = getattr(self._client, name)
        if name != self._method:
            return real

        def call(*args: Any) -> Any:
            if self._key in args and FAILURES_LEFT.get(self._key, 0) > 0:
                FAILURES_LEFT[self._key] -= 1
                args = (*args[:-1], TOO_LONG)  # every tag setter takes the value last
            return real(*args)

        return call


class FailingMlflowResource(MlflowResource):
    """An MlflowResource whose registry refuses one call, for real (MLflow's own validation error)."""

    fail_method: str
    fail_key: str

    def client(self) -> MlflowClient:
        wrapped = _OneCallTooLong(super().client(), self.fail_method, self.fail_key)
        return wrapped  # type: ignore[return-value]


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """One MLflow store for the module (creating one takes seconds); each test has its own model."""
    root = tmp_path_factory.mktemp("mlflow")
    return {
        "tracking_uri": f"sqlite:///{root / 'mlflow.db'}",
        "artifact_location": (root / "artifacts").as_uri(),
    }


@pytest.fixture
def model(request: pytest.FixtureRequest) -> str:
    return re.sub(r"\W+", "_", request.node.name)


def _register(resource: MlflowResource, model: str, count: int, work: Path) -> list[int]:
    rng = np.random.default_rng(0)
    frame = pd.DataFrame({"x": rng.normal(size=200)})
    frame["y"] = 3 * frame["x"]
    versions = []
    for rounds in range(1, count + 1):
        params = lightgbm_params("regression", None, {})
        trained = train_lightgbm("regression", frame[["x"]], frame["y"], None, None, params, rounds, 1)
        with resource.start_run(model) as run:
            info = log_lightgbm_model(trained, frame[["x"]].head(3), work / str(rounds))
            registered = register_version(resource, model, info, run.info.run_id, {"rounds": rounds})
            versions.append(int(registered.version))
    return versions


def _champion(resource: MlflowResource, model: str) -> int | None:
    found = resource.get_alias_version(model, CHAMPION)
    return None if found is None else int(found.version)


@pytest.mark.parametrize(
    ("method", "key", "step"),
    [
        ("set_registered_model_tag", MlflowTag.CHAMPION_HISTORY.value, "save the champion history"),
        ("set_model_version_tag", "promoted_at", "tag promoted_at"),
    ],
)
def test_a_promotion_that_fails_part_way_leaves_the_champion_where_it_was(
    store: dict[str, str], model: str, tmp_path: Path, method: str, key: str, step: str
) -> None:
    resource = MlflowResource(**store)
    versions = _register(resource, model, 2, tmp_path)
    promote(resource, model, versions[0])
    tags_before = resource.client().get_model_version(model, str(versions[1])).tags
    failing = FailingMlflowResource(**store, fail_method=method, fail_key=key)
    FAILURES_LEFT[key] = 1

    with pytest.raises(PromotionError) as failure:
        promote(failing, model, versions[1])

    message = str(failure.value)
    assert f"promotion of {model} version {versions[1]} failed at step '{step}'" in message
    assert "champion restored (version 1)" in message
    assert _champion(resource, model) == versions[0]
    assert champion_history(resource, model) == [versions[0]]
    assert resource.client().get_model_version(model, str(versions[1])).tags == tags_before
    # The same promotion with a registry that accepts every call goes through.
    assert promote(resource, model, versions[1]).previous == versions[0]
    assert _champion(resource, model) == versions[1] and champion_history(resource, model) == versions


def test_a_failed_first_promotion_leaves_no_champion(
    store: dict[str, str], model: str, tmp_path: Path
) -> None:
    resource = MlflowResource(**store)
    versions = _register(resource, model, 1, tmp_path)
    failing = FailingMlflowResource(
        **store, fail_method="set_registered_model_tag", fail_key=MlflowTag.CHAMPION_HISTORY.value
    )
    FAILURES_LEFT[MlflowTag.CHAMPION_HISTORY.value] = 1
    with pytest.raises(PromotionError, match=r"champion restored \(no champion\)"):
        promote(failing, model, versions[0])
    assert _champion(resource, model) is None
    assert MlflowTag.CHAMPION_HISTORY.value not in resource.client().get_registered_model(model).tags


def test_a_restore_that_fails_too_says_how_to_fix_it(
    store: dict[str, str], model: str, tmp_path: Path
) -> None:
    resource = MlflowResource(**store)
    first, second = _register(resource, model, 2, tmp_path)
    promote(resource, model, first)
    failing = FailingMlflowResource(
        **store, fail_method="set_registered_model_tag", fail_key=MlflowTag.CHAMPION_HISTORY.value
    )
    FAILURES_LEFT[MlflowTag.CHAMPION_HISTORY.value] = 2  # the history write and its undo
    with pytest.raises(PromotionError) as failure:
        promote(failing, model, second)
    message = str(failure.value)
    assert "restoring the champion (version 1) also failed" in message
    assert f"mlplatform rollback --dataset {model} --to {first}" in message
    assert _champion(resource, model) == first  # the alias itself was put back


def test_promotion_refuses_when_the_champion_moved_since_the_decision(
    store: dict[str, str], model: str, tmp_path: Path
) -> None:
    resource = MlflowResource(**store)
    first, second, third = _register(resource, model, 3, tmp_path)
    promote(resource, model, first)
    promote(resource, model, second)  # another run promoted while `third` was compared with `first`
    with pytest.raises(PromotionError, match="champion moved from version 1 to 2"):
        promote(resource, model, third, expected_champion=first)
    assert _champion(resource, model) == second and champion_history(resource, model) == [first, second]


def _model_materialization(version: int) -> dg.AssetsDefinition:
    @dg.asset(key=dg.AssetKey([MODEL, "model"]))
    def model() -> dg.MaterializeResult:
        return dg.MaterializeResult(metadata={"model_version": version})

    return model


def test_each_run_reads_the_version_it_materialized_not_the_latest() -> None:
    instance = dg.DagsterInstance.ephemeral()
    key = dg.AssetKey([MODEL, "model"])
    assert version_materialized(instance, key, "no-such-run") is None
    # Two runs register versions 1 and 2 in this order; run A must keep seeing its own version 1.
    run_a = dg.materialize([_model_materialization(1)], instance=instance).run_id
    run_b = dg.materialize([_model_materialization(2)], instance=instance).run_id
    own_a, own_b = version_materialized(instance, key, run_a), version_materialized(instance, key, run_b)
    assert own_a is not None and (own_a.version, own_a.same_run) == (1, True)
    assert own_b is not None and (own_b.version, own_b.same_run) == (2, True)
    # A run without a model step (e.g. --stage evaluation) takes the latest materialization, and says so.
    other = version_materialized(instance, key, "run-without-model-step")
    assert other is not None and (other.version, other.dagster_run_id, other.same_run) == (2, run_b, False)
    assert other.source == f"version 2, from the latest materialization (run {run_b})"


class ConcurrentTraining(MlflowResource):
    """The real store, where another run registers a version (and moves `challenger` to it) right after
    this run's model step registered its own: the interleaving of two concurrent trainings."""

    def set_alias(self, model_name: str, alias: str, version: str | int) -> None:
        super().set_alias(model_name, alias, version)
        if alias == CHALLENGER:
            own = self.client().get_model_version(model_name, str(version))
            other = self.client().create_model_version(
                model_name, own.source, own.run_id, tags={"dagster_run_id": "another-run"}
            )
            super().set_alias(model_name, CHALLENGER, other.version)


def _evaluation_metadata(name: str) -> dict[str, Any]:
    event = dg.DagsterInstance.get().get_latest_materialization_event(dg.AssetKey([name, "evaluation"]))
    assert event is not None and event.asset_materialization is not None
    return {key: value.value for key, value in event.asset_materialization.metadata.items()}


@pytest.mark.e2e
@pytest.mark.usefixtures("platform_home")
def test_evaluation_and_promotion_use_the_version_their_run_trained(
    tmp_path: Path, write_spec: Callable[..., Path], use_extra_specs: Callable[[Path], None]
) -> None:
    name = "toy_concurrent"
    source = tmp_path / f"{name}.parquet"
    generated_frame("binary").to_parquet(source, index=False)
    use_extra_specs(write_spec(spec_for("binary", name, source), f"{name}.yaml").parent)
    defs = build_definitions()
    real = defs.resources["mlflow"]
    interleaved = dg.Definitions(
        assets=defs.assets,
        asset_checks=defs.asset_checks,
        jobs=defs.jobs,
        resources={**defs.resources, "mlflow": ConcurrentTraining(**real.model_dump())},
        executor=dg.in_process_executor,
    )
    instance = dg.DagsterInstance.get()
    outcome = run_datasets(interleaved, [name], instance=instance, stages=runnable_stages())[0]
    assert outcome.success, outcome.failed_steps

    client = real.client()
    assert int(client.get_model_version_by_alias(name, CHALLENGER).version) == 2  # the other run's
    evaluated = _evaluation_metadata(name)
    assert (
        evaluated["challenger_version"] == 1 and evaluated["challenger_source"] == "version 1, from this run"
    )
    assert int(client.get_model_version_by_alias(name, CHAMPION).version) == 1
    assert client.get_model_version(name, "1").tags["promotion_decision"] == "promoted"
    assert "promotion_decision" not in client.get_model_version(name, "2").tags

    # A run without the model step evaluates the latest model materialization's version, not `challenger`.
    rerun = run_datasets(defs, [name], instance=dg.DagsterInstance.get(), stages=["evaluation"])[0]
    assert rerun.success, rerun.failed_steps
    evaluated = _evaluation_metadata(name)
    assert evaluated["challenger_version"] == 1 and evaluated["decision"] == "already champion"
    assert (
        evaluated["challenger_source"] == f"version 1, from the latest materialization (run {outcome.run_id})"
    )


@pytest.mark.parametrize("split", ["training", "validation"])
def test_non_finite_training_data_fails_naming_the_column(split: str) -> None:
    rng = np.random.default_rng(1)
    frame = pd.DataFrame({"x1": rng.normal(size=200), "x2": rng.normal(size=200)})
    frame["y"] = frame["x1"] + frame["x2"]
    train, valid = frame.iloc[:150].copy(), frame.iloc[150:].copy()
    (train if split == "training" else valid).loc[:, "x2"] = [np.inf, -np.inf] + [0.0] * (
        len(train if split == "training" else valid) - 2
    )
    params = lightgbm_params("regression", None, {})
    with pytest.raises(
        ValueError, match=rf"feature column 'x2' holds 2 infinite value\(s\) in the {split} rows"
    ):
        train_lightgbm(
            "regression", train[["x1", "x2"]], train["y"], valid[["x1", "x2"]], valid["y"], params, 5, 2
        )
    train.loc[train.index[0], "y"] = np.inf
    train.loc[:, "x2"], valid.loc[:, "x2"] = 0.0, 0.0
    with pytest.raises(
        ValueError, match=r"the target holds 1 missing or infinite value\(s\) in the training rows"
    ):
        train_lightgbm(
            "regression", train[["x1", "x2"]], train["y"], valid[["x1", "x2"]], valid["y"], params, 5, 2
        )
