"""Sharded stage work on a Dask cluster: every shard stages Parquet files, then the window commits.

A stage's heavy work is split into shard tasks. Each reads its inputs from the lake itself (the driver
sends paths, never big frames) and writes its Parquet files into one staging folder
(`core.lake.staged_partition`). Only when every shard has succeeded do the window's partitions replace
the table's (`core.lake.commit_partitions`, atomic per partition); a failure removes the staging, so the
committed partitions stay as they were and no partition is ever half written.

A task that raises is retried once (`retries=1`); a task whose worker dies is rescheduled by the
scheduler (up to `distributed.scheduler.allowed-failures` times, then `KilledWorker`). So a task must be
idempotent: it writes the same file names on every attempt, each written under a temporary name outside
the partition folders first and then renamed into place, so a killed attempt leaves no torn file there.
"""

from __future__ import annotations

import contextlib
import posixpath
import re
import shutil
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import TYPE_CHECKING, Any

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq

from mlplatform.core.lake import (
    PARQUET_GLOB,
    STAGING_FOLDER,
    commit_partitions,
    is_local,
    new_staging,
    shard_file,
    staged_partition,
    table_root,
)
from mlplatform.core.sql import quote_ident, quote_literal

if TYPE_CHECKING:
    import distributed

INCOMPLETE_FOLDER = "_incomplete"  # inside a staging: files being written, never committed
SHARDS_PER_THREAD = 4  # enough shards that a slow or retried one does not leave the others idle


@dataclass(frozen=True)
class ShardTask:
    """One unit of a stage's work: `function(staging, *args)` writes its files and returns its rows."""

    name: str  # named in errors, e.g. "shard 3 of 8" or "partition 2024-01-05"
    function: Callable[..., int]
    args: tuple[Any, ...] = ()


@dataclass(frozen=True)
class StagedWrite:
    """Where a stage's window goes: `dataset.table` of `lake`, replacing the partitions `days`."""

    lake: str
    dataset: str
    table: str  # the stage name
    days: tuple[date | None, ...]


class ShardFailedError(RuntimeError):
    """A shard task of a stage failed (after its retry); nothing of the window was committed."""


def shard_count(client: distributed.Client) -> int:
    """How many shards to split a stage into: a few per worker thread of the cluster."""
    workers = client.scheduler_info(n_workers=-1)["workers"].values()
    return SHARDS_PER_THREAD * max(1, sum(int(w.get("nthreads", 1)) for w in workers))


def run_and_commit(client: distributed.Client, write: StagedWrite, tasks: Sequence[ShardTask]) -> list[int]:
    """Run `tasks` on the cluster into one staging folder; when all succeed, commit `write.days`.

    Returns each task's rows. On a failure the staging is removed and ShardFailedError names the stage,
    dataset and shard; the committed partitions stay as they were."""
    staging = new_staging(write.lake)
    what = f"{write.table} of {write.dataset} (nothing committed, the previous partitions stay)"
    try:
        rows = [int(count) for count in run_tasks(client, what, tasks, staging)]
    except BaseException:
        remove_folder(staging)
        raise
    commit_partitions(write.lake, write.dataset, write.table, staging, write.days)
    return rows


def run_tasks(client: distributed.Client, what: str, tasks: Sequence[ShardTask], staging: str) -> list[Any]:
    """Run each task as `function(staging, *args)` on the cluster (retried once, not cached); returns
    their results in order. At the first failure the other tasks are cancelled (running ones find the
    staging gone once the caller removes it, and write nothing more) and ShardFailedError says `what`
    and the task. Removing `staging` is the caller's."""
    batch = f"{re.sub(r'[^A-Za-z0-9_]+', '_', what.split(' (')[0])}-{uuid.uuid4().hex[:12]}"
    futures = [
        client.submit(task.function, staging, *task.args, key=f"{batch}-{i}", retries=1, pure=False)
        for i, task in enumerate(tasks)
    ]
    try:
        return _gather(what, tasks, futures)
    except BaseException:
        _cancel(client, futures)
        raise


