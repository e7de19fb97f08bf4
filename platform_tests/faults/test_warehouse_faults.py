"""The warehouse file under faults: held by another process, damaged, on a full disk.

Every fault is real: a second process holds a write connection, bytes of a warehouse written by a
real run are flipped or cut off, a 2 MiB tmpfs fills up.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path

import dagster as dg
import duckdb
import pytest
from mlflow import MlflowClient

from mlplatform.core.warehouse import explain_warehouse_error, replace_window
from mlplatform.factory import build_definitions
from mlplatform.resources.warehouse import WarehouseError, WarehouseResource
from mlplatform.runner import run_datasets
from mlplatform.settings import load_settings
from mlplatform.stages import runnable_stages
from platform_tests.e2e.test_ml_classification import generated_frame, spec_for

HOLD_SCRIPT = """
import sys, time, duckdb
conn = duckdb.connect(sys.argv[1])
conn.execute("CREATE TABLE IF NOT EXISTS held AS SELECT 1 AS x")
print("holding", flush=True)
time.sleep(float(sys.argv[2]))
conn.close()
"""


@contextmanager
def held_by_other_process(database: Path, seconds: float) -> Iterator[subprocess.Popen[str]]:
    """A real second process with a write connection to `database` for `seconds`."""
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_SCRIPT, str(database), str(seconds)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "holding"
        yield holder
    finally:
        holder.kill()
        holder.wait()


@pytest.mark.e2e
def test_held_lock_fails_within_seconds_naming_the_holder(tmp_path: Path) -> None:
    database = tmp_path / "warehouse.duckdb"
    resource = WarehouseResource(database=str(database), lock_timeout_seconds=1.0)
    with held_by_other_process(database, 60) as holder:
        started = time.monotonic()
        with pytest.raises(WarehouseError) as failure, resource.get_connection():
            pass
        waited = time.monotonic() - started
    message = failure.value.description or ""
    assert 1.0 <= waited < 4, waited  # dagster_duckdb's DuckDBResource retried for about 115 s
    assert f"warehouse {database} is held by" in message
    assert f"(PID {holder.pid})" in message and f"kill {holder.pid}" in message
    assert "use `mlplatform sql`" in message
    assert WarehouseResource(database=str(database)).lock_timeout_seconds <= 10


@pytest.mark.e2e
def test_a_lock_held_briefly_is_waited_for(tmp_path: Path) -> None:
    database = tmp_path / "warehouse.duckdb"
    resource = WarehouseResource(database=str(database))  # the default wait
    with held_by_other_process(database, 1.0), resource.get_connection() as conn:
        assert conn.execute("SELECT x FROM held").fetchall() == [(1,)]


def _small_warehouse(database: Path) -> None:
    with duckdb.connect(str(database)) as conn:
        conn.execute("CREATE SCHEMA toy")
        conn.execute(
            "CREATE TABLE toy.numbers AS SELECT range AS i, md5(range::VARCHAR) AS s FROM range(300000)"
        )


def _flip_bytes_of_table(database: Path, table: str) -> None:
    """Invert 64 bytes inside the last storage block of `table` (its checksum no longer matches)."""
    with duckdb.connect(str(database), read_only=True) as conn:
        block_size = conn.execute("SELECT block_size FROM pragma_database_size()").fetchall()[0][0]
        block = conn.execute(
            f"SELECT max(block_id) FROM pragma_storage_info('{table}') WHERE block_id IS NOT NULL"
        ).fetchall()[0][0]
    offset = 3 * 4096 + int(block) * int(block_size) + 1024  # past the file headers and the checksum
    with database.open("r+b") as file:
        file.seek(offset)
        original = file.read(64)
        file.seek(offset)
        file.write(bytes(byte ^ 0xFF for byte in original))


def test_a_damaged_block_read_in_any_step_names_the_file_and_the_recovery(tmp_path: Path) -> None:
    database = tmp_path / "warehouse.duckdb"
    _small_warehouse(database)
    _flip_bytes_of_table(database, "toy.numbers")
    resource = WarehouseResource(database=str(database))
    with pytest.raises(WarehouseError) as failure, resource.get_connection() as conn:
        conn.execute("SELECT sum(hash(s)) FROM toy.numbers").fetchall()
    message = failure.value.description or ""
    assert message.startswith(f"warehouse {database} is damaged: delete it")
    assert "re-run `mlplatform run`" in message and "Corrupt database file" in message
    # A SQL error is not a damaged file: it stays DuckDB's own error.
    with pytest.raises(duckdb.CatalogException), resource.get_connection() as conn:
        conn.execute("SELECT * FROM toy.missing")


def test_a_file_cut_short_or_not_duckdb_names_the_file(tmp_path: Path) -> None:
    database = tmp_path / "warehouse.duckdb"
    _small_warehouse(database)
    resource = WarehouseResource(database=str(database))
    os.truncate(database, 8192)  # the header survives, the rest is gone
    with pytest.raises(WarehouseError, match="is damaged: delete it") as failure, resource.get_connection():
        pass
    assert "Could not read enough bytes" in (failure.value.description or "")
    database.write_bytes(b"\x00" * 100)
    not_duckdb = "is not a DuckDB database file: if it is the platform's warehouse it is damaged"
    with pytest.raises(WarehouseError, match=not_duckdb), resource.get_connection():
        pass


@pytest.fixture
def small_tmpfs(tmp_path: Path) -> Iterator[Path]:
    """A 2 MiB tmpfs (needs root and mount permission; skipped with the reason otherwise)."""
    folder = tmp_path / "small_disk"
    folder.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root; this test runs as an ordinary user")
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(folder)], capture_output=True, text=True
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip() or mounted.returncode}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", str(folder)], check=True)


@pytest.mark.e2e
def test_disk_full_says_disk_full_with_the_path_and_the_free_space(small_tmpfs: Path) -> None:
    database = small_tmpfs / "warehouse.duckdb"
    resource = WarehouseResource(database=str(database))
    with pytest.raises(WarehouseError) as failure, resource.get_connection() as conn:
        conn.execute("CREATE TABLE big AS SELECT range AS i, md5(range::VARCHAR) AS s FROM range(1000000)")
    message = failure.value.description or ""
    assert message.startswith(f"disk full: no space left to write the warehouse {database} ({small_tmpfs}: ")
    assert "free of 2.0 MiB after the failed write" in message and "MLPLATFORM_WAREHOUSE" in message
    assert "No space left on device" in message

    # A stage's window replacement: the failed COMMIT, not the ROLLBACK after it, is what is reported.
    rows = (
        "SELECT TIMESTAMP '2024-01-01' + INTERVAL (range) SECOND AS ts, md5(range::VARCHAR) AS s "
        "FROM range(1000000)"
    )
    full = r"^disk full: no space left to write the warehouse"
    with pytest.raises(WarehouseError, match=full), resource.get_connection() as conn:
        replace_window(conn, "toy", "raw", rows, "ts", datetime(2024, 1, 1), datetime(2024, 2, 1))


# --- a damaged warehouse in a real run -------------------------------------------------------------

DATASET = "toy_damaged"


def _mlflow() -> MlflowClient:
    settings = load_settings()
    return MlflowClient(settings.mlflow_tracking_uri, settings.mlflow_registry_uri)


def _run(progress: list[str]) -> tuple[bool, list[str]]:
    outcome = run_datasets(
        build_definitions(),
        [DATASET],
        instance=dg.DagsterInstance.get(),
        progress=progress.append,
        stages=runnable_stages(),
    )
    return outcome[0].success, outcome[0].failed_steps


def _registry_state() -> tuple[list[int], int, int]:
    """Versions, the champion's version and the number of MLflow runs of the dataset."""
    client = _mlflow()
    versions = sorted(int(v.version) for v in client.search_model_versions(f"name = '{DATASET}'"))
    champion = int(client.get_model_version_by_alias(DATASET, "champion").version)
    runs = client.search_runs([client.get_experiment_by_name(DATASET).experiment_id])
    return versions, champion, len(runs)


