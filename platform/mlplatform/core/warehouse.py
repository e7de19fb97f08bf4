"""Writing stage tables in DuckDB: each partitioned table is replaced one time window at a time.

With the Dask engine the connection is a lake connection (`lake_of`): stage tables are Parquet
partitions in the lake behind DuckDB views (mlplatform.core.lake_tables), written by the same calls.

Also what DuckDB's low-level errors mean for a user (file held, damaged, disk full) and a full read that
finds damaged blocks before anything depends on them.
"""

from __future__ import annotations

import contextlib
import re
import shutil
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

import duckdb
import pandas as pd
import pyarrow as pa

from mlplatform.contracts import Stage
from mlplatform.core import lake_tables
from mlplatform.core.lake_tables import lake_of
from mlplatform.core.sql import column_types, quote_ident, quote_literal
from mlplatform.settings import WAREHOUSE_ENV

__all__ = ["lake_of"]  # re-exported: callers ask core.warehouse which engine holds the tables

# raw and quarantine rows: the time that placed the row in its partition (set even where the row's own
# time does not parse, see mlplatform.core.placement).
PARTITION_TIME = "_partition_ts"

# Nullable integer and boolean columns: DuckDB's .df() gives pandas' masked dtypes, Arrow floats/objects.
_MASKED_DTYPES = {
    pa.int8(): pd.Int8Dtype(),
    pa.int16(): pd.Int16Dtype(),
    pa.int32(): pd.Int32Dtype(),
    pa.int64(): pd.Int64Dtype(),
    pa.uint8(): pd.UInt8Dtype(),
    pa.uint16(): pd.UInt16Dtype(),
    pa.uint32(): pd.UInt32Dtype(),
    pa.uint64(): pd.UInt64Dtype(),
    pa.bool_(): pd.BooleanDtype(),
}


def _converts_like_duckdb(data_type: pa.DataType) -> bool:
    """Arrow types whose to_pandas() matches DuckDB's .df() (integers and booleans after the
    masked-dtype fix); dates, decimals, intervals, nested and zoned times differ, so they don't."""
    if pa.types.is_timestamp(data_type):
        return data_type.tz is None
    return (
        pa.types.is_integer(data_type)
        or pa.types.is_floating(data_type)
        or pa.types.is_boolean(data_type)
        or pa.types.is_string(data_type)
        or pa.types.is_large_string(data_type)
        or pa.types.is_string_view(data_type)
        or pa.types.is_null(data_type)
    )


def read_frame(conn: duckdb.DuckDBPyConnection, sql: str, params: list | None = None) -> pd.DataFrame:
    """`conn.execute(sql, params).df()`, with the same dtypes, but through Arrow.

    On millions of rows this is about 5x faster (DuckDB's own conversion builds every column and then
    consolidates them, copying all the data once more), and repeated strings (merchants, countries,
    customer ids) become one shared Python object each instead of one per row, which saves GiBs.
    Results with a column type Arrow converts differently fall back to .df().
    """
    table = conn.sql(sql, params=params or None).to_arrow_table()
    names = table.schema.names
    if len(set(names)) < len(names) or not all(_converts_like_duckdb(f.type) for f in table.schema):
        return conn.execute(sql, params or []).df()
    masked = {
        field.name: table.column(position).to_pandas(types_mapper=_MASKED_DTYPES.get)
        for position, field in enumerate(table.schema)
        if field.type in _MASKED_DTYPES and table.column(position).null_count
    }
    # split_blocks + self_destruct: no consolidation copy, Arrow memory freed column by column.
    frame = table.to_pandas(split_blocks=True, self_destruct=True)
    for name, column in masked.items():
        frame[name] = column
    return frame


def table_name(schema: str, table: str) -> str:
    return f"{quote_ident(schema)}.{quote_ident(table)}"


def table_exists(conn: duckdb.DuckDBPyConnection, schema: str, table: str) -> bool:
    row = conn.execute(
        "SELECT count(*) FROM information_schema.tables WHERE table_schema = ? AND table_name = ?",
        [schema, table],
    ).fetchall()[0]
    return bool(row and row[0])


class MissingTableError(LookupError):
    """A table a step reads has not been materialized yet; the message says what to run."""


def require_table(conn: duckdb.DuckDBPyConnection, dataset: str, stage: str) -> None:
    """Raise MissingTableError naming what to materialize first. Without it DuckDB's own error for a
    missing table can be about a Python variable of the same name (its replacement scans)."""
    if not table_exists(conn, dataset, stage):
        raise MissingTableError(f"{dataset}.{stage} does not exist: materialize {dataset}/{stage} first")


def window_column(stage: Stage, time_column: str) -> str:
    """The column that windows a data stage's table: `PARTITION_TIME` in raw and quarantine (their rows
    may not have a time of their own), the typed time column in clean and features."""
    return PARTITION_TIME if stage in (Stage.RAW, Stage.QUARANTINE) else time_column


