"""Features on the Dask engine: the local engine's feature SQL, run per shard on the cluster's workers.

With an `entity_key`, task k runs entity shard k of `core.features.ENTITY_SHARDS` (the entities whose
DuckDB `hash(entity) % ENTITY_SHARDS = k`), reading the clean partitions of the whole window and its
lookback: lags and rolling windows are per entity, and the local engine's query is the UNION ALL of
the same shards' queries, so every value, floating-point rolling sums included, is the local engine's
bit for bit (core.features says why the shards are fixed). Without an entity key the series is one
window: one task runs the local query on the window's rows (a split into time ranges would move
floating-point rolling sums in their last bits).

Each task runs `features_sql` in an in-memory DuckDB whose view `<dataset>.clean` reads the clean files,
and writes one file per output partition into the stage's staging; the driver commits the window once
every shard has succeeded (core.dask_work).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, time
from typing import TYPE_CHECKING

import duckdb

from mlplatform.contracts import Stage
from mlplatform.core.dask_work import (
    ShardTask,
    StagedWrite,
    ensure_lake_view,
    lake_connection,
    parquet_scan,
    run_and_commit,
    write_shard_file,
)
from mlplatform.core.features import (
    ENTITY_SHARDS,
    FeaturesWrite,
    feature_names,
    features_sql,
    write_features_window,
)
from mlplatform.core.grain import next_grain, partition_days
from mlplatform.core.lake import partition_files
from mlplatform.core.row_identity import refresh_actuals
from mlplatform.core.sql import column_types, quote_ident, quote_literal
from mlplatform.core.warehouse import require_table, table_name
from mlplatform.specs.model import DatasetSpec

if TYPE_CHECKING:
    import distributed

_SHARD_FEATURES = "shard_features"


@dataclass(frozen=True)
class FeatureShard:
    """What one task builds: the features of rows in [start, end) (of its entities when `entities`
    is set), read from `files`, written to the partitions `days`."""

    index: int
    entities: int | None  # N of `hash(entity) % N = index`; None: a range shard (all entities)
    start: datetime
    end: datetime
    days: tuple[date, ...]
    files: tuple[str, ...]  # the clean files covering [start - lookback, end)
    writes_empty: bool  # write a zero-row file for a day without rows (keeps every partition readable)

    @property
    def name(self) -> str:
        if self.entities is not None:
            return f"entity shard {self.index} of {self.entities}"
        return f"partitions {self.days[0]} .. {self.days[-1]}"


def _at(day: date) -> datetime:
    return datetime.combine(day, time())


def _clean_files(lake: str, spec: DatasetSpec, start: datetime, end: datetime) -> tuple[str, ...]:
    history = partition_days(spec.partition_grain, start - spec.lookback, end)
    return tuple(partition_files(lake, spec.name, Stage.CLEAN, history))


def plan_feature_shards(lake: str, spec: DatasetSpec, start: datetime, end: datetime) -> list[FeatureShard]:
    """The window's shards: the ENTITY_SHARDS entity shards, or one for a series without entities."""
    days = tuple(partition_days(spec.partition_grain, start, end))
    files = _clean_files(lake, spec, start, end)
    if spec.entity_key:
        return [FeatureShard(k, ENTITY_SHARDS, start, end, days, files, k == 0) for k in range(ENTITY_SHARDS)]
    return [FeatureShard(0, None, start, end, days, files, True)]


def _clean_view(conn: duckdb.DuckDBPyConnection, spec: DatasetSpec, shard: FeatureShard) -> str:
    """Create `<dataset>.clean` over the shard's files; returns its name (features_sql picks the shard)."""
    conn.execute(f"CREATE SCHEMA IF NOT EXISTS {quote_ident(spec.name)}")
    clean = table_name(spec.name, Stage.CLEAN)
    conn.execute(f"CREATE VIEW {clean} AS SELECT * FROM {parquet_scan(shard.files)}")
    return clean


def build_feature_shard(staging: str, spec: DatasetSpec, shard: FeatureShard, time_type: str) -> int:
    """A worker's task: the shard's features, one staged file per output partition; returns its rows."""
    if not shard.files:
        return 0  # no clean rows in reach: its partitions are emptied by the commit
    conn = lake_connection(shard.files[0])
    try:
        clean = _clean_view(conn, spec, shard)
        entity_shard = shard.index if shard.entities is not None else None
        sql = features_sql(spec, clean, shard.start, shard.end, time_type, entity_shard)
        conn.execute(f"CREATE TEMP TABLE {_SHARD_FEATURES} AS {sql}")
        t, written = quote_ident(spec.time_column), 0
        for day in shard.days:
            low, high = _at(day), _at(next_grain(day, spec.partition_grain))
            rows = conn.sql(
                f"SELECT * FROM {_SHARD_FEATURES} WHERE {t} >= {quote_literal(low.isoformat(sep=' '))}::TIMESTAMP "
                f"AND {t} < {quote_literal(high.isoformat(sep=' '))}::TIMESTAMP"
            ).to_arrow_table()
            if rows.num_rows or shard.writes_empty:
                write_shard_file(rows, staging, day, shard.index)
            written += rows.num_rows
        return written
    finally:
        conn.close()


def write_features_window_dask(
    conn: duckdb.DuckDBPyConnection,
    client: distributed.Client,
    spec: DatasetSpec,
    start: datetime,
    end: datetime,
    lake: str,
) -> FeaturesWrite:
    """`core.features.write_features_window` on the cluster, for a warehouse connection in lake mode
    (`lake`: its lake root, `core.warehouse.lake_of`).

    The shards' files replace the window's partitions of `<lake>/<dataset>/features`; then the view
    `<dataset>.features` reads them, and `refresh_actuals` runs through the warehouse connection as it
    does locally. A window with no clean files in reach has nothing to distribute: the local function
    writes it (the lake-mode `replace_window` empties its partitions)."""
    require_table(conn, spec.name, Stage.CLEAN)
    time_type = column_types(conn, table_name(spec.name, Stage.CLEAN))[spec.time_column]
    if not _clean_files(lake, spec, start, end):
        return write_features_window(conn, spec, start, end)
    planned = plan_feature_shards(lake, spec, start, end)
    tasks = [ShardTask(s.name, build_feature_shard, (spec, s, time_type)) for s in planned]
    days = tuple(partition_days(spec.partition_grain, start, end))
    rows = run_and_commit(client, StagedWrite(lake, spec.name, Stage.FEATURES, days), tasks)
    ensure_lake_view(conn, lake, spec.name, Stage.FEATURES)
    refreshed = refresh_actuals(conn, spec, start, end)
    return FeaturesWrite(sum(rows), feature_names(spec, time_type), refreshed)
