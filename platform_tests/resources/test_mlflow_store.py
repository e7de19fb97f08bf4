"""A fresh SQLite MLflow store opened by several processes at once: every one of them gets a usable store."""

from __future__ import annotations

import multiprocessing
from pathlib import Path

from mlflow.tracking import MlflowClient

from mlplatform.mlflow_store import create_local_store, sqlite_path


def _open_at_once(uri: str, barrier: multiprocessing.synchronize.Barrier) -> None:
    barrier.wait()
    create_local_store(uri)
    MlflowClient(tracking_uri=uri).create_experiment(f"probe-{multiprocessing.current_process().pid}")


def test_processes_creating_one_fresh_store_together_all_succeed(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path / 'store' / 'mlflow.db'}"
    spawn = multiprocessing.get_context("spawn")  # like separate run workers: no state shared
    barrier = spawn.Barrier(4)
    workers = [spawn.Process(target=_open_at_once, args=(uri, barrier)) for _ in range(4)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=120)
    assert [w.exitcode for w in workers] == [0, 0, 0, 0]
    names = {e.name for e in MlflowClient(tracking_uri=uri).search_experiments()}
    assert len({n for n in names if n.startswith("probe-")}) == 4


def test_only_sqlite_uris_are_local_stores(tmp_path: Path) -> None:
    assert sqlite_path(f"sqlite:///{tmp_path}/m.db") == tmp_path / "m.db"
    assert sqlite_path("http://127.0.0.1:5000") is None
    create_local_store("http://127.0.0.1:9")  # nothing listens there: a server store is not touched