@pytest.mark.e2e
@pytest.mark.usefixtures("platform_home", "restore_mlflow_env")
def test_a_damaged_warehouse_fails_before_training_and_promotes_nothing(
    tmp_path: Path, write_spec: Callable[..., Path], use_extra_specs: Callable[[Path], None]
) -> None:
    source = tmp_path / f"{DATASET}.parquet"
    generated_frame("binary").to_parquet(source, index=False)
    use_extra_specs(write_spec(spec_for("binary", DATASET, source), f"{DATASET}.yaml").parent)
    assert _run([])[0]
    trained = _registry_state()
    assert trained[:2] == ([1], 1)
    database = Path(load_settings().warehouse_for(DATASET))
    pristine = tmp_path / "pristine.duckdb"
    shutil.copy(database, pristine)

    # Predictions are read only after evaluation: before, the run promoted a new champion first.
    for damage in ("flipped bytes in predictions", "file cut to 60%"):
        shutil.copy(pristine, database)
        if damage.startswith("flipped"):
            _flip_bytes_of_table(database, f"{DATASET}.predictions")
        else:
            os.truncate(database, database.stat().st_size * 6 // 10 // 4096 * 4096)
        progress: list[str] = []
        success, failed = _run(progress)
        assert not success, damage
        steps_before_training = {
            f"{DATASET}__{stage}" for stage in ("raw", "clean", "features", "training_set")
        }
        assert set(failed) <= steps_before_training | {f"{DATASET}__model"}, (damage, failed)
        assert f"warehouse {database} is damaged: delete it" in progress[-1], (damage, progress[-1])
        assert _registry_state() == trained, damage  # no new version, champion, or MLflow run

    # The recovery the message gives works: delete the file, run again.
    database.unlink()
    assert _run([])[0]
    assert _registry_state()[0] == [1, 2]


def test_only_a_full_disk_is_called_disk_full() -> None:
    full = duckdb.IOException('IO Error: Could not write file "/w/x.duckdb": No space left on device')
    other = duckdb.IOException('IO Error: Could not write file "/w/x.duckdb": Read-only file system')
    assert (explain_warehouse_error(full, "/w/x.duckdb") or "").startswith("disk full:")
    assert explain_warehouse_error(other, "/w/x.duckdb") is None  # DuckDB's own words, not "disk full"
