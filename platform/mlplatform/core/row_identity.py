"""Which row a prediction is for, and its actual value once known.

`predictions` carries each row's key (time, entity key, and the spec's own id columns) and the actual
target value: null while the row is unlabelled, filled in by `refresh_actuals` when a later build of
`features` brings the label, so predictions and outcomes can be compared without a join.
"""

from __future__ import annotations

from datetime import datetime

import duckdb

from mlplatform.contracts import Stage
from mlplatform.core.sql import column_types, quote_ident
from mlplatform.core.warehouse import rewrite_rows, table_exists, table_name, window_predicate
from mlplatform.specs.model import DatasetSpec

ACTUAL_COLUMN = "actual"


def row_id_columns(spec: DatasetSpec) -> list[str]:
    """Spec columns that identify a row on their own (`unique: true`, not nullable), besides the time
    and entity: carried by `features` (even when dropped as inputs) so predictions can name the row."""
    return [
        name
        for name, column in spec.columns.items()
        if column.unique and not column.nullable and name not in spec.row_keys
    ]


def prediction_keys(spec: DatasetSpec) -> list[str]:
    """The key columns of the predictions table: time, entity key, then the spec's id columns."""
    return [*spec.row_keys, *row_id_columns(spec)]


def matching_keys(spec: DatasetSpec) -> list[str]:
    """The columns that match a prediction to its features row: the id columns when the spec
    declares any (the time and entity may repeat), else time and entity."""
    return row_id_columns(spec) or spec.row_keys


def refresh_actuals(
    conn: duckdb.DuckDBPyConnection, spec: DatasetSpec, start: datetime, end: datetime
) -> int:
    """Set `actual` of the predictions in [start, end) to the target `features` now holds for the
    same rows; returns how many changed. Matched on `matching_keys`."""
    if not (
        table_exists(conn, spec.name, Stage.PREDICTIONS) and table_exists(conn, spec.name, Stage.FEATURES)
    ):
        return 0
    predictions = table_name(spec.name, Stage.PREDICTIONS)
    features = table_name(spec.name, Stage.FEATURES)
    present = set(column_types(conn, predictions)) & set(column_types(conn, features))
    keys = matching_keys(spec)
    if ACTUAL_COLUMN not in column_types(conn, predictions) or not set(keys) <= present:
        return 0  # a predictions table written before it carried keys and actuals: re-score to fill it
    target, actual = quote_ident(spec.target.column), quote_ident(ACTUAL_COLUMN)
    group = ", ".join(quote_ident(k) for k in keys)
    on = " AND ".join(f"p.{quote_ident(k)} IS NOT DISTINCT FROM f.{quote_ident(k)}" for k in keys)
    where = window_predicate(spec.time_column, start, end)

    def update(table: str) -> int:
        row = conn.execute(
            f"UPDATE {table} AS p SET {actual} = f.v "
            f"FROM (SELECT {group}, min({target}) AS v FROM {features} WHERE {where} GROUP BY {group}) f "
            f"WHERE {on} AND p.{actual} IS DISTINCT FROM f.v"
        ).fetchall()
        return int(row[0][0]) if row else 0

    # A prediction matches a feature row of the window: the same row, so the same time.
    return rewrite_rows(conn, spec.name, Stage.PREDICTIONS, update, where)
