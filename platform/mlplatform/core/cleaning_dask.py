"""Cleaning on the Dask engine: one task per partition of the window, each validating its partition.

Each task runs the local engine's own steps (core.cleaning: rows numbered in source order, the typed
SQL, the SQL pre-screen, Pandera and the same reasons) in an in-memory DuckDB over its partition's raw
files, and writes its clean and quarantine rows as shard files into one staging; the driver commits both
tables' partitions only when every task has succeeded (core.dask_work), so a failed task commits nothing.

What one partition cannot see is a unique key shared with another partition. Before the tasks the
driver makes one SQL pass over the window's raw keys (the unique columns, typed as the typed SQL types
them) and gives each task:
  * `earlier`: for each key of the partition whose first occurrence in the window (source order) is in
    another partition, that first row's keys. The task puts these rows into its Pandera frame as context
    (`validate_partition(context_rows=...)`), so Pandera itself reports the later rows, with the reason,
    check and reason order it gives when it validates the whole window at once;
  * `spread`: the partition's rows whose key is in another partition too, validated even when the
    pre-screen (which sees one partition) would let them through, as the window's pre-screen would not;
  * `known`: the rows whose key is already clean outside the window, with the local engine's reason
    (core.cleaning.known_duplicates_sql).
"""

from __future__ import annotations

import posixpath
from collections import Counter
from dataclasses import dataclass
from datetime import date, datetime
from typing import TYPE_CHECKING

import duckdb
import pyarrow as pa
import pyarrow.compute as pc

from mlplatform.contracts import Stage
from mlplatform.core.cleaning import (
    CLEAN_ROWS_SQL,
    QUARANTINE_ROWS_SQL,
    SOURCE_ORDER,
    TYPED_WINDOW,
    CleanResult,
    drop_window_tables,
    known_duplicates_order,
    known_duplicates_sql,
    stage_window,
    validate_window,
)
from mlplatform.core.dask_work import (
    ShardTask,
    ensure_lake_view,
    lake_connection,
    parquet_scan,
    remove_folder,
    run_tasks,
    write_shard_file,
)
from mlplatform.core.grain import partition_days
from mlplatform.core.lake import commit_partitions, new_staging, partition_files
from mlplatform.core.lake_tables import LakeError, day_sql
from mlplatform.core.sql import column_types, fetch_row, quote_ident, quote_literal, typed_column
from mlplatform.core.validation import ROW_ID
from mlplatform.core.warehouse import (
    PARTITION_TIME,
    require_table,
    table_exists,
    table_name,
    window_predicate,
)
from mlplatform.specs.model import DatasetSpec

if TYPE_CHECKING:
    import distributed

_PART = "__mlplatform_part"  # the partition (its first day, ISO) a raw row is stored in
_DAY = "__mlplatform_day"  # the partition an output row goes to
_KEYS = "_cleaning_window_keys"
_SPREAD = "_cleaning_spread"
_EARLIER = "_cleaning_earlier"
_KNOWN = "_cleaning_known"
_COLUMN_SPREAD = "_cleaning_column_spread"
_LINEAGE = "_source_file VARCHAR, _source_row BIGINT"
# pandas holds times in datetime64[ns]: validation sets times outside it to NaT (a null key), so the key
# pass does too. DuckDB times are microseconds: these are the first ones outside, below and above.
_PANDAS_FIRST_TIME = "1677-09-21 00:12:43.145225"
_PANDAS_LAST_TIME = "2262-04-11 23:47:16.854775"


@dataclass(frozen=True)
class PartitionCleaning:
    """What one task validates: the raw rows of [start, end) in partition `day`, read from `files`."""

    day: date
    index: int  # its shard number in every partition it writes to
    files: tuple[str, ...]
    raw_types: tuple[tuple[str, str], ...]  # the warehouse's raw columns and types, in order
    start: datetime
    end: datetime
    grain: str
    window_days: tuple[str, ...]  # ISO first days of the window's partitions
    timezone: str  # the warehouse connection's DuckDB TimeZone, for casts that depend on it
    prescreen: bool
    earlier: pa.Table  # lineage + typed unique keys of first occurrences held by other partitions
    spread: pa.Table  # lineage of this partition's rows whose key another partition has too
    known: pa.Table  # lineage, column, reason: keys already clean outside the window


@dataclass(frozen=True)
class PartitionSplit:
    raw_rows: int
    clean_rows: int
    quarantined_rows: int
    reason_counts: dict[str, int]


def _unique_columns(spec: DatasetSpec) -> list[str]:
    return [name for name, column in spec.columns.items() if column.unique]


