"""Writing stage tables in DuckDB: each partitioned table is replaced one time window at a time."""

from __future__ import annotations

from datetime import datetime

import duckdb

from mlplatform.core.sql import column_types, quote_ident, quote_literal


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
