"""The Parquet lake of the Dask engine: each stage table is a folder of partitions, each replaced whole.

Layout: `<lake>/<schema>/<table>/part=<YYYY-MM-DD>/*.parquet`, the day a partition starts
(`core.grain.grain_floor` of each row's window column), and `part=all/` for an unpartitioned table.
A writer stages a partition's files under `<lake>/_staging/<uuid>/part=.../` (on the same filesystem,
so a rename moves it), then `commit_partitions` puts each staged folder in place of the table's. A
writer killed before the commit leaves only its staging behind (`remove_stale_staging`): readers never
see half a partition, and a re-run replaces the partition again, so runs stay idempotent.

Plain files and fsspec, no Dagster. `lake` is a local folder (or a file:// URL) or any fsspec URL.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import posixpath
import shutil
import time
import uuid
from collections.abc import Iterable
from datetime import date
from pathlib import Path
from typing import Any

STAGING_FOLDER = "_staging"
PARTITION_PREFIX = "part="
ALL_PARTITION = "part=all"
PARQUET_GLOB = "part=*/*.parquet"  # every partition's files under a table root (what readers scan)

_AT_FDCWD = -100
_RENAME_EXCHANGE = 2  # linux/fs.h
_renameat2: Any = None  # libc's renameat2, looked up once; False where there is none


def is_local(lake: str) -> bool:
    return "://" not in lake or lake.startswith("file://")


def _local_path(location: str) -> str:
    return location.removeprefix("file://")


def _filesystem(location: str) -> tuple[Any, str]:
    """The fsspec filesystem of a URL and the path on it (imported only for URLs)."""
    from fsspec.core import url_to_fs

    return url_to_fs(location)


def table_root(lake: str, schema: str, table: str) -> str:
    return posixpath.join(lake.rstrip("/"), schema, table)


def partition_name(day: date | None) -> str:
    """`part=2011-01-02` for the partition starting that day; `part=all` for an unpartitioned table."""
    return ALL_PARTITION if day is None else f"{PARTITION_PREFIX}{day.isoformat()}"


def partition_day(name: str) -> date | None:
    """The day of a partition folder's name (the inverse of `partition_name`)."""
    if name == ALL_PARTITION:
        return None
    return date.fromisoformat(name.removeprefix(PARTITION_PREFIX))


def new_staging(lake: str) -> str:
    """A fresh, unique staging folder `<lake>/_staging/<uuid>/`, created."""
    staging = posixpath.join(lake.rstrip("/"), STAGING_FOLDER, uuid.uuid4().hex)
    _make_folder(staging)
    return staging


def staged_partition(staging: str, day: date | None) -> str:
    """The folder (created) to write a partition's files into: each writer one or more files of its
    own, e.g. `shard_file(folder, 3)`."""
    folder = posixpath.join(staging, partition_name(day))
    _make_folder(folder)
    return folder


def shard_file(folder: str, shard: int) -> str:
    """The name of writer `shard`'s file in a staged partition folder: `shard-00003.parquet`."""
    return posixpath.join(folder, f"shard-{shard:05d}.parquet")


def _make_folder(folder: str) -> None:
    if is_local(folder):
        Path(_local_path(folder)).mkdir(parents=True, exist_ok=True)
    else:
        fs, path = _filesystem(folder)
        fs.makedirs(path, exist_ok=True)


def commit_partitions(lake: str, schema: str, table: str, staging: str, days: Iterable[date | None]) -> None:
    """Make each day's partition of `schema.table` exactly its staged folder, then remove `staging`.

    A day with no staged folder has its partition removed (emptied). Keep at least one file (zero rows
    will do) in a table that must stay readable: a view over a folder without files cannot bind.

    Local folders: atomic per partition. A new partition is renamed into place; an existing one is
    swapped with the staged one by Linux renameat2(RENAME_EXCHANGE) where the kernel and filesystem
    have it, else the old folder is renamed into the staging and the new one renamed into place (a
    reader in between sees the partition missing for that instant, never half of it). The old files are
    deleted with the staging. fsspec URLs: the old partition is deleted and the staged files moved in
    (`fs.mv`); object stores have no folder rename, so a reader during the commit may see the partition
    missing or partly there, and a writer killed mid-commit leaves it partial until the partition is
    re-run (the staging stays as evidence until `remove_stale_staging`).
    """
    root = table_root(lake, schema, table)
    local = is_local(lake)
    for day in dict.fromkeys(days):
        staged = posixpath.join(staging, partition_name(day))
        target = posixpath.join(root, partition_name(day))
        if local:
            _commit_local(_local_path(staged), _local_path(target), _local_path(staging))
        else:
            _commit_remote(staged, target)
    _remove_folder(staging)


def _commit_local(staged: str, target: str, staging: str) -> None:
    aside = os.path.join(staging, f"replaced-{uuid.uuid4().hex}")
    if not os.path.isdir(staged):
        with contextlib.suppress(FileNotFoundError):
            os.rename(target, aside)  # out of the table in one step; deleted with the staging
        return
    os.makedirs(os.path.dirname(target), exist_ok=True)
    if os.path.isdir(target) and _exchange(staged, target):
        return  # the old partition now sits at `staged`, inside the staging
    try:
        os.rename(staged, target)
    except OSError as error:
        if error.errno not in (errno.ENOTEMPTY, errno.EEXIST):
            raise
        os.rename(target, aside)
        os.rename(staged, target)


