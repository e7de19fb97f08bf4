"""Reading a spec's source files with DuckDB, and loading them into the `raw` table.

Pure logic over a DuckDB connection: no Dagster, no knowledge of where the warehouse lives.

CSV is read as text (all_varchar) so that a bad number never aborts a load: typing happens in the
cleaning stage, where a value that does not parse becomes a quarantine reason. Lines whose shape is
wrong (too few or too many fields) are caught by DuckDB's reject tables and kept too, with the error.
"""

from __future__ import annotations

import glob
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import duckdb

from mlplatform.core.accounting import UNREADABLE, detect_encoding, unreadable_reason
from mlplatform.core.placement import PartitionBounds, place_rows, plausible_sql
from mlplatform.core.source_checks import (
    LONG_LINE,
    add_missing_text_columns,
    add_unreadable_rows,
    by_encoding,
    csv_dialect,
    csv_header,
    file_problems_sql,
    has_long_line,
    non_empty,
    parquet_headers,
    readable_files,
    rejected_lines,
    sniff_types,
    stage_nothing,
    stage_with_python,
)
from mlplatform.core.sql import column_types, in_spec_timezone, quote_ident, quote_literal, typed_column
from mlplatform.specs.model import DatasetSpec


class SourceError(ValueError):
    """The source files cannot be read as the spec says."""


@dataclass(frozen=True)
class SourceProbe:
    files: tuple[str, ...]
    columns: tuple[str, ...]
    time_min: datetime | None
    time_max: datetime | None
    unreadable: tuple[tuple[str, str], ...] = ()  # (path, why): skipped, quarantined at load


def source_files(spec: DatasetSpec) -> list[str]:
    pattern = spec.source_pattern
    return sorted(glob.glob(pattern)) if spec.source.is_glob else [pattern] if Path(pattern).exists() else []


def _reader_sql(spec: DatasetSpec, files: list[str], rejects: bool, encoding: str = "utf-8") -> str:
    file_list = "[" + ", ".join(quote_literal(f) for f in files) + "]"
    if spec.source_format == "parquet":
        return (
            f"SELECT * EXCLUDE (file_row_number), file_row_number + 1 AS _source_row "
            f"FROM read_parquet({file_list}, filename='_source_file', file_row_number=true, union_by_name=true)"
        )
    options = f"{csv_dialect(spec)}, all_varchar=true, filename='_source_file'"
    options += ", encoding='utf-16'" if encoding == "utf-16" else ""  # UTF-8 with a BOM needs nothing
    # DuckDB keeps rejected lines only for scans with one schema; multi-file CSVs are read one by one.
    # Without rejects (probing the schema and time range) malformed lines are skipped.
    options += (
        ", store_rejects=true, rejects_table='_rejects', rejects_scan='_reject_scans'"
        if rejects
        else ", union_by_name=true, ignore_errors=true"
    )
    return f"SELECT * FROM read_csv({file_list}, {options})"


