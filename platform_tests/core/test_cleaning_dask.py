"""Cleaning on the Dask engine, one task per partition, gives the local engine's clean and quarantine rows,
values and reasons: for the bundled transactions and bike data and for a hostile toy CSV whose unique keys
repeat within a partition, across partitions of the window (first in source order in a later partition
too) and against clean rows outside the window. A failing partition task commits nothing."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import date, datetime
from pathlib import Path
from typing import Any

import duckdb
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from mlplatform.contracts import Stage
from mlplatform.core.cleaning import CleanResult, clean_window, partition_outcomes
from mlplatform.core.cleaning_dask import (
    clean_window_dask,
    commit_partition_splits,
    partition_tasks,
    plan_partitions,
    run_partition_tasks,
)
from mlplatform.core.dask_work import ShardFailedError, ShardTask, remove_folder
from mlplatform.core.grain import next_grain, partition_days
from mlplatform.core.lake import new_staging, partition_files
from mlplatform.core.lake_tables import set_lake
from mlplatform.core.source import source_files, stage_source
from mlplatform.core.validation import REASON, ROW_ID, validate_partition
from mlplatform.core.warehouse import PARTITION_TIME, replace_window, table_name, window_predicate
from mlplatform.specs.loader import BUNDLED_SPECS_DIR, parse_spec
from mlplatform.specs.model import DatasetSpec
from platform_tests.core.dask_cluster import local_dask_client, write_then_fail
from platform_tests.core.toy_spec import toy_spec

TRANSACTIONS = parse_spec(BUNDLED_SPECS_DIR / "transactions.yaml")
BIKE = parse_spec(BUNDLED_SPECS_DIR / "bike_sharing.yaml")
TX_WINDOW = (datetime(2024, 1, 1), datetime(2024, 2, 1))
BIKE_WINDOW = (datetime(2010, 12, 26), datetime(2011, 7, 3))
TOY_WINDOW = (datetime(2024, 1, 1), datetime(2024, 1, 5))
TOY_RERUN = (datetime(2024, 1, 2), datetime(2024, 1, 4))  # 01-01 and 01-04 stay clean outside it
LOADED_AT = datetime(2024, 6, 1)

TOY_HEADER = "id,day,kind,value,code\n"
TOY_FILES = {
    "a.csv": [
        "1,2024-01-01,a,1,c1",  # clean: the first id 1 and code c1
        "2,2024-01-01,a,2,c2",
        "2,2024-01-01,b,3,c3",  # id 2 again, in the same partition
        "3,2024-01-01,a,11,c4",  # value above its max
        "4,2024-01-01,a,abc,c5",  # value does not parse
        "5,2024-01-01,z,1,c6",  # kind not allowed
        "7,2024-01-03,a,1,c7",  # first id 7 in source order, in a later partition than the next one
        "8,2024-01-01,a,1,",  # a null code (nullable and unique: nulls are no duplicates of each other)
    ],
    "b.csv": [
        "1,2024-01-02,a,1,c8",  # id 1 again, first held by partition 01-01
        "7,2024-01-02,b,2,c9",  # id 7 again, first held by partition 01-03
        "9,2024-01-02,a,12,c1",  # above max and code c1 again: two reasons, in Pandera's order
        "10,2024-01-02,a,1,",  # a second null code, in another partition
        "11,2024-01-04,a,1,c11",
        "x,2024-01-02,a,1,c12",  # id does not parse
    ],
    "c.csv": [
        "1,2024-01-03,a,1,c13",  # a third id 1
        "12,2024-01-03,a,1,c14",
        "11,2024-01-03,b,1,c15",  # id 11 again: first in b.csv (01-04), later clean outside the re-run
    ],
}


@pytest.fixture(scope="module")
def dask_client() -> Iterator[Any]:
    with local_dask_client() as client:
        yield client


def _toy(tmp_path: Path) -> DatasetSpec:
    source = tmp_path / "source"
    source.mkdir()
    for name, lines in TOY_FILES.items():
        (source / name).write_text(TOY_HEADER + "\n".join(lines) + "\n")
    return toy_spec(source / "*.csv", {"code": {"type": "string", "unique": True}})


def _hostile_transactions(tmp_path: Path) -> DatasetSpec:
    """The bundled transactions plus a file that sorts first: 30 rows of 01-20 moved to 01-05 (so the
    copies are first in source order and the bundled rows of 01-20 their duplicates, across partitions),
    10 of them with a negative amount (still the first of their key), 3 repeated on 01-06."""
    folder = tmp_path / "transactions"
    folder.mkdir()
    files = source_files(TRANSACTIONS)
    for file in files:
        (folder / Path(file).name).symlink_to(file)
    day_20 = pq.read_table(files[19])
    moved = day_20.slice(0, 30).to_pandas()
    moved["ts"] = moved["ts"] - pd.Timedelta(days=15)
    moved.loc[:9, "amount"] = -1.0
    repeated = moved.iloc[:3].assign(ts=moved["ts"].iloc[:3] + pd.Timedelta(days=1))
    hostile = pd.concat([moved, repeated], ignore_index=True)
    pq.write_table(
        pa.Table.from_pandas(hostile, schema=day_20.schema, preserve_index=False), folder / "aa.parquet"
    )
    source = TRANSACTIONS.source.model_copy(update={"path": str(folder / "*.parquet")})
    return TRANSACTIONS.model_copy(update={"source": source})


def _load_raw(conn: duckdb.DuckDBPyConnection, spec: DatasetSpec, start: datetime, end: datetime) -> None:
    staged = stage_source(conn, spec, source_files(spec), LOADED_AT)
    rows = f"SELECT * FROM {staged} WHERE {window_predicate(PARTITION_TIME, start, end)}"
    replace_window(conn, spec.name, Stage.RAW, rows, PARTITION_TIME, start, end)


def _warehouses(
    spec: DatasetSpec, lake: Path, window: tuple[datetime, datetime]
) -> tuple[duckdb.DuckDBPyConnection, duckdb.DuckDBPyConnection]:
    """A local-engine warehouse and a lake-mode one, both holding the same raw rows of `window`."""
    local, on_lake = duckdb.connect(), duckdb.connect()
    set_lake(on_lake, str(lake), spec.partition_grain)
    for conn in (local, on_lake):
        _load_raw(conn, spec, *window)
    return local, on_lake


def _clean_in_process(
    conn: duckdb.DuckDBPyConnection, spec: DatasetSpec, start: datetime, end: datetime, lake: Path
) -> CleanResult:
    """The Dask engine's tasks run one after the other in this process (no cluster), then committed."""
    jobs = plan_partitions(conn, spec, start, end, str(lake))
    staging = new_staging(str(lake))
    try:
        splits = [task.function(staging, *task.args) for task in partition_tasks(spec, jobs)]
        return commit_partition_splits(conn, spec, str(lake), staging, [job.day for job in jobs], splits)
    finally:
        remove_folder(staging)


