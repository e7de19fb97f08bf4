"""Stage tables in the lake (the Dask engine): DuckDB writes the Parquet partitions, and each table is a
DuckDB VIEW over its files, so every SELECT through a warehouse connection reads it like a table.

The warehouse connection says it is in lake mode by two DuckDB variables (set by WarehouseResource):
`mlplatform_lake` (the lake root) and `mlplatform_lake_grain` (the dataset's partition grain).
core.warehouse dispatches here; plain DuckDB and core.lake, no Dagster.
"""

from __future__ import annotations

import posixpath
from collections.abc import Callable
from datetime import date, datetime

import duckdb

from mlplatform.core import lake
from mlplatform.core.grain import partition_days
from mlplatform.core.sql import quote_ident, quote_literal

LAKE_VARIABLE = "mlplatform_lake"
GRAIN_VARIABLE = "mlplatform_lake_grain"
_PART_COLUMN = "__mlplatform_part"  # the partition of each row while DuckDB writes them (not stored)
_FILE_COLUMN = "__mlplatform_file"
_REWRITE_TABLE = "_mlplatform_lake_rewrite"
_EMPTY_FILE = "empty.parquet"  # a partition without rows keeps the table's columns in a zero-row file


class LakeError(RuntimeError):
    """A lake table cannot be written as asked (rows outside the window, a local table in the way)."""


def raise_if_lake_view(conn: duckdb.DuckDBPyConnection, schema: str, table: str, error: Exception) -> None:
    """After a local-engine write of `schema.table` failed: if the table is a view over the lake (the
    warehouse was built by the Dask engine), say so instead of DuckDB's "Can only delete from base table"."""
    if not isinstance(error, duckdb.Error) or "base table" not in str(error):
        return
    view = conn.execute(
        "SELECT sql FROM duckdb_views() WHERE schema_name = ? AND view_name = ? AND database_name = current_database()",
        [schema, table],
    ).fetchall()
    if view:
        raise LakeError(
            f"{schema}.{table} is a view over the Dask engine's lake, and this connection writes with the local "
            f"engine: set MLPLATFORM_ENGINE=dask (and MLPLATFORM_LAKE) as when it was built, or use a fresh home "
            f"for the local engine. The view: {view[0][0]}"
        ) from error


def set_lake(conn: duckdb.DuckDBPyConnection, root: str, grain: str | None) -> None:
    """Mark `conn` as a lake connection. A URL lake gets its fsspec filesystem registered, so DuckDB
    reads and writes it (with fsspec's default credentials, e.g. the environment's)."""
    conn.execute(f"SET VARIABLE {LAKE_VARIABLE} = {quote_literal(root)}")
    conn.execute(f"SET VARIABLE {GRAIN_VARIABLE} = {quote_literal(grain or '')}")
    if not lake.is_local(root):
        import fsspec

        protocol = root.split("://", 1)[0]
        if not conn.filesystem_is_registered(protocol):
            conn.register_filesystem(fsspec.filesystem(protocol))


def lake_of(conn: duckdb.DuckDBPyConnection) -> tuple[str, str] | None:
    """(lake root, partition grain; "" when unknown) of a lake connection, None otherwise."""
    root, grain = conn.execute(
        f"SELECT getvariable('{LAKE_VARIABLE}'), getvariable('{GRAIN_VARIABLE}')"
    ).fetchall()[0]
    return (str(root), str(grain or "")) if root else None


def day_sql(column: str, grain: str) -> str:
    """SQL for `core.grain.grain_floor(column, grain)` as 'YYYY-MM-DD'."""
    day = f"CAST({quote_ident(column)} AS DATE)"
    floors = {
        "day": day,
        "week": f"({day} - CAST(dayofweek({day}) AS INTEGER))",  # dayofweek: Sunday = 0, as Dagster's weeks
        "month": f"CAST(date_trunc('month', {day}) AS DATE)",
    }
    if grain not in floors:
        raise LakeError(
            f"lake partitions need the dataset's partition grain (day, week or month), not {grain!r}"
        )
    return f"strftime({floors[grain]}, '%Y-%m-%d')"


