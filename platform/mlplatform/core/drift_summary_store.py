"""Where the partition summaries of a drift report run come from: stored ones, or the rows.

`<ds>.drift_summary` holds one long summary (core.drift_summaries.summary_frame) per
(partition_start, reference_version), with a fingerprint of the rows it was computed from: their
count and the sum of DuckDB's hash of each row (features and outputs the summary reads). A run
recomputes the summaries of its own partitions; those of the earlier partitions its first windows
reach back to are reused when they were made for the same reference version, in the same format and
from rows with the same fingerprint (features re-materialized or re-scored since: recomputed).
Summaries of another reference version are never merged.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import duckdb
import numpy as np
import pandas as pd

from mlplatform.contracts import Stage, Table
from mlplatform.core.drift_summaries import PartitionSummary, SummaryPlan, read_summary, summary_frame
from mlplatform.core.drift_summary_windows import (
    PartitionData,
    partition_codes,
    partition_starts,
    scored_outputs,
    summarise_partitions,
)
from mlplatform.core.drift_windows import window_rows, window_rows_sql
from mlplatform.core.sql import column_types, quote_ident
from mlplatform.core.warehouse import read_frame, table_exists, table_name
from mlplatform.specs.model import DatasetSpec

REFERENCE_VERSION = "reference_version"
_ROW_HASH = "_row_hash"
# Partition starts per grain in DuckDB SQL; Dagster weeks start on Sunday, DuckDB's on Monday.
_FLOOR_SQL = {
    "day": "date_trunc('day', {t})",
    "week": "date_trunc('week', {t} + INTERVAL 1 DAY) - INTERVAL 1 DAY",
    "month": "date_trunc('month', {t})",
}


@dataclass(frozen=True)
class LoadedPartitions:
    parts: dict[datetime, PartitionData]
    times: pd.Series  # the time column of the rows read (spacing hints for empty windows)
    to_store: pd.DataFrame  # the summaries of every partition in `parts`, long, to replace the stored ones


def feature_columns(conn: duckdb.DuckDBPyConnection, spec: DatasetSpec, plan: SummaryPlan) -> list[str]:
    """The columns of the features table a summary reads: time, profiled columns and the target."""
    available = column_types(conn, table_name(spec.name, Stage.FEATURES))
    wanted = [spec.time_column, *plan.profile.features, spec.target.column]
    return [name for name in dict.fromkeys(wanted) if name in available]


def fingerprints(
    conn: duckdb.DuckDBPyConnection, spec: DatasetSpec, columns: list[str], start: datetime, end: datetime
) -> dict[datetime, str]:
    """Per partition of [start, end): its rows' count and hash sum, as one string."""
    floor = _FLOOR_SQL[spec.partition_grain].format(t=f"t.{quote_ident(spec.time_column)}")
    rows = window_rows_sql(conn, spec, start, end, columns)
    found = conn.sql(
        f"SELECT {floor} AS partition_start, count(*) AS n, sum(hash(t)::HUGEINT) AS h "
        f"FROM ({rows}) t GROUP BY 1"
    ).fetchall()
    return {pd.Timestamp(when).to_pydatetime(): f"{n}-{h}" for when, n, h in found}


