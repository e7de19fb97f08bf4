"""The raw stage over one time window: source files -> `<dataset>.raw`, never emptied silently.

A re-run replaces exactly its window's rows by what the files yield now. It refuses (and changes
nothing) when that would erase rows nobody asked to remove: a window emptied, every row of a file gone,
or rows in partitions that no longer exist; `allow_shrink` lets it remove them on purpose.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime, time
from pathlib import Path

import duckdb

from mlplatform.contracts import Stage
from mlplatform.core.accounting import (
    FileAccount,
    FileCount,
    record_accounting,
    recorded_files,
    rows_per_file,
    shrink_problem,
)
from mlplatform.core.placement import PartitionBounds, pending_predicate
from mlplatform.core.source import stage_source
from mlplatform.core.sql import fetch_row
from mlplatform.core.warehouse import (
    PARTITION_TIME,
    delete_rows,
    replace_window,
    table_exists,
    table_name,
    window_predicate,
)
from mlplatform.specs.model import DatasetSpec


@dataclass(frozen=True)
class ShrinkRefusal:
    """Why the run would erase rows without `allow_shrink`; nothing was changed."""

    description: str
    rows_before: int
    rows_after: int
    rows_outside_partitions: int

    def metadata(self) -> dict[str, int]:
        return {
            "rows_before": self.rows_before,
            "rows_after": self.rows_after,
            "rows_outside_partitions": self.rows_outside_partitions,
        }


@dataclass(frozen=True)
class RawLoad:
    """What one run wrote to raw."""

    rows: int  # rows written to the window
    in_window: str  # SQL over raw: the window's rows
    accounts: list[FileAccount]
    malformed_lines: int
    rows_pending_partition: int  # read, but their partition does not exist yet
    removed_outside: dict[str, int]  # per file, rows removed from partitions that no longer exist
    notes: dict[str, str]  # per file, what happened to it


def with_spec_end(spec: DatasetSpec, bounds: PartitionBounds | None) -> PartitionBounds | None:
    """`bounds` plus `partitions.end` when the spec sets one (rows past it are kept in the last
    partition; other later rows wait for their own partition)."""
    end = spec.partitions.end
    if bounds is None or not isinstance(end, date):
        return bounds
    return replace(bounds, spec_end=datetime.combine(end, time()))


def outside_partitions(bounds: PartitionBounds) -> str:
    """SQL over raw: true for rows outside the partitions that exist (the range shrank: the source no
    longer holds data that far). Rows waiting for a later partition are never in raw."""
    return f"NOT ({window_predicate(PARTITION_TIME, bounds.first_start, bounds.end)})"


def rows_outside(
    conn: duckdb.DuckDBPyConnection, spec: DatasetSpec, bounds: PartitionBounds | None
) -> dict[str, int]:
    """Per file, the raw rows in partitions that no longer exist: no run can replace them any more."""
    if bounds is None or not table_exists(conn, spec.name, Stage.RAW):
        return {}
    return rows_per_file(conn, table_name(spec.name, Stage.RAW), outside_partitions(bounds))


def remove_outside(
    conn: duckdb.DuckDBPyConnection,
    spec: DatasetSpec,
    bounds: PartitionBounds | None,
    outside: Mapping[str, int],
) -> None:
    """With `allow_shrink`: the rows of `rows_outside` go (cleaning then drops theirs from clean and
    quarantine). Its own statement: `replace_window` runs its own transaction right after."""
    if bounds is not None and outside:
        delete_rows(conn, spec.name, Stage.RAW, outside_partitions(bounds))


def outside_problem(outside: Mapping[str, int], bounds: PartitionBounds | None) -> str | None:
    if not outside or bounds is None:
        return None
    files = sorted(outside)
    names = ", ".join(f"{Path(f).name} ({outside[f]} rows)" for f in files[:5])
    more = f" and {len(files) - 5} more file(s)" if len(files) > 5 else ""
    return (
        f"{sum(outside.values())} rows of {names}{more} are in partitions that no longer exist (outside "
        f"{bounds.first_start:%Y-%m-%d} .. {bounds.last_start:%Y-%m-%d}: the source no longer holds data "
        "that far), and would be erased"
    )


def shrink_refusal(
    conn: duckdb.DuckDBPyConnection,
    spec: DatasetSpec,
    window: str,
    after: Mapping[str, int],
    outside: Mapping[str, int],
    bounds: PartitionBounds | None,
    partition_range: str,
) -> ShrinkRefusal | None:
    """The refusal to erase rows without `allow_shrink`: a window emptied or a file gone (its rows
    counted over the whole raw table), or rows in partitions that no longer exist. `window` is SQL over
    raw (the run's window), `partition_range` the run's partitions as the user names them."""
    raw = table_name(spec.name, Stage.RAW)
    before = rows_per_file(conn, raw, window)
    stored = rows_per_file(conn, raw)
    problems = [
        shrink_problem(before, after, recorded_files(conn, spec.name), stored),
        outside_problem(outside, bounds),
    ]
    problem = "; ".join(p for p in problems if p)
    if not problem:
        return None
    op = f"{spec.name}__{Stage.RAW}"
    return ShrinkRefusal(
        description=(
            f"{spec.name}.{Stage.RAW} for {partition_range}: {problem}. Nothing was changed. If the source "
            "rows were removed on purpose, re-run with "
            f"`mlplatform run --dataset {spec.name} --allow-shrink` (in the launchpad: run config "
            f"`ops: {{{op}: {{config: {{allow_shrink: true}}}}}}`); otherwise restore the files."
        ),
        rows_before=sum(before.values()),
        rows_after=sum(after.values()),
        rows_outside_partitions=sum(outside.values()),
    )


def note_pending(
    conn: duckdb.DuckDBPyConnection, staged: str, bounds: PartitionBounds | None, notes: dict[str, str]
) -> int:
    """Note, per file, the rows that wait for a partition that does not exist yet; returns how many."""
    if bounds is None:
        return 0
    pending = rows_per_file(conn, staged, pending_predicate(bounds))
    for path, n in pending.items():
        note = (
            f"{n} rows wait for their partition (after {bounds.last_start:%Y-%m-%d}): loaded when it exists"
        )
        notes[path] = f"{notes[path]}; {note}" if path in notes else note
    return sum(pending.values())


def write_window(
    conn: duckdb.DuckDBPyConnection,
    spec: DatasetSpec,
    staged: str,
    window: tuple[datetime, datetime],
    counts: Mapping[str, FileCount],
    notes: Mapping[str, str],
    in_window_per_file: Mapping[str, int],
) -> tuple[int, list[FileAccount], int]:
    """Replace the window's raw rows by the staged ones and record the source accounting.

    Returns the rows written, the accounts and the malformed lines among the window's rows.
    """
    in_window = window_predicate(PARTITION_TIME, *window)
    rows = replace_window(
        conn, spec.name, Stage.RAW, f"SELECT * FROM {staged} WHERE {in_window}", PARTITION_TIME, *window
    )
    read = rows_per_file(conn, staged)
    accounts = record_accounting(conn, spec.name, counts, read, in_window_per_file, window, notes)
    malformed = fetch_row(
        conn, f"SELECT count(*) FROM {staged} WHERE {in_window} AND _parse_error IS NOT NULL"
    )[0]
    return rows, accounts, int(malformed)


# Stages the source files as a relation of `conn`; returns its name and how to drop it. Arguments: the
# connection, the spec, the files, the load time, the partition bounds and the notes to add to.
Stager = Callable[
    [duckdb.DuckDBPyConnection, DatasetSpec, list[str], datetime, PartitionBounds | None, dict[str, str]],
    tuple[str, Callable[[], None]],
]


def stage_in_warehouse(
    conn: duckdb.DuckDBPyConnection,
    spec: DatasetSpec,
    files: list[str],
    loaded_at: datetime,
    bounds: PartitionBounds | None,
    notes: dict[str, str],
) -> tuple[str, Callable[[], None]]:
    """The local engine's staging: every file read into a temp table of `conn`."""
    staged = stage_source(conn, spec, files, loaded_at, bounds, notes)

    def drop() -> None:
        conn.execute(f"DROP TABLE IF EXISTS {staged}")

    return staged, drop


def load_raw_window(
    conn: duckdb.DuckDBPyConnection,
    spec: DatasetSpec,
    counts: Mapping[str, FileCount],
    window: tuple[datetime, datetime],
    bounds: PartitionBounds | None,
    allow_shrink: bool,
    partition_range: str,
    stager: Stager = stage_in_warehouse,
) -> RawLoad | ShrinkRefusal:
    """Stage the files of `counts` (each file's records, counted by mlplatform.core.accounting, in
    the order of the source) and replace the window's raw rows, unless that would erase rows without
    `allow_shrink`. `stager`: how the files are staged (the Dask engine stages them on its workers,
    mlplatform.core.ingestion_dask); what it staged is dropped when the load ends, failed or not."""
    notes: dict[str, str] = {}
    loaded_at = datetime.now(UTC).replace(tzinfo=None)
    staged, drop = stager(conn, spec, list(counts), loaded_at, bounds, notes)
    try:
        in_window = window_predicate(PARTITION_TIME, *window)
        after = rows_per_file(conn, staged, in_window)
        outside = rows_outside(conn, spec, bounds)
        if not allow_shrink and table_exists(conn, spec.name, Stage.RAW):
            refusal = shrink_refusal(conn, spec, in_window, after, outside, bounds, partition_range)
            if refusal is not None:
                return refusal
        remove_outside(conn, spec, bounds, outside)
        pending = note_pending(conn, staged, bounds, notes)
        rows, accounts, malformed = write_window(conn, spec, staged, window, counts, notes, after)
    finally:
        drop()
    return RawLoad(
        rows=rows,
        in_window=in_window,
        accounts=accounts,
        malformed_lines=malformed,
        rows_pending_partition=pending,
        removed_outside=outside,
        notes=notes,
    )
