"""Placing every staged row in a partition that exists, so that no row is ever dropped or loaded twice.

The rule (documented in the spec reference):

- The partition range comes only from plausible times: from PLAUSIBLE_START (1900-01-01) to one
  day after now (rows are observations: a later time is an error, the day allows for clock and zone
  skew), or from `partitions.start` / `partitions.end` when the spec sets them. One row dated
  9999-12-31 or 0001-01-01 cannot stretch the partitions to millions (nor overflow a date).
- A row whose time does not parse takes the time of the row before it in its file (after it, at the
  top of the file): files land in time order. Its time column is null, so it is quarantined.
- A row dated before the first partition is kept in the first partition; a row past an explicit
  `partitions.end` in the last one (which then no longer moves; until the partitions reach that end
  the row waits, as below); a row more than a day in the future
  (past `plausible_end()`) otherwise, and the rows of a file in which no time parses at all, in the
  first partition: the last partition moves as time passes or data arrives (with `end: open` it is
  yesterday's), and a row placed there would land again in each new last partition. Each such row
  gets a `_parse_error` naming its time and the partition, so cleaning quarantines it with that
  reason and clean never holds a row whose time is outside its partition's window.
- A plausible row whose partition does not exist yet (after the last one: the partitions stop at
  the data or, with `end: open`, at the last complete partition) is pending: it is read, but placed
  in no partition that exists, so no run loads it until its own partition exists (the daily
  schedule or the new-data sensor then runs it).

So a placed row keeps its partition as time passes and partitions are added. (A row more than a day
in the future that becomes plausible later is then loaded twice; `source_accounting` reports it.)
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
    spec_end: datetime | None = None  # `partitions.end` when the spec sets a date

    @property
    def last_is_final(self) -> bool:
        """The partitions reach `partitions.end`: the last partition no longer moves as time passes."""
        return self.spec_end is not None and self.end >= self.spec_end


def pending_predicate(bounds: PartitionBounds) -> str:
    """SQL over staged rows: true for rows left pending, whose partition does not exist yet."""
    return f"_partition_ts >= {_ts(bounds.end)}"


def _ts(moment: datetime) -> str:
    return f"{quote_literal(moment.isoformat(sep=' '))}::TIMESTAMP"


def _day(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%d %H:%M") if moment.hour or moment.minute else moment.strftime("%Y-%m-%d")


def _append_error(reason_sql: str) -> str:
    return f"_parse_error = CASE WHEN _parse_error IS NULL THEN {reason_sql} ELSE _parse_error || '; ' || {reason_sql} END"


def _keep_in(
    conn: duckdb.DuckDBPyConnection, table: str, time_column: str, where: str, why: str, target: datetime
) -> int:
    """Move rows matching `where` to the partition starting at `target`, naming their time and `why`."""
    (count,) = fetch_row(conn, f"SELECT count(*) FROM {table} WHERE {where}")
    if count:
        reason = (
            f"{quote_literal(time_column + ': time ')} || strftime(_partition_ts, '%Y-%m-%d %H:%M:%S') || "
            f"{quote_literal(' ' + why)}"
        )
        conn.execute(
            f"UPDATE {table} SET {_append_error(reason)}, _partition_ts = {_ts(target)} WHERE {where}"
        )
    return int(count)


def clamp_out_of_range(
    conn: duckdb.DuckDBPyConnection, table: str, time_column: str, bounds: PartitionBounds
) -> int:
    """Rows before the first partition, past `partitions.end` or implausibly far in the future go to the
    first or last partition, with the reason (see the module's rule); returns how many. Plausible later
    rows are left pending."""
    first, last = bounds.first_start, bounds.last_start
    moved = 0
    if bounds.last_is_final:
        why = f"is after the last partition ({_day(last)}); kept in it"
        moved += _keep_in(conn, table, time_column, f"_partition_ts >= {_ts(bounds.end)}", why, last)
    else:
        future = f"_partition_ts >= {_ts(max(bounds.end, plausible_end()))}"
        if bounds.spec_end is not None:  # past `partitions.end`: pending until the last partition exists
            future += f" AND _partition_ts < {_ts(bounds.spec_end)}"
        why = f"is more than a day in the future; kept in the first partition ({_day(first)})"
        moved += _keep_in(conn, table, time_column, future, why, first)
    why = f"is before the first partition ({_day(first)}); kept in it"
    return moved + _keep_in(conn, table, time_column, f"_partition_ts < {_ts(first)}", why, first)


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
    """Give every row of `table` a `_partition_ts` inside `bounds`, or a pending one after them (see the
    module's rule). Without bounds (core tests) rows are only filled from their neighbours.
    """
    if bounds is not None:
        clamp_out_of_range(conn, table, time_column, bounds)
    if fetch_row(conn, f"SELECT count(*) FROM {table} WHERE _partition_ts IS NULL")[0]:
        fill_from_neighbours(conn, table)
    if bounds is None or not fetch_row(conn, f"SELECT count(*) FROM {table} WHERE _partition_ts IS NULL")[0]:
        return
    reason = quote_literal(
        f"{time_column}: no time parses in this row or in any other row of its file; "
        f"kept in the first partition ({_day(bounds.first_start)})"
    )
    conn.execute(
        f"UPDATE {table} SET {_append_error(reason)}, _partition_ts = {_ts(bounds.first_start)} "
        "WHERE _partition_ts IS NULL"
    )
