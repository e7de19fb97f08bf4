"""Reading what a model is trained and judged on: the training set, its splits and their metrics.

Plain functions over a DuckDB connection, shared by training, evaluation, scoring and the reference
profile. A missing table raises MissingTableError (the Dagster wiring turns it into a run failure).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import duckdb
import pandas as pd

from mlplatform.contracts import MlflowMetric, MlflowParam, Stage
from mlplatform.core.features import entity_feature_used, feature_names
from mlplatform.core.metrics import compute_metrics
from mlplatform.core.scoring import inputs_hash_sql
from mlplatform.core.splits import SPLIT_COLUMN, SPLIT_NAMES
from mlplatform.core.sql import column_types, quote_ident, total_order_sql
from mlplatform.core.training import TrainedModel, default_categoricals, predict
from mlplatform.core.warehouse import MissingTableError, read_frame, require_table, table_exists, table_name
from mlplatform.specs.model import DatasetSpec

TRAIN_METRICS_MAX_ROWS = 1_000_000

# A recorded split window: (first, last) timestamp as stored, both included.
SplitWindow = tuple[str, str]


def model_feature_names(conn: duckdb.DuckDBPyConnection, spec: DatasetSpec) -> list[str]:
    """The model inputs among the features table's columns (no time, target or split; the entity key
    when `entity_feature_used` says so for the training set's entities)."""
    time_type = column_types(conn, table_name(spec.name, Stage.FEATURES))[spec.time_column]
    return feature_names(spec, time_type, entity_feature_used(spec, distinct_entities(conn, spec)))


def scoring_feature_names(
    conn: duckdb.DuckDBPyConnection, spec: DatasetSpec, model_features: list[str]
) -> list[str]:
    """The spec's model inputs among the features table's columns, for a model trained on
    `model_features`: the entity key is one exactly when that model has it. The `auto` choice was made
    on the rows the model was trained on; today's training set may have crossed the limit since."""
    columns = column_types(conn, table_name(spec.name, Stage.FEATURES))
    entity = bool(spec.entity_key) and spec.entity_key in model_features
    return [name for name in feature_names(spec, columns[spec.time_column], entity) if name in columns]


def distinct_entities(conn: duckdb.DuckDBPyConnection, spec: DatasetSpec) -> int | None:
    """Distinct entity keys of the rows trained on: the training set, else the labelled features."""
    if not spec.entity_key:
        return None
    entity, target = quote_ident(spec.entity_key), quote_ident(spec.target.column)
    if table_exists(conn, spec.name, Stage.TRAINING_SET):
        source = table_name(spec.name, Stage.TRAINING_SET)
    elif table_exists(conn, spec.name, Stage.FEATURES):
        source = f"{table_name(spec.name, Stage.FEATURES)} WHERE {target} IS NOT NULL"
    else:
        return None
    return int(conn.execute(f"SELECT count(DISTINCT {entity}) FROM {source}").fetchall()[0][0])


def categorical_inputs(spec: DatasetSpec, frame: pd.DataFrame, features: list[str]) -> list[str]:
    """The model inputs LightGBM treats as categories: every non-numeric one, and the entity key
    whatever its type (store 3 is not "more" than store 2)."""
    found = default_categoricals(frame[features])
    if spec.entity_key in features and spec.entity_key not in found:
        found.insert(0, spec.entity_key)
    return found


def read_training_set(conn: duckdb.DuckDBPyConnection, spec: DatasetSpec) -> pd.DataFrame:
    """Every row of the training set, in a total order (LightGBM's result depends on row order)."""
    require_table(conn, spec.name, Stage.TRAINING_SET)
    table = table_name(spec.name, Stage.TRAINING_SET)
    # A total order makes the same rows the same model.
    by = total_order_sql(spec.row_keys, list(column_types(conn, table)))
    return read_frame(conn, f"SELECT * FROM {table} ORDER BY {by}")


def table_data_version(conn: duckdb.DuckDBPyConnection, schema: str, table: str) -> str:
    """A content hash of a table, independent of row order: same rows and columns, same version."""
    name = table_name(schema, table)
    rows, row_hash_sum = conn.execute(f"SELECT count(*), sum(hash(t)::HUGEINT) FROM {name} t").fetchall()[0]
    columns = sorted(column_types(conn, name).items())
    return hashlib.sha256(f"{columns}|{rows}|{row_hash_sum}".encode()).hexdigest()[:16]