def rows_and_fingerprints(
    conn: duckdb.DuckDBPyConnection,
    spec: DatasetSpec,
    columns: list[str],
    starts: list[datetime],
    end: datetime,
) -> tuple[pd.DataFrame, np.ndarray, dict[datetime, str]]:
    """The rows of [starts[0], end), their partition codes (index in `starts`) and the partitions'
    `fingerprints`, from one read: each row's hash comes with it, and its partition's sum is exact
    (summed in 16-bit pieces, as exact as DuckDB's HUGEINT sum)."""
    rows_sql = window_rows_sql(conn, spec, starts[0], end, columns)
    rows = read_frame(conn, f"SELECT *, hash(t) AS {_ROW_HASH} FROM ({rows_sql}) t")
    hashes = rows.pop(_ROW_HASH).to_numpy(dtype=np.uint64)
    part = partition_codes(rows[spec.time_column], starts, end)
    inside = (part >= 0) & (part < len(starts))
    codes, values = part[inside], hashes[inside]
    n = np.bincount(codes, minlength=len(starts))
    total = [0] * len(starts)
    for shift in (0, 16, 32, 48):  # 16-bit pieces: their float sums stay exact up to 2**37 rows
        piece = ((values >> np.uint64(shift)) & np.uint64(0xFFFF)).astype(np.float64)
        sums = np.bincount(codes, weights=piece, minlength=len(starts))
        total = [t + (int(v) << shift) for t, v in zip(total, sums, strict=True)]
    prints = {when: f"{n[i]}-{total[i]}" for i, when in enumerate(starts) if n[i]}
    return rows, part, prints


def stored_summaries(
    conn: duckdb.DuckDBPyConnection,
    spec: DatasetSpec,
    plan: SummaryPlan,
    version: int | None,
    start: datetime,
    end: datetime,
) -> dict[datetime, tuple[PartitionSummary, str | None]]:
    """The stored summaries of [start, end) for `version` that `plan` can merge."""
    if version is None or start >= end or not table_exists(conn, spec.name, Table.DRIFT_SUMMARY):
        return {}
    frame = read_frame(
        conn,
        f"SELECT partition_start, feature, key, value FROM {table_name(spec.name, Table.DRIFT_SUMMARY)} "
        f"WHERE {REFERENCE_VERSION} = ? AND partition_start >= ? AND partition_start < ?",
        [version, start, end],
    )
    found = {}
    for when, part in frame.groupby("partition_start", sort=True):
        summary = read_summary(plan, part)
        if summary is not None:
            found[pd.Timestamp(when).to_pydatetime()] = summary
    return found


def load_partitions(
    conn: duckdb.DuckDBPyConnection,
    spec: DatasetSpec,
    plan: SummaryPlan,
    version: int | None,
    first: datetime,
    run: tuple[datetime, datetime],
) -> LoadedPartitions:
    """The data of every partition from `first` to the run's end: the run's own partitions (`run`:
    start, end) summarised from their rows, earlier ones from their stored summaries when those still
    hold (only their output and label columns are read again), else from their rows too."""
    columns = feature_columns(conn, spec, plan)
    earlier = stored_summaries(conn, spec, plan, version, first, run[0])
    prints = fingerprints(conn, spec, columns, first, run[0]) if earlier else {}
    kept = {
        when: summary for when, (summary, fp) in earlier.items() if fp is not None and prints.get(when) == fp
    }
    starts = partition_starts(spec, first, run[1])
    fresh = [when for when in starts if when not in kept]
    parts: dict[datetime, PartitionData] = {}
    times = pd.Series([], dtype="datetime64[us]")
    if fresh:
        in_range = [when for when in starts if when >= fresh[0]]
        rows, part, fresh_prints = rows_and_fingerprints(conn, spec, columns, in_range, run[1])
        times = rows[spec.time_column]
        summarised = summarise_partitions(plan, spec, rows, part, len(in_range), version)
        parts |= {when: data for when, data in zip(in_range, summarised, strict=True) if when not in kept}
        prints |= fresh_prints
    if kept:  # their summaries hold; the performance needs their outputs and labels again
        before = [when for when in starts if when < run[0]]
        labels = [c for c in (spec.time_column, spec.target.column) if c in columns]
        rows = window_rows(conn, spec, first, run[0], labels)
        part = partition_codes(rows[spec.time_column], before, run[0])
        for index, when in enumerate(before):
            if when in kept:
                parts[when] = PartitionData(kept[when], scored_outputs(spec, rows[part == index], version))
    frames = [
        summary_frame(parts[when].summary, prints.get(when)).assign(
            partition_start=when, **{REFERENCE_VERSION: version}
        )
        for when in starts
    ]
    return LoadedPartitions(parts, times, pd.concat(frames, ignore_index=True))
