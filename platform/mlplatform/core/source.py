"""Reading a spec's source files with DuckDB, and loading them into the `raw` table.

Pure logic over a DuckDB connection: no Dagster, no knowledge of where the warehouse lives.

CSV is read as text (all_varchar) so that a bad number never aborts a load: typing happens in the
cleaning stage, where a value that does not parse becomes a quarantine reason. Lines whose shape is
wrong (too few or too many fields) are caught by DuckDB's reject tables and kept too, with the error.
"""

from __future__ import annotations

import csv
import glob
import io
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import duckdb
import pandas as pd

from mlplatform.core.sql import column_types, fetch_row, quote_ident, quote_literal, typed_expression
from mlplatform.specs.model import DatasetSpec

LINEAGE_COLUMNS = ("_source_file", "_source_row", "_loaded_at", "_parse_error", "_partition_ts")


class SourceError(ValueError):
    """The source files cannot be read as the spec says."""


@dataclass(frozen=True)
class SourceProbe:
    files: tuple[str, ...]
    columns: tuple[str, ...]
    time_min: datetime | None
    time_max: datetime | None


def source_files(spec: DatasetSpec) -> list[str]:
    pattern = spec.source_pattern
    return sorted(glob.glob(pattern)) if spec.source.is_glob else [pattern] if Path(pattern).exists() else []


def _csv_dialect(spec: DatasetSpec) -> str:
    return f"header=true, delim={quote_literal(spec.source.delimiter)}, quote='\"', escape='\"'"


def _reader_sql(spec: DatasetSpec, files: list[str], rejects: bool) -> str:
    file_list = "[" + ", ".join(quote_literal(f) for f in files) + "]"
    if spec.source_format == "parquet":
        return (
            f"SELECT * EXCLUDE (file_row_number), file_row_number + 1 AS _source_row "
            f"FROM read_parquet({file_list}, filename='_source_file', file_row_number=true, union_by_name=true)"
        )
    options = f"{_csv_dialect(spec)}, all_varchar=true, filename='_source_file'"
    # DuckDB keeps rejected lines only for scans with one schema; multi-file CSVs are read one by one.
    # Without rejects (probing the schema and time range) malformed lines are skipped.
    options += (
        ", store_rejects=true, rejects_table='_rejects', rejects_scan='_reject_scans'"
        if rejects
        else ", union_by_name=true, ignore_errors=true"
    )
    return f"SELECT * FROM read_csv({file_list}, {options})"


_SNIFFED_KEPT = ("BIGINT", "INTEGER", "SMALLINT", "TINYINT", "HUGEINT", "DOUBLE", "FLOAT", "BOOLEAN")


def sniff_types(conn: duckdb.DuckDBPyConnection, spec: DatasetSpec, files: list[str]) -> dict[str, str]:
    """Types DuckDB guesses for CSV columns the spec does not declare, so `derived` can use them.

    Only numbers and booleans are taken: a guessed date format (is 01-02 January or February?) is
    left as text for the spec to parse explicitly.
    """
    if spec.source_format != "csv" or not files:
        return {}
    guessed = column_types(
        conn, f"SELECT * FROM read_csv({quote_literal(files[0])}, {_csv_dialect(spec)}, ignore_errors=true)"
    )
    return {
        name: sql_type
        for name, sql_type in guessed.items()
        if name not in spec.columns and sql_type.upper() in _SNIFFED_KEPT
    }


def _typed_view_sql(spec: DatasetSpec, relation: str, types: dict[str, str], sniffed: dict[str, str]) -> str:
    """Source columns cast to their spec types (NULL where they do not parse), then `derived`."""
    casts = [
        f"{typed_expression(quote_ident(name), col.type, types.get(name, 'VARCHAR'))} AS {quote_ident(name)}"
        for name, col in spec.columns.items()
        if name not in spec.derived
    ]
    casts += [
        f"TRY_CAST({quote_ident(name)} AS {sql_type}) AS {quote_ident(name)}"
        for name, sql_type in sniffed.items()
        if types.get(name) == "VARCHAR"
    ]
    source_casts = ", ".join(casts)
    inner = (
        f"SELECT * REPLACE ({source_casts}) FROM {relation}" if source_casts else f"SELECT * FROM {relation}"
    )
    derived = "".join(f", TRY({expr}) AS {quote_ident(name)}" for name, expr in spec.derived.items())
    return f"SELECT *{derived} FROM ({inner}) AS _typed"


def _derived_and_time_sql(
    spec: DatasetSpec, relation: str, types: dict[str, str], sniffed: dict[str, str]
) -> str:
    """Only the derived columns and the row time, in the relation's row order."""
    names = ", ".join([*(quote_ident(n) for n in spec.derived), f"{_time_expression(spec)} AS _row_ts"])
    return f"SELECT {names} FROM ({_typed_view_sql(spec, relation, types, sniffed)})"


