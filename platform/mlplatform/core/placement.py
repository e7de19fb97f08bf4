"""Placing every staged row in a partition that exists, so that no row is ever dropped.

The rule (documented in the spec reference):

- The partition range comes only from plausible times: from PLAUSIBLE_START (1900-01-01) to one
  day after now (rows are observations: a later time is an error, the day allows for clock and zone
  skew), or from `partitions.start` / `partitions.end` when the spec sets them. One row dated
  9999-12-31 or 0001-01-01 cannot stretch the partitions to millions (nor overflow a date).
- A row whose time does not parse takes the time of the row before it in its file (after it, at the
  top of the file): files land in time order. Its time column is null, so it is quarantined.
- A row dated before the first partition is kept in the first partition; after the last one (past
  `partitions.end`, or in the future when the partitions stop at now or at the data) in the last
  partition; a row of a file in which no time parses at all, in the last partition (the one the
  daily schedule and the new-data sensor run). Each such row gets a `_parse_error` naming its time
  and the partition, so cleaning quarantines it with that reason and clean never holds a row whose
  time is outside its partition's window.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import duckdb

from mlplatform.core.sql import fetch_row, quote_literal

PLAUSIBLE_START = datetime(1900, 1, 1)
PLAUSIBLE_FUTURE = timedelta(days=1)


def plausible_end(now: datetime | None = None) -> datetime:
    """The latest time that can start or end the partitions: one day after now (naive UTC)."""
    return (now or datetime.now(UTC).replace(tzinfo=None)) + PLAUSIBLE_FUTURE


def plausible_sql(expr: str) -> str:
    """SQL that is true where `expr` (a TIMESTAMP) is a plausible time for the partition range."""
    # DuckDB timestamps reach years a Python date cannot hold (an OverflowError at definitions load).
    return f"{expr} >= {_ts(PLAUSIBLE_START)} AND {expr} < {_ts(plausible_end())}"


@dataclass(frozen=True)
class PartitionBounds:
    """The partitions that exist when a run starts: [first_start, end), the last one starts at last_start."""

    first_start: datetime
    last_start: datetime
    end: datetime


def _ts(moment: datetime) -> str:
    return f"{quote_literal(moment.isoformat(sep=' '))}::TIMESTAMP"


def _day(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%d %H:%M") if moment.hour or moment.minute else moment.strftime("%Y-%m-%d")


def _append_error(reason_sql: str) -> str:
    return f"_parse_error = CASE WHEN _parse_error IS NULL THEN {reason_sql} ELSE _parse_error || '; ' || {reason_sql} END"


def clamp_out_of_range(
    conn: duckdb.DuckDBPyConnection, table: str, time_column: str, bounds: PartitionBounds
) -> int:
    """Rows timed before the first or after the last partition go to it, with the reason; returns how many."""
    first, end = _ts(bounds.first_start), _ts(bounds.end)
    before, after = fetch_row(
        conn,
        f"SELECT count(*) FILTER (WHERE _partition_ts < {first}), count(*) FILTER (WHERE _partition_ts >= {end}) "
        f"FROM {table}",
    )
    prefix = quote_literal(f"{time_column}: time ")
    if before:
        reason = f"{prefix} || strftime(_partition_ts, '%Y-%m-%d %H:%M:%S') || {quote_literal(' is before the first partition (' + _day(bounds.first_start) + '); kept in it')}"
        conn.execute(
            f"UPDATE {table} SET {_append_error(reason)}, _partition_ts = {first} WHERE _partition_ts < {first}"
        )
    if after:
        reason = f"{prefix} || strftime(_partition_ts, '%Y-%m-%d %H:%M:%S') || {quote_literal(' is after the last partition (' + _day(bounds.last_start) + '); kept in it')}"
        conn.execute(
            f"UPDATE {table} SET {_append_error(reason)}, _partition_ts = {_ts(bounds.last_start)} "
            f"WHERE _partition_ts >= {end}"
        )
    return int(before) + int(after)


def fill_from_neighbours(conn: duckdb.DuckDBPyConnection, table: str) -> None:
    """Rows whose time does not parse take the time of the row before them in their file (or after,
    at the top of a file). Only run when such rows exist: the window sorts every row."""
    conn.execute(
        f"""
        CREATE OR REPLACE TEMP TABLE {table} AS
        SELECT * REPLACE (
            coalesce(_partition_ts,
                     last_value(_partition_ts IGNORE NULLS) OVER (PARTITION BY _source_file ORDER BY _source_row
                         ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW),
                     first_value(_partition_ts IGNORE NULLS) OVER (PARTITION BY _source_file ORDER BY _source_row
                         ROWS BETWEEN CURRENT ROW AND UNBOUNDED FOLLOWING)) AS _partition_ts)
        FROM {table}
        """
    )


def place_rows(
    conn: duckdb.DuckDBPyConnection, table: str, time_column: str, bounds: PartitionBounds | None
) -> None:
    """Give every row of `table` a `_partition_ts` inside `bounds` (see the module's rule).

    Without bounds (core tests) rows are only filled from their neighbours.
    """
    if bounds is not None:
        clamp_out_of_range(conn, table, time_column, bounds)
    if fetch_row(conn, f"SELECT count(*) FROM {table} WHERE _partition_ts IS NULL")[0]:
        fill_from_neighbours(conn, table)
    if bounds is None or not fetch_row(conn, f"SELECT count(*) FROM {table} WHERE _partition_ts IS NULL")[0]:
        return
    reason = quote_literal(
        f"{time_column}: no time parses in this row or in any other row of its file; "
        f"kept in the last partition ({_day(bounds.last_start)})"
    )
    conn.execute(
        f"UPDATE {table} SET {_append_error(reason)}, _partition_ts = {_ts(bounds.last_start)} "
        "WHERE _partition_ts IS NULL"
    )
