"""What every stage's Dagster wiring shares: partitions, keys, time windows, metadata."""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Any

import dagster as dg
import duckdb
import pandas as pd

from mlplatform.contracts import Stage
from mlplatform.core.column_docs import ColumnDoc, column_docs
from mlplatform.core.grain import GRAIN_DAYS, grain_floor, next_grain
from mlplatform.core.partition_counts import preview_per_partition, rows_per_partition
from mlplatform.core.placement import PLAUSIBLE_START, PartitionBounds, plausible_end
from mlplatform.core.source import SourceProbe
from mlplatform.core.sql import column_types
from mlplatform.core.training_data import (
    MissingTableError,
    model_feature_names,
    read_training_set,
    table_data_version,
)
from mlplatform.core.warehouse import table_exists, table_name, verify_tables, window_column
from mlplatform.resources.warehouse import WarehouseResource
from mlplatform.specs.model import DatasetSpec

DUCKDB_TO_TABLE_TYPE = {"BIGINT": "int", "INTEGER": "int", "DOUBLE": "float", "VARCHAR": "string"}


def spec_code_version(spec: DatasetSpec, *sections: str) -> str:
    """A short hash of the spec sections a stage depends on: the UI marks assets stale when it changes."""
    payload = spec.model_dump(mode="json", include=set(sections) if sections else None)
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:12]


def partitions_def(spec: DatasetSpec, probe: SourceProbe) -> dg.TimeWindowPartitionsDefinition:
    """Partitions from the first timestamp in the data (or partitions.start) to just past the last.

    With `partitions.end: open` the partitions run up to today, for sources that keep receiving files.
    Only plausible times (1900-01-01 .. tomorrow, see mlplatform.core.placement) bound the
    partitions: the probe ignores the others, and this clamps again so a year 1 or 9999 can never
    build thousands of partitions or overflow a date.
    """
    time_min, time_max = (_plausible(t) for t in (probe.time_min, probe.time_max))
    start = spec.partitions.start or grain_floor(time_min or PLAUSIBLE_START, spec.partition_grain)
    end: date | None
    if spec.partitions.end == "open":
        end = None
    elif spec.partitions.end is not None:
        end = spec.partitions.end
    elif time_max is not None:
        end = next_grain(grain_floor(time_max, spec.partition_grain), spec.partition_grain)
    else:
        end = None
    cls = {
        "day": dg.DailyPartitionsDefinition,
        "week": dg.WeeklyPartitionsDefinition,
        "month": dg.MonthlyPartitionsDefinition,
    }[spec.partition_grain]
    return cls(start_date=start.isoformat(), end_date=end.isoformat() if end else None)


def _plausible(moment: datetime | None) -> datetime | None:
    return moment if moment is not None and PLAUSIBLE_START <= moment < plausible_end() else None


def partition_bounds(partitions: dg.PartitionsDefinition) -> PartitionBounds | None:
    """The partitions that exist now (naive UTC), where rows outside them are placed with a reason."""
    if not isinstance(partitions, dg.TimeWindowPartitionsDefinition):
        return None
    first, last = partitions.get_first_partition_window(), partitions.get_last_partition_window()
    if first is None or last is None:
        return None
    return PartitionBounds(
        first_start=first.start.replace(tzinfo=None),
        last_start=last.start.replace(tzinfo=None),
        end=last.end.replace(tzinfo=None),
    )


@contextmanager
def missing_table_fails_the_step() -> Iterator[None]:
    """A stage input that is not in the warehouse fails the step with core's message (which says
    what to materialize first)."""
    try:
        yield
    except MissingTableError as error:
        raise dg.Failure(str(error)) from error


@dataclass(frozen=True)
class TrainingSetRead:
    frame: pd.DataFrame  # in a total order: the same rows make the same model
    features: list[str]  # the model inputs among its columns
    data_version: str
    verified: int  # warehouse tables verified first (0: not asked to)


def read_training_step_input(
    spec: DatasetSpec, warehouse: WarehouseResource, verify: bool
) -> TrainingSetRead:
    """What the model and evaluation steps read: the training set, its features and data version;
    with `verify`, every table of the dataset is checked for damage first."""
    with warehouse.get_connection(spec.name) as conn:
        verified = len(verify_tables(conn, spec.name)) if verify else 0
        with missing_table_fails_the_step():
            frame = read_training_set(conn, spec)
        features = model_feature_names(conn, spec)
        return TrainingSetRead(
            frame, features, table_data_version(conn, spec.name, Stage.TRAINING_SET), verified
        )


def lookback_partitions(spec: DatasetSpec) -> int:
    """How many earlier partitions a partition's features read."""
    return math.ceil(spec.lookback / timedelta(days=GRAIN_DAYS[spec.partition_grain]))


def time_window(context: dg.AssetExecutionContext) -> tuple[datetime, datetime]:
    """The run's window (one partition or a whole range), as naive UTC datetimes like the tables.

    Also says in the run log (and the terminal of `mlplatform run`) which partitions the step
    covers: a range runs in one step, so this is the progress a user can follow.
    """
    window = context.partition_time_window
    keys = context.partition_keys
    context.log.info(f"{context.op_def.name}: {len(keys)} partition(s), {keys[0]} .. {keys[-1]}")
    return window.start.replace(tzinfo=None), window.end.replace(tzinfo=None)


