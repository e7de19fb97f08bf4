"""The warehouse's writers on a lake connection (Dask engine) against the same calls on DuckDB tables."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import date, datetime, timedelta
from pathlib import Path

import duckdb
import pytest

from mlplatform.core import lake
from mlplatform.core.grain import grain_floor
from mlplatform.core.lake_tables import LakeError, day_sql, set_lake
from mlplatform.core.warehouse import (
    count_rows,
    delete_rows,
    lake_of,
    replace_table,
    replace_window,
    rewrite_rows,
    table_exists,
    verify_tables,
)
from mlplatform.core.warehouse_files import open_read_session
from mlplatform.resources.warehouse import WarehouseResource

START = datetime(2011, 1, 1)


def _source(conn: duckdb.DuckDBPyConnection, hours: int = 24 * 20) -> None:
    """Hourly rows from START: a time, a value and a label (null on every 5th row)."""
    conn.execute(
        "CREATE OR REPLACE TEMP TABLE src AS SELECT TIMESTAMP '2011-01-01' + INTERVAL (range) HOUR AS ts, "
        f"range AS v, CASE WHEN range % 5 = 0 THEN NULL ELSE range % 7 END AS label FROM range({hours})"
    )


def _window(start: datetime, end: datetime) -> str:
    return f"SELECT * FROM src WHERE ts >= TIMESTAMP '{start}' AND ts < TIMESTAMP '{end}'"


@pytest.fixture
def engines(tmp_path: Path) -> Iterator[tuple[duckdb.DuckDBPyConnection, duckdb.DuckDBPyConnection, str]]:
    """A local-engine connection and a lake connection (week grain), each on its own warehouse file."""
    local = duckdb.connect(str(tmp_path / "local.duckdb"))
    in_lake = duckdb.connect(str(tmp_path / "lake.duckdb"))
    root = str(tmp_path / "lake")
    set_lake(in_lake, root, "week")
    for conn in (local, in_lake):
        _source(conn)
    yield local, in_lake, root
    local.close()
    in_lake.close()


def _rows(conn: duckdb.DuckDBPyConnection, table: str = "ds.t") -> list[tuple]:
    return conn.execute(f"SELECT * FROM {table} ORDER BY ALL").fetchall()


def _both(engines: tuple, call: str, *args: object) -> list[object]:
    functions = {"replace_window": replace_window, "delete_rows": delete_rows, "replace_table": replace_table}
    return [functions[call](conn, *args) for conn in engines[:2]]


def test_lake_of_tells_the_connections_apart(engines: tuple) -> None:
    local, in_lake, root = engines
    assert lake_of(local) is None
    assert lake_of(in_lake) == (root, "week")


@pytest.mark.parametrize("grain", ["day", "week", "month"])
def test_partition_day_sql_is_grain_floor(grain: str) -> None:
    moments = [datetime(2010, 12, 20) + timedelta(hours=7 * i) for i in range(300)]
    with duckdb.connect() as conn:
        conn.execute("CREATE TABLE m (ts TIMESTAMP)")
        conn.executemany("INSERT INTO m VALUES (?)", [[m] for m in moments])
        got = [row[0] for row in conn.execute(f"SELECT {day_sql('ts', grain)} FROM m ORDER BY ts").fetchall()]
    assert got == [grain_floor(m, grain).isoformat() for m in moments]


def test_replace_window_gives_the_local_engines_rows(engines: tuple) -> None:
    local, in_lake, root = engines
    first, second = (START, datetime(2011, 1, 9)), (datetime(2011, 1, 9), datetime(2011, 1, 16))
    for window in (first, second):
        assert len(set(_both(engines, "replace_window", "ds", "t", _window(*window), "ts", *window))) == 1
    assert _rows(in_lake) == _rows(local) and len(_rows(local)) == 15 * 24
    # 2011-01-01 is a Saturday: weeks start on Sundays, so three partitions.
    assert lake.partition_names(root, "ds", "t") == ["part=2010-12-26", "part=2011-01-02", "part=2011-01-09"]
    # A re-run with other rows replaces the window, leaves the rest; one with no rows empties it.
    narrower = _window(datetime(2011, 1, 10), datetime(2011, 1, 11))
    _both(engines, "replace_window", "ds", "t", narrower, "ts", *second)
    assert _rows(in_lake) == _rows(local) and len(_rows(local)) == 8 * 24 + 24
    _both(engines, "replace_window", "ds", "t", "SELECT * FROM src WHERE false", "ts", *first)
    assert _rows(in_lake) == _rows(local) and count_rows(in_lake, "ds", "t") == 24
    assert table_exists(in_lake, "ds", "t")


def test_an_empty_table_keeps_its_columns_and_new_columns_appear(engines: tuple) -> None:
    local, in_lake, _root = engines
    window = (START, datetime(2011, 1, 2))
    _both(engines, "replace_window", "ds", "t", "SELECT * FROM src WHERE false", "ts", *window)
    for conn in (local, in_lake):
        assert [c[0] for c in conn.execute("DESCRIBE ds.t").fetchall()] == ["ts", "v", "label"]
        assert count_rows(conn, "ds", "t") == 0
    later = (datetime(2011, 1, 2), datetime(2011, 1, 3))
    wider = f"SELECT *, v * 2 AS doubled FROM ({_window(*later)})"
    _both(engines, "replace_window", "ds", "t", _window(*window), "ts", *window)
    _both(engines, "replace_window", "ds", "t", wider, "ts", *later)
    query = "SELECT ts, v, label, doubled FROM ds.t ORDER BY ts"
    assert in_lake.execute(query).fetchall() == local.execute(query).fetchall()


def test_rows_outside_the_window_are_refused_and_nothing_changes(engines: tuple) -> None:
    _local, in_lake, root = engines
    window = (START, datetime(2011, 1, 2))
    replace_window(in_lake, "ds", "t", _window(*window), "ts", *window)
    with pytest.raises(LakeError, match="outside"):
        replace_window(in_lake, "ds", "t", "SELECT * FROM src", "ts", *window)
    assert count_rows(in_lake, "ds", "t") == 24
    assert lake.list_folder(f"{root}/_staging") == []


def test_delete_and_update_rewrite_only_the_matching_partitions(engines: tuple) -> None:
    local, in_lake, root = engines
    window = (START, datetime(2011, 1, 16))
    _both(engines, "replace_window", "ds", "t", _window(*window), "ts", *window)
    untouched = lake.partition_files(root, "ds", "t", [date(2010, 12, 26)])
    deleted = _both(engines, "delete_rows", "ds", "t", "ts >= TIMESTAMP '2011-01-12' AND label IS NULL")
    assert deleted[0] == deleted[1] > 0
    assert _rows(in_lake) == _rows(local)
    assert lake.partition_files(root, "ds", "t", [date(2010, 12, 26)]) == untouched
    assert _both(engines, "delete_rows", "ds", "t", "v < 0") == [0, 0]

    within = "ts < TIMESTAMP '2011-01-05'"  # covers every row the UPDATE may change, as rewrite_rows needs

    def set_label(table: str, conn: duckdb.DuckDBPyConnection) -> int:
        statement = f"UPDATE {table} AS p SET label = s.v FROM src s WHERE s.ts = p.ts AND p.label IS NULL AND p.{within}"
        return int(conn.execute(statement).fetchall()[0][0])

    updated = [rewrite_rows(c, "ds", "t", lambda t, c=c: set_label(t, c), within) for c in (local, in_lake)]
    assert updated[0] == updated[1] > 0
    assert _rows(in_lake) == _rows(local)
    # A partition whose every row goes keeps the columns (a zero-row file).
    _both(engines, "delete_rows", "ds", "t", "ts >= TIMESTAMP '2011-01-09'")
    assert _rows(in_lake) == _rows(local)
    assert lake.partition_files(root, "ds", "t", [date(2011, 1, 9)])[0].endswith("empty.parquet")


def test_replace_table_and_the_views_in_a_read_only_session(engines: tuple, tmp_path: Path) -> None:
    local, in_lake, root = engines
    local.execute("CREATE SCHEMA ds")  # the local engine's training set goes beside its features
    assert _both(engines, "replace_table", "ds", "training_set", "SELECT * FROM src WHERE v < 30") == [30, 30]
    assert _both(engines, "replace_table", "ds", "training_set", "SELECT * FROM src WHERE v < 10") == [10, 10]
    assert _rows(in_lake, "ds.training_set") == _rows(local, "ds.training_set")
    assert lake.partition_names(root, "ds", "training_set") == ["part=all"]
    assert verify_tables(in_lake, "ds") == ["training_set"]
    in_lake.execute("CREATE TABLE ds.source_accounting AS SELECT 1 AS n")  # a file table beside the views
    in_lake.close()
    session = open_read_session({"lake-warehouse": str(tmp_path / "lake.duckdb")})
    try:  # `mlplatform sql`: the file attached read-only, from another folder, resolves the views
        assert session.conn.execute("SELECT count(*) FROM ds.training_set").fetchall() == [(10,)]
    finally:
        session.conn.close()


def test_a_local_engine_table_is_not_silently_replaced(tmp_path: Path) -> None:
    with duckdb.connect(str(tmp_path / "w.duckdb")) as conn:
        _source(conn)
        window = (START, datetime(2011, 1, 2))
        replace_window(conn, "ds", "t", _window(*window), "ts", *window)
        set_lake(conn, str(tmp_path / "lake"), "day")
        with pytest.raises(LakeError, match="local engine"):
            replace_window(conn, "ds", "t", _window(*window), "ts", *window)


def test_the_resource_marks_its_connections(tmp_path: Path) -> None:
    template = str(tmp_path / "wh" / "{dataset}-warehouse.duckdb")
    resource = WarehouseResource(
        database=template, lake=str(tmp_path / "lake"), lake_grains={"bike": "month"}
    )
    with resource.get_connection("bike") as conn:
        assert lake_of(conn) == (str(tmp_path / "lake"), "month")
    with WarehouseResource(database=template).get_connection("bike") as conn:
        assert lake_of(conn) is None


def test_a_local_engine_write_on_a_lake_view_says_which_engine_built_it(tmp_path: Path) -> None:
    window = (START, datetime(2011, 1, 2))
    with duckdb.connect(str(tmp_path / "w.duckdb")) as conn:
        _source(conn)
        set_lake(conn, str(tmp_path / "lake"), "day")
        replace_window(conn, "ds", "t", _window(*window), "ts", *window)
    with duckdb.connect(str(tmp_path / "w.duckdb")) as conn:  # no lake variables: the local engine
        _source(conn)
        with pytest.raises(LakeError, match="MLPLATFORM_ENGINE=dask"):
            replace_window(conn, "ds", "t", _window(*window), "ts", *window)


def test_a_write_that_fails_midway_leaves_the_old_partitions(engines: tuple) -> None:
    _local, in_lake, root = engines
    window = (START, datetime(2011, 1, 9))
    replace_window(in_lake, "ds", "t", _window(*window), "ts", *window)
    before = _rows(in_lake)
    failing = f"SELECT ts, CASE WHEN v < 100 THEN v ELSE CAST('not a number' AS BIGINT) END AS v, label FROM ({_window(*window)})"
    with pytest.raises(duckdb.ConversionException):
        replace_window(in_lake, "ds", "t", failing, "ts", *window)
    assert _rows(in_lake) == before
    assert lake.list_folder(f"{root}/_staging") == []


def test_an_fsspec_lake_is_written_and_read_through_duckdb(tmp_path: Path) -> None:
    root = f"memory://lake-{tmp_path.name}"
    with duckdb.connect() as conn:
        set_lake(conn, root, "day")
        _source(conn, hours=72)
        window = (START, datetime(2011, 1, 5))
        assert replace_window(conn, "ds", "t", _window(*window), "ts", *window) == 72
        assert [f.rsplit("/", 2)[1] for f in lake.partition_files(root, "ds", "t")] == [
            "part=2011-01-01",
            "part=2011-01-02",
            "part=2011-01-03",
            "part=2011-01-04",  # no rows: a zero-row file
        ]
        assert delete_rows(conn, "ds", "t", "v < 30") == 30
        assert conn.execute("SELECT count(*), min(v) FROM ds.t").fetchall() == [(42, 30)]
