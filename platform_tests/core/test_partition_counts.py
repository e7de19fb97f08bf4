"""Counts per partition of a run in one query: each row in exactly its own window, empty ones at 0."""

from __future__ import annotations

from datetime import datetime, timedelta

import duckdb

from mlplatform.core.partition_counts import (
    grouped_rows_per_partition,
    preview_per_partition,
    rows_per_partition,
)

# Weeks starting on Sundays (as Dagster cuts them), the third one without rows.
WINDOWS = {
    "2011-01-02": (datetime(2011, 1, 2), datetime(2011, 1, 9)),
    "2011-01-09": (datetime(2011, 1, 9), datetime(2011, 1, 16)),
    "2011-01-16": (datetime(2011, 1, 16), datetime(2011, 1, 23)),
}


def _table() -> duckdb.DuckDBPyConnection:
    """Hourly rows from Saturday 2011-01-01 to 2011-01-15 23:00, `kind` a for even hours, b for odd."""
    conn = duckdb.connect()
    hours = [datetime(2011, 1, 1) + timedelta(hours=i) for i in range(15 * 24)]
    conn.execute("CREATE TABLE t (ts TIMESTAMP, kind VARCHAR, bad BOOLEAN)")
    conn.executemany(
        "INSERT INTO t VALUES (?, ?, ?)", [(h, "ab"[h.hour % 2], h.hour == 3) for h in reversed(hours)]
    )
    return conn


def test_rows_per_partition_counts_each_window_and_zero_for_an_empty_one() -> None:
    conn = _table()
    # 2011-01-01 (a Saturday) is before the first window: not counted anywhere.
    assert rows_per_partition(conn, "t", "ts", WINDOWS) == {
        "2011-01-02": 168,
        "2011-01-09": 168,
        "2011-01-16": 0,
    }
    assert rows_per_partition(conn, "t", "ts", WINDOWS, where="bad") == {
        "2011-01-02": 7,
        "2011-01-09": 7,
        "2011-01-16": 0,
    }


def test_grouped_rows_and_previews_are_per_partition() -> None:
    conn = _table()
    grouped = grouped_rows_per_partition(conn, "t", "ts", WINDOWS, ["kind"])
    assert grouped == {
        "2011-01-02": [(("a",), 84), (("b",), 84)],
        "2011-01-09": [(("a",), 84), (("b",), 84)],
        "2011-01-16": [],
    }
    previews = preview_per_partition(conn, "t", "ts", WINDOWS, limit=3)
    assert [str(t) for t in previews["2011-01-09"]["ts"]] == [
        "2011-01-09 00:00:00",
        "2011-01-09 01:00:00",
        "2011-01-09 02:00:00",
    ]
    assert list(previews["2011-01-16"].columns) == ["ts", "kind", "bad"] and previews["2011-01-16"].empty
