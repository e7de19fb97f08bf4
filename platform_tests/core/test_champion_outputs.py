"""The champion's outputs taken from the predictions table equal scoring every row again."""

from __future__ import annotations

import duckdb
import numpy as np
import pandas as pd
import pandas.testing as pdt
import pytest

from mlplatform.core.champion_outputs import champion_outputs, model_outputs
from mlplatform.core.scoring import inputs_hash_sql, score_frame
from mlplatform.core.training import TrainedModel, lightgbm_params, train_lightgbm
from mlplatform.specs.model import DatasetSpec

ROWS = 600


def _spec(task: str) -> DatasetSpec:
    return DatasetSpec.model_validate(
        {
            "name": "toy",
            "source": {"path": "unused.parquet"},
            "time_column": "ts",
            "columns": {
                "ts": {"type": "timestamp"},
                "id": {"type": "int", "unique": True, "nullable": False},
                "signal": {"type": "float"},
                "shop": {"type": "string"},
                "label": {"type": "int" if task == "binary" else "float"},
            },
            "target": {"column": "label", "task": task},
        }
    )


def _features(seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame(
        {
            "ts": pd.date_range("2024-01-01", periods=ROWS, freq="h"),
            "id": np.arange(ROWS, dtype=np.int64),
            "signal": rng.normal(size=ROWS),
            "shop": rng.choice(["north", "south", "east"], ROWS).astype(object),
        }
    )
    frame.loc[::7, "signal"] = np.nan  # missing inputs hash and score like any other value
    return frame


def _model(task: str, frame: pd.DataFrame) -> TrainedModel:
    shop = frame["shop"].map({"north": 1.0, "south": -1.0, "east": 0.0})
    signal = frame["signal"].fillna(0) + shop
    target = (signal > 0).astype(int) if task == "binary" else signal * 3
    frame["label"] = target
    inputs = frame[["signal", "shop"]].astype({"shop": "category"})
    params = lightgbm_params(task, None, {"num_leaves": 7}, num_threads=1)
    return train_lightgbm(task, inputs[:400], target[:400], None, None, params, 20, 5)


def _hashed(conn: duckdb.DuckDBPyConnection, model: TrainedModel, where: str = "true") -> pd.DataFrame:
    """Rows of toy.features with their inputs hash, as scoring and the reference profile read them."""
    return conn.sql(
        f"SELECT *, {inputs_hash_sql(model.feature_names)} FROM toy.features WHERE {where} ORDER BY ts"
    ).df()


def _warehouse(
    spec: DatasetSpec, model: TrainedModel, features: pd.DataFrame, version: int
) -> duckdb.DuckDBPyConnection:
    """A warehouse whose predictions table holds `version`'s scores of the first 500 rows."""
    conn = duckdb.connect()
    conn.execute("CREATE SCHEMA toy")
    conn.register("features_frame", features)
    conn.execute("CREATE TABLE toy.features AS SELECT * FROM features_frame")
    conn.register("scored", score_frame(spec, model, _hashed(conn, model, "id < 500"), version))
    conn.execute("CREATE TABLE toy.predictions AS SELECT * FROM scored")
    return conn


@pytest.mark.parametrize("task", ["binary", "regression"])
def test_stored_outputs_equal_scoring_every_row_again(task: str) -> None:
    spec, features = _spec(task), _features()
    model = _model(task, features)
    conn = _warehouse(spec, model, features, version=3)
    # Read back as the reference profile reads its splits: labelled rows, through the warehouse.
    rows = _hashed(conn, model, "id >= 100")
    rows.index = rows.index + 1000  # the outputs keep the rows' own index
    found = champion_outputs(conn, spec, model, 3, rows)
    assert found.reused == 400  # rows 100..499 were scored; 500..599 are scored here
    pdt.assert_frame_equal(found.frame, model_outputs(model, rows))
    assert champion_outputs(conn, spec, model, 4, rows).reused == 0  # another version's scores are not its


def test_a_row_whose_inputs_changed_since_it_was_scored_is_scored_again() -> None:
    spec, features = _spec("binary"), _features()
    model = _model("binary", features)
    conn = _warehouse(spec, model, features, version=1)
    conn.execute("UPDATE toy.features SET signal = signal + 5 WHERE id IN (10, 11, 12)")
    conn.execute("UPDATE toy.features SET shop = 'east' WHERE id = 20 AND shop <> 'east'")
    rows = _hashed(conn, model)
    found = champion_outputs(conn, spec, model, 1, rows)
    changed = 3 + int(features.loc[20, "shop"] != "east")
    assert found.reused == 500 - changed
    pdt.assert_frame_equal(found.frame, model_outputs(model, rows))


def test_without_stored_hashes_every_row_is_scored() -> None:
    spec, features = _spec("binary"), _features()
    model = _model("binary", features)
    conn = _warehouse(spec, model, features, version=1)
    conn.execute("ALTER TABLE toy.predictions DROP COLUMN inputs_hash")  # written by an older release
    rows = _hashed(conn, model)
    found = champion_outputs(conn, spec, model, 1, rows)
    assert found.reused == 0
    pdt.assert_frame_equal(found.frame, model_outputs(model, rows))


def test_rows_read_without_their_inputs_hash_are_all_scored() -> None:
    spec, features = _spec("regression"), _features()
    model = _model("regression", features)
    conn = _warehouse(spec, model, features, version=1)
    rows = conn.sql("SELECT * FROM toy.features ORDER BY ts").df()
    found = champion_outputs(conn, spec, model, 1, rows)
    assert found.reused == 0
    pdt.assert_frame_equal(found.frame, model_outputs(model, rows))


def test_a_lake_file_and_the_table_hash_the_same_inputs_alike(tmp_path) -> None:
    """The Dask engine scores rows read from the lake's Parquet files; the profile reads the view."""
    spec, features = _spec("binary"), _features()
    model = _model("binary", features)
    conn = _warehouse(spec, model, features, version=1)
    conn.execute(f"COPY toy.features TO '{tmp_path / 'part.parquet'}' (FORMAT parquet)")
    hashed = inputs_hash_sql(model.feature_names)
    from_file = conn.sql(f"SELECT id, {hashed} FROM read_parquet('{tmp_path / 'part.parquet'}') ORDER BY id")
    from_table = conn.sql(f"SELECT id, {hashed} FROM toy.features ORDER BY id")
    assert from_file.fetchall() == from_table.fetchall()
    distinct_inputs = len(features[["signal", "shop"]].astype(str).drop_duplicates())
    assert len({h for _, h in from_table.fetchall()}) == distinct_inputs > 500  # the NaN signals repeat
