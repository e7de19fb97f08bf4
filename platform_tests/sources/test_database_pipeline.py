"""A Postgres table through raw -> clean + quarantine, then an appended batch found by the new-data sensor.

Real components throughout: the session's Postgres cluster, the dataset's Dagster definitions, a DuckDB
warehouse and a Dagster instance. Nothing lost is proved against `SELECT count(*)` in Postgres.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dagster as dg
import duckdb
import pytest

from mlplatform.core.accounting import describe_account, read_accounts
from mlplatform.core.validation import REASON
from mlplatform.dagster_adapter import ASSET_PARTITION_RANGE_END_TAG, ASSET_PARTITION_RANGE_START_TAG
from mlplatform.factory import DatasetDefinitions, build_dataset, location_resources
from mlplatform.settings import Settings, load_settings
from platform_tests.postgres import PostgresCluster
from platform_tests.sources.pg_source import TripsTable, make_trips_table, trips_spec

pytestmark = pytest.mark.e2e  # materializes the stages several times (about 20 s)


@dataclass
class TripsPlatform:
    table: TripsTable
    built: DatasetDefinitions
    settings: Settings
    instance: dg.DagsterInstance

    def materialize(self, partition: str, raise_on_error: bool = True) -> dg.ExecuteInProcessResult:
        keys = [dg.AssetKey(["trips", stage]) for stage in ("raw", "clean", "quarantine")]
        return dg.materialize(
            self.built.assets,
            selection=keys,
            partition_key=partition,
            resources=location_resources(self.settings),
            instance=self.instance,
            raise_on_error=raise_on_error,
        )

    def query(self, sql: str) -> list[tuple[Any, ...]]:
        with duckdb.connect(self.settings.warehouse_path, read_only=True) as conn:
            return conn.execute(sql).fetchall()

    def landed(self) -> int:
        """clean + quarantine rows: what the warehouse holds of the table."""
        clean = self.query("SELECT count(*) FROM trips.clean")[0][0]
        return int(clean + self.query("SELECT count(*) FROM trips.quarantine")[0][0])

    def assert_accounts_reconcile(self) -> None:
        with duckdb.connect(self.settings.warehouse_path, read_only=True) as conn:
            accounts = read_accounts(conn, "trips", "ts")
        assert accounts and all(a.reconciles for a in accounts), [describe_account(a) for a in accounts]


@pytest.fixture
def platform(
    postgres_cluster: PostgresCluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[TripsPlatform]:
    table = make_trips_table(postgres_cluster, monkeypatch, hours=48)  # 2024-01-01 and 2024-01-02
    table.sql(
        "INSERT INTO trips VALUES ('2024-01-01 05:30', 'south', -3), ('2024-01-02 06:30', 'south', NULL), "
        "('2024-01-02 07:30', 'east', 4)"
    )
    settings = load_settings(
        {
            "MLPLATFORM_HOME": str(tmp_path / "home"),
            "MLPLATFORM_WAREHOUSE": str(tmp_path / "warehouse.duckdb"),
        }
    )
    built = build_dataset(trips_spec(tmp_path / "specs"), settings=settings)
    with dg.instance_for_test() as instance:
        yield TripsPlatform(table, built, settings, instance)


def raw_metadata(result: dg.ExecuteInProcessResult) -> dict[str, Any]:
    event = next(e for e in result.get_asset_materialization_events() if e.asset_key.path[-1] == "raw")
    return {name: value.value for name, value in event.materialization.metadata.items()}


def sensor_of(built: DatasetDefinitions) -> dg.SensorDefinition:
    return next(s for s in built.automation.sensors if s.name == "trips__new_data_sensor")


def test_a_table_loads_incrementally_with_nothing_lost(platform: TripsPlatform) -> None:
    results = [platform.materialize(partition) for partition in ("2024-01-01", "2024-01-02")]
    assert all(result.success for result in results)
    landed_now = [raw_metadata(result)["rows_landed_now"] for result in results]
    assert landed_now == [platform.table.count(), 0]  # the first run landed the table, the second nothing
    metadata = raw_metadata(results[0])
    assert (metadata["source_relation"], metadata["watermark"]) == ("table trips", "2024-01-02 23:00:00")
    assert metadata["source_rows"] == platform.table.count()
    assert platform.landed() == platform.table.count() == 51
    quarantined = platform.query(f"SELECT zone, rides, {REASON} FROM trips.quarantine ORDER BY ts")
    assert [(zone, rides) for zone, rides, _ in quarantined] == [
        ("south", -3.0),
        ("south", None),
        ("east", 4.0),
    ]
    assert [reason for _, _, reason in quarantined] == [
        "rides: greater_than_or_equal_to(0.0) failed for -3",
        "rides: null in a non-nullable column",
        "zone: isin(['north', 'south']) failed for 'east'",
    ]
    platform.assert_accounts_reconcile()
    lineage = platform.query("SELECT DISTINCT _source_file FROM trips.clean")
    assert all(Path(f).parent == platform.settings.home / "landing" / "trips" for (f,) in lineage)

    sensor = sensor_of(platform.built)
    first = sensor(dg.build_sensor_context(instance=platform.instance))
    assert not first.run_requests  # everything in the table has landed already
    platform.table.append_hours(24)  # 2024-01-03
    second = sensor(dg.build_sensor_context(instance=platform.instance, cursor=first.cursor))
    assert len(second.run_requests) == 1
    request = second.run_requests[0]
    requested = (request.tags[ASSET_PARTITION_RANGE_START_TAG], request.tags[ASSET_PARTITION_RANGE_END_TAG])
    assert requested == ("2024-01-03", "2024-01-03")
    assert not sensor(dg.build_sensor_context(instance=platform.instance, cursor=second.cursor)).run_requests

    assert platform.materialize(requested[0]).success
    assert platform.landed() == platform.table.count() == 75
    platform.assert_accounts_reconcile()


def test_the_sensor_skips_while_the_database_is_down(
    platform: TripsPlatform, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TRIPS_DSN", "postgresql://postgres@127.0.0.1:1/trips")
    result = sensor_of(platform.built)(dg.build_sensor_context(instance=platform.instance, cursor=None))
    assert not result.run_requests and result.cursor is None
    assert "cannot connect to postgres at 127.0.0.1:1/trips" in str(result.skip_reason)
    failed = platform.materialize("2024-01-01", raise_on_error=False)
    assert not failed.success
    message = failed.get_step_failure_events()[0].step_failure_data.error.message  # type: ignore[union-attr]
    assert "trips: key 'source.dsn': cannot connect to postgres at 127.0.0.1:1/trips" in message