def _exchange(first: str, second: str) -> bool:
    """Swap two paths atomically (renameat2 RENAME_EXCHANGE); False where the system cannot."""
    global _renameat2
    if _renameat2 is None:
        libc = ctypes.CDLL(None, use_errno=True)
        _renameat2 = getattr(libc, "renameat2", False)
        if _renameat2:
            _renameat2.argtypes = [
                ctypes.c_int,
                ctypes.c_char_p,
                ctypes.c_int,
                ctypes.c_char_p,
                ctypes.c_uint,
            ]
    if not _renameat2:
        return False
    result = _renameat2(_AT_FDCWD, os.fsencode(first), _AT_FDCWD, os.fsencode(second), _RENAME_EXCHANGE)
    if result == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.EPERM, errno.EOPNOTSUPP):
        return False  # no exchange on this kernel or filesystem: the fallback renames
    raise OSError(code, os.strerror(code), first)


def _commit_remote(staged: str, target: str) -> None:
    fs, staged_path = _filesystem(staged)
    target_path = _filesystem(target)[1]
    if fs.exists(target_path):
        fs.rm(target_path, recursive=True)
    if fs.exists(staged_path) and fs.ls(staged_path):
        fs.mv(staged_path, target_path, recursive=True)


def move_folder(source: str, target: str) -> None:
    """Rename `source` to `target` (a folder that does not exist yet), on the lake's filesystem."""
    if is_local(source):
        os.rename(_local_path(source), _local_path(target))
        return
    fs, source_path = _filesystem(source)
    fs.mv(source_path, _filesystem(target)[1], recursive=True)


def copy_file(source: str, target: str) -> None:
    if is_local(source):
        shutil.copyfile(_local_path(source), _local_path(target))
        return
    fs, source_path = _filesystem(source)
    fs.copy(source_path, _filesystem(target)[1])


def remove_staging(staging: str) -> None:
    """Delete a staging folder that will not be committed (a failed write)."""
    _remove_folder(staging)


def _remove_folder(folder: str) -> None:
    if is_local(folder):
        shutil.rmtree(_local_path(folder), ignore_errors=True)
        return
    fs, path = _filesystem(folder)
    if fs.exists(path):
        fs.rm(path, recursive=True)


def list_folder(folder: str) -> list[str]:
    """Entries of `folder` (full paths, sorted); [] when it does not exist."""
    if is_local(folder):
        local = _local_path(folder)
        if not os.path.isdir(local):
            return []
        prefix = "file://" if folder.startswith("file://") else ""
        return sorted(prefix + os.path.join(local, name) for name in os.listdir(local))
    fs, path = _filesystem(folder)
    if not fs.exists(path):
        return []
    # Named from `folder`, so URLs keep the caller's spelling (filesystems differ in what ls returns).
    names = (posixpath.basename(entry.rstrip("/")) for entry in fs.ls(path, detail=False))
    return sorted(posixpath.join(folder, name) for name in names)


def partition_names(lake: str, schema: str, table: str) -> list[str]:
    """The table's partition folders (`part=...`), sorted."""
    entries = list_folder(table_root(lake, schema, table))
    return [
        name
        for name in (posixpath.basename(e.rstrip("/")) for e in entries)
        if name.startswith(PARTITION_PREFIX)
    ]


def partition_files(
    lake: str, schema: str, table: str, days: Iterable[date | None] | None = None
) -> list[str]:
    """The Parquet files of the table's partitions `days` (default: all), sorted by partition."""
    root = table_root(lake, schema, table)
    names = partition_names(lake, schema, table) if days is None else [partition_name(d) for d in days]
    files: list[str] = []
    for name in dict.fromkeys(names):
        files += [f for f in list_folder(posixpath.join(root, name)) if f.endswith(".parquet")]
    return files


def remove_stale_staging(lake: str, older_than_seconds: float = 3600) -> int:
    """Delete staging folders untouched for `older_than_seconds` (what killed writers left); returns how
    many. A live writer's staging is younger: writers commit within one step."""
    cutoff = time.time() - older_than_seconds
    removed = 0
    for folder in list_folder(posixpath.join(lake.rstrip("/"), STAGING_FOLDER)):
        if _modified(folder) <= cutoff:
            _remove_folder(folder)
            removed += 1
    return removed


def _modified(folder: str) -> float:
    """When anything directly in `folder` (or the folder itself) last changed."""
    if is_local(folder):
        local = _local_path(folder)
        times = [os.path.getmtime(local)]
        for root, _dirs, files in os.walk(local):
            times += [os.path.getmtime(os.path.join(root, f)) for f in files]
        return max(times)
    fs, path = _filesystem(folder)
    stamps = []
    for file in fs.find(path):
        with contextlib.suppress(NotImplementedError, OSError):
            stamps.append(fs.modified(file).timestamp())
    return max(stamps, default=0.0)  # nothing datable: an empty or undatable staging counts as stale