Metadata = dict[str, Any]  # metadata values: plain ints, floats, strs, bools or dg.MetadataValues
PartitionWindows = dict[str, tuple[datetime, datetime]]  # partition key -> [start, end), naive UTC


def partition_windows(partitions: dg.PartitionsDefinition, keys: Sequence[str]) -> PartitionWindows:
    """Each partition's time window, to count what each partition of a ranged run holds."""
    assert isinstance(partitions, dg.TimeWindowPartitionsDefinition)
    windows = {}
    for key in keys:
        window = partitions.time_window_for_partition_key(key)
        windows[key] = (window.start.replace(tzinfo=None), window.end.replace(tzinfo=None))
    return windows


def add_partition_metadata(
    context: dg.AssetExecutionContext,
    key: dg.AssetKey,
    per_partition: Mapping[str, Metadata],
    run_summary: Metadata | None = None,
) -> None:
    """Each partition's own metadata on its own event; the run's summary (keys named as the run's) on
    the newest partition's event only, which is the asset's latest."""
    newest = context.partition_keys[-1]
    for partition, metadata in per_partition.items():
        extra = run_summary if run_summary and partition == newest else {}
        context.add_asset_metadata({**metadata, **extra}, asset_key=key, partition_key=partition)


def run_summary(keys: Sequence[str], **counts: Any) -> Metadata:
    """Run-level metadata: `run_partitions`, `run_first_partition`, `run_last_partition`, `run_<name>`."""
    first_last = {"run_first_partition": keys[0], "run_last_partition": keys[-1]}
    return {"run_partitions": len(keys), **first_last, **{f"run_{k}": v for k, v in counts.items()}}


def _table_schema(
    conn: duckdb.DuckDBPyConnection, table: str, docs: Mapping[str, ColumnDoc]
) -> dg.TableSchema:
    columns = []
    for name, duckdb_type in column_types(conn, table).items():
        doc = docs.get(name)
        constraints = (
            dg.TableColumnConstraints(nullable=doc.nullable, unique=doc.unique, other=doc.rules)
            if doc and doc.spec_type
            else None
        )
        description = doc.description if doc and doc.description else None
        table_type = DUCKDB_TO_TABLE_TYPE.get(duckdb_type, duckdb_type.lower())
        columns.append(dg.TableColumn(name, table_type, description=description, constraints=constraints))
    return dg.TableSchema(columns=columns)


@dataclass(frozen=True)
class TableMetadata:
    """A stage table's metadata after a run wrote its partitions."""

    table: Metadata  # name, column schema, rows in the whole table: true on every partition's event
    partitions: dict[str, Metadata]  # each partition's row count and preview
    run: Metadata  # the run's summary (`run_*` keys)

    def rows(self, partition: str) -> int:
        return int(self.partitions[partition]["dagster/row_count"])


def partitioned_table_metadata(
    conn: duckdb.DuckDBPyConnection, spec: DatasetSpec, stage: Stage, windows: PartitionWindows
) -> TableMetadata:
    """Row counts, column schema and a preview: what a user looks for on a partition's materialization.

    Counted per partition in one query each over the run's rows (see mlplatform.core.partition_counts)."""
    qualified = f"{spec.name}.{stage}"
    if not table_exists(conn, spec.name, stage):
        empty = {key: {"dagster/row_count": 0} for key in windows}
        return TableMetadata({"dagster/table_name": qualified}, empty, run_summary(list(windows), rows=0))
    name = table_name(spec.name, stage)
    column = window_column(stage, spec.time_column)
    counts = rows_per_partition(conn, name, column, windows)
    previews = preview_per_partition(conn, name, column, windows)
    total = conn.execute(f"SELECT count(*) FROM {name}").fetchall()[0][0]
    table = {
        "rows_in_table": int(total),
        "dagster/column_schema": _table_schema(conn, name, column_docs(spec, stage)),
        "dagster/table_name": qualified,
    }
    partitions = {
        key: {"dagster/row_count": counts[key], "preview": dg.MetadataValue.md(_markdown(previews[key]))}
        for key in windows
    }
    return TableMetadata(table, partitions, run_summary(list(windows), rows=sum(counts.values())))


def table_metadata(
    conn: duckdb.DuckDBPyConnection,
    schema: str,
    table: str,
    rows_written: int,
    docs: Mapping[str, ColumnDoc] | None = None,
) -> Metadata:
    """Row counts, column schema (with `docs`, see mlplatform.core.column_docs) and a preview of an
    unpartitioned table."""
    if not table_exists(conn, schema, table):
        return {"dagster/row_count": rows_written}
    name = table_name(schema, table)
    total = conn.execute(f"SELECT count(*) FROM {name}").fetchall()[0][0]
    return {
        "dagster/row_count": rows_written,
        "rows_in_table": int(total),
        "dagster/column_schema": _table_schema(conn, name, docs or {}),
        "dagster/table_name": f"{schema}.{table}",
        "preview": dg.MetadataValue.md(_markdown(conn.sql(f"SELECT * FROM {name} LIMIT 5").df())),
    }


def _markdown(frame: pd.DataFrame) -> str:
    if frame.empty:
        return "_no rows_"
    shown = frame.loc[:, [c for c in frame.columns if not str(c).startswith("_")] or list(frame.columns)]
    return shown.to_markdown(index=False, floatfmt=".4g")
