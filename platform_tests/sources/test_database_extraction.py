"""Extracting a Postgres table into landed Parquet batches, the probe, and the errors, against a real server.

Every count a test trusts is asked of Postgres itself (`SELECT count(*)`), never of the landed files.
"""

from __future__ import annotations

import fcntl
import threading
from datetime import datetime
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from mlplatform.core.database_landing import (
    LOCK_FILE,
    extract_new_rows,
    landed_batches,
    landed_counts,
    landed_watermark,
)
from mlplatform.core.database_source import naive_utc, probe_database, table_state
from mlplatform.core.source import SourceError
from mlplatform.factory import build_datasets
from mlplatform.settings import load_settings
from mlplatform.specs.loader import SpecError, check_source
from platform_tests.postgres import PostgresCluster
from platform_tests.servers import free_port
from platform_tests.sources.pg_source import DSN_ENV, TripsTable, make_trips_table, trips_spec


@pytest.fixture
def trips(postgres_cluster: PostgresCluster, monkeypatch: pytest.MonkeyPatch) -> TripsTable:
    return make_trips_table(postgres_cluster, monkeypatch, hours=25)


def landed_rows(folder: Path) -> int:
    return sum(pq.ParquetFile(p).metadata.num_rows for p in folder.glob("*.parquet"))


def test_rows_land_in_bounded_batches_counted_by_the_database(trips: TripsTable, tmp_path: Path) -> None:
    # Three rows share the time that closes the first batch: ties go with it, none is split off.
    trips.sql("INSERT INTO trips VALUES ('2024-01-01 09:00', 'north', 1), ('2024-01-01 09:00', 'south', 2)")
    spec = trips_spec(tmp_path / "specs", batch_rows=10)
    folder = tmp_path / "landing"
    batches = extract_new_rows(spec, folder)
    assert [b.landed_rows for b in batches] == [12, 10, 5]
    assert [(b.after, b.through) for b in batches][:2] == [
        (None, "2024-01-01 09:00:00"),
        ("2024-01-01 09:00:00", "2024-01-01 19:00:00"),
    ]
    assert all(b.database_rows == b.landed_rows for b in batches)
    assert landed_rows(folder) == trips.count() == 27
    assert [Path(b.path).name for b in landed_batches(folder)] == [
        "batch_000001_start_2024-01-01-09-00-00.parquet",
        "batch_000002_2024-01-01-09-00-00_2024-01-01-19-00-00.parquet",
        "batch_000003_2024-01-01-19-00-00_2024-01-02-00-00-00.parquet",
    ]
    assert not list(folder.glob(".*.tmp"))  # no temp file left behind
    assert extract_new_rows(spec, folder) == []  # nothing new

    trips.append_hours(4)
    new = extract_new_rows(spec, folder)
    assert [(b.after, b.landed_rows, b.database_rows) for b in new] == [("2024-01-02 00:00:00", 4, 4)]
    assert landed_watermark(folder) == "2024-01-02 04:00:00"
    assert landed_rows(folder) == trips.count() == 31
    counts = landed_counts(folder)
    assert sum(c.rows for c in counts.values()) == trips.count()


def test_a_batch_without_its_sidecar_is_extracted_again_under_its_name(
    trips: TripsTable, tmp_path: Path
) -> None:
    spec, folder = trips_spec(tmp_path / "specs", batch_rows=10), tmp_path / "landing"
    last = extract_new_rows(spec, folder)[-1]
    Path(last.path).with_suffix(".json").unlink()  # the run died between the two renames
    again = extract_new_rows(spec, folder)
    assert [b.path for b in again] == [last.path]
    assert landed_rows(folder) == trips.count()


def test_a_batch_file_left_without_its_sidecar_is_not_read_twice(trips: TripsTable, tmp_path: Path) -> None:
    # The run died between the renames of a last, partial batch; rows arrived before the next run, so
    # the next batch ends later and gets another name: the orphan file must not stay beside it.
    spec, folder = trips_spec(tmp_path / "specs", batch_rows=10), tmp_path / "landing"
    last = extract_new_rows(spec, folder)[-1]
    Path(last.path).with_suffix(".json").unlink()
    trips.append_hours(3)
    again = extract_new_rows(spec, folder)
    assert [b.after for b in again] == [last.after] and again[0].path != last.path
    assert landed_rows(folder) == trips.count() == 28
    assert sum(c.rows for c in landed_counts(folder).values()) == trips.count()


def test_extractions_of_one_folder_wait_for_each_other(trips: TripsTable, tmp_path: Path) -> None:
    # Two at once would start from the same watermark and land overlapping batches.
    spec, folder = trips_spec(tmp_path / "specs", batch_rows=10), tmp_path / "landing"
    folder.mkdir()
    with open(folder / LOCK_FILE, "a") as held:
        fcntl.flock(held, fcntl.LOCK_EX)  # as another process's extraction holds it
        worker = threading.Thread(target=extract_new_rows, args=(spec, folder))
        worker.start()
        worker.join(1.0)
        assert worker.is_alive() and not list(folder.glob("*.parquet"))
        fcntl.flock(held, fcntl.LOCK_UN)
    worker.join(30)
    assert not worker.is_alive() and landed_rows(folder) == trips.count()


def test_the_query_form_lands_what_the_query_selects(trips: TripsTable, tmp_path: Path) -> None:
    spec = trips_spec(
        tmp_path / "specs", query="SELECT ts, zone, rides * 2 AS rides FROM trips WHERE zone = 'north'"
    )
    folder = tmp_path / "landing"
    batches = extract_new_rows(spec, folder)
    assert sum(b.database_rows for b in batches) == landed_rows(folder) == trips.count("zone = 'north'") == 12
    landed = pq.read_table(next(folder.glob("*.parquet")))
    assert set(landed.column("zone").to_pylist()) == {"north"}


