"""A Parquet glob whose files disagree on the time type (naive TIMESTAMP in one, TIMESTAMPTZ in
another): DuckDB unifies the column into TIMESTAMPTZ, turning the naive times into instants in its
session's TimeZone (the machine's). They must be read in the spec's `timezone`, on every machine."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from mlplatform.specs.model import DatasetSpec
from platform_tests.hostile.corpus import load


def _write(path: Path, times: list[datetime], time_type: pa.DataType, first_id: int) -> None:
    ids = list(range(first_id, first_id + len(times)))
    pq.write_table(
        pa.table(
            {
                "id": pa.array(ids, pa.int64()),
                "ts": pa.array(times, time_type),
                "value": pa.array([1.0] * len(times)),
            }
        ),
        path,
    )


def test_naive_parquet_times_beside_zoned_files_are_read_in_the_spec_timezone(tmp_path: Path) -> None:
    _write(
        tmp_path / "naive.parquet",
        [datetime(2024, 1, 2, 10), datetime(2024, 7, 2, 10)],
        pa.timestamp("us"),
        1,
    )
    _write(tmp_path / "zoned.parquet", [datetime(2024, 1, 2, 12)], pa.timestamp("us", tz="UTC"), 10)
    spec = DatasetSpec.model_validate(
        {
            "name": "toy",
            "source": {"path": str(tmp_path / "*.parquet")},
            "time_column": "ts",
            "timezone": "America/New_York",
            "columns": {
                "id": {"type": "int", "nullable": False, "unique": True},
                "ts": {"type": "timestamp", "nullable": False},
                "value": {"type": "float", "nullable": False},
            },
            "target": {"column": "value", "task": "regression"},
        }
    )
    outcome = load(spec, tmp_path / "w.duckdb")
    assert outcome.query("SELECT id, ts FROM toy.clean ORDER BY id") == [
        (1, datetime(2024, 1, 2, 15)),  # 10:00 in New York, winter: UTC-5
        (2, datetime(2024, 7, 2, 14)),  # summer: UTC-4
        (10, datetime(2024, 1, 2, 12)),  # an instant already
    ]
    assert outcome.query("SELECT count(*) FROM toy.quarantine") == [(0,)]
