"""Source files DuckDB's fast path cannot take as they are: dialect, header checks, the Python reader.

Pure logic over a DuckDB connection, used by mlplatform.core.source.
"""

from __future__ import annotations

import csv
import functools
import io
import os
from collections.abc import Mapping
from datetime import datetime
from pathlib import Path

import duckdb
import pandas as pd
import pyarrow.parquet as pq

from mlplatform.core.accounting import (
    FileCount,
    count_source,
    detect_encoding,
    duplicate_header_names,
    read_csv_records,
    unreadable_reason,
)
from mlplatform.core.sql import column_types, quote_ident, quote_literal
from mlplatform.specs.model import DatasetSpec

# DuckDB's default (2 MB) fails a whole file on one long field; a 3 MB text field is data.
MAX_LINE_BYTES = 64 * 1024 * 1024


def csv_dialect(spec: DatasetSpec) -> str:
    return (
        f"header=true, delim={quote_literal(spec.source.delimiter)}, quote='\"', escape='\"', "
        f"max_line_size={MAX_LINE_BYTES}"
    )


# DuckDB's sniffer runs even with all_varchar (and with union_by_name even when auto_detect is off),
# in time quadratic in the length of a field of digits: 3 MB of them near the top of a file is minutes
# of CPU. A CSV file with a line this long among the lines it samples is read by Python's csv module.
LONG_LINE_BYTES = 64 * 1024
SNIFFED_LINES = 20480  # DuckDB's default sample_size
LONG_LINE = (
    f"a line over {LONG_LINE_BYTES // 1024} KiB in its first {SNIFFED_LINES} lines "
    "(DuckDB's type sniffer could take minutes over it)"
)


def has_long_line(path: str) -> bool:
    """Whether one of the first SNIFFED_LINES lines of `path` is longer than LONG_LINE_BYTES."""
    try:
        stat = os.stat(path)
    except OSError:  # DuckDB reports it
        return False
    return _has_long_line(path, stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=4096)
def _has_long_line(path: str, size: int, mtime_ns: int) -> bool:  # size and mtime: a changed file
    try:
        with open(path, "rb") as handle:
            for _ in range(SNIFFED_LINES + 1):  # the header too
                line = handle.readline(LONG_LINE_BYTES + 1)
                if len(line) > LONG_LINE_BYTES:
                    return True
                if not line:
                    return False
    except OSError:
        return False
    return False


def non_empty(files: list[str]) -> list[str]:
    """Files that hold at least one byte: DuckDB reads an empty file as one column named column0."""
    return [f for f in files if os.path.getsize(f) > 0]


_SNIFFED_KEPT = ("BIGINT", "INTEGER", "SMALLINT", "TINYINT", "HUGEINT", "DOUBLE", "FLOAT", "BOOLEAN")


def sniff_types(conn: duckdb.DuckDBPyConnection, spec: DatasetSpec, files: list[str]) -> dict[str, str]:
    """Types DuckDB guesses for CSV columns the spec does not declare, so `derived` can use them.

    Only numbers and booleans are taken: a guessed date format (is 01-02 January or February?) is
    left as text for the spec to parse explicitly.
    """
    if spec.source_format != "csv":
        return {}
    guessed: dict[str, str] = {}
    for path in non_empty(files):  # the first file DuckDB can read, and sniff in reasonable time
        if has_long_line(path):
            continue
        try:
            guessed = column_types(
                conn,
                f"SELECT * FROM read_csv({quote_literal(path)}, {csv_dialect(spec)}, ignore_errors=true)",
            )
            break
        except duckdb.Error:
            continue
    return {
        name: sql_type
        for name, sql_type in guessed.items()
        if name not in spec.columns and sql_type.upper() in _SNIFFED_KEPT
    }


def parquet_headers(files: list[str]) -> dict[str, tuple[str, ...]]:
    return {path: tuple(pq.ParquetFile(path).schema_arrow.names) for path in files}


def csv_header(path: str, delimiter: str) -> tuple[str, ...]:
    """The first record of a CSV file, as Python's csv module reads it (names as written)."""
    with open(path, encoding=detect_encoding(path), errors="replace", newline="") as handle:
        return tuple(next(csv.reader(handle, delimiter=delimiter), []))


def file_problem(spec: DatasetSpec, path: str, header: tuple[str, ...]) -> str | None:
    """Why every row of a file is quarantined, from its header alone: a column named twice (DuckDB
    would silently rename the copy x_1) or a required column missing."""
    name = Path(path).name
    for column, positions in duplicate_header_names(header).items():
        where = ", ".join(str(p) for p in positions)
        return (
            f"{column}: the header of {name} names this column {len(positions)} times (columns {where}); "
            "its rows are quarantined until the file names each column once"
        )
    required = [c for c in spec.source_columns if not spec.columns[c].nullable or c == spec.time_column]
    missing = [c for c in required if c not in header]
    if header and missing:
        shown = ", ".join(repr(h) for h in header[:10]) + (", ..." if len(header) > 10 else "")
        return (
            f"{missing[0]}: {name} has no column {', '.join(repr(m) for m in missing)} (its header: {shown}; "
            f"delimiter {spec.source.delimiter!r}); its rows are quarantined"
        )
    return None