def _target(schema: str, table: str) -> str:
    return f"{quote_ident(schema)}.{quote_ident(table)}"


def _glob(root: str, schema: str, table: str) -> str:
    return posixpath.join(lake.table_root(root, schema, table), lake.PARQUET_GLOB)


def refresh_view(conn: duckdb.DuckDBPyConnection, root: str, schema: str, table: str) -> None:
    """(Re)create the view `schema.table` over the table's files (bound now, so its columns are known)."""
    kind = conn.execute(
        "SELECT table_type FROM information_schema.tables WHERE table_schema = ? AND table_name = ? "
        "AND table_catalog = current_database()",
        [schema, table],
    ).fetchall()
    if kind and kind[0][0] != "VIEW":
        raise LakeError(
            f"{schema}.{table} is a table of the warehouse file (written by the local engine), not a view over "
            f"the lake {root}: switching engines does not move data; use a fresh home (or warehouse) for "
            "the Dask engine, or drop the table to rebuild it in the lake"
        )
    conn.execute(f"CREATE SCHEMA IF NOT EXISTS {quote_ident(schema)}")
    conn.execute(
        f"CREATE OR REPLACE VIEW {_target(schema, table)} AS SELECT * FROM read_parquet("
        f"{quote_literal(_glob(root, schema, table))}, union_by_name = true, hive_partitioning = false)"
    )


def _copy_partitioned(conn: duckdb.DuckDBPyConnection, select_sql: str, folder: str) -> int:
    """COPY `select_sql` (with a `_PART_COLUMN`) into `folder/<_PART_COLUMN>=<value>/` folders."""
    row = conn.execute(
        f"COPY ({select_sql}) TO {quote_literal(folder)} (FORMAT parquet, PARTITION_BY ({quote_ident(_PART_COLUMN)}))"
    ).fetchall()
    return int(row[0][0]) if row else 0


def _adopt_copied(copied: str, staging: str) -> dict[str, str]:
    """Move DuckDB's `<_PART_COLUMN>=<x>` folders to the staging's `part=<x>`; returns x -> folder."""
    prefix = f"{_PART_COLUMN}="
    adopted = {}
    for folder in lake.list_folder(copied):
        name = posixpath.basename(folder.rstrip("/"))
        if name.startswith(prefix):
            value = name.removeprefix(prefix)
            adopted[value] = posixpath.join(staging, f"{lake.PARTITION_PREFIX}{value}")
            lake.move_folder(folder, adopted[value])
    return adopted


def _fill_empty(
    conn: duckdb.DuckDBPyConnection, staging: str, days: list[date | None], schema_sql: str
) -> None:
    """A zero-row file with the table's columns in each staged partition that got no rows."""
    empty = [day for day in days if not lake.list_folder(posixpath.join(staging, lake.partition_name(day)))]
    if not empty:
        return
    template = posixpath.join(staging, _EMPTY_FILE)
    conn.execute(f"COPY (SELECT * FROM ({schema_sql}) LIMIT 0) TO {quote_literal(template)} (FORMAT parquet)")
    for day in empty:
        lake.copy_file(template, posixpath.join(lake.staged_partition(staging, day), _EMPTY_FILE))


def write_window(
    conn: duckdb.DuckDBPyConnection,
    root: str,
    grain: str,
    schema: str,
    table: str,
    select_sql: str,
    window_column: str,
    start: datetime,
    end: datetime,
) -> int:
    """Replace the partitions of [start, end) by `select_sql`'s rows, each partition whole (a partition
    without rows is emptied); returns the rows written. Rows outside the window are refused: they would
    land in partitions this write does not replace."""
    days: list[date | None] = list(partition_days(grain, start, end))
    staging = lake.new_staging(root)
    try:
        parts = (
            f"SELECT *, {day_sql(window_column, grain)} AS {quote_ident(_PART_COLUMN)} FROM ({select_sql})"
        )
        written = _copy_partitioned(conn, parts, posixpath.join(staging, "_copy"))
        adopted = _adopt_copied(posixpath.join(staging, "_copy"), staging)
        outside = sorted(set(adopted) - {d.isoformat() for d in days if d is not None})
        if outside:
            raise LakeError(
                f"{schema}.{table}: rows for [{start}, {end}) have {window_column} in partitions "
                f"{', '.join(outside[:5])} outside it; each write replaces only the window's partitions"
            )
        _fill_empty(conn, staging, days, select_sql)
        lake.commit_partitions(root, schema, table, staging, days)
    except BaseException:
        lake.remove_staging(staging)
        raise
    refresh_view(conn, root, schema, table)
    return written