def _rows(conn: duckdb.DuckDBPyConnection, spec: DatasetSpec, stage: Stage) -> pd.DataFrame:
    return conn.sql(f"SELECT * FROM {table_name(spec.name, stage)} ORDER BY _source_file, _source_row").df()


def _windows(spec: DatasetSpec, start: datetime, end: datetime) -> dict[str, tuple[datetime, datetime]]:
    days = partition_days(spec.partition_grain, start, end)
    at = [
        datetime.combine(d, datetime.min.time()) for d in [*days, next_grain(days[-1], spec.partition_grain)]
    ]
    return {day.isoformat(): (at[i], at[i + 1]) for i, day in enumerate(days)}


def _assert_same(
    local: duckdb.DuckDBPyConnection,
    on_lake: duckdb.DuckDBPyConnection,
    spec: DatasetSpec,
    results: tuple[CleanResult, CleanResult],
    window: tuple[datetime, datetime],
) -> None:
    """Same clean and quarantine rows (values, dtypes, reasons, failed checks and columns), the same
    counts and reason counts, and the same per-partition outcomes read through the warehouse."""
    expected, got = results
    assert got == expected
    for stage in (Stage.CLEAN, Stage.QUARANTINE):
        pd.testing.assert_frame_equal(
            _rows(on_lake, spec, stage), _rows(local, spec, stage), check_exact=True
        )
    windows = _windows(spec, *window)
    assert partition_outcomes(on_lake, spec, windows) == partition_outcomes(local, spec, windows)