def test_the_probe_asks_the_database_for_the_time_range(trips: TripsTable, tmp_path: Path) -> None:
    probe = check_source(trips_spec(tmp_path / "specs"))
    assert (probe.time_min, probe.time_max) == (datetime(2024, 1, 1, 0), datetime(2024, 1, 2, 0))
    assert probe.columns == ("ts", "zone", "rides")
    trips.sql("INSERT INTO trips VALUES ('2999-01-01', 'north', 1)")  # implausible: does not stretch it
    assert probe_database(trips_spec(tmp_path / "specs")).time_max == datetime(2024, 1, 2, 0)
    state = table_state(trips_spec(tmp_path / "specs"))
    assert (state.max_value, state.rows) == ("2999-01-01 00:00:00", trips.count())


def test_naive_database_times_are_in_the_spec_time_zone() -> None:
    assert naive_utc(datetime(2024, 7, 1, 12), "Europe/Berlin") == datetime(2024, 7, 1, 10)


def _probe_error(spec_dir: Path, **source: str) -> str:
    with pytest.raises(SpecError) as caught:
        check_source(trips_spec(spec_dir, **source))
    return str(caught.value)


def test_clear_errors_name_the_server_table_and_column(
    trips: TripsTable, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    specs = tmp_path / "specs"
    shown = f"127.0.0.1:{trips.cluster.port}/{trips.cluster.database_of(trips.url)}"
    missing_table = _probe_error(specs, table="no_such_table")
    assert f"key 'source.table': cannot read table no_such_table in postgres at {shown}" in missing_table
    assert 'relation "no_such_table" does not exist' in missing_table
    missing_column = _probe_error(specs, incremental_column="updated_at")
    assert (
        f"key 'source.incremental_column': column 'updated_at' not found in table trips at {shown} "
        "(it has: ts, zone, rides)"
    ) in missing_column
    assert "key 'source.incremental_column': column 'zone' of table trips is string" in _probe_error(
        specs, incremental_column="zone"
    )
    by_day = _probe_error(specs, query="SELECT *, ts::date AS day FROM trips", incremental_column="day")
    assert "column 'day' of the source query is date32[day]; rows added to a landed day later" in by_day
    trips.sql("ALTER TABLE trips RENAME COLUMN rides TO trips_taken")
    assert "key 'columns': 'rides' not found in table trips" in _probe_error(specs)

    monkeypatch.setenv(DSN_ENV, f"postgresql://me:s3cret-pw@127.0.0.1:{free_port()}/trips")
    unreachable = _probe_error(specs)
    assert "key 'source.dsn': cannot connect to postgres at 127.0.0.1:" in unreachable
    assert "Connection refused" in unreachable and "s3cret-pw" not in unreachable

    monkeypatch.delenv(DSN_ENV)
    assert "key 'source.dsn': environment variable TRIPS_DSN is not set" in _probe_error(specs)
    with pytest.raises(SourceError, match="TRIPS_DSN is not set"):
        extract_new_rows(trips_spec(specs), tmp_path / "landing")


def test_a_source_that_cannot_be_reached_breaks_only_its_dataset(
    trips: TripsTable, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    good = trips_spec(tmp_path / "good")
    bad = trips_spec(tmp_path / "bad", dsn={"env": "MISSING_DSN"}).model_copy(update={"name": "other"})
    monkeypatch.delenv("MISSING_DSN", raising=False)
    settings = load_settings({"MLPLATFORM_HOME": str(tmp_path / "home")})
    built, broken = build_datasets([good, bad], settings)
    assert [d.spec.name for d in built] == ["trips"]
    assert [b.name for b in broken] == ["other"]
    assert "key 'source.dsn': environment variable MISSING_DSN is not set" in broken[0].error


def test_a_time_zone_aware_column_lands_and_resumes_exactly(
    postgres_cluster: PostgresCluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = postgres_cluster.create_database("aware")
    postgres_cluster.execute(url, "CREATE TABLE trips (ts timestamptz, zone text, rides numeric(8, 2))")
    insert = "INSERT INTO trips VALUES ('2024-01-01 00:00:00.123456+01', 'north', 1.25), ('{}', 'south', 2)"
    postgres_cluster.execute(url, insert.format("2024-01-01 10:00+00"))
    monkeypatch.setenv(DSN_ENV, url)
    spec = trips_spec(tmp_path / "specs")
    probe = check_source(spec)
    assert (probe.time_min, probe.time_max) == (
        datetime(2023, 12, 31, 23, 0, 0, 123456),
        datetime(2024, 1, 1, 10),
    )
    folder = tmp_path / "landing"
    assert [b.landed_rows for b in extract_new_rows(spec, folder)] == [2]
    postgres_cluster.execute(url, insert.format("2024-01-01 10:00:00.000001+00"))
    again = extract_new_rows(spec, folder)  # the microsecond past the watermark, the older row not again
    assert [(b.after, b.landed_rows) for b in again] == [("2024-01-01 10:00:00+00", 1)]
    rows = pq.read_table(again[0].path).to_pylist()
    assert rows[0]["rides"] == "2.00"  # numeric lands as its exact text; cleaning types it


def test_a_query_cannot_write_to_the_source_database(trips: TripsTable, tmp_path: Path) -> None:
    trips.sql("CREATE SEQUENCE tick")
    spec = trips_spec(tmp_path / "specs", query="SELECT ts, zone, rides, nextval('tick') AS n FROM trips")
    with pytest.raises(SourceError, match="read-only transaction"):
        extract_new_rows(spec, tmp_path / "landing")
    assert trips.sql("SELECT last_value, is_called FROM tick") == [(1, False)]