def window_predicate(column: str, start: datetime, end: datetime) -> str:
    return (
        f"{quote_ident(column)} >= {quote_literal(start.isoformat(sep=' '))}::TIMESTAMP "
        f"AND {quote_ident(column)} < {quote_literal(end.isoformat(sep=' '))}::TIMESTAMP"
    )


def replace_window(
    conn: duckdb.DuckDBPyConnection,
    schema: str,
    table: str,
    select_sql: str,
    window_column: str,
    start: datetime,
    end: datetime,
) -> int:
    """Replace the rows of `schema.table` in [start, end) of `window_column` by `select_sql`'s rows.

    One transaction, so a failed load leaves the previous rows in place. New columns are added to
    an existing table (a spec gained a column); returns the number of rows written. On a lake
    connection each partition of the window is replaced whole (lake_tables.write_window).
    """
    in_lake = lake_of(conn)
    if in_lake is not None:
        root, grain = in_lake
        return lake_tables.write_window(
            conn, root, grain, schema, table, select_sql, window_column, start, end
        )
    target = table_name(schema, table)
    conn.execute(f"CREATE SCHEMA IF NOT EXISTS {quote_ident(schema)}")
    conn.execute(f"CREATE TABLE IF NOT EXISTS {target} AS SELECT * FROM ({select_sql}) LIMIT 0")
    existing = column_types(conn, target)
    for name, sql_type in column_types(conn, f"({select_sql})").items():
        if name not in existing:
            conn.execute(f"ALTER TABLE {target} ADD COLUMN {quote_ident(name)} {sql_type}")
    conn.execute("BEGIN TRANSACTION")
    try:
        conn.execute(f"DELETE FROM {target} WHERE {window_predicate(window_column, start, end)}")
        written = conn.execute(f"INSERT INTO {target} BY NAME SELECT * FROM ({select_sql})").fetchall()[0]
        conn.execute("COMMIT")
    except Exception as error:
        # A failed COMMIT (e.g. disk full) has ended the transaction: its error is the one to show.
        with contextlib.suppress(duckdb.Error):
            conn.execute("ROLLBACK")
        lake_tables.raise_if_lake_view(conn, schema, table, error)
        raise
    return int(written[0]) if written else 0


def replace_table(conn: duckdb.DuckDBPyConnection, schema: str, table: str, select_sql: str) -> int:
    """Replace the unpartitioned table `schema.table` by `select_sql`'s rows; returns how many."""
    in_lake = lake_of(conn)
    if in_lake is not None:
        return lake_tables.write_table(conn, in_lake[0], schema, table, select_sql)
    row = conn.execute(f"CREATE OR REPLACE TABLE {table_name(schema, table)} AS {select_sql}").fetchall()
    return int(row[0][0]) if row else 0


def rewrite_rows(
    conn: duckdb.DuckDBPyConnection,
    schema: str,
    table: str,
    mutate: Callable[[str], int],
    within_sql: str | None = None,
) -> int:
    """Run `mutate(table_sql)` (an UPDATE or DELETE on the table named `table_sql`, returning the rows
    it changed). Local engine: on `schema.table` itself. Lake: on a temp copy of the partitions holding
    rows that match `within_sql` (all when None; it must cover every row `mutate` may change), which
    are then written back whole."""
    in_lake = lake_of(conn)
    if in_lake is None:
        return mutate(table_name(schema, table))
    return lake_tables.rewrite_rows(conn, in_lake[0], schema, table, mutate, within_sql)


def _changed_rows(conn: duckdb.DuckDBPyConnection, statement: str) -> int:
    row = conn.execute(statement).fetchall()
    return int(row[0][0]) if row else 0


def delete_rows(conn: duckdb.DuckDBPyConnection, schema: str, table: str, where_sql: str) -> int:
    """DELETE FROM schema.table WHERE where_sql, on either engine; returns the rows deleted."""
    return rewrite_rows(
        conn,
        schema,
        table,
        lambda target: _changed_rows(conn, f"DELETE FROM {target} WHERE {where_sql}"),
        where_sql,
    )


def count_rows(conn: duckdb.DuckDBPyConnection, schema: str, table: str, where: str | None = None) -> int:
    if not table_exists(conn, schema, table):
        return 0
    clause = f" WHERE {where}" if where else ""
    row = conn.execute(f"SELECT count(*) FROM {table_name(schema, table)}{clause}").fetchall()[0]
    return int(row[0]) if row else 0


_LOCK_HELD = "Could not set lock on file"
_LOCK_HOLDER = re.compile(r"Conflicting lock is held in (?P<program>.+?) \(PID (?P<pid>\d+)\)")
# Block checksums and reads past the end of a truncated file.
_DAMAGED = ("Corrupt database file", "does not match stored checksum", "Could not read enough bytes")
_NOT_DUCKDB = "not a valid DuckDB database file"  # a wrecked header, or another program's file
# Only ENOSPC and EDQUOT: other I/O errors (a read-only mount, EIO, NFS) are not "disk full" and keep
# DuckDB's own message. (SQLite's "disk I/O error" is Dagster's storage, not the warehouse.)
_DISK_FULL = ("No space left on device", "Disk quota exceeded")