def split_windows(parts: dict[str, pd.DataFrame], time_column: str) -> dict[str, dict[str, str]]:
    """First and last timestamp of each split, as stored (closed intervals, easy to read)."""
    windows: dict[str, dict[str, str]] = {}
    for name, part in parts.items():
        times = pd.to_datetime(part[time_column])
        windows[name] = {"first": str(times.min()), "last": str(times.max())}
    return windows


def train_metrics_step(train_rows: int) -> int:
    """Train-split metrics use every n-th row (time-ordered, so the sample spans the whole window).

    They only show how well the model fits what it saw; scoring all 8M training rows of a 10M-row
    data set for them took a quarter of the training time (benchmarks/BENCHMARKS.md)."""
    return max(1, -(-train_rows // TRAIN_METRICS_MAX_ROWS))


def split_metrics(
    spec: DatasetSpec, model: TrainedModel, parts: dict[str, pd.DataFrame], features: list[str]
) -> dict[str, float]:
    """The task's metrics of `model` on each split, named `<split>_<metric>` (e.g. `test_rmse`)."""
    metrics: dict[str, float] = {}
    for name, part in parts.items():
        if name == "train":
            part = part.iloc[:: train_metrics_step(len(part))]
        scores = predict(model, part[features])
        found = compute_metrics(spec.target.task, part[spec.target.column], scores, model.classes)
        metrics.update({MlflowMetric.split(name, metric): value for metric, value in found.items()})
    return metrics


def champion_split_rows(
    conn: duckdb.DuckDBPyConnection,
    spec: DatasetSpec,
    windows: dict[str, SplitWindow] | None,
    hashed_inputs: Sequence[str] = (),
) -> dict[str, pd.DataFrame]:
    """The labelled rows of each split (train, validation, test) the champion was trained, tuned and
    tested on.

    With the champion's recorded windows (first and last timestamp of each split) the rows come from
    `features`, which is right even after a rollback to an older champion (a split whose window was
    not recorded is empty); without them from `training_set`, which holds the latest training's split.
    With `hashed_inputs` (a model's inputs) each row carries their `scoring.inputs_hash_sql` too, when
    the table has them all."""

    def selected(table: str) -> str:
        complete = hashed_inputs and set(hashed_inputs) <= set(column_types(conn, table))
        return f"*, {inputs_hash_sql(hashed_inputs)}" if complete else "*"

    if windows and "train" in windows and "test" in windows:
        features, t = table_name(spec.name, Stage.FEATURES), quote_ident(spec.time_column)
        columns = selected(features)
        labelled = f"{quote_ident(spec.target.column)} IS NOT NULL"
        found = {}
        for split, (first, last) in windows.items():
            found[split] = read_frame(
                conn,
                f"SELECT {columns} FROM {features} WHERE {t} BETWEEN ?::TIMESTAMP AND ?::TIMESTAMP AND {labelled} "
                f"ORDER BY {t}",
                [first, last],
            )
        return {split: found.get(split, found["train"].iloc[:0]) for split in SPLIT_NAMES}
    if not table_exists(conn, spec.name, Stage.TRAINING_SET):
        raise MissingTableError(f"{spec.name}.{Stage.TRAINING_SET} does not exist: train a model first")
    training_set = table_name(spec.name, Stage.TRAINING_SET)
    frame = conn.sql(f"SELECT {selected(training_set)} FROM {training_set}").df()
    return {split: frame[frame[SPLIT_COLUMN] == split].drop(columns=SPLIT_COLUMN) for split in SPLIT_NAMES}


def recorded_windows(params: dict[str, str]) -> dict[str, SplitWindow] | None:
    """Split windows a training run logged as params `window_<split>` = "first .. last"."""
    found = {}
    for split in SPLIT_NAMES:
        first, separator, last = params.get(MlflowParam.window(split), "").partition(
            MlflowParam.WINDOW_SEPARATOR
        )
        if separator and first not in ("", "NaT") and last not in ("", "NaT"):
            found[split] = (first, last)
    return found or None