def file_problems_sql(
    spec: DatasetSpec, headers: Mapping[str, tuple[str, ...]], notes: dict[str, str]
) -> str:
    """A SQL expression over `_source_file`: the file's problem (see `file_problem`), else NULL."""
    problems = {path: file_problem(spec, path, header) for path, header in headers.items()}
    cases = "".join(
        f" WHEN {quote_literal(path)} THEN {quote_literal(problem)}"
        for path, problem in problems.items()
        if problem
    )
    notes.update({path: problem for path, problem in problems.items() if problem})
    return f"CASE _source_file{cases} END" if cases else "NULL::VARCHAR"


def stage_with_python(conn: duckdb.DuckDBPyConnection, spec: DatasetSpec, path: str, table: str) -> None:
    """One file through Python's csv module (a per-row pass, only for files DuckDB cannot read)."""
    count: FileCount = count_source(path, "csv", spec.source.delimiter)
    header = list(dict.fromkeys(count.header))  # a name twice: `file_problem` quarantines the file
    records = []
    for number, fields, error in read_csv_records(count, spec.source.delimiter):
        if error is None and len(fields) != len(count.header):
            shape = "missing columns" if len(fields) < len(count.header) else "too many columns"
            error = f"line {number + 1}: {shape} (expected {len(count.header)} fields, found {len(fields)})"
        record: dict[str, object] = dict(zip(header, [f if f != "" else None for f in fields], strict=False))
        record.update(_source_row=number, _parse_error=error)
        records.append(record)
    frame = pd.DataFrame.from_records(records, columns=[*header, "_source_row", "_parse_error"])
    conn.register("_python_read", frame)
    columns = ", ".join(f"CAST({quote_ident(c)} AS VARCHAR) AS {quote_ident(c)}" for c in header)
    conn.execute(
        f"CREATE OR REPLACE TEMP TABLE {table} AS SELECT {columns}{', ' if columns else ''}"
        f"{quote_literal(path)} AS _source_file, CAST(_source_row AS BIGINT) AS _source_row, "
        f"CAST(_parse_error AS VARCHAR) AS _parse_error FROM _python_read"
    )
    conn.unregister("_python_read")


def rejected_lines(conn: duckdb.DuckDBPyConnection, header: list[str]) -> pd.DataFrame:
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


def readable_files(
    spec: DatasetSpec, files: list[str], notes: dict[str, str]
) -> tuple[list[str], dict[str, str]]:
    """The files to read (not empty), and why the others cannot be read at all; both are noted."""
    unreadable = {f: why for f in files if (why := unreadable_reason(f, spec.source_format))}
    readable = non_empty([f for f in files if f not in unreadable])
    notes.update({f: unreadable.get(f, "empty file") for f in files if f not in readable})
    return readable, unreadable


def add_unreadable_rows(
    conn: duckdb.DuckDBPyConnection,
    table: str,
    unreadable: Mapping[str, str],
    loaded_at: datetime,
    first_start: datetime | None,
) -> None:
    """One row per file that cannot be read (`_source_row` 0, its reason), in the first partition: the
    file is then quarantined and accounted for as one record, never silently missing."""
    if not unreadable:
        return
    conn.register("_unreadable_df", pd.DataFrame({"f": list(unreadable), "why": list(unreadable.values())}))
    moment = (
        f"{quote_literal(first_start.isoformat(sep=' '))}::TIMESTAMP" if first_start else "NULL::TIMESTAMP"
    )
    loaded = f"{quote_literal(loaded_at.isoformat(sep=' '))}::TIMESTAMP"
    conn.execute(
        f"INSERT INTO {table} BY NAME SELECT f::VARCHAR AS _source_file, 0::BIGINT AS _source_row, "
        f"why::VARCHAR AS _parse_error, {loaded} AS _loaded_at, {moment} AS _partition_ts FROM _unreadable_df"
    )
    conn.unregister("_unreadable_df")


def stage_nothing(conn: duckdb.DuckDBPyConnection, spec: DatasetSpec) -> None:
    """Every file is empty: no rows, with the columns a read would have given."""
    columns = ", ".join(f"NULL::VARCHAR AS {quote_ident(c)}" for c in spec.source_columns)
    conn.execute(
        f"CREATE TEMP TABLE _staged_read AS SELECT {columns}, NULL::VARCHAR AS _source_file, "
        "NULL::BIGINT AS _source_row, NULL::VARCHAR AS _parse_error LIMIT 0"
    )


def by_encoding(files: list[str]) -> dict[str, list[str]]:
    """Files grouped by encoding (one DuckDB scan reads one encoding), UTF-8 first."""
    groups: dict[str, list[str]] = {}
    for path in files:
        groups.setdefault("utf-16" if detect_encoding(path) == "utf-16" else "utf-8", []).append(path)
    return dict(sorted(groups.items(), key=lambda item: item[0] != "utf-8"))


def add_missing_text_columns(conn: duckdb.DuckDBPyConnection, spec: DatasetSpec, read: str) -> None:
    """Give `read` (CSV text) every source column of the spec its files lack, as NULL text: what the
    union by name of all the source's files gives those files' rows (the others bring the columns)."""
    present = set(column_types(conn, read))
    for name in spec.source_columns:
        if name not in present:
            conn.execute(f"ALTER TABLE {read} ADD COLUMN {quote_ident(name)} VARCHAR")
