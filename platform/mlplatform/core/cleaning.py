"""The cleaning stage over one time window: raw -> clean (typed) + quarantine (original + reasons)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import duckdb
import pandas as pd

from mlplatform.contracts import Stage
from mlplatform.core.partition_counts import Windows, grouped_rows_per_partition, rows_per_partition
from mlplatform.core.sql import column_types, fetch_row
from mlplatform.core.validation import (
    FAILED_CHECKS,
    FAILED_COLUMNS,
    REASON,
    ROW_ID,
    cross_partition_duplicates_sql,
    suspect_rows_predicate,
    typed_select_sql,
    validate_partition,
)
from mlplatform.core.warehouse import (
    PARTITION_TIME,
    replace_window,
    require_table,
    table_exists,
    table_name,
    window_column,
    window_predicate,
)
from mlplatform.specs.model import DatasetSpec


@dataclass(frozen=True)
class CleanResult:
    raw_rows: int
    clean_rows: int
    quarantined_rows: int
    reason_counts: dict[str, int]  # "column: check" -> rows failing it, most frequent first


def clean_window(
    conn: duckdb.DuckDBPyConnection, spec: DatasetSpec, start: datetime, end: datetime, prescreen: bool = True
) -> CleanResult:
    """Validate the raw rows of [start, end) and write them to `clean` or `quarantine`.

    With `prescreen` (the default) only rows a SQL screen cannot prove valid go through pandas and
    Pandera (`suspect_rows_predicate`); the outcome is the same as validating every row (tested), at
    a fraction of the cost: converting 10M rows to pandas and checking them took longer than all the
    SQL of the spine. `prescreen=False` validates every row with Pandera.
    """
    require_table(conn, spec.name, Stage.RAW)
    raw = table_name(spec.name, Stage.RAW)
    conn.execute(
        f"CREATE OR REPLACE TEMP TABLE _raw_window AS SELECT row_number() OVER () AS {ROW_ID}, * "
        f"FROM {raw} WHERE {window_predicate(PARTITION_TIME, start, end)}"
    )
    conn.execute(
        f"CREATE OR REPLACE TEMP TABLE _typed_window AS "
        f"{typed_select_sql(spec, '_raw_window', column_types(conn, raw))}"
    )
    window_rows = int(conn.execute("SELECT count(*) FROM _typed_window").fetchall()[0][0])
    screen = f"WHERE {suspect_rows_predicate(spec, '_typed_window')}" if prescreen else ""
    # Row order as in the window: Pandera keeps the first of duplicated keys clean.
    typed = conn.sql(f"SELECT * FROM _typed_window {screen} ORDER BY {ROW_ID}").df()
    outcome = validate_partition(spec, typed, _known_duplicates(conn, spec, start, end))
    conn.register("_quarantine_ids", outcome.quarantine)
    clean_sql = (
        f"SELECT * EXCLUDE ({ROW_ID}, {PARTITION_TIME}, _parse_errors) FROM _typed_window "
        f"WHERE {ROW_ID} NOT IN (SELECT {ROW_ID} FROM _quarantine_ids)"
    )
    quarantine_sql = (
        f"SELECT r.* EXCLUDE ({ROW_ID}), "
        f"CAST(q.{REASON} AS VARCHAR) AS {REASON}, CAST(q.{FAILED_CHECKS} AS VARCHAR) AS {FAILED_CHECKS}, "
        f"CAST(q.{FAILED_COLUMNS} AS VARCHAR) AS {FAILED_COLUMNS} "
        f"FROM _raw_window r JOIN _quarantine_ids q USING ({ROW_ID})"
    )
    clean_rows = _replace(conn, spec, Stage.CLEAN, clean_sql, start, end)
    quarantined = _replace(conn, spec, Stage.QUARANTINE, quarantine_sql, start, end)
    conn.unregister("_quarantine_ids")
    for temp in ("_raw_window", "_typed_window"):
        conn.execute(f"DROP TABLE IF EXISTS {temp}")
    return CleanResult(
        raw_rows=window_rows,
        clean_rows=clean_rows,
        quarantined_rows=quarantined,
        reason_counts=outcome.reason_counts,
    )


def _known_duplicates(
    conn: duckdb.DuckDBPyConnection, spec: DatasetSpec, start: datetime, end: datetime
) -> pd.DataFrame | None:
    """Rows of the window whose unique key is already clean in another partition (see
    `validate_partition`), or None when there is no clean table or no unique column yet."""
    if not table_exists(conn, spec.name, Stage.CLEAN):
        return None
    clean = table_name(spec.name, Stage.CLEAN)
    others = f"SELECT * FROM {clean} WHERE NOT ({window_predicate(spec.time_column, start, end)})"
    sql = cross_partition_duplicates_sql(spec, "_typed_window", others)
    return conn.sql(sql).df() if sql else None


def _replace(
    conn: duckdb.DuckDBPyConnection, spec: DatasetSpec, stage: Stage, sql: str, start: datetime, end: datetime
) -> int:
    return replace_window(conn, spec.name, stage, sql, window_column(stage, spec.time_column), start, end)


@dataclass(frozen=True)
class PartitionOutcome:
    """What one partition of a cleaning run holds, counted from the tables it wrote."""

    raw_rows: int
    clean_rows: int
    quarantined_rows: int
    reason_counts: dict[str, int]  # "failed columns: failed checks" -> rows, most frequent first

    @property
    def quarantine_share(self) -> float:
        return self.quarantined_rows / self.raw_rows if self.raw_rows else 0.0


def partition_outcomes(
    conn: duckdb.DuckDBPyConnection, spec: DatasetSpec, windows: Windows
) -> dict[str, PartitionOutcome]:
    """Per partition of `windows`: raw, clean and quarantined rows and the quarantine's reasons, one
    query per table over the run's rows (the tables must exist: run after `clean_window`)."""
    counts = {
        stage: rows_per_partition(
            conn, table_name(spec.name, stage), window_column(stage, spec.time_column), windows
        )
        for stage in (Stage.RAW, Stage.CLEAN, Stage.QUARANTINE)
    }
    reasons = grouped_rows_per_partition(
        conn,
        table_name(spec.name, Stage.QUARANTINE),
        PARTITION_TIME,
        windows,
        [FAILED_COLUMNS, FAILED_CHECKS],
    )
    return {
        key: PartitionOutcome(
            raw_rows=counts[Stage.RAW][key],
            clean_rows=counts[Stage.CLEAN][key],
            quarantined_rows=counts[Stage.QUARANTINE][key],
            reason_counts={f"{columns}: {checks}": n for (columns, checks), n in reasons[key]},
        )
        for key in windows
    }