def _time_expression(spec: DatasetSpec) -> str:
    return f"TRY_CAST({quote_ident(spec.time_column)} AS TIMESTAMP)"


def probe_source(conn: duckdb.DuckDBPyConnection, spec: DatasetSpec) -> SourceProbe:
    """Column names and time range of the source; raises SourceError naming the key at fault."""
    files = source_files(spec)
    if not files:
        return SourceProbe(files=(), columns=(), time_min=None, time_max=None)
    try:
        columns = [
            row[0] for row in conn.sql(f"DESCRIBE {_reader_sql(spec, files, rejects=False)}").fetchall()
        ]
    except duckdb.Error as exc:
        raise SourceError(f"source.path: cannot read {spec.source_pattern}: {exc}") from exc
    missing = [c for c in spec.source_columns if c not in columns]
    if missing:
        raise SourceError(
            f"columns: {', '.join(repr(m) for m in missing)} not found in the source files "
            f"(they have: {', '.join(c for c in columns if not c.startswith('_'))})"
        )
    reader = f"({_reader_sql(spec, files, rejects=False)})"
    types = column_types(conn, reader)
    sniffed = sniff_types(conn, spec, files)
    for name, expr in spec.derived.items():
        try:
            conn.sql(
                f"SELECT {expr} AS x FROM ({_typed_view_sql(spec, reader, types, sniffed)}) LIMIT 0"
            ).fetchall()
        except duckdb.Error as exc:
            raise SourceError(f"derived.{name}: the expression {expr!r} does not work: {exc}") from exc
    try:
        time_min, time_max = conn.execute(
            f"SELECT min(t), max(t) FROM (SELECT {_time_expression(spec)} AS t "
            f"FROM ({_typed_view_sql(spec, reader, types, sniffed)}))"
        ).fetchall()[0]
    except duckdb.Error as exc:
        raise SourceError(f"time_column: cannot read {spec.time_column!r} as a timestamp: {exc}") from exc
    return SourceProbe(files=tuple(files), columns=tuple(columns), time_min=time_min, time_max=time_max)


def _rejected_lines(conn: duckdb.DuckDBPyConnection, header: list[str]) -> pd.DataFrame:
    """Lines DuckDB could not split into the right number of fields, parsed as far as they go."""
    rows = conn.sql(
        "SELECT s.file_path, e.line, e.csv_line, e.error_type, e.error_message "
        "FROM _rejects e JOIN _reject_scans s USING (scan_id, file_id) "
        "QUALIFY row_number() OVER (PARTITION BY s.file_path, e.line ORDER BY e.column_idx) = 1"
    ).fetchall()
    records = []
    for file_path, line, csv_line, error_type, message in rows:
        fields = next(csv.reader(io.StringIO(csv_line)), [])
        record: dict[str, object] = dict(zip(header, [f if f != "" else None for f in fields], strict=False))
        record.update(
            _source_file=file_path,
            _source_line=int(line),
            _parse_error=f"line {line}: {error_type.lower()} ({message})",
        )
        records.append(record)
    return pd.DataFrame.from_records(
        records, columns=[*header, "_source_file", "_source_line", "_parse_error"]
    )


def stage_source(
    conn: duckdb.DuckDBPyConnection, spec: DatasetSpec, files: list[str], loaded_at: datetime
) -> str:
    """Read every source row into a temp table `_staged` with lineage columns; returns its name.

    Each row gets `_source_row` (1-based data row in its file, rejected lines included, so the
    number matches what a user sees in the file), `_parse_error` and `_partition_ts`: the row's time,
    or where the time does not parse, the time of the row before it in the same file (files land in
    time order), so every row belongs to exactly one partition and none is lost.
    """
    if not files:
        raise SourceError(f"source.path: no files match {spec.source_pattern}")
    conn.execute("DROP TABLE IF EXISTS _staged_read")
    if spec.source_format == "parquet":
        # A view: Parquet is typed and cheap to scan, so the rows are copied once, into `_staged`.
        conn.execute(
            f"CREATE OR REPLACE TEMP VIEW _staged_parquet AS SELECT *, NULL::VARCHAR AS _parse_error "
            f"FROM ({_reader_sql(spec, files, rejects=False)})"
        )
        read = "_staged_parquet"
        if spec.derived:  # the positional join below needs a table: two scans may not line up
            conn.execute("CREATE TEMP TABLE _staged_read AS SELECT * FROM _staged_parquet")
            read = "_staged_read"
    else:
        _stage_csv(conn, spec, files)
        read = "_staged_read"
    types = column_types(conn, read)
    sniffed = sniff_types(conn, spec, files)
    if spec.derived:
        derived_sql = _derived_and_time_sql(spec, read, types, sniffed)
        # Both sides of the positional join are plain projections of the same table, so rows line up.
        joined = f"SELECT r.*, d.* FROM {read} r POSITIONAL JOIN ({derived_sql}) d"
    else:
        # Nothing derived: the row time is one cast of a source column, no join needed.
        time_type = spec.columns[spec.time_column].type if spec.time_column in spec.columns else "timestamp"
        typed_time = typed_expression(
            quote_ident(spec.time_column), time_type, types.get(spec.time_column, "VARCHAR")
        )
        joined = f"SELECT *, TRY_CAST({typed_time} AS TIMESTAMP) AS _row_ts FROM {read}"
    loaded = f"{quote_literal(loaded_at.isoformat(sep=' '))}::TIMESTAMP AS _loaded_at"
    conn.execute("DROP TABLE IF EXISTS _staged")
    conn.execute(
        f"CREATE TEMP TABLE _staged AS SELECT * EXCLUDE (_row_ts), {loaded}, _row_ts AS _partition_ts FROM ({joined})"
    )
    if fetch_row(conn, "SELECT count(*) FROM _staged WHERE _partition_ts IS NULL")[0]:
        _fill_partition_times(conn)
    conn.execute("DROP TABLE IF EXISTS _staged_read")
    conn.execute("DROP VIEW IF EXISTS _staged_parquet")
    return "_staged"


