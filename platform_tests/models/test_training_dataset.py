"""The training set as the training run's MLflow dataset input (MLflow's "Datasets"), in a temp store."""

from __future__ import annotations

import json
import os
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import pytest

from mlplatform.core.training_data import table_data_version
from mlplatform.models.registry import TRAINING_DATASET_SCHEMA_ROWS, log_training_dataset
from mlplatform.resources.mlflow import MlflowResource


def test_training_run_lists_the_training_set_with_its_data_version(tmp_path: Path) -> None:
    for name in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI"):
        os.environ.pop(name, None)  # conftest's restore_mlflow_env puts them back
    resource = MlflowResource(
        tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}", artifact_location=(tmp_path / "art").as_uri()
    )
    rows = TRAINING_DATASET_SCHEMA_ROWS + 5  # more rows than the schema is inferred from
    rng = np.random.default_rng(0)
    frame = pd.DataFrame(
        {
            "ts": pd.date_range("2024-01-01", periods=rows, freq="min"),
            "kind": rng.choice(["a", "b"], rows),
            "y": rng.normal(size=rows),
        }
    )
    database = tmp_path / "toy-warehouse.duckdb"
    with duckdb.connect(str(database)) as conn:
        conn.execute("CREATE SCHEMA toy")
        conn.register("frame", frame)
        conn.execute("CREATE TABLE toy.training_set AS SELECT * FROM frame")
        version = table_data_version(conn, "toy", "training_set")

    with resource.start_run("toy", run_name="train toy") as run:
        log_training_dataset(frame, "toy.training_set", version, str(database), "y")
    inputs = resource.client().get_run(run.info.run_id).inputs.dataset_inputs

    assert len(inputs) == 1
    dataset = inputs[0].dataset
    assert (dataset.name, dataset.digest) == ("toy.training_set", version)
    assert json.loads(dataset.source) == {"uri": str(database)}
    assert json.loads(dataset.profile)["num_rows"] == rows
    schema = [column["name"] for column in json.loads(dataset.schema)["mlflow_colspec"]]
    assert schema == ["ts", "kind", "y"]
    assert {tag.key: tag.value for tag in inputs[0].tags}["mlflow.data.context"] == "training"


@pytest.mark.parametrize("bad", ["", "   "])
def test_a_training_set_needs_a_digest(tmp_path: Path, bad: str) -> None:
    """An empty digest would make MLflow compute its own, which matches nothing Dagster records."""
    resource = MlflowResource(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    with pytest.raises(ValueError, match="digest"), resource.start_run("toy"):
        log_training_dataset(pd.DataFrame({"y": [1.0]}), "toy.training_set", bad, str(tmp_path), "y")
