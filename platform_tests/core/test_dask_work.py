"""The sharded runner on a real LocalCluster: commit only when every shard succeeded, a failed shard
leaves the committed partitions as they were, a killed worker's task retries to success."""

from __future__ import annotations

import os
from collections.abc import Iterator
from datetime import date, datetime
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pytest

from mlplatform.core.dask_work import (
    ShardFailedError,
    ShardTask,
    StagedWrite,
    remove_folder,
    run_and_commit,
    write_shard_file,
)
from mlplatform.core.grain import partition_days
from mlplatform.core.lake import STAGING_FOLDER, new_staging, partition_files
from platform_tests.core.dask_cluster import (
    kill_worker_once,
    local_dask_client,
    write_then_fail,
    write_values,
)

DAY_1, DAY_2 = date(2024, 1, 1), date(2024, 1, 2)


@pytest.fixture(scope="module")
def dask_client() -> Iterator[Any]:
    with local_dask_client() as client:
        yield client


def _values(lake: str, day: date) -> list[int]:
    files = partition_files(lake, "ds", "stage", [day])
    if not files:
        return []
    return sorted(v for (v,) in duckdb.sql(f"SELECT value FROM read_parquet({files})").fetchall())


def _write(lake: str) -> StagedWrite:
    return StagedWrite(lake, "ds", "stage", (DAY_1, DAY_2))


def _commit_first_version(client: Any, lake: str) -> None:
    tasks = [
        ShardTask("shard 0", write_values, (DAY_1, 0, [1, 2])),
        ShardTask("shard 1", write_values, (DAY_1, 1, [3])),
        ShardTask("shard 2", write_values, (DAY_2, 2, [4])),
    ]
    assert run_and_commit(client, _write(lake), tasks) == [2, 1, 1]


def _no_staging_left(lake: str) -> bool:
    staging = Path(lake) / STAGING_FOLDER
    return not staging.exists() or not any(staging.iterdir())


def test_partition_days_cover_the_window_by_grain() -> None:
    assert partition_days("day", datetime(2024, 1, 30), datetime(2024, 2, 2)) == [
        date(2024, 1, 30),
        date(2024, 1, 31),
        date(2024, 2, 1),
    ]
    # Dagster weeks start on Sunday; a window start inside a week still covers that week.
    assert partition_days("week", datetime(2024, 1, 3), datetime(2024, 1, 14)) == [
        date(2023, 12, 31),
        date(2024, 1, 7),
    ]
    assert partition_days("month", datetime(2024, 1, 1), datetime(2024, 1, 1)) == []


@pytest.mark.e2e
def test_every_shard_commits_and_a_rerun_replaces_the_partitions(dask_client: Any, tmp_path: Path) -> None:
    lake = str(tmp_path / "lake")
    _commit_first_version(dask_client, lake)
    assert _values(lake, DAY_1) == [1, 2, 3]
    assert _values(lake, DAY_2) == [4]
    # A re-run that stages nothing for DAY_2 empties it; DAY_1 becomes exactly the new files.
    assert run_and_commit(
        dask_client, _write(lake), [ShardTask("shard 0", write_values, (DAY_1, 0, [9]))]
    ) == [1]
    assert _values(lake, DAY_1) == [9]
    assert partition_files(lake, "ds", "stage", [DAY_2]) == []
    assert _no_staging_left(lake)


@pytest.mark.e2e
def test_a_failed_shard_commits_nothing_and_names_stage_dataset_and_shard(
    dask_client: Any, tmp_path: Path
) -> None:
    lake = str(tmp_path / "lake")
    _commit_first_version(dask_client, lake)
    before = {day: partition_files(lake, "ds", "stage", [day]) for day in (DAY_1, DAY_2)}
    tasks = [
        ShardTask("shard 0", write_values, (DAY_1, 0, [7, 7])),
        ShardTask("shard 1", write_then_fail, (DAY_2, 1)),
    ]
    with pytest.raises(
        ShardFailedError,
        match=r"stage of ds \(nothing committed.*\): shard 1 failed after its retry.*broke on purpose",
    ):
        run_and_commit(dask_client, _write(lake), tasks)
    assert {day: partition_files(lake, "ds", "stage", [day]) for day in (DAY_1, DAY_2)} == before
    assert _values(lake, DAY_1) == [1, 2, 3]
    assert _values(lake, DAY_2) == [4]
    assert _no_staging_left(lake)


@pytest.mark.e2e
def test_a_task_whose_worker_is_killed_retries_to_success(dask_client: Any, tmp_path: Path) -> None:
    lake, marker = str(tmp_path / "lake"), str(tmp_path / "killed-once")
    tasks = [
        ShardTask("shard 0", kill_worker_once, (marker, write_values, DAY_1, 0, [5, 6])),
        ShardTask("shard 1", write_values, (DAY_2, 1, [8])),
    ]
    assert run_and_commit(dask_client, _write(lake), tasks) == [2, 1]
    killed_pid = int(Path(marker).read_text())
    assert killed_pid not in dask_client.run(os.getpid).values()  # that worker really died
    assert _values(lake, DAY_1) == [5, 6]
    assert _values(lake, DAY_2) == [8]
    assert all(os.path.basename(f).startswith("shard-") for f in partition_files(lake, "ds", "stage"))
    assert _no_staging_left(lake)


def test_a_task_still_running_after_its_stage_failed_writes_nothing(tmp_path: Path) -> None:
    """A cancelled task cannot be interrupted: once its stage removed the staging, it may not write."""
    staging = new_staging(str(tmp_path / "lake"))
    assert write_shard_file(pa.table({"value": [1]}), f"{staging}/clean", date(2024, 1, 1), 0)  # a subfolder
    remove_folder(staging)
    with pytest.raises(ShardFailedError, match="is gone"):
        write_shard_file(pa.table({"value": [2]}), f"{staging}/clean", date(2024, 1, 2), 1)
    assert not Path(staging).exists()