def reason_counts_markdown(reason_counts: dict[str, int]) -> str:
    """The quarantine reasons as a markdown list (UI metadata)."""
    return "\n".join(f"- `{reason}`: {count} rows" for reason, count in reason_counts.items()) or "_none_"


def drop_rows_outside(
    conn: duckdb.DuckDBPyConnection, spec: DatasetSpec, start: datetime, end: datetime
) -> int:
    """Remove the clean and quarantine rows outside [start, end), the partitions that exist, once raw
    holds none there: raw keeps such rows (a file gone, the range shrunk) until a run allows the shrink,
    so raw is the gate and clean then holds only partitions that exist. Returns how many went."""
    if not table_exists(conn, spec.name, Stage.RAW):
        return 0
    outside_raw = f"NOT ({window_predicate(PARTITION_TIME, start, end)})"
    if fetch_row(conn, f"SELECT count(*) FROM {table_name(spec.name, Stage.RAW)} WHERE {outside_raw}")[0]:
        return 0
    removed = 0
    for stage in (Stage.CLEAN, Stage.QUARANTINE):
        if table_exists(conn, spec.name, stage):
            where = f"NOT ({window_predicate(window_column(stage, spec.time_column), start, end)})"
            removed += int(fetch_row(conn, f"DELETE FROM {table_name(spec.name, stage)} WHERE {where}")[0])
    return removed