def _gather(what: str, tasks: Sequence[ShardTask], futures: list[Any]) -> list[Any]:
    """Each future's result, raising at the first task that failed (not after all have run)."""
    from distributed import as_completed

    task_of = {future.key: task for future, task in zip(futures, tasks, strict=True)}
    for future in as_completed(futures):
        if future.status == "error":
            error = future.exception()
            raise ShardFailedError(
                f"{what}: {task_of[future.key].name} failed after its retry: {type(error).__name__}: {error}"
            ) from error
        if future.status == "cancelled":
            raise ShardFailedError(f"{what}: {task_of[future.key].name} was cancelled")
    return [future.result() for future in futures]


def _cancel(client: distributed.Client, futures: list[Any]) -> None:
    """Cancel the tasks. A task already running cannot be interrupted and its future reads "cancelled"
    at once, so the caller may remove the staging while it still runs: `write_shard_file` then finds
    the staging gone and refuses to write (what a write already under way leaves, the sweep of stale
    staging removes: core.lake.remove_stale_staging)."""
    with contextlib.suppress(Exception):
        client.cancel(futures)


def remove_folder(folder: str) -> None:
    if is_local(folder):
        shutil.rmtree(folder.removeprefix("file://"), ignore_errors=True)
        return
    from fsspec.core import url_to_fs

    fs, path = url_to_fs(folder)
    if fs.exists(path):
        fs.rm(path, recursive=True)


def _staging_root(folder: Path) -> Path:
    """The `new_staging` folder `folder` is in (a stage may stage several tables in subfolders)."""
    parts = folder.parts
    if STAGING_FOLDER in parts[:-1]:
        return Path(*parts[: parts.index(STAGING_FOLDER) + 2])
    return folder


def write_shard_file(table: pa.Table, staging: str, day: date | None, shard: int) -> str:
    """Write `table` as shard `shard`'s file of the staged partition `day`; returns its path.

    Written under a temporary name in the staging's INCOMPLETE_FOLDER and renamed into the partition
    folder, so the folder only ever holds whole files (a retry overwrites the same name). Refuses to
    write into a staging that is gone: its stage failed and was abandoned (`_cancel`)."""
    if is_local(staging) and not _staging_root(Path(staging.removeprefix("file://"))).is_dir():
        raise ShardFailedError(f"staging {staging} is gone: its stage failed, nothing of this task is kept")
    target = shard_file(staged_partition(staging, day), shard)
    temporary = posixpath.join(staging, INCOMPLETE_FOLDER, f"{uuid.uuid4().hex}.parquet")
    if is_local(staging):
        local_temporary = Path(temporary.removeprefix("file://"))
        local_temporary.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(table, local_temporary)
        local_temporary.replace(target.removeprefix("file://"))
        return target
    from fsspec.core import url_to_fs

    fs, path = url_to_fs(temporary)
    fs.makedirs(posixpath.dirname(path), exist_ok=True)
    pq.write_table(table, path, filesystem=fs)
    fs.mv(path, url_to_fs(target)[1])
    return target


def lake_connection(lake: str) -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB for a task, able to read `lake` (fsspec URLs through a registered filesystem)."""
    conn = duckdb.connect()
    if not is_local(lake):
        from fsspec.core import url_to_fs

        conn.register_filesystem(url_to_fs(lake)[0])
    return conn


def parquet_scan(files: Sequence[str]) -> str:
    """A DuckDB read of `files` as one relation (columns unified by name, as the lake's views read)."""
    listed = ", ".join(quote_literal(f) for f in files)
    return f"read_parquet([{listed}], union_by_name = true, hive_partitioning = false)"


def ensure_lake_view(conn: duckdb.DuckDBPyConnection, lake: str, schema: str, table: str) -> None:
    """The warehouse's VIEW `schema.table` over every partition of the lake table (as the lake-mode
    `replace_window` keeps it), created if a stage's first write came from the cluster."""
    files = posixpath.join(table_root(lake, schema, table), PARQUET_GLOB)
    conn.execute(f"CREATE SCHEMA IF NOT EXISTS {quote_ident(schema)}")
    conn.execute(
        f"CREATE OR REPLACE VIEW {quote_ident(schema)}.{quote_ident(table)} AS SELECT * FROM "
        f"read_parquet({quote_literal(files)}, union_by_name = true, hive_partitioning = false)"
    )