def test_hostile_keys_across_partitions_give_the_local_engines_rows_and_reasons(tmp_path: Path) -> None:
    spec = _toy(tmp_path)
    lake = tmp_path / "lake"
    local, on_lake = _warehouses(spec, lake, TOY_WINDOW)
    expected = clean_window(local, spec, *TOY_WINDOW)
    got = _clean_in_process(on_lake, spec, *TOY_WINDOW, lake)
    _assert_same(local, on_lake, spec, (expected, got), TOY_WINDOW)
    reasons = dict(
        on_lake.sql(
            f"SELECT id || '/' || day, _quarantine_reason FROM {table_name(spec.name, Stage.QUARANTINE)}"
        ).fetchall()
    )
    # The local engine's reasons: Pandera's duplicate key, across partitions too, the first in source
    # order kept (id 7 of 01-03, not the earlier day's), and a row's reasons in Pandera's column order.
    assert reasons["2/2024-01-01"] == "id: duplicate key 2"
    assert reasons["1/2024-01-02"] == reasons["1/2024-01-03"] == "id: duplicate key 1"
    assert reasons["7/2024-01-02"] == "id: duplicate key 7" and "7/2024-01-03" not in reasons
    assert (
        reasons["9/2024-01-02"]
        == "value: less_than_or_equal_to(10.0) failed for 12; code: duplicate key 'c1'"
    )
    assert "10/2024-01-02" not in reasons  # the second null code, in another partition: clean
    assert "11/2024-01-04" not in reasons and reasons["11/2024-01-03"] == "id: duplicate key 11"
    assert (got.quarantined_rows, got.clean_rows) == (10, 7)
    # The local engine over the lake, whose view reads partition 01-02 (b.csv's id 7) before 01-03 (a.csv's):
    # the first of a key is the source's, not the storage's.
    _, lake_local = _warehouses(spec, tmp_path / "lake-local", TOY_WINDOW)
    in_lake = clean_window(lake_local, spec, *TOY_WINDOW)
    _assert_same(local, lake_local, spec, (expected, in_lake), TOY_WINDOW)

    # A re-run of 01-02 .. 01-03: keys clean in 01-01 and 01-04, outside the window, are known duplicates.
    rerun = (clean_window(local, spec, *TOY_RERUN), _clean_in_process(on_lake, spec, *TOY_RERUN, lake))
    _assert_same(local, on_lake, spec, rerun, TOY_WINDOW)
    known = on_lake.sql(
        f"SELECT id, _quarantine_reason FROM {table_name(spec.name, Stage.QUARANTINE)} "
        "WHERE _quarantine_reason LIKE '%already clean%' ORDER BY ALL"
    ).fetchall()
    assert known == [
        ("1", "id: duplicate key 1 (already clean in another partition)"),
        ("1", "id: duplicate key 1 (already clean in another partition); id: duplicate key 1"),
        ("11", "id: duplicate key 11 (already clean in another partition)"),
        (
            "9",
            "code: duplicate key c1 (already clean in another partition); value: less_than_or_equal_to(10.0) failed for 12",
        ),
    ]


def test_each_task_gets_only_its_partitions_share_of_the_other_keys(tmp_path: Path) -> None:
    spec = _toy(tmp_path)
    _, on_lake = _warehouses(spec, tmp_path / "lake", TOY_WINDOW)
    jobs = {job.day: job for job in plan_partitions(on_lake, spec, *TOY_WINDOW, str(tmp_path / "lake"))}
    assert list(jobs) == [date(2024, 1, d) for d in (1, 2, 3, 4)]
    second = jobs[date(2024, 1, 2)]
    # Partition 01-02 sees the first id 1 and code c1 (01-01), id 7 (01-03) and the first null code.
    earlier = sorted(second.earlier.select(["id", "code"]).to_pylist(), key=str)
    assert earlier == sorted(
        [{"id": 1, "code": "c1"}, {"id": 7, "code": "c7"}, {"id": 8, "code": None}], key=str
    )
    assert second.spread.num_rows == 4  # its ids 1 and 7, code c1 and the null code
    assert jobs[date(2024, 1, 1)].earlier.num_rows == 0  # it holds every first occurrence it needs
    assert all(job.known.num_rows == 0 for job in jobs.values())  # no clean table yet
    assert second.files == tuple(partition_files(str(tmp_path / "lake"), spec.name, Stage.RAW, [second.day]))