def write_table(conn: duckdb.DuckDBPyConnection, root: str, schema: str, table: str, select_sql: str) -> int:
    """Replace the unpartitioned table (`part=all`) by `select_sql`'s rows; returns how many."""
    staging = lake.new_staging(root)
    try:
        folder = lake.staged_partition(staging, None)
        row = conn.execute(
            f"COPY ({select_sql}) TO {quote_literal(lake.shard_file(folder, 0))} (FORMAT parquet)"
        ).fetchall()
        lake.commit_partitions(root, schema, table, staging, [None])
    except BaseException:
        lake.remove_staging(staging)
        raise
    refresh_view(conn, root, schema, table)
    return int(row[0][0]) if row else 0


def _files_matching(conn: duckdb.DuckDBPyConnection, glob: str, within_sql: str | None) -> list[str]:
    where = f" WHERE {within_sql}" if within_sql else ""
    rows = conn.execute(
        f"SELECT DISTINCT {quote_ident(_FILE_COLUMN)} FROM read_parquet({quote_literal(glob)}, "
        f"union_by_name = true, hive_partitioning = false, filename = {quote_literal(_FILE_COLUMN)}){where}"
    ).fetchall()
    return [row[0] for row in rows]


def rewrite_rows(
    conn: duckdb.DuckDBPyConnection,
    root: str,
    schema: str,
    table: str,
    mutate: Callable[[str], int],
    within_sql: str | None = None,
) -> int:
    """Apply `mutate` (SQL on a table name, returning the rows it changed) to the partitions holding rows
    that match `within_sql` (every partition when None): those partitions are copied into a temp table,
    mutated there with the same SQL the local engine runs on its table, and written back whole."""
    glob = _glob(root, schema, table)
    folders = sorted({posixpath.dirname(f) for f in _files_matching(conn, glob, within_sql)})
    if not folders:
        return 0
    files = [f for folder in folders for f in lake.list_folder(folder) if f.endswith(".parquet")]
    listed = ", ".join(quote_literal(f) for f in files)
    part = f"regexp_extract({quote_ident(_FILE_COLUMN)}, '/part=([^/]+)/[^/]+$', 1)"
    conn.execute(
        f"CREATE OR REPLACE TEMP TABLE {_REWRITE_TABLE} AS SELECT * EXCLUDE ({quote_ident(_FILE_COLUMN)}), "
        f"{part} AS {quote_ident(_PART_COLUMN)} FROM read_parquet([{listed}], union_by_name = true, "
        f"hive_partitioning = false, filename = {quote_literal(_FILE_COLUMN)})"
    )
    try:
        changed = mutate(_REWRITE_TABLE)
        if changed:
            _write_back(conn, root, schema, table, [posixpath.basename(f) for f in folders])
    finally:
        conn.execute(f"DROP TABLE IF EXISTS {_REWRITE_TABLE}")
    return changed


def _write_back(
    conn: duckdb.DuckDBPyConnection, root: str, schema: str, table: str, names: list[str]
) -> None:
    days = [lake.partition_day(name) for name in names]
    staging = lake.new_staging(root)
    try:
        _copy_partitioned(conn, f"SELECT * FROM {_REWRITE_TABLE}", posixpath.join(staging, "_copy"))
        _adopt_copied(posixpath.join(staging, "_copy"), staging)
        _fill_empty(
            conn, staging, days, f"SELECT * EXCLUDE ({quote_ident(_PART_COLUMN)}) FROM {_REWRITE_TABLE}"
        )
        lake.commit_partitions(root, schema, table, staging, days)
    except BaseException:
        lake.remove_staging(staging)
        raise