def _fill_partition_times(conn: duckdb.DuckDBPyConnection) -> None:
    """Rows whose time does not parse take the time of the row before them in their file (or after,
    at the top of a file). Only run when such rows exist: the window sorts every row."""
    conn.execute(
        """
        CREATE OR REPLACE TEMP TABLE _staged AS
        SELECT * REPLACE (
            coalesce(_partition_ts,
                     last_value(_partition_ts IGNORE NULLS) OVER (PARTITION BY _source_file ORDER BY _source_row
                         ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW),
                     first_value(_partition_ts IGNORE NULLS) OVER (PARTITION BY _source_file ORDER BY _source_row
                         ROWS BETWEEN CURRENT ROW AND UNBOUNDED FOLLOWING)) AS _partition_ts)
        FROM _staged
        """
    )


def _stage_csv(conn: duckdb.DuckDBPyConnection, spec: DatasetSpec, files: list[str]) -> None:
    """Read CSV files one by one (DuckDB keeps rejects only for single-schema scans), then union by name."""
    parts = []
    for index, path in enumerate(files):
        part = f"_staged_csv_{index}"
        _stage_one_csv(conn, spec, path, part)
        parts.append(part)
    conn.execute(
        "CREATE OR REPLACE TEMP TABLE _staged_read AS "
        + " UNION ALL BY NAME ".join(f"SELECT * FROM {part}" for part in parts)
    )
    for part in parts:
        conn.execute(f"DROP TABLE {part}")


def _stage_one_csv(conn: duckdb.DuckDBPyConnection, spec: DatasetSpec, path: str, table: str) -> None:
    # Reject tables keep growing across scans of one connection: start each file with empty ones.
    conn.execute("DROP TABLE IF EXISTS _rejects")
    conn.execute("DROP TABLE IF EXISTS _reject_scans")
    try:
        conn.execute(
            f"CREATE OR REPLACE TEMP TABLE _read_ok AS SELECT *, row_number() OVER () AS _ok_index "
            f"FROM ({_reader_sql(spec, [path], rejects=True)})"
        )
    except duckdb.Error as exc:
        raise SourceError(f"source.path: cannot read {path}: {exc}") from exc
    header = [c for c in column_types(conn, "_read_ok") if c not in ("_source_file", "_ok_index")]
    rejected = _rejected_lines(conn, header)
    conn.register("_rejected_df", rejected)
    # Good rows are numbered in read order; each rejected line before a good row shifts it by one.
    # The ASOF join finds, for each good row, how many rejected lines come before it.
    conn.execute(
        f"""
        CREATE OR REPLACE TEMP TABLE {table} AS
        WITH rej AS (
            SELECT row_number() OVER (ORDER BY _source_line) AS _rejects_so_far, _source_line FROM _rejected_df
        ),
        rej_keyed AS (
            -- the number of good rows that come before this rejected line
            -- (consecutive rejected lines share it: keep the count after the last of them)
            SELECT (_source_line - 1) - _rejects_so_far AS _ok_before, max(_rejects_so_far) AS _rejects_so_far
            FROM rej GROUP BY 1
        )
        SELECT ok.* EXCLUDE (_ok_index),
               ok._ok_index + coalesce(rk._rejects_so_far, 0) AS _source_row,
               NULL::VARCHAR AS _parse_error
        FROM _read_ok ok ASOF LEFT JOIN rej_keyed rk ON ok._ok_index > rk._ok_before
        UNION ALL BY NAME
        SELECT * EXCLUDE (_source_line), _source_line - 1 AS _source_row FROM _rejected_df
        """
    )
    conn.unregister("_rejected_df")
    conn.execute("DROP TABLE _read_ok")
