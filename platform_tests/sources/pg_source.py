"""A `trips` table in a fresh database of the session's Postgres cluster, and a spec over it."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from mlplatform.specs.loader import validate_spec
from mlplatform.specs.model import DatasetSpec
from platform_tests.postgres import PostgresCluster
from platform_tests.sources.test_database_spec import postgres_spec_dict

DSN_ENV = "TRIPS_DSN"
START = datetime(2024, 1, 1)


@dataclass
class TripsTable:
    """`trips (ts timestamp, zone text, rides float8)`: hourly rows, counted by the tests in Postgres."""

    cluster: PostgresCluster
    url: str
    next_hour: int = 0

    def sql(self, statement: str) -> list[tuple]:
        return self.cluster.execute(self.url, statement)

    def count(self, where: str = "true") -> int:
        """The rows as Postgres counts them: what nothing-lost tests compare with."""
        return int(self.sql(f"SELECT count(*) FROM trips WHERE {where}")[0][0])

    def append_hours(self, hours: int, rides: float | None = 5.0) -> None:
        """`hours` more hourly rows after the last one."""
        first = START + timedelta(hours=self.next_hour)
        value = "NULL" if rides is None else repr(float(rides))
        self.sql(
            f"INSERT INTO trips SELECT '{first:%Y-%m-%d %H:%M}'::timestamp + make_interval(hours => g), "
            f"CASE WHEN g % 2 = 0 THEN 'south' ELSE 'north' END, {value} + g FROM generate_series(0, {hours - 1}) g"
        )
        self.next_hour += hours


def make_trips_table(
    cluster: PostgresCluster, monkeypatch: pytest.MonkeyPatch, hours: int = 48
) -> TripsTable:
    url = cluster.create_database("trips")
    cluster.execute(url, "CREATE TABLE trips (ts timestamp, zone text, rides float8)")
    monkeypatch.setenv(DSN_ENV, url)
    table = TripsTable(cluster, url)
    table.append_hours(hours)
    return table


def trips_spec(spec_dir: Path, **source: Any) -> DatasetSpec:
    """The trips spec (incremental by ts, daily partitions 2024-01-01 .. 2024-01-11) with `source` keys."""
    raw = postgres_spec_dict(**{"incremental_column": "ts", **source})
    if "query" in source:
        del raw["source"]["table"]
    raw["partitions"] = {"start": "2024-01-01", "end": "2024-01-11"}
    raw["features"] = {"calendar": ["hour"]}
    spec_dir.mkdir(parents=True, exist_ok=True)
    return validate_spec(raw, spec_dir / "trips.yaml")