def is_lock_conflict(error: BaseException) -> bool:
    return _LOCK_HELD in str(error)


def _size(n_bytes: float) -> str:
    for unit in ("B", "KiB", "MiB"):
        if n_bytes < 1024:
            return f"{n_bytes:.1f} {unit}"
        n_bytes /= 1024
    return f"{n_bytes:.1f} GiB"


def _lock_message(database: str, detail: str) -> str:
    holder = _LOCK_HOLDER.search(detail)
    if holder is None:
        who, stop = "another process", f"close it (`fuser -v {database}` shows which)"
    else:
        who, stop = (
            f"{holder['program']} (PID {holder['pid']})",
            f"close it (`kill {holder['pid']}` if stuck)",
        )
    return (
        f"warehouse {database} is held by {who}: {stop} and re-run; to look at the tables while the "
        "platform runs, use `mlplatform sql`, which opens the files read-only for one query only. DuckDB "
        "lets one process at a time write a file, and none while another one reads it; the holder may be a "
        "`duckdb` shell (even `duckdb -readonly`), a notebook, or another `mlplatform run` or `dagster dev` "
        "of the same home."
    )


def _damaged_message(database: str, detail: str) -> str:
    if _NOT_DUCKDB in detail:
        return (
            f"warehouse {database} is not a DuckDB database file: if it is the platform's warehouse it is "
            f"damaged, so delete it (and {database}.wal if present) and re-run `mlplatform run`, which "
            f"rebuilds it from the sources; if it is another program's file, point ${WAREHOUSE_ENV} "
            f"elsewhere. DuckDB: {detail}"
        )
    return (
        f"warehouse {database} is damaged: delete it (and {database}.wal if present) and re-run "
        "`mlplatform run`, which rebuilds it from the sources; models and the champion live in MLflow and "
        f"are kept. DuckDB: {detail}"
    )


def _disk_full_message(database: str, detail: str) -> str:
    folder = Path(database).resolve().parent
    try:
        usage = shutil.disk_usage(folder)
        # Measured after the failed write, which DuckDB has undone: the write needed more than this.
        space = f"{_size(usage.free)} free of {_size(usage.total)} after the failed write"
    except OSError:
        space = "free space unknown"
    return (
        f"disk full: no space left to write the warehouse {database} ({folder}: {space}). Free space "
        f"there or point ${WAREHOUSE_ENV} at a larger disk, then re-run. DuckDB: {detail}"
    )


def explain_warehouse_error(error: BaseException, database: str) -> str | None:
    """A message saying what happened to the warehouse file and how to fix it, or None if `error` is not
    about the file itself (e.g. a SQL error)."""
    # The errors it arose from too (e.g. a failed ROLLBACK after a full disk), and every line: a FATAL
    # error gives the original cause on a later line.
    lines: list[str] = []
    current: BaseException | None = error
    while current is not None and len(lines) < 20:
        lines += [line.strip() for line in str(current).splitlines() if line.strip()]
        current = current.__cause__ or current.__context__
    detail = " ".join(lines) or type(error).__name__
    notes = getattr(error, "__notes__", None)
    if notes:
        detail = f"{detail}; {'; '.join(notes)}"
    if _LOCK_HELD in detail:
        return _lock_message(database, detail)
    if _NOT_DUCKDB in detail or any(marker in detail for marker in _DAMAGED):
        return _damaged_message(database, detail)
    if any(marker in detail for marker in _DISK_FULL):
        return _disk_full_message(database, detail)
    return None


def verify_tables(conn: duckdb.DuckDBPyConnection, schema: str) -> list[str]:
    """Read every block of every table of `schema` (DuckDB checks each block's checksum on read).

    A damaged block otherwise surfaces only when a later step happens to read it, e.g. after a new model
    was promoted. Hashing whole rows reads every column; on the bike data this takes about 20 ms.
    Raises DuckDB's error, with a note naming the table. Returns the tables read.
    """
    names = [
        row[0]
        for row in conn.execute(
            "SELECT table_name FROM duckdb_tables() "
            "WHERE schema_name = ? AND database_name = current_database() "
            # the lake's views too (Dask engine): reading them reads every Parquet file of the table
            "UNION ALL SELECT view_name FROM duckdb_views() "
            "WHERE schema_name = ? AND database_name = current_database() AND NOT internal ORDER BY 1",
            [schema, schema],
        ).fetchall()
    ]
    for name in names:
        try:
            conn.execute(
                f"SELECT count(*), sum(hash(t)::HUGEINT) FROM {table_name(schema, name)} t"
            ).fetchall()
        except duckdb.Error as error:
            error.add_note(f"while reading table {schema}.{name}")
            raise
    return names