def _key_expression(spec: DatasetSpec, name: str) -> str:
    """The key as validation compares it: times pandas cannot hold are null there."""
    ident = quote_ident(name)
    if spec.columns[name].type not in ("date", "timestamp"):
        return ident
    outside = (
        f"{ident} < {quote_literal(_PANDAS_FIRST_TIME)}::TIMESTAMP "
        f"OR {ident} > {quote_literal(_PANDAS_LAST_TIME)}::TIMESTAMP"
    )
    return f"CASE WHEN {outside} THEN NULL ELSE {ident} END"


def _stage_window_keys(
    conn: duckdb.DuckDBPyConnection,
    spec: DatasetSpec,
    raw_types: dict[str, str],
    start: datetime,
    end: datetime,
) -> None:
    """_KEYS: per raw row of the window its number in source order, lineage, partition and typed keys."""
    keys = "".join(
        f", {typed_column(spec, name, raw_types.get(name, 'VARCHAR'))} AS {quote_ident(name)}"
        for name in _unique_columns(spec)
    )
    conn.execute(
        f"CREATE OR REPLACE TEMP TABLE {_KEYS} AS SELECT row_number() OVER (ORDER BY {SOURCE_ORDER}) AS "
        f"{ROW_ID}, _source_file, _source_row, {day_sql(PARTITION_TIME, spec.partition_grain)} AS {_PART}"
        f"{keys} FROM {table_name(spec.name, Stage.RAW)} WHERE {window_predicate(PARTITION_TIME, start, end)}"
    )


def _find_cross_partition_keys(conn: duckdb.DuckDBPyConnection, spec: DatasetSpec) -> None:
    """_SPREAD (rows whose key is in two partitions or more) and _EARLIER (per task, the first
    occurrences of its keys that other partitions hold), over every unique column."""
    conn.execute(f"CREATE OR REPLACE TEMP TABLE {_SPREAD} ({_PART} VARCHAR, {_LINEAGE})")
    conn.execute(f"CREATE OR REPLACE TEMP TABLE {_EARLIER} ({_PART} VARCHAR, {_LINEAGE})")
    for name in _unique_columns(spec):
        key = _key_expression(spec, name)
        conn.execute(
            f"CREATE OR REPLACE TEMP TABLE {_COLUMN_SPREAD} AS SELECT * FROM (SELECT {_PART}, _source_file, "
            f"_source_row, {key} AS k, row_number() OVER (PARTITION BY {key} ORDER BY {SOURCE_ORDER}) AS "
            f"occurrence, min({_PART}) OVER (PARTITION BY {key}) AS lo, max({_PART}) OVER (PARTITION BY {key}) "
            f"AS hi FROM {_KEYS}) WHERE lo <> hi"
        )
        conn.execute(f"INSERT INTO {_SPREAD} SELECT {_PART}, _source_file, _source_row FROM {_COLUMN_SPREAD}")
        # Null keys are one key, as for pandas' duplicated (Pandera's unique check).
        conn.execute(
            f"INSERT INTO {_EARLIER} SELECT p.{_PART}, f._source_file, f._source_row FROM {_COLUMN_SPREAD} p "
            f"JOIN {_COLUMN_SPREAD} f ON p.k IS NOT DISTINCT FROM f.k AND f.occurrence = 1 "
            f"WHERE p.{_PART} <> f.{_PART}"
        )
    conn.execute(f"DROP TABLE IF EXISTS {_COLUMN_SPREAD}")


def _find_known_duplicates(
    conn: duckdb.DuckDBPyConnection, spec: DatasetSpec, start: datetime, end: datetime
) -> None:
    """_KNOWN: rows of the window whose key is already clean outside it, with the local engine's reason."""
    sql = (
        known_duplicates_sql(spec, _KEYS, start, end) if table_exists(conn, spec.name, Stage.CLEAN) else None
    )
    found = (
        sql or f"SELECT NULL::BIGINT AS {ROW_ID}, NULL::VARCHAR AS column, NULL::VARCHAR AS reason LIMIT 0"
    )
    conn.execute(
        f"CREATE OR REPLACE TEMP TABLE {_KNOWN} AS SELECT k.{_PART}, k._source_file, k._source_row, "
        f'd."column", d.reason FROM ({found}) d JOIN {_KEYS} k USING ({ROW_ID})'
    )


def _slice(conn: duckdb.DuckDBPyConnection, sql: str, day: date) -> pa.Table:
    rows = conn.sql(f"SELECT * FROM ({sql}) WHERE {_PART} = $day", params={"day": day.isoformat()})
    return rows.to_arrow_table().drop_columns([_PART])


