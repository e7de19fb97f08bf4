"""The stage registry is the one place a stage is declared: adding one is its builder plus one row."""

from __future__ import annotations

from dataclasses import replace

import dagster as dg
import pytest
from dagster_duckdb import DuckDBResource

from mlplatform.contracts import Stage, asset_key
from mlplatform.core.warehouse import count_rows
from mlplatform.factory import build_dataset, build_definitions
from mlplatform.settings import load_settings
from mlplatform.specs.loader import load_specs
from mlplatform.stages import (
    STAGES,
    Job,
    StageBuild,
    StageRow,
    counted_stages,
    job_stages,
    mlflow_stages,
    runnable_stages,
    step_stages,
)


def build_feature_rows_asset(stage: StageBuild) -> dg.AssetsDefinition:
    """A throwaway stage: how many feature rows the latest model could learn from."""
    spec = stage.spec

    @dg.asset(
        key=asset_key(spec, "feature_rows"),
        deps=[asset_key(spec, Stage.FEATURES)],
        owners=spec.owners,
        tags=spec.tags,
        code_version="1",
        description="Rows of the features table, a stage added by one registry row in a test.",
    )
    def feature_rows(warehouse: DuckDBResource) -> dg.MaterializeResult:
        with warehouse.get_connection() as conn:
            return dg.MaterializeResult(metadata={"rows": count_rows(conn, spec.name, Stage.FEATURES)})

    return feature_rows


EXTRA = StageRow(
    "feature_rows",
    "evaluation",
    frozenset({"duckdb"}),
    False,
    build_feature_rows_asset,
    frozenset({Job.RETRAIN}),
)


@pytest.fixture(scope="module")
def defs() -> dg.Definitions:
    bike = [spec for spec in load_specs() if spec.name == "bike_sharing"]
    return build_definitions(specs=bike, registry=(*STAGES, EXTRA))


def test_a_new_row_builds_its_asset_with_the_rows_group_and_kinds(defs: dg.Definitions) -> None:
    node = defs.resolve_asset_graph().get(dg.AssetKey(["bike_sharing", "feature_rows"]))
    assert node.group_name == "evaluation" and node.kinds == {"duckdb"}
    assert dg.AssetKey(["bike_sharing", "features"]) in node.parent_keys


def test_a_new_row_joins_the_jobs_it_names_and_only_those(defs: dg.Definitions) -> None:
    key = dg.AssetKey(["bike_sharing", "feature_rows"])
    retrain = defs.resolve_job_def("bike_sharing__retrain").asset_layer.selected_asset_keys
    ingest = defs.resolve_job_def("bike_sharing__ingest").asset_layer.selected_asset_keys
    whole = defs.resolve_job_def("bike_sharing__all").asset_layer.selected_asset_keys
    assert key in retrain and key in whole and key not in ingest


def test_the_registry_answers_what_the_cli_and_runner_ask() -> None:
    assert runnable_stages() == [
        "raw", "clean", "features", "training_set", "model", "evaluation", "predictions"
    ]  # fmt: skip
    assert counted_stages() == ["raw", "clean", "quarantine", "features", "training_set", "predictions"]
    assert step_stages(Stage.CLEAN) == ["clean", "quarantine"]
    assert mlflow_stages("write") == ["model", "evaluation", "drift_report"]
    assert job_stages(Job.INGEST) == ["raw", "clean", "quarantine", "features", "predictions", "drift_report"]
    assert job_stages(Job.RETRAIN) == ["training_set", "model", "evaluation", "reference_profile"]
    assert runnable_stages((*STAGES, replace(EXTRA, runnable=True)))[-1] == "feature_rows"


def test_every_stage_name_has_a_row() -> None:
    # A new stage needs a `Stage` member only once other code refers to it by name.
    assert {stage.value for stage in Stage} <= {row.name for row in STAGES}


def test_a_row_whose_builder_disagrees_on_partitions_is_refused() -> None:
    bike = [spec for spec in load_specs() if spec.name == "bike_sharing"]
    partitioned = replace(EXTRA, partitioned=True)
    with pytest.raises(ValueError, match="stage feature_rows: the registry says partitioned"):
        build_dataset(bike[0], settings=load_settings(), registry=(*STAGES, partitioned))
