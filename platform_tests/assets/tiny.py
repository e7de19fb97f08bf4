"""A tiny dataset for unit tests of each stage's asset, run through Dagster's public testing API.

Three months of hourly rows (2,184 records, monthly partitions) in one CSV the fixture writes, with a
few bad records planted in January and February, and a shift of `x` in March (so March drifts). The
tests count what the source holds from the records the fixture wrote, never from the warehouse.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import dagster as dg
import duckdb
import numpy as np

from mlplatform.contracts import Stage
from mlplatform.factory import DatasetDefinitions, build_dataset
from mlplatform.resources.dask import DaskResource
from mlplatform.resources.mlflow import MlflowPlotsResource, MlflowResource
from mlplatform.resources.warehouse import WarehouseResource
from mlplatform.settings import Settings, load_settings
from mlplatform.specs.model import DatasetSpec

NAME = "tiny"
FIRST_HOUR = datetime(2024, 1, 1)
HOURS = 91 * 24  # 2024-01-01 00:00 .. 2024-03-31 23:00
MONTHS = ("2024-01-01", "2024-02-01", "2024-03-01")
DRIFT_START = datetime(2024, 3, 1)  # from here `x` is shifted by +3 standard deviations
# Planted bad records: id -> (the field made bad, its text); each one fails one column's rule.
BAD_RECORDS = {
    5: ("value", "150"),  # above max 100
    30: ("kind", "c"),  # not an allowed category
    800: ("x", "not-a-number"),  # does not parse as a float (February)
}


@dataclass(frozen=True)
class TinySource:
    """The CSV the fixture wrote and the records in it, as written (text)."""

    path: Path
    records: list[dict[str, str]]

    def records_in(self, partition: str) -> list[dict[str, str]]:
        """Records whose time text falls in the month starting `partition` (YYYY-MM-01)."""
        return [r for r in self.records if r["stamp"].startswith(partition[:7])]

    def good_records_in(self, partition: str) -> list[dict[str, str]]:
        return [r for r in self.records_in(partition) if int(r["id"]) not in BAD_RECORDS]

    def bad_ids_in(self, partition: str) -> set[int]:
        return {int(r["id"]) for r in self.records_in(partition)} & set(BAD_RECORDS)


def tiny_spec_dict(source: Path) -> dict[str, Any]:
    return {
        "name": NAME,
        "source": {"path": str(source)},
        "derived": {"ts": "strptime(stamp, '%Y-%m-%d %H:%M')"},
        "time_column": "ts",
        "partition_grain": "month",
        "columns": {
            "id": {"type": "int", "nullable": False, "unique": True},
            "stamp": {"type": "string", "nullable": False},
            "kind": {"type": "category", "nullable": False, "allowed": ["a", "b"]},
            "x": {"type": "float", "nullable": False},
            "value": {"type": "float", "nullable": False, "min": 0, "max": 100},
        },
        "drop": ["stamp", "id"],
        "target": {"column": "value", "task": "regression"},
        "features": {
            "calendar": ["hour", "day_of_week"],
            "rolling": [{"column": "x", "window": "1d", "agg": "mean"}],
        },
        # Bad records are planted on purpose; the quality checks are not what these tests look at.
        "quality": {"max_quarantine_share": 1.0},
        "model": {
            "params": {
                "num_leaves": 7,
                "min_data_in_leaf": 10,
                "num_threads": 1,
            },  # tiny: no thread contention
            "num_boost_round": 60,
            "early_stopping_rounds": 10,
        },
    }


def write_tiny_source(path: Path, seed: int = 3) -> TinySource:
    """Hourly records: `value` depends on kind, x and the hour, plus a little noise."""
    rng = np.random.default_rng(seed)
    records = []
    for i in range(HOURS):
        moment = FIRST_HOUR + timedelta(hours=i)
        shift = 3.0 if moment >= DRIFT_START else 0.0
        kind = "b" if rng.random() < 0.5 else "a"
        x = rng.normal() + shift
        value = 20 + 10 * (kind == "b") + 4 * x + 2 * math.sin(moment.hour / 24 * 2 * math.pi)
        value += rng.normal(scale=0.5)
        record = {
            "id": str(i + 1),
            "stamp": f"{moment:%Y-%m-%d %H:%M}",
            "kind": kind,
            "x": f"{x:.4f}",
            "value": f"{min(max(value, 0.5), 99.0):.4f}",
        }
        if i + 1 in BAD_RECORDS:
            column, text = BAD_RECORDS[i + 1]
            record[column] = text
        records.append(record)
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(records[0]))
        writer.writeheader()
        writer.writerows(records)
    return TinySource(path, records)


@dataclass
class TinyDataset:
    """One tiny dataset's definitions, source and state (warehouse file, MLflow store, instance)."""

    spec: DatasetSpec
    source: TinySource
    built: DatasetDefinitions
    settings: Settings
    warehouse_path: Path
    mlflow_root: Path
    instance: dg.DagsterInstance = field(default_factory=dg.DagsterInstance.ephemeral)

    @property
    def assets(self) -> list[dg.AssetsDefinition]:
        """Every asset of the dataset, the monitoring stages included."""
        return self.built.assets

    def key(self, stage: Stage) -> dg.AssetKey:
        return dg.AssetKey([self.spec.name, str(stage)])  # plain strings: Dagster serializes the keys

    def asset(self, stage: Stage) -> dg.AssetsDefinition:
        return next(a for a in self.assets if self.key(stage) in a.keys)

    def resources(self) -> dict[str, Any]:
        store = {
            "tracking_uri": f"sqlite:///{self.mlflow_root / 'mlflow.db'}",
            "artifact_location": (self.mlflow_root / "artifacts").as_uri(),
        }
        return {
            "warehouse": WarehouseResource(database=str(self.warehouse_path)),
            "mlflow": MlflowResource(**store),
            "mlflow_plots": MlflowPlotsResource(**store),
            "dask": DaskResource(),  # the local engine: inert
        }

    def materialize(
        self, stages: Iterable[Stage], partition_key: str | None = None, raise_on_error: bool = True
    ) -> dg.ExecuteInProcessResult:
        return dg.materialize(
            self.assets,
            selection=[self.key(stage) for stage in stages],
            partition_key=partition_key,
            resources=self.resources(),
            instance=self.instance,
            raise_on_error=raise_on_error,
        )

    def query(self, sql: str, parameters: list[Any] | None = None) -> list[tuple]:
        with duckdb.connect(str(self.warehouse_path), read_only=True) as conn:
            return conn.execute(sql, parameters or []).fetchall()


def metadata_of(result: dg.ExecuteInProcessResult, key: dg.AssetKey) -> dict[str, Any]:
    """The plain metadata values of `key`'s (last) materialization in `result`."""
    events = [e for e in result.get_asset_materialization_events() if e.asset_key == key]
    assert events, f"{key.to_user_string()} was not materialized"
    metadata = events[-1].materialization.metadata
    return {name: value.value for name, value in metadata.items()}


def make_tiny_dataset(root: Path) -> TinyDataset:
    """Write the source under `root`, build its definitions; its state (warehouse, MLflow) goes there too."""
    root.mkdir(parents=True, exist_ok=True)
    source = write_tiny_source(root / "tiny.csv")
    spec = DatasetSpec.model_validate(tiny_spec_dict(source.path))
    settings = load_settings({"MLPLATFORM_HOME": str(root / "home")})
    built = build_dataset(spec, settings=settings)
    return TinyDataset(spec, source, built, settings, root / "warehouse.duckdb", root / "mlflow")