def plan_partitions(
    conn: duckdb.DuckDBPyConnection,
    spec: DatasetSpec,
    start: datetime,
    end: datetime,
    lake: str,
    prescreen: bool = True,
) -> list[PartitionCleaning]:
    """The window's tasks, one per partition, with what each needs of the other partitions' keys."""
    require_table(conn, spec.name, Stage.RAW)
    raw_types = column_types(conn, table_name(spec.name, Stage.RAW))
    days = partition_days(spec.partition_grain, start, end)
    _stage_window_keys(conn, spec, raw_types, start, end)
    _find_cross_partition_keys(conn, spec)
    _find_known_duplicates(conn, spec, start, end)
    earlier = (
        f"SELECT DISTINCT e.{_PART}, k.* EXCLUDE ({ROW_ID}, {_PART}) FROM {_EARLIER} e "
        f"JOIN {_KEYS} k ON e._source_file = k._source_file AND e._source_row = k._source_row"
    )
    timezone = str(fetch_row(conn, "SELECT current_setting('TimeZone')")[0])
    jobs = [
        PartitionCleaning(
            day=day,
            index=index,
            files=tuple(partition_files(lake, spec.name, Stage.RAW, [day])),
            raw_types=tuple(raw_types.items()),
            start=start,
            end=end,
            grain=spec.partition_grain,
            window_days=tuple(d.isoformat() for d in days),
            timezone=timezone,
            prescreen=prescreen,
            earlier=_slice(conn, earlier, day),
            spread=_slice(conn, f"SELECT DISTINCT * FROM {_SPREAD}", day),
            known=_slice(conn, f"SELECT * FROM {_KNOWN}", day),
        )
        for index, day in enumerate(days)
    ]
    for temp in (_KEYS, _SPREAD, _EARLIER, _KNOWN):
        conn.execute(f"DROP TABLE IF EXISTS {temp}")
    return jobs


def _raw_rows_sql(conn: duckdb.DuckDBPyConnection, job: PartitionCleaning) -> str:
    """The partition's raw rows of the window, with the warehouse's raw columns and types (as its view
    over all partitions reads them: a column this partition's files lack is null)."""
    scan = f"(SELECT * FROM {parquet_scan(job.files)})" if job.files else "(SELECT 1 AS _nothing WHERE false)"
    present = column_types(conn, scan) if job.files else {}
    columns = ", ".join(
        f"CAST({quote_ident(name) if name in present else 'NULL'} AS {sql_type}) AS {quote_ident(name)}"
        for name, sql_type in job.raw_types
    )
    return f"SELECT * FROM (SELECT {columns} FROM {scan}) WHERE {window_predicate(PARTITION_TIME, job.start, job.end)}"


def _write_by_day(
    conn: duckdb.DuckDBPyConnection, sql: str, column: str, staging: str, job: PartitionCleaning, table: str
) -> int:
    """Write `sql`'s rows as this task's shard of each partition of `column` they fall in, and of its own
    partition always (a zero-row file keeps an empty partition readable); returns the rows."""
    rows = conn.sql(f"SELECT *, {day_sql(column, job.grain)} AS {_DAY} FROM ({sql})").to_arrow_table()
    days = set(rows.column(_DAY).to_pylist())
    outside = sorted(str(day) for day in days - set(job.window_days))
    if outside:
        raise LakeError(
            f"{table}: rows for [{job.start}, {job.end}) have {column} in partitions {', '.join(outside[:5])} "
            "outside it; each write replaces only the window's partitions"
        )
    for day in sorted(days | {job.day.isoformat()}):
        part = rows.filter(pc.equal(rows.column(_DAY), day)).drop_columns([_DAY])
        write_shard_file(part, staging, date.fromisoformat(day), job.index)
    return rows.num_rows


