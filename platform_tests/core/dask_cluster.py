"""What the Dask engine's core tests share: a real LocalCluster, lakes built with pyarrow, and shard
tasks that fail or kill their own worker (importable by the workers, which unpickle them by name)."""

from __future__ import annotations

import os
import signal
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import date, datetime
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq

from mlplatform.core.cleaning import clean_window
from mlplatform.core.dask_work import INCOMPLETE_FOLDER, ensure_lake_view, write_shard_file
from mlplatform.core.grain import next_grain, partition_days
from mlplatform.core.lake import partition_name, table_root
from mlplatform.core.source import source_files, stage_source
from mlplatform.core.warehouse import replace_window, table_name, window_predicate
from mlplatform.specs.model import DatasetSpec


@contextmanager
def local_dask_client() -> Iterator[Any]:
    """A client of a LocalCluster of 2 worker processes x 1 thread on 127.0.0.1, closed on exit (a test
    module's fixture wraps it)."""
    from distributed import Client, LocalCluster

    with (
        LocalCluster(
            n_workers=2,
            threads_per_worker=1,
            processes=True,
            host="127.0.0.1",
            scheduler_port=0,
            dashboard_address="127.0.0.1:0",
            memory_limit="1GiB",
        ) as cluster,
        Client(cluster) as client,
    ):
        yield client


def local_clean(spec: DatasetSpec, start: datetime, end: datetime) -> duckdb.DuckDBPyConnection:
    """An in-memory local-engine warehouse holding `raw` and `clean` of the spec's bundled files."""
    conn = duckdb.connect()
    staged = stage_source(conn, spec, source_files(spec), datetime(2024, 6, 1))
    replace_window(conn, spec.name, "raw", f"SELECT * FROM {staged}", "_partition_ts", start, end)
    clean_window(conn, spec, start, end)
    return conn


def copy_to_lake(
    conn: duckdb.DuckDBPyConnection, spec: DatasetSpec, table: str, lake: str, start: datetime, end: datetime
) -> None:
    """Write `spec.name.table`'s rows of [start, end) into the lake, one file per partition."""
    for day in partition_days(spec.partition_grain, start, end):
        low = datetime.combine(day, datetime.min.time())
        high = datetime.combine(next_grain(day, spec.partition_grain), datetime.min.time())
        rows = conn.sql(
            f"SELECT * FROM {table_name(spec.name, table)} WHERE {window_predicate(spec.time_column, low, high)}"
        ).to_arrow_table()
        folder = Path(table_root(lake, spec.name, table)) / partition_name(day)
        folder.mkdir(parents=True, exist_ok=True)
        pq.write_table(rows, folder / "data.parquet")


def lake_warehouse(spec: DatasetSpec, lake: str, *tables: str) -> duckdb.DuckDBPyConnection:
    """A warehouse connection in the lake's shape: a view per table over its partitions."""
    conn = duckdb.connect()
    for table in tables:
        ensure_lake_view(conn, lake, spec.name, table)
    return conn


def write_values(staging: str, day: date, shard: int, values: list[int]) -> int:
    """A shard task: a file of `values` in the staged partition `day`."""
    write_shard_file(pa.table({"value": values}), staging, day, shard)
    return len(values)


def write_then_fail(staging: str, day: date, shard: int) -> int:
    """A shard task that stages a file, then raises (on every attempt)."""
    write_shard_file(pa.table({"value": [-1]}), staging, day, shard)
    raise RuntimeError(f"shard {shard} broke on purpose")


def kill_worker_once(staging: str, marker: str, function: Callable[..., int], *args: Any) -> int:
    """Kill this task's worker process the first time any task reaches it (marker file absent), in the
    middle of a write (a torn file where writes are in progress); afterwards run `function(staging, *args)`."""
    try:
        with open(marker, "x") as claimed:
            claimed.write(str(os.getpid()))
    except FileExistsError:
        return function(staging, *args)
    torn = Path(staging) / INCOMPLETE_FOLDER
    torn.mkdir(parents=True, exist_ok=True)
    (torn / "torn.parquet").write_bytes(b"PAR1 half a file")
    os.kill(os.getpid(), signal.SIGKILL)
    raise AssertionError("unreachable: the worker was killed")
