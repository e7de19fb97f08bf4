"""Ingestion on the Dask engine: the source's files are staged in groups on the workers, in parallel.

Each task runs the local engine's own staging (`core.source.stage_source`: the same reads, casts,
derived columns, row placement and parse errors) on its group of files in an in-memory DuckDB, with the
CSV types sniffed once on the driver over all files, and writes the staged rows to one Parquet file. The
driver then reads those files as the `_staged` relation and does the rest of the raw load exactly as the
local engine does (shrink refusal, accounting, `replace_window` into the lake): aggregates and one
streaming copy, no source row passes through the driver's Python.

Per-file staging gives the rows all-files staging gives: `_source_row` counts within a file and rows
whose time does not parse take a neighbour's within their file (core.placement), so no step of the
staging looks across files.
"""

from __future__ import annotations

import os
import posixpath
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import TYPE_CHECKING

import duckdb

from mlplatform.core.dask_work import (
    ShardTask,
    lake_connection,
    parquet_scan,
    remove_folder,
    run_tasks,
    shard_count,
    write_shard_file,
)
from mlplatform.core.ingestion import Stager
from mlplatform.core.lake import is_local, new_staging, staged_partition
from mlplatform.core.placement import PartitionBounds
from mlplatform.core.source import stage_source
from mlplatform.core.source_checks import add_unreadable_rows, readable_files, sniff_types
from mlplatform.specs.model import DatasetSpec

if TYPE_CHECKING:
    import distributed

STAGED_VIEW = "_staged"
_UNREADABLE_TABLE = "_staged_unreadable"


def file_groups(files: Sequence[str], groups: int) -> list[list[str]]:
    """`files` in order, cut into at most `groups` contiguous runs of about equal bytes (local files;
    others by count), so the staged rows keep the source's order: files, then rows within each."""
    if not files:
        return []
    sizes = [os.path.getsize(f) if is_local(f) and os.path.exists(f) else 1 for f in files]
    share = sum(sizes) / max(1, min(groups, len(files)))
    cut: list[list[str]] = [[]]
    filled = 0.0
    for path, size in zip(files, sizes, strict=True):
        if cut[-1] and filled + size / 2 > share * len(cut) and len(cut) < groups:
            cut.append([])
        cut[-1].append(path)
        filled += size
    return cut


def stage_group(
    staging: str,
    spec: DatasetSpec,
    files: list[str],
    loaded_at: datetime,
    bounds: PartitionBounds | None,
    sniffed: dict[str, str],
    shard: int,
) -> tuple[int, dict[str, str]]:
    """On a worker: stage `files` as the local engine would and write them as shard `shard`'s file.
    Returns (rows, notes on the files)."""
    notes: dict[str, str] = {}
    conn = lake_connection(staging)
    try:
        staged = stage_source(conn, spec, files, loaded_at, bounds, notes, sniffed=sniffed)
        table = conn.sql(f"SELECT * FROM {staged}").to_arrow_table()
    finally:
        conn.close()
    write_shard_file(table, staging, None, shard)
    return table.num_rows, notes


def stage_on_cluster(
    client: distributed.Client,
    conn: duckdb.DuckDBPyConnection,
    lake: str,
    spec: DatasetSpec,
    files: list[str],
    loaded_at: datetime,
    bounds: PartitionBounds | None,
    notes: dict[str, str],
) -> tuple[str, str | None]:
    """Stage `files` on the cluster; returns (the `_staged` relation on `conn`, the staging folder to
    remove once the load is done). With no readable file the driver stages locally (nothing to share)."""
    readable, unreadable = readable_files(spec, files, notes)
    if not readable:
        return stage_source(conn, spec, files, loaded_at, bounds, notes), None
    sniffed = sniff_types(conn, spec, readable)
    staging = new_staging(lake)
    groups = file_groups(readable, shard_count(client))
    tasks = [
        ShardTask(
            f"files {group[0]} .. {group[-1]}", stage_group, (spec, group, loaded_at, bounds, sniffed, i)
        )
        for i, group in enumerate(groups)
    ]
    try:
        results = run_tasks(client, f"raw of {spec.name}", tasks, staging)
    except BaseException:
        remove_folder(staging)
        raise
    for _, group_notes in results:
        notes.update(group_notes)
    scan = parquet_scan([posixpath.join(staged_partition(staging, None), "*.parquet")])
    conn.execute(f"CREATE OR REPLACE TEMP TABLE {_UNREADABLE_TABLE} AS SELECT * FROM {scan} LIMIT 0")
    first_start = bounds.first_start if bounds else None
    add_unreadable_rows(conn, _UNREADABLE_TABLE, unreadable, loaded_at, first_start)
    conn.execute(
        f"CREATE OR REPLACE TEMP VIEW {STAGED_VIEW} AS SELECT * FROM {scan} "
        f"UNION ALL BY NAME SELECT * FROM {_UNREADABLE_TABLE}"
    )
    return STAGED_VIEW, staging


def cluster_stager(client: distributed.Client, lake: str) -> Stager:
    """A `core.ingestion.Stager` that stages on the cluster (`stage_on_cluster`) and drops the view,
    the unreadable files' rows and the staged files when the load is done."""

    def stage(
        conn: duckdb.DuckDBPyConnection,
        spec: DatasetSpec,
        files: list[str],
        loaded_at: datetime,
        bounds: PartitionBounds | None,
        notes: dict[str, str],
    ) -> tuple[str, Callable[[], None]]:
        staged, staging = stage_on_cluster(client, conn, lake, spec, files, loaded_at, bounds, notes)

        def drop() -> None:
            if staging is None:  # staged in the warehouse: nothing was readable
                conn.execute(f"DROP TABLE IF EXISTS {staged}")
                return
            conn.execute(f"DROP VIEW IF EXISTS {staged}")
            conn.execute(f"DROP TABLE IF EXISTS {_UNREADABLE_TABLE}")
            remove_folder(staging)

        return staged, drop

    return stage