def _validate(conn: duckdb.DuckDBPyConnection, spec: DatasetSpec, job: PartitionCleaning) -> dict[str, int]:
    """validate_window over the partition, with the other partitions' keys; returns the reason counts."""
    conn.register(_EARLIER, job.earlier)
    conn.register(_SPREAD, job.spread)
    conn.register(_KNOWN, job.known)
    order = known_duplicates_order(spec, f"t.{ROW_ID}", 'k."column"')
    known = conn.sql(
        f'SELECT t.{ROW_ID}, k."column", k.reason FROM {_KNOWN} k JOIN {TYPED_WINDOW} t '
        f"USING (_source_file, _source_row) ORDER BY {order}"
    ).df()
    spread = (
        f"EXISTS (SELECT 1 FROM {_SPREAD} s WHERE s._source_file = {TYPED_WINDOW}._source_file "
        f"AND s._source_row = {TYPED_WINDOW}._source_row)"
    )
    earlier = (
        f"SELECT -row_number() OVER (ORDER BY {SOURCE_ORDER}) AS {ROW_ID}, *, []::VARCHAR[] AS _parse_errors "
        f"FROM {_EARLIER}"
    )
    outcome = validate_window(
        conn,
        spec,
        job.prescreen,
        known if len(known) else None,
        also_suspect=spread if job.spread.num_rows else None,
        earlier_rows=earlier if job.earlier.num_rows else None,
    )
    return outcome.reason_counts


def clean_partition(staging: str, spec: DatasetSpec, job: PartitionCleaning) -> PartitionSplit:
    """A worker's task: validate one partition; its clean and quarantine rows go to the staging's
    `clean` and `quarantine` folders (each a staging of its table)."""
    conn = lake_connection(staging)
    try:
        conn.execute(f"SET TimeZone = {quote_literal(job.timezone)}")
        raw_rows = stage_window(conn, spec, _raw_rows_sql(conn, job), dict(job.raw_types))
        reasons = _validate(conn, spec, job)
        clean_table, quarantine_table = f"{spec.name}.{Stage.CLEAN}", f"{spec.name}.{Stage.QUARANTINE}"
        clean = _write_by_day(
            conn, CLEAN_ROWS_SQL, spec.time_column, posixpath.join(staging, Stage.CLEAN), job, clean_table
        )
        quarantined = _write_by_day(
            conn,
            QUARANTINE_ROWS_SQL,
            PARTITION_TIME,
            posixpath.join(staging, Stage.QUARANTINE),
            job,
            quarantine_table,
        )
        drop_window_tables(conn)
    finally:
        conn.close()
    return PartitionSplit(raw_rows, clean, quarantined, reasons)


def partition_tasks(spec: DatasetSpec, jobs: list[PartitionCleaning]) -> list[ShardTask]:
    return [ShardTask(f"partition {job.day}", clean_partition, (spec, job)) for job in jobs]


def commit_partition_splits(
    conn: duckdb.DuckDBPyConnection,
    spec: DatasetSpec,
    lake: str,
    staging: str,
    days: list[date],
    splits: list[PartitionSplit],
) -> CleanResult:
    """Commit what every task staged as the window's clean and quarantine partitions, point the
    warehouse's views at them and add up the tasks' splits."""
    for stage in (Stage.CLEAN, Stage.QUARANTINE):
        commit_partitions(lake, spec.name, stage, posixpath.join(staging, stage), days)
        ensure_lake_view(conn, lake, spec.name, stage)
    reasons: Counter[str] = Counter()
    for split in splits:
        reasons.update(split.reason_counts)
    return CleanResult(
        raw_rows=sum(s.raw_rows for s in splits),
        clean_rows=sum(s.clean_rows for s in splits),
        quarantined_rows=sum(s.quarantined_rows for s in splits),
        reason_counts=dict(reasons.most_common()),
    )


def run_partition_tasks(
    conn: duckdb.DuckDBPyConnection,
    client: distributed.Client,
    spec: DatasetSpec,
    lake: str,
    tasks: list[ShardTask],
    days: list[date],
) -> CleanResult:
    """Run the tasks on the cluster; only when all succeed, commit (`commit_partition_splits`). On a
    failure nothing is committed (ShardFailedError) and the staging is removed."""
    staging = new_staging(lake)
    what = f"clean and quarantine of {spec.name} (nothing committed, the previous partitions stay)"
    try:
        splits: list[PartitionSplit] = run_tasks(client, what, tasks, staging)
        return commit_partition_splits(conn, spec, lake, staging, days, splits)
    finally:
        remove_folder(staging)


def clean_window_dask(
    conn: duckdb.DuckDBPyConnection,
    client: distributed.Client,
    spec: DatasetSpec,
    start: datetime,
    end: datetime,
    lake: str,
    prescreen: bool = True,
) -> CleanResult:
    """`core.cleaning.clean_window` on the cluster, one task per partition, for a warehouse connection in
    lake mode (`lake`: its lake root, `core.warehouse.lake_of`); the same rows, values and reasons."""
    jobs = plan_partitions(conn, spec, start, end, lake, prescreen)
    return run_partition_tasks(
        conn, client, spec, lake, partition_tasks(spec, jobs), [job.day for job in jobs]
    )
