"""The raw stage on the Dask engine: the source files staged in groups on a real LocalCluster's workers
give the raw rows, accounts and notes the local engine gives, for clean Parquet and for hostile CSVs
(a malformed line, a time that does not parse, an empty file, a file that is not text)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import date, datetime
from pathlib import Path
from typing import Any

import duckdb
import pandas as pd
import pytest

from mlplatform.contracts import Stage
from mlplatform.core.accounting import count_source
from mlplatform.core.ingestion import RawLoad, load_raw_window
from mlplatform.core.ingestion_dask import cluster_stager, file_groups
from mlplatform.core.lake import partition_names
from mlplatform.core.lake_tables import set_lake
from mlplatform.core.placement import PartitionBounds
from mlplatform.core.source import source_files
from mlplatform.core.warehouse import table_name
from mlplatform.specs.loader import BUNDLED_SPECS_DIR, parse_spec
from mlplatform.specs.model import DatasetSpec
from platform_tests.core.dask_cluster import local_dask_client
from platform_tests.core.toy_spec import toy_spec

TRANSACTIONS = parse_spec(BUNDLED_SPECS_DIR / "transactions.yaml")
TX_WINDOW = (datetime(2024, 1, 1), datetime(2024, 3, 1))
TX_BOUNDS = PartitionBounds(first_start=TX_WINDOW[0], last_start=datetime(2024, 2, 29), end=TX_WINDOW[1])
TOY_WINDOW = (datetime(2024, 1, 1), datetime(2024, 1, 4))
TOY_BOUNDS = PartitionBounds(first_start=TOY_WINDOW[0], last_start=datetime(2024, 1, 3), end=TOY_WINDOW[1])


@pytest.fixture(scope="module")
def dask_client() -> Iterator[Any]:
    with local_dask_client() as client:
        yield client


def _load(
    conn: duckdb.DuckDBPyConnection, spec: DatasetSpec, window: Any, bounds: Any, **stager: Any
) -> RawLoad:
    counts = {f: count_source(f, spec.source_format, spec.source.delimiter) for f in source_files(spec)}
    load = load_raw_window(conn, spec, counts, window, bounds, False, "all", **stager)
    assert isinstance(load, RawLoad)
    return load


def _raw(conn: duckdb.DuckDBPyConnection, spec: DatasetSpec) -> pd.DataFrame:
    """The raw rows but for their load time (each run's own), columns by name. A file that is not text
    brings a column named by its binary "header"; Parquet cannot keep a name with NUL bytes (the lake
    calls it C<n>), so such columns are compared by count only. Its rows are quarantined either way."""
    frame = conn.sql(f"SELECT * EXCLUDE (_loaded_at) FROM {table_name(spec.name, Stage.RAW)}").df()
    named = sorted(c for c in frame.columns if c in spec.source_columns or c.startswith("_") or c == "ts")
    frame.attrs["other_columns"] = len(frame.columns) - len(named)
    return frame[named].sort_values(["_source_file", "_source_row"], ignore_index=True)


def _assert_same_raw(
    local: duckdb.DuckDBPyConnection, on_lake: duckdb.DuckDBPyConnection, spec: DatasetSpec
) -> None:
    expected, got = _raw(local, spec), _raw(on_lake, spec)
    assert got.attrs["other_columns"] == expected.attrs["other_columns"]
    pd.testing.assert_frame_equal(got, expected, check_exact=True)


def _both_engines(
    client: Any, spec: DatasetSpec, lake: Path, window: Any, bounds: Any
) -> tuple[RawLoad, RawLoad, duckdb.DuckDBPyConnection, duckdb.DuckDBPyConnection]:
    local, on_lake = duckdb.connect(), duckdb.connect()
    set_lake(on_lake, str(lake), spec.partition_grain)
    expected = _load(local, spec, window, bounds)
    got = _load(on_lake, spec, window, bounds, stager=cluster_stager(client, str(lake)))
    return expected, got, local, on_lake


def _assert_same_load(expected: RawLoad, got: RawLoad) -> None:
    assert (got.rows, got.malformed_lines, got.rows_pending_partition) == (
        expected.rows,
        expected.malformed_lines,
        expected.rows_pending_partition,
    )
    assert got.accounts == expected.accounts
    assert got.notes == expected.notes


def test_file_groups_keep_the_files_in_order_and_balance_their_bytes(tmp_path: Path) -> None:
    files = []
    for i, size in enumerate([100, 100, 100, 400, 100, 100]):
        path = tmp_path / f"f{i}.csv"
        path.write_text("x" * size)
        files.append(str(path))
    groups = file_groups(files, 3)
    assert [f for group in groups for f in group] == files  # contiguous, in order, each file once
    assert len(groups) == 3 and all(groups)
    assert file_groups(files[:2], 8) == [[files[0]], [files[1]]]  # never more groups than files
    assert file_groups([], 4) == []


@pytest.mark.e2e
def test_parquet_files_staged_on_the_cluster_load_the_local_engines_raw_rows(
    dask_client: Any, tmp_path: Path
) -> None:
    expected, got, local, on_lake = _both_engines(dask_client, TRANSACTIONS, tmp_path, TX_WINDOW, TX_BOUNDS)
    _assert_same_load(expected, got)
    assert got.rows > 10_000
    _assert_same_raw(local, on_lake, TRANSACTIONS)
    days = partition_names(str(tmp_path), TRANSACTIONS.name, Stage.RAW)
    assert days[0] == "part=2024-01-01" and len(days) == 60
    assert not list((tmp_path / "_staging").glob("*/*"))  # the staged files are gone with the load


@pytest.mark.e2e
def test_hostile_csv_files_staged_on_the_cluster_give_the_same_rows_accounts_and_notes(
    dask_client: Any, tmp_path: Path
) -> None:
    source = tmp_path / "source"
    source.mkdir()
    header = "id,day,kind,value\n"
    (source / "a.csv").write_text(header + "1,2024-01-01,a,1\n2,2024-01-02,b,2\n")
    # A line with too many fields, and a day that does not parse (placed by its neighbour in the file).
    (source / "b.csv").write_text(header + "3,2024-01-02,a,3\n4,2024-01-02,a,4,extra\n5,not-a-day,b,5\n")
    (source / "c.csv").write_text("")  # empty
    (source / "d.csv").write_bytes(bytes(range(256)) * 8)  # not text at all
    (source / "e.csv").write_text(header + "6,2024-01-03,b,6\n7,2024-01-03,c,7\n")
    spec = toy_spec(source / "*.csv")
    expected, got, local, on_lake = _both_engines(
        dask_client, spec, tmp_path / "lake", TOY_WINDOW, TOY_BOUNDS
    )
    _assert_same_load(expected, got)
    assert got.malformed_lines >= 1 and any("d.csv" in path for path in got.notes)
    _assert_same_raw(local, on_lake, spec)
    assert {d.isoformat() for d in (date(2024, 1, 1), date(2024, 1, 2), date(2024, 1, 3))} == {
        name.removeprefix("part=") for name in partition_names(str(tmp_path / "lake"), spec.name, Stage.RAW)
    }
