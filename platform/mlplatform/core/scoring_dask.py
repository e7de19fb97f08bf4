"""Scoring on the Dask engine: each features partition of the window scored on a worker.

The champion is sent to the workers once (`client.scatter(..., broadcast=True)`); each task reads one
partition's features files with DuckDB, as the local path reads its window (`core.warehouse.read_frame`,
so the frame has the same dtypes, and columns a partition's files lack are typed NULLs as the warehouse
view gives them), scores it with the same `core.scoring.score_frame`, and stages the rows through DuckDB
(the local path inserts the frame through DuckDB too, so the predictions carry the same types). Not
`dask.dataframe.read_parquet` + `map_partitions`: its Arrow-backed dtypes (string[pyarrow], ...) differ
from the local frame's, and a model's categorical encoding must see what it saw in training.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import date, datetime
from typing import TYPE_CHECKING, Any

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
from mlplatform.core.grain import partition_days
from mlplatform.core.lake import partition_files
from mlplatform.core.scoring import inputs_hash_sql, score_frame
from mlplatform.core.sql import column_types, quote_ident
from mlplatform.core.training import TrainedModel
from mlplatform.core.warehouse import read_frame, table_name, window_predicate
from mlplatform.specs.model import DatasetSpec

if TYPE_CHECKING:
    import distributed

_SCORED_VIEW = "scored"


def _columns_sql(present: set[str], columns: Mapping[str, str]) -> str:
    """The features table's columns in its order; NULLs of its type where these files lack one."""
    return ", ".join(
        quote_ident(name) if name in present else f"CAST(NULL AS {sql_type}) AS {quote_ident(name)}"
        for name, sql_type in columns.items()
    )


def score_partition(
    staging: str,
    spec: DatasetSpec,
    model: TrainedModel,
    version: int,
    day: date,
    files: tuple[str, ...],
    columns: Mapping[str, str],
    window: str,
) -> int:
    """A worker's task: score one features partition into its staged predictions file; returns rows.

    `window`: the run's time window as SQL (a partition's rows lie in it when the run's window is
    whole partitions, as Dagster's are). A partition without rows writes nothing (the commit empties it)."""
    conn = lake_connection(files[0])
    try:
        scan = parquet_scan(files)
        present = set(column_types(conn, f"(SELECT * FROM {scan})"))
        rows = f"SELECT {_columns_sql(present, columns)} FROM {scan} WHERE {window}"
        frame = read_frame(conn, f"SELECT *, {inputs_hash_sql(model.feature_names)} FROM ({rows})")
        if frame.empty:
            return 0
        scored = score_frame(spec, model, frame, version)
        conn.register(_SCORED_VIEW, scored)
        write_shard_file(conn.sql(f"SELECT * FROM {_SCORED_VIEW}").to_arrow_table(), staging, day, 0)
        return len(scored)
    finally:
        conn.close()


def score_window_dask(
    conn: duckdb.DuckDBPyConnection,
    client: distributed.Client,
    spec: DatasetSpec,
    champion: tuple[int, TrainedModel],
    start: datetime,
    end: datetime,
    lake: str,
) -> int | None:
    """Score the window's features partitions on the cluster and replace its predictions partitions in
    `lake`; returns the rows written, or None when the window has no features files (nothing to
    distribute: the caller scores the empty window the local way, through the warehouse; likewise when
    the window scored no rows and the table has no files yet, since zero-row files typed from an empty
    frame would change the view's column types)."""
    version, model = champion
    days = partition_days(spec.partition_grain, start, end)
    files_of = {day: tuple(partition_files(lake, spec.name, Stage.FEATURES, [day])) for day in days}
    if not any(files_of.values()):
        return None
    columns = column_types(conn, table_name(spec.name, Stage.FEATURES))
    window = window_predicate(spec.time_column, start, end)
    shared: Any = client.scatter(model, broadcast=True)
    tasks = [
        ShardTask(f"partition {day}", score_partition, (spec, shared, version, day, files, columns, window))
        for day, files in files_of.items()
        if files
    ]
    rows = sum(run_and_commit(client, StagedWrite(lake, spec.name, Stage.PREDICTIONS, tuple(days)), tasks))
    if not partition_files(lake, spec.name, Stage.PREDICTIONS):
        return None  # no rows anywhere yet: the local way creates the (empty) table with its columns
    ensure_lake_view(conn, lake, spec.name, Stage.PREDICTIONS)
    return rows
