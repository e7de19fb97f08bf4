"""The rows a drift report judges: the trailing `drift.window` ending with each partition.

A single day of hourly data is too few rows for PSI, so the verdict of a partition is "the last
window of rows looks different from what the champion learned". `window_rows` joins the features of a
window with the predictions of the same rows; `report_partition` judges one partition's window
against the reference and gives its per-column rows and its verdict row.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import duckdb
import pandas as pd

from mlplatform.contracts import Stage
from mlplatform.core.drift_reference import Reference, judge_window, nan_to_none
from mlplatform.core.grain import GRAIN_DAYS
from mlplatform.core.scoring import MODEL_VERSION_COLUMN, PREDICTION_COLUMN
from mlplatform.core.sql import quote_ident
from mlplatform.core.warehouse import read_frame, table_exists, table_name, window_predicate
from mlplatform.specs.model import DatasetSpec, parse_duration

# Outputs are judged only when most of the window was scored by the reference's model: a few rows
# give a PSI biased upwards by about (buckets - 1) / rows.
MIN_SHARE_SCORED_BY_REFERENCE = 0.5


def window_length(spec: DatasetSpec) -> timedelta:
    return parse_duration(spec.drift.window)


def window_partitions(spec: DatasetSpec) -> int:
    """How many partitions the trailing window of one partition reaches back (including itself)."""
    grain = timedelta(days=GRAIN_DAYS[spec.partition_grain])
    return max(1, -(-window_length(spec) // grain))


def _is_output(column: str) -> bool:
    """A model output column of the predictions table: the prediction or a probability."""
    return column == PREDICTION_COLUMN or column.startswith("probability")


def window_rows(
    conn: duckdb.DuckDBPyConnection, spec: DatasetSpec, start: datetime, end: datetime
) -> pd.DataFrame:
    """Features of [start, end) with the predictions of the same rows (NULL where not scored)."""
    features = table_name(spec.name, Stage.FEATURES)
    where = window_predicate(spec.time_column, start, end)
    if not table_exists(conn, spec.name, Stage.PREDICTIONS):
        return read_frame(conn, f"SELECT * FROM {features} WHERE {where}")
    keys = spec.row_keys
    on = " AND ".join(f"f.{quote_ident(k)} = p.{quote_ident(k)}" for k in keys)
    predictions = table_name(spec.name, Stage.PREDICTIONS)
    output_columns = [
        c
        for c in conn.sql(f"SELECT * FROM {predictions} LIMIT 0").columns
        if _is_output(c) or c == MODEL_VERSION_COLUMN
    ]
    picked = ", ".join(f"any_value({quote_ident(c)}) AS {quote_ident(c)}" for c in output_columns)
    group = ", ".join(quote_ident(k) for k in keys)
    # One prediction per key: a duplicated (time, entity) pair must not duplicate feature rows.
    return read_frame(
        conn,
        f"SELECT f.*, {', '.join('p.' + quote_ident(c) for c in output_columns)} "
        f"FROM (SELECT * FROM {features} WHERE {where}) f "
        f"LEFT JOIN (SELECT {group}, {picked} FROM {predictions} WHERE {where} GROUP BY {group}) p ON {on}",
    )


def report_partition(
    spec: DatasetSpec,
    reference: Reference,
    version: int | None,
    rows: pd.DataFrame,
    partition_start: datetime,
    window_start: datetime,
    window_end: datetime,
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Per-column rows and the verdict row of one partition's window (`version`: the reference's model)."""
    times = rows[spec.time_column]
    window = rows[(times >= window_start) & (times < window_end)].reset_index(drop=True)
    judge_outputs = False
    if MODEL_VERSION_COLUMN in window and len(window):
        by_reference = pd.to_numeric(window[MODEL_VERSION_COLUMN], errors="coerce") == version
        judge_outputs = by_reference.mean() >= MIN_SHARE_SCORED_BY_REFERENCE
        # Outputs of another model would be compared with the wrong reference: blank them.
        for column in [c for c in window.columns if _is_output(c)]:
            window[column] = window[column].where(by_reference)
    report = judge_window(spec, reference, window, judge_outputs=judge_outputs)
    bounds = {"partition_start": partition_start, "window_start": window_start, "window_end": window_end}
    columns = report.columns.copy()
    for position, (name, value) in enumerate(bounds.items()):
        columns.insert(position, name, value)
    columns["reference_version"] = version
    verdict = report.verdict
    row = {
        **bounds,
        "n_rows": report.n_rows,
        "drifted": bool(verdict.drifted and report.n_rows > 0),
        "drifted_share": float(verdict.drifted_share),
        "n_drifted": int(verdict.n_drifted),
        "n_judged": int(verdict.n_features),
        "drifted_columns": ", ".join(verdict.drifted_features),
        "metric": report.metric,
        "reference_error": nan_to_none(report.reference_error),
        "current_error": nan_to_none(report.current_error),
        "performance_drop": nan_to_none(verdict.performance_drop),
        "prediction_psi": nan_to_none(report.prediction_psi),
        "outputs_judged": judge_outputs,
        "reason": verdict.reason if report.n_rows else "no rows in the window",
        "reference_version": version,
    }
    return columns, row
