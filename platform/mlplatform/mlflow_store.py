"""Create a local MLflow store (SQLite) once, before processes that share it start using it.

MLflow creates (or migrates) a SQL store's tables the first time a client opens it. Two runs of
different datasets started together on a fresh home both did, and one died in the race (alembic's
"Online migration expected to match one row when updating ..."; seen in CI with Dagster's run queue
launching two runs at once). So the first opening of a SQLite store is serialized by a file lock, and
`prepare_home` opens it before any server or run starts. A server-backed store (HTTP, Postgres)
migrates under its own control: nothing is done for it here.
"""

from __future__ import annotations

import fcntl
from pathlib import Path

from mlflow.tracking import MlflowClient

SQLITE_PREFIX = "sqlite:///"


def sqlite_path(uri: str) -> Path | None:
    """The database file of a `sqlite:///...` URI, else None."""
    return Path(uri.removeprefix(SQLITE_PREFIX)) if uri.startswith(SQLITE_PREFIX) else None


def create_local_store(uri: str) -> None:
    """Open the SQLite store of `uri` once under an exclusive file lock, creating its tables if missing;
    other URIs are left alone. Cheap once the tables exist (one read under the lock)."""
    database = sqlite_path(uri)
    if database is None:
        return
    database.parent.mkdir(parents=True, exist_ok=True)
    with open(database.with_name(database.name + ".init-lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            MlflowClient(tracking_uri=uri, registry_uri=uri).search_experiments(max_results=1)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
