"""What every stage's Dagster wiring shares: partitions, keys, time windows, metadata."""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import date, datetime, timedelta

import dagster as dg
import duckdb
import pandas as pd

from mlplatform.contracts import Stage
from mlplatform.core.grain import GRAIN_DAYS, grain_floor, next_grain
from mlplatform.core.placement import PLAUSIBLE_START, PartitionBounds, plausible_end
from mlplatform.core.source import SourceProbe
from mlplatform.core.sql import column_types
from mlplatform.core.training_data import (
    MissingTableError,
    model_feature_names,
    read_training_set,
    table_data_version,
)
from mlplatform.core.warehouse import table_exists, table_name, verify_tables
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


def _table_schema(conn: duckdb.DuckDBPyConnection, table: str) -> dg.TableSchema:
    return dg.TableSchema(
        columns=[
            dg.TableColumn(name, DUCKDB_TO_TABLE_TYPE.get(t, t.lower()))
            for name, t in column_types(conn, table).items()
        ]
    )


def table_metadata(
    conn: duckdb.DuckDBPyConnection,
    schema: str,
    table: str,
    rows_written: int,
    preview_where: str | None = None,
) -> dict[str, dg.MetadataValue | int | str]:
    """Row counts, column schema and a preview: what a user looks for on a materialization."""
    if not table_exists(conn, schema, table):
        return {"dagster/row_count": rows_written}
    name = table_name(schema, table)
    total = conn.execute(f"SELECT count(*) FROM {name}").fetchall()[0][0]
    where = f" WHERE {preview_where}" if preview_where else ""
    preview = conn.sql(f"SELECT * FROM {name}{where} LIMIT 5").df()
    return {
        "dagster/row_count": rows_written,
        "rows_in_table": int(total),
        "dagster/column_schema": _table_schema(conn, name),
        "dagster/table_name": f"{schema}.{table}",
        "preview": dg.MetadataValue.md(_markdown(preview)),
    }


def _markdown(frame: pd.DataFrame) -> str:
    if frame.empty:
        return "_no rows_"
    shown = frame.loc[:, [c for c in frame.columns if not str(c).startswith("_")] or list(frame.columns)]
    return shown.to_markdown(index=False, floatfmt=".4g")