def test_a_rows_reasons_come_in_schema_order_however_many_other_rows_fail() -> None:
    """Pandera sorts its failure cases unstably: without putting them back in schema order a row's
    reasons would depend on the other rows validated with it (the window, or one partition)."""
    spec = toy_spec(Path("unused.csv"))
    n = 60
    typed = pd.DataFrame(
        {
            ROW_ID: range(1, n + 1),
            "id": pd.array([i // 2 for i in range(n)], dtype="Int64"),  # every second row a duplicate
            "day": ["2024-01-01"] * n,
            "kind": ["z" if i % 3 == 0 else "a" for i in range(n)],  # not allowed
            "value": [11.0 if i % 5 else 1.0 for i in range(n)],  # above max
            "ts": pd.to_datetime(["2024-01-01"] * n),
            "_parse_errors": [[] for _ in range(n)],
        }
    )
    position = {name: i for i, name in enumerate(spec.columns)}
    quarantine = validate_partition(spec, typed).quarantine
    reasons = dict(zip(quarantine[ROW_ID], quarantine[REASON].str.split("; "), strict=True))
    several = [[position[reason.split(":")[0]] for reason in row] for row in reasons.values() if len(row) > 1]
    assert len(several) > 20 and all(columns == sorted(columns) for columns in several)
    # Row 4 (a duplicate of row 3, kind and value) validated with row 3 only: the same reasons.
    pair = validate_partition(spec, typed.iloc[2:4].reset_index(drop=True)).quarantine
    assert pair.loc[pair[ROW_ID] == 4, REASON].str.split("; ").tolist() == [reasons[4]]
    assert len(reasons[4]) == 3


@pytest.mark.e2e
def test_toy_on_the_cluster_and_a_failing_partition_commits_nothing(dask_client: Any, tmp_path: Path) -> None:
    spec = _toy(tmp_path)
    lake = tmp_path / "lake"
    local, on_lake = _warehouses(spec, lake, TOY_WINDOW)
    expected = clean_window(local, spec, *TOY_WINDOW, prescreen=False)
    got = clean_window_dask(on_lake, dask_client, spec, *TOY_WINDOW, str(lake), prescreen=False)
    _assert_same(local, on_lake, spec, (expected, got), TOY_WINDOW)

    before = {
        stage: sorted(partition_files(str(lake), spec.name, stage))
        for stage in (Stage.CLEAN, Stage.QUARANTINE)
    }
    jobs = plan_partitions(on_lake, spec, *TOY_RERUN, str(lake))
    tasks = partition_tasks(spec, jobs)
    tasks[1] = ShardTask(tasks[1].name, write_then_fail, (jobs[1].day, jobs[1].index))
    with pytest.raises(ShardFailedError, match="partition 2024-01-03 failed"):
        run_partition_tasks(on_lake, dask_client, spec, str(lake), tasks, [job.day for job in jobs])
    for stage, files in before.items():
        assert sorted(partition_files(str(lake), spec.name, stage)) == files
    _assert_same(local, on_lake, spec, (expected, expected), TOY_WINDOW)  # the tables are as before


@pytest.mark.e2e
def test_bike_data_cleaned_on_the_cluster_equals_the_local_engine(dask_client: Any, tmp_path: Path) -> None:
    local, on_lake = _warehouses(BIKE, tmp_path / "lake", BIKE_WINDOW)
    expected = clean_window(local, BIKE, *BIKE_WINDOW)
    got = clean_window_dask(on_lake, dask_client, BIKE, *BIKE_WINDOW, str(tmp_path / "lake"))
    assert got.raw_rows > 4000 and len(partition_days("week", *BIKE_WINDOW)) == 27
    _assert_same(local, on_lake, BIKE, (expected, got), BIKE_WINDOW)


@pytest.mark.e2e
def test_transactions_with_moved_keys_cleaned_on_the_cluster_equal_the_local_engine(
    dask_client: Any, tmp_path: Path
) -> None:
    spec = _hostile_transactions(tmp_path)
    local, on_lake = _warehouses(spec, tmp_path / "lake", TX_WINDOW)
    expected = clean_window(local, spec, *TX_WINDOW)
    got = clean_window_dask(on_lake, dask_client, spec, *TX_WINDOW, str(tmp_path / "lake"))
    _assert_same(local, on_lake, spec, (expected, got), TX_WINDOW)
    # The bundled rows of 01-20 and the 3 repeats are the duplicates; the first copies stay (or fail on
    # amount: the 10 copies and the 3 repeats of them).
    assert got.reason_counts == {
        "transaction_id: field_uniqueness": 33,
        "amount: greater_than_or_equal_to(0.0)": 13,
    }
    quarantined_days = on_lake.sql(
        f"SELECT DISTINCT CAST(ts AS DATE)::VARCHAR FROM {table_name(spec.name, Stage.QUARANTINE)} ORDER BY 1"
    ).fetchall()
    assert quarantined_days == [("2024-01-05",), ("2024-01-06",), ("2024-01-20",)]