def _typed_view_sql(spec: DatasetSpec, relation: str, types: dict[str, str], sniffed: dict[str, str]) -> str:
    """Source columns cast to their spec types (NULL where they do not parse), then `derived`."""
    casts = [
        f"{typed_column(spec, name, types.get(name, 'VARCHAR'))} AS {quote_ident(name)}"
        for name in spec.columns
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
    """The row time (naive UTC) over `_typed_view_sql` rows, where source columns are typed already.

    A derived time can be of any type: its text (which carries its zone, if any) gets the same rule
    as the cleaning stage's, so a row's partition and its clean time always agree.
    """
    time = quote_ident(spec.time_column)
    if spec.time_column in spec.derived:
        time = typed_column(spec, spec.time_column, "VARCHAR", f"CAST({time} AS VARCHAR)")
    return f"TRY_CAST({time} AS TIMESTAMP)"


def _readable_files(
    conn: duckdb.DuckDBPyConnection, spec: DatasetSpec, files: list[str], encoding: str
) -> tuple[list[str], dict[str, str]]:
    """`files` DuckDB reads, and why it cannot read the others (tried one by one only when the whole
    set fails): a broken file is read by the fallback reader, or quarantined, at load."""
    errors = {
        f: f"{UNREADABLE}: {LONG_LINE}" for f in files if spec.source_format == "csv" and has_long_line(f)
    }
    files = [f for f in files if f not in errors]
    try:
        if files:
            conn.sql(f"SELECT count(*) FROM ({_reader_sql(spec, files, False, encoding)})").fetchall()
        return files, errors
    except duckdb.Error:
        readable = []
        for path in files:
            try:
                conn.sql(f"SELECT count(*) FROM ({_reader_sql(spec, [path], False, encoding)})").fetchall()
                readable.append(path)
            except duckdb.Error as exc:
                errors[path] = f"{UNREADABLE}: {str(exc).splitlines()[0]}"
        return readable, errors


def _probe_group(
    conn: duckdb.DuckDBPyConnection, spec: DatasetSpec, files: list[str], encoding: str
) -> tuple[dict[str, str], tuple[datetime | None, datetime | None, int]]:
    """Column types and time range of files DuckDB reads in one scan (of one encoding)."""
    reader = f"({_reader_sql(spec, files, rejects=False, encoding=encoding)})"
    try:
        types = column_types(conn, reader)
    except duckdb.Error as exc:
        raise SourceError(f"source.path: cannot read {spec.source_pattern}: {exc}") from exc
    missing = [c for c in spec.source_columns if c not in types]
    if missing:
        raise SourceError(
            f"columns: {', '.join(repr(m) for m in missing)} not found in the source files "
            f"(they have: {', '.join(c for c in types if not c.startswith('_'))})"
        )
    typed_sql = _typed_view_sql(spec, reader, types, sniff_types(conn, spec, files))
    _check_derived(conn, spec, typed_sql)
    return types, _time_range(conn, spec, typed_sql)


@in_spec_timezone
def probe_source(conn: duckdb.DuckDBPyConnection, spec: DatasetSpec) -> SourceProbe:
    """Column names and plausible time range of the source; raises SourceError naming the key at fault.

    The range counts only plausible times (mlplatform.core.placement): other rows are quarantined at
    load instead of stretching the partitions. A file that cannot be read is skipped and noted (it is
    quarantined at load); only a source of which no file at all is readable fails.
    """
    all_files = source_files(spec)
    unreadable = {f: why for f in all_files if (why := unreadable_reason(f, spec.source_format))}
    present = non_empty([f for f in all_files if f not in unreadable])
    columns: list[str] = []
    ranges: list[tuple[datetime | None, datetime | None, int]] = []
    for encoding, group in by_encoding(present).items():
        files, errors = _readable_files(conn, spec, group, encoding)
        if files:
            types, time_range = _probe_group(conn, spec, files, encoding)
            columns += [c for c in types if c not in columns]
            ranges.append(time_range)
        for path in [f for f in group if f not in files]:
            if spec.source_format == "parquet":  # no fallback reader: quarantined at load
                unreadable[path] = errors[path]
            else:  # read by Python at load: its times count too
                ranges.append(_python_read_time_range(conn, spec, path))
    if unreadable and not ranges:  # not one file could be read
        path, why = next(iter(unreadable.items()))
        raise SourceError(f"source.path: cannot read {spec.source_pattern}: {Path(path).name}: {why}")
    times = [t for first, last, _ in ranges for t in (first, last) if t is not None]
    rows = sum(n for _, _, n in ranges)
    if not times and rows and spec.partitions.start is None:
        raise SourceError(
            f"time_column: none of the {rows} rows of {spec.source_pattern} has a {spec.time_column!r} "
            f"that parses as a timestamp between {PLAUSIBLE_WINDOW}; fix the files or "
            "set partitions.start (such rows are then quarantined, with the reason)"
        )
    return SourceProbe(
        files=tuple(all_files),
        columns=tuple(columns),
        time_min=min(times, default=None),
        time_max=max(times, default=None),
        unreadable=tuple(sorted(unreadable.items())),
    )


def _python_read_time_range(
    conn: duckdb.DuckDBPyConnection, spec: DatasetSpec, path: str
) -> tuple[datetime | None, datetime | None, int]:
    """A file only Python's csv module reads: its time range (nothing if it lacks a column)."""
    stage_with_python(conn, spec, path, "_probe_python")
    types = column_types(conn, "_probe_python")
    try:
        if all(c in types for c in spec.source_columns):
            return _time_range(conn, spec, _typed_view_sql(spec, "_probe_python", types, {}))
        return None, None, 0
    finally:
        conn.execute("DROP TABLE _probe_python")


def _check_derived(conn: duckdb.DuckDBPyConnection, spec: DatasetSpec, typed_sql: str) -> None:
    for name, expr in spec.derived.items():
        try:
            conn.sql(f"SELECT {expr} AS x FROM ({typed_sql}) LIMIT 0").fetchall()
        except duckdb.Error as exc:
            raise SourceError(f"derived.{name}: the expression {expr!r} does not work: {exc}") from exc


PLAUSIBLE_WINDOW = "1900-01-01 and tomorrow"


def _time_range(
    conn: duckdb.DuckDBPyConnection, spec: DatasetSpec, typed_sql: str
) -> tuple[datetime | None, datetime | None, int]:
    """First and last plausible row time, and the number of rows read."""
    try:
        return conn.execute(
            f"SELECT min(t) FILTER (WHERE {plausible_sql('t')}), max(t) FILTER (WHERE {plausible_sql('t')}), "
            f"count(*) FROM (SELECT {_time_expression(spec)} AS t FROM ({typed_sql}))"
        ).fetchall()[0]
    except duckdb.Error as exc:
        raise SourceError(f"time_column: cannot read {spec.time_column!r} as a timestamp: {exc}") from exc


@in_spec_timezone
def stage_source(
    conn: duckdb.DuckDBPyConnection,
    spec: DatasetSpec,
    files: list[str],
    loaded_at: datetime,
    bounds: PartitionBounds | None = None,
    file_notes: dict[str, str] | None = None,
    sniffed: dict[str, str] | None = None,
) -> str:
    """Read every source row into a temp table `_staged` with lineage columns; returns its name.

    Each row gets `_source_row` (1-based data row in its file, rejected lines included, so the
    number matches what a user sees in the file), `_parse_error` and `_partition_ts`: a partition
    inside `bounds` for every row, by the rule of mlplatform.core.placement, so none is lost.
    A file DuckDB cannot read is read by Python's csv module; a file nothing can read is one
    quarantine row (mlplatform.core.accounting); what happened to a file is written to `file_notes`
    (path -> note) when given. `sniffed`: the CSV types guessed over all of the source's files, when
    this call stages only some of them (the Dask engine stages file groups on its workers).
    """
    if not files:
        raise SourceError(f"source.path: no files match {spec.source_pattern}")
    notes = file_notes if file_notes is not None else {}
    conn.execute("DROP TABLE IF EXISTS _staged_read")
    readable, unreadable = readable_files(spec, files, notes)  # an unreadable file: one quarantine row
    if not readable:
        stage_nothing(conn, spec)
        read = "_staged_read"
    elif spec.source_format == "parquet":
        # A view: Parquet is typed and cheap to scan, so the rows are copied once, into `_staged`.
        headers = parquet_headers(readable)
        problems = file_problems_sql(spec, headers, notes)
        # A landed batch may carry each record's own read error (a Kafka record that is not JSON).
        own = any("_parse_error" in header for header in headers.values())
        columns = f"* REPLACE (coalesce(_parse_error, {problems}) AS _parse_error)" if own else None
        conn.execute(
            f"CREATE OR REPLACE TEMP VIEW _staged_parquet AS SELECT {columns or f'*, {problems} AS _parse_error'} "
            f"FROM ({_reader_sql(spec, readable, rejects=False)})"
        )
        read = "_staged_parquet"
        if spec.derived:  # the positional join below needs a table: two scans may not line up
            conn.execute("CREATE TEMP TABLE _staged_read AS SELECT * FROM _staged_parquet")
            read = "_staged_read"
    else:
        _stage_csv(conn, spec, readable, notes)
        read = "_staged_read"
        if sniffed is not None:  # some files only: the columns the others would have brought
            add_missing_text_columns(conn, spec, read)
    types = column_types(conn, read)
    sniffed = sniff_types(conn, spec, readable) if sniffed is None else sniffed
    if spec.derived:
        derived_sql = _derived_and_time_sql(spec, read, types, sniffed)
        # Both sides of the positional join are plain projections of the same table, so rows line up.
        joined = f"SELECT r.*, d.* FROM {read} r POSITIONAL JOIN ({derived_sql}) d"
    else:
        # Nothing derived: the row time is one cast of a source column, no join needed.
        typed_time = typed_column(spec, spec.time_column, types.get(spec.time_column, "VARCHAR"))
        joined = f"SELECT *, TRY_CAST({typed_time} AS TIMESTAMP) AS _row_ts FROM {read}"
    loaded = f"{quote_literal(loaded_at.isoformat(sep=' '))}::TIMESTAMP AS _loaded_at"
    conn.execute("DROP TABLE IF EXISTS _staged")
    conn.execute(
        f"CREATE TEMP TABLE _staged AS SELECT * EXCLUDE (_row_ts), {loaded}, _row_ts AS _partition_ts FROM ({joined})"
    )
    place_rows(conn, "_staged", spec.time_column, bounds)
    add_unreadable_rows(conn, "_staged", unreadable, loaded_at, bounds.first_start if bounds else None)
    conn.execute("DROP TABLE IF EXISTS _staged_read")
    conn.execute("DROP VIEW IF EXISTS _staged_parquet")
    return "_staged"


def _stage_csv(
    conn: duckdb.DuckDBPyConnection, spec: DatasetSpec, files: list[str], notes: dict[str, str]
) -> None:
    """Read CSV files one by one (DuckDB keeps rejects only for single-schema scans), then union by name."""
    parts = []
    for index, path in enumerate(files):
        part = f"_staged_csv_{index}"
        _stage_one_csv(conn, spec, path, part, notes)
        parts.append(part)
    conn.execute(
        "CREATE OR REPLACE TEMP TABLE _staged_read AS "
        + " UNION ALL BY NAME ".join(f"SELECT * FROM {part}" for part in parts)
    )
    for part in parts:
        conn.execute(f"DROP TABLE {part}")
    headers = {path: csv_header(path, spec.source.delimiter) for path in files}
    problems = file_problems_sql(spec, headers, notes)
    if problems != "NULL::VARCHAR":
        conn.execute(
            f"UPDATE _staged_read SET _parse_error = CASE WHEN _parse_error IS NULL THEN {problems} "
            f"ELSE _parse_error || '; ' || {problems} END WHERE {problems} IS NOT NULL"
        )


def _stage_one_csv(
    conn: duckdb.DuckDBPyConnection, spec: DatasetSpec, path: str, table: str, notes: dict[str, str]
) -> None:
    if has_long_line(path):
        notes[path] = f"read by Python's csv module: {LONG_LINE}"
        stage_with_python(conn, spec, path, table)
        return
    # Reject tables keep growing across scans of one connection: start each file with empty ones.
    conn.execute("DROP TABLE IF EXISTS _rejects")
    conn.execute("DROP TABLE IF EXISTS _reject_scans")
    try:
        conn.execute(
            f"CREATE OR REPLACE TEMP TABLE _read_ok AS SELECT *, row_number() OVER () AS _ok_index "
            f"FROM ({_reader_sql(spec, [path], rejects=True, encoding=detect_encoding(path))})"
        )
    except duckdb.Error as exc:
        # Only this file: Python's csv module reads it (line by line if its quoting is broken).
        notes[path] = f"read by Python's csv module, DuckDB could not: {str(exc).splitlines()[0]}"
        stage_with_python(conn, spec, path, table)
        return
    header = [c for c in column_types(conn, "_read_ok") if c not in ("_source_file", "_ok_index")]
    rejected = rejected_lines(conn, header)
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
