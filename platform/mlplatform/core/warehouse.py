"""Writing stage tables in DuckDB: each partitioned table is replaced one time window at a time."""

from __future__ import annotations

from datetime import datetime

import duckdb
import pandas as pd
import pyarrow as pa

from mlplatform.core.sql import column_types, quote_ident, quote_literal

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
    an existing table (a spec gained a column); returns the number of rows written.
    """
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
    except Exception:
        conn.execute("ROLLBACK")
        raise
    return int(written[0]) if written else 0


def count_rows(conn: duckdb.DuckDBPyConnection, schema: str, table: str, where: str | None = None) -> int:
    if not table_exists(conn, schema, table):
        return 0
    clause = f" WHERE {where}" if where else ""
    row = conn.execute(f"SELECT count(*) FROM {table_name(schema, table)}{clause}").fetchall()[0]
    return int(row[0]) if row else 0
