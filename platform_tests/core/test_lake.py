"""The Parquet lake: partition folders replaced whole, atomically, and what a killed writer leaves."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from datetime import date
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from mlplatform.core import lake

DAY1, DAY2 = date(2011, 1, 2), date(2011, 1, 9)


def _stage(lake_root: str, rows: dict[date | None, list[int]], shards: int = 1) -> str:
    staging = lake.new_staging(lake_root)
    for day, values in rows.items():
        folder = lake.staged_partition(staging, day)
        for shard in range(shards):
            part = values[shard::shards]
            pq.write_table(pa.table({"v": pa.array(part, pa.int64())}), lake.shard_file(folder, shard))
    return staging


def _values(files: list[str]) -> list[int]:
    return sorted(v for f in files for v in pq.read_table(f).column("v").to_pylist())


def test_layout_names() -> None:
    assert lake.table_root("/l/", "bike", "raw") == "/l/bike/raw"
    assert lake.partition_name(DAY1) == "part=2011-01-02"
    assert lake.partition_name(None) == "part=all"
    assert lake.partition_day("part=2011-01-02") == DAY1 and lake.partition_day("part=all") is None
    assert lake.shard_file("/s/part=all", 3) == "/s/part=all/shard-00003.parquet"


@pytest.mark.parametrize("exchange", [True, False], ids=["renameat2", "rename-aside"])
def test_commit_replaces_each_partition_exactly(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, exchange: bool
) -> None:
    if not exchange:
        monkeypatch.setattr(lake, "_exchange", lambda first, second: False)
    root = str(tmp_path / "lake")
    staging = _stage(root, {DAY1: [1, 2, 3, 4], DAY2: [5]}, shards=2)
    lake.commit_partitions(root, "ds", "t", staging, [DAY1, DAY2])
    assert not Path(staging).exists()
    assert _values(lake.partition_files(root, "ds", "t")) == [1, 2, 3, 4, 5]
    assert len(lake.partition_files(root, "ds", "t", [DAY1])) == 2

    # A re-run of DAY1 with one shard: the old two files go, DAY2 is untouched.
    lake.commit_partitions(root, "ds", "t", _stage(root, {DAY1: [7]}), [DAY1])
    assert [Path(f).name for f in lake.partition_files(root, "ds", "t", [DAY1])] == ["shard-00000.parquet"]
    assert _values(lake.partition_files(root, "ds", "t")) == [5, 7]

    # A day listed but not staged is emptied; the staging folder holds nothing of it afterwards.
    lake.commit_partitions(root, "ds", "t", lake.new_staging(root), [DAY2])
    assert lake.partition_names(root, "ds", "t") == ["part=2011-01-02"]
    assert list((tmp_path / "lake" / "_staging").iterdir()) == []


def test_renameat2_swaps_two_folders(tmp_path: Path) -> None:
    first, second = tmp_path / "a", tmp_path / "b"
    first.mkdir()
    second.mkdir()
    (first / "one").write_text("1")
    (second / "two").write_text("2")
    assert lake._exchange(str(first), str(second))  # Linux: renameat2(RENAME_EXCHANGE) on a local disk
    assert [p.name for p in first.iterdir()] == ["two"] and [p.name for p in second.iterdir()] == ["one"]


def test_writer_killed_before_commit_leaves_the_old_partition(tmp_path: Path) -> None:
    root = str(tmp_path / "lake")
    lake.commit_partitions(root, "ds", "t", _stage(root, {DAY1: [1, 2]}), [DAY1])
    writer = textwrap.dedent(
        f"""
        import os, signal
        import pyarrow as pa, pyarrow.parquet as pq
        from mlplatform.core import lake
        from datetime import date
        staging = lake.new_staging({root!r})
        folder = lake.staged_partition(staging, date(2011, 1, 2))
        pq.write_table(pa.table({{"v": pa.array([9, 9, 9])}}), lake.shard_file(folder, 0))
        os.kill(os.getpid(), signal.SIGKILL)  # dies before commit_partitions
        """
    )
    killed = subprocess.run([sys.executable, "-c", writer], check=False)
    assert killed.returncode == -9
    assert _values(lake.partition_files(root, "ds", "t")) == [1, 2]
    assert lake.remove_stale_staging(root, older_than_seconds=3600) == 0  # young: maybe a live writer
    assert lake.remove_stale_staging(root, older_than_seconds=0) == 1
    # The re-run replaces the partition as if the killed run never happened.
    lake.commit_partitions(root, "ds", "t", _stage(root, {DAY1: [3]}), [DAY1])
    assert _values(lake.partition_files(root, "ds", "t")) == [3]


def test_duckdb_reads_the_committed_partitions(tmp_path: Path) -> None:
    root = str(tmp_path / "lake")
    lake.commit_partitions(
        root, "ds", "t", _stage(root, {DAY1: [1, 2], DAY2: [3], None: []}), [DAY1, DAY2, None]
    )
    glob = f"{lake.table_root(root, 'ds', 't')}/{lake.PARQUET_GLOB}"
    with duckdb.connect() as conn:
        total = conn.execute(f"SELECT sum(v), count(*) FROM read_parquet('{glob}')").fetchall()
    assert total == [(6, 3)]


def test_fsspec_url_commits_and_lists(tmp_path: Path) -> None:
    import fsspec  # dask's dependency: always installed with the test extra

    memory = fsspec.filesystem("memory")
    root = f"memory://lake-{tmp_path.name}"
    staging = lake.new_staging(root)
    folder = lake.staged_partition(staging, DAY1)
    with memory.open(lake.shard_file(folder, 0), "wb") as handle:
        pq.write_table(pa.table({"v": pa.array([4, 5])}), handle)
    lake.commit_partitions(root, "ds", "t", staging, [DAY1, DAY2])
    files = lake.partition_files(root, "ds", "t")
    assert files == [f"{root}/ds/t/part=2011-01-02/shard-00000.parquet"]
    with memory.open(files[0], "rb") as handle:
        assert pq.read_table(handle).column("v").to_pylist() == [4, 5]
    assert not memory.exists(staging)
