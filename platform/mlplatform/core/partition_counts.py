"""What each partition of a run holds, in one query over the run's rows (not one query per partition).

A ranged run writes many partitions in one step; Dagster then records one event per partition, and
each must carry its own counts, not the run's. Partitions are given as their [start, end) windows
(naive UTC, like the tables), so any grain, weekly on Sundays included, is counted as Dagster cuts it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime

import duckdb
import pandas as pd

from mlplatform.core.sql import quote_ident, quote_literal
from mlplatform.core.warehouse import window_predicate

Windows = Mapping[str, tuple[datetime, datetime]]  # partition key -> [start, end)
PARTITION_KEY = "_partition_key"  # the key column of the grouped results


def _timestamp(moment: datetime) -> str:
    return f"{quote_literal(moment.isoformat(sep=' '))}::TIMESTAMP"


def _rows_in_windows(
    relation: str, column: str, windows: Windows, outer: bool, where: str | None = None
) -> str:
    """`_w` (one row per partition) joined to the rows of `relation` inside it, as `_t`."""
    values = ", ".join(
        f"({quote_literal(k)}, {_timestamp(s)}, {_timestamp(e)})" for k, (s, e) in windows.items()
    )
    first, last = min(s for s, _ in windows.values()), max(e for _, e in windows.values())
    time = quote_ident(column)
    return (
        f"(VALUES {values}) AS _w({PARTITION_KEY}, _w_start, _w_end) "
        f"{'LEFT ' if outer else ''}JOIN (SELECT * FROM {relation} WHERE {window_predicate(column, first, last)}"
        f"{f' AND ({where})' if where else ''}) _t "
        f"ON _t.{time} >= _w._w_start AND _t.{time} < _w._w_end"
    )


def rows_per_partition(
    conn: duckdb.DuckDBPyConnection, relation: str, column: str, windows: Windows, where: str | None = None
) -> dict[str, int]:
    """Rows of `relation` (a table name) whose `column` falls in each partition (and that match
    `where`, a SQL condition); 0 for an empty one."""
    sql = (
        f"SELECT {PARTITION_KEY}, count(_t.{quote_ident(column)}) "
        f"FROM {_rows_in_windows(relation, column, windows, outer=True, where=where)} GROUP BY 1"
    )
    counts = dict(conn.execute(sql).fetchall())
    return {key: int(counts.get(key, 0)) for key in windows}


def grouped_rows_per_partition(
    conn: duckdb.DuckDBPyConnection, relation: str, column: str, windows: Windows, group_by: Sequence[str]
) -> dict[str, list[tuple[tuple[object, ...], int]]]:
    """Per partition, the rows of each value of `group_by`, most frequent first (then by value)."""
    groups = ", ".join(f"_t.{quote_ident(name)}" for name in group_by)
    sql = (
        f"SELECT {PARTITION_KEY}, {groups}, count(*) AS n "
        f"FROM {_rows_in_windows(relation, column, windows, outer=False)} "
        f"GROUP BY ALL ORDER BY {PARTITION_KEY}, n DESC, {groups}"
    )
    found: dict[str, list[tuple[tuple[object, ...], int]]] = {key: [] for key in windows}
    for key, *values, n in conn.execute(sql).fetchall():
        found[key].append((tuple(values), int(n)))
    return found


def preview_per_partition(
    conn: duckdb.DuckDBPyConnection, relation: str, column: str, windows: Windows, limit: int = 5
) -> dict[str, pd.DataFrame]:
    """The first `limit` rows (in time) of each partition; an empty frame for an empty partition."""
    time = quote_ident(column)
    sql = (
        f"SELECT {PARTITION_KEY}, _t.* FROM {_rows_in_windows(relation, column, windows, outer=False)} "
        f"QUALIFY row_number() OVER (PARTITION BY {PARTITION_KEY} ORDER BY _t.{time}) <= {int(limit)} "
        f"ORDER BY {PARTITION_KEY}, _t.{time}"
    )
    rows = conn.sql(sql).df()
    by_key = {str(key): frame.drop(columns=PARTITION_KEY) for key, frame in rows.groupby(PARTITION_KEY)}
    empty = rows.drop(columns=PARTITION_KEY).iloc[0:0]
    return {key: by_key.get(key, empty).reset_index(drop=True) for key in windows}
