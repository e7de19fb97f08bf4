"""Counting the records each source file holds, independently of the DuckDB load, and reconciling them.

"Nothing lost" is proved from the source, not between warehouse tables: each file's records are
counted here with Python's csv module (CSV, malformed lines included) or from the Parquet footer,
and compared with the rows that landed in clean + quarantine for that file (`_source_file`).

A CSV file whose quoting is broken (a quote that never closes) has no well-defined records: it is
then counted, and read by `read_csv_records`, one physical line per record, so that a stray quote
cannot swallow the rest of the file into one field.
"""

from __future__ import annotations

import codecs
import csv
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

import duckdb
import pyarrow.parquet as pq

from mlplatform.core.sql import quote_ident

ACCOUNTING_TABLE = "_source_accounting"
csv.field_size_limit(1 << 30)  # a 3 MB field is data, not an error


@dataclass(frozen=True)
class FileCount:
    """What a source file holds, read without DuckDB."""

    path: str
    rows: int  # data records, header excluded, malformed records included, blank lines not
    header: tuple[str, ...]
    encoding: str  # "utf-8", "utf-8-sig" (BOM) or "utf-16" (BOM); undecodable bytes are kept as U+FFFD
    by_lines: bool = False  # quoting is broken: each physical line is one record
    problem: str | None = None  # why `by_lines`


@dataclass(frozen=True)
class FileAccount:
    """One source file in one run: its records against what landed."""

    source_file: str
    source_rows: int  # counted from the file (FileCount.rows)
    read_rows: int  # rows the load read from it, in every partition
    window_rows: int  # of those, rows placed in the run's window
    landed_rows: int  # rows of the window in clean + quarantine

    @property
    def reconciles(self) -> bool:
        return self.source_rows == self.read_rows and self.window_rows == self.landed_rows


def detect_encoding(path: str) -> str:
    with open(path, "rb") as handle:
        head = handle.read(4)
    if head.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        return "utf-16"
    return "utf-8-sig" if head.startswith(codecs.BOM_UTF8) else "utf-8"


def _open_text(path: str, encoding: str) -> TextIO:
    return open(path, encoding=encoding, errors="replace", newline="")


def _records(path: str, delimiter: str, encoding: str) -> Iterator[list[str]]:
    with _open_text(path, encoding) as handle:
        yield from csv.reader(handle, delimiter=delimiter, quotechar='"', doublequote=True, strict=True)


def _lines(path: str, encoding: str) -> Iterator[tuple[int, str]]:
    """(1-based line number, text) of every non-blank physical line."""
    with _open_text(path, encoding) as handle:
        for number, line in enumerate(handle, start=1):
            text = line.rstrip("\r\n")
            if text:
                yield number, text


def count_csv_records(path: str, delimiter: str = ",") -> FileCount:
    """Data records of a CSV file by Python's csv module, streamed (no file is held in memory)."""
    encoding = detect_encoding(path)
    records = _records(path, delimiter, encoding)
    header: list[str] = []
    rows = 0
    try:
        header = next(records, [])
        rows = sum(1 for record in records if record)
    except csv.Error as exc:
        lines = _lines(path, encoding)
        first = next(lines, None)
        header = next(csv.reader([first[1]], delimiter=delimiter), []) if first else []
        return FileCount(
            path=path,
            rows=sum(1 for _ in lines),
            header=tuple(header),
            encoding=encoding,
            by_lines=True,
            problem=f"broken quoting ({exc})",
        )
    return FileCount(path=path, rows=rows, header=tuple(header), encoding=encoding)


def count_parquet_rows(path: str) -> FileCount:
    """Rows of a Parquet file from its footer (row-group metadata): no data page is read."""
    parquet = pq.ParquetFile(path)
    return FileCount(
        path=path,
        rows=int(parquet.metadata.num_rows),
        header=tuple(parquet.schema_arrow.names),
        encoding="binary",
    )


def count_source(path: str, source_format: str, delimiter: str = ",") -> FileCount:
    if Path(path).stat().st_size == 0:
        return FileCount(path=path, rows=0, header=(), encoding="utf-8", problem="empty file")
    return count_parquet_rows(path) if source_format == "parquet" else count_csv_records(path, delimiter)


def duplicate_header_names(header: tuple[str, ...]) -> dict[str, list[int]]:
    """Header names given more than once -> their 1-based positions (DuckDB would rename them x_1)."""
    positions: dict[str, list[int]] = {}
    for index, name in enumerate(header, start=1):
        positions.setdefault(name, []).append(index)
    return {name: where for name, where in positions.items() if len(where) > 1}


def read_csv_records(count: FileCount, delimiter: str) -> Iterator[tuple[int, list[str], str | None]]:
    """(data row number, fields, error) of every record, for files DuckDB cannot read.

    Normal files: csv records. Files with broken quoting: one record per physical line, and a line
    whose quotes do not balance on their own gets an error instead of swallowing the lines after it.
    """
    if not count.by_lines:
        records = _records(count.path, delimiter, count.encoding)
        next(records, None)
        for number, record in enumerate((r for r in records if r), start=1):
            yield number, record, None
        return
    lines = _lines(count.path, count.encoding)
    next(lines, None)
    for number, (line_number, text) in enumerate(lines, start=1):
        try:
            fields = next(csv.reader([text], delimiter=delimiter, strict=True))
            yield number, fields, None
        except csv.Error:
            error = f"line {line_number}: unbalanced quote (the file's quoting is broken: read line by line)"
            yield number, text.split(delimiter), error


def reconcile(
    counts: Mapping[str, int],
    read: Mapping[str, int],
    in_window: Mapping[str, int],
    landed: Mapping[str, int],
) -> list[FileAccount]:
    """Per-file accounts over every file seen in any of the four mappings, sorted by file."""
    files = sorted(set(counts) | set(read) | set(in_window) | set(landed))
    return [
        FileAccount(
            source_file=f,
            source_rows=counts.get(f, 0),
            read_rows=read.get(f, 0),
            window_rows=in_window.get(f, 0),
            landed_rows=landed.get(f, 0),
        )
        for f in files
    ]


def _landed_sql(schema: str, time_column: str) -> str:
    """Rows of each file in clean + quarantine within the accounting table's window."""

    def table(name: str) -> str:
        return f"{quote_ident(schema)}.{quote_ident(name)}"

    window = "(SELECT min(window_start) AS s, max(window_end) AS e FROM " + table(ACCOUNTING_TABLE) + ")"
    parts = [
        f"SELECT _source_file, count(*) AS n FROM {table(name)}, {window} w "
        f"WHERE {quote_ident(column)} >= w.s AND {quote_ident(column)} < w.e GROUP BY 1"
        for name, column in (("clean", time_column), ("quarantine", "_partition_ts"))
    ]
    return " UNION ALL ".join(parts)


def _table_exists(conn: duckdb.DuckDBPyConnection, schema: str, name: str) -> bool:
    return bool(
        conn.execute(
            "SELECT count(*) FROM information_schema.tables WHERE table_schema = ? AND table_name = ?",
            [schema, name],
        ).fetchall()[0][0]
    )


def read_accounts(conn: duckdb.DuckDBPyConnection, schema: str, time_column: str) -> list[FileAccount]:
    """The accounts the last raw run recorded, with what clean + quarantine now hold of its window.

    For the run summary: `[a for a in read_accounts(conn, spec.name, spec.time_column) if not
    a.reconciles]` lists the files that do not reconcile. Empty when raw never recorded any.
    """
    if not _table_exists(conn, schema, ACCOUNTING_TABLE):
        return []
    recorded = {
        str(f): (int(s), int(r), int(w))
        for f, s, r, w in conn.execute(
            f"SELECT source_file, source_rows, read_rows, window_rows "
            f"FROM {quote_ident(schema)}.{quote_ident(ACCOUNTING_TABLE)}"
        ).fetchall()
    }
    landed: dict[str, int] = {}
    if _table_exists(conn, schema, "clean") and _table_exists(conn, schema, "quarantine"):
        for f, n in conn.execute(_landed_sql(schema, time_column)).fetchall():
            landed[str(f)] = landed.get(str(f), 0) + int(n)
    return reconcile(
        {f: v[0] for f, v in recorded.items()},
        {f: v[1] for f, v in recorded.items()},
        {f: v[2] for f, v in recorded.items()},
        landed,
    )


def describe_account(account: FileAccount) -> str:
    """One line a user can act on, e.g. for the run summary."""
    name = Path(account.source_file).name
    if account.source_rows != account.read_rows:
        return f"{name}: the file holds {account.source_rows} records but the load read {account.read_rows}"
    if account.window_rows != account.landed_rows:
        return (
            f"{name}: {account.window_rows} rows placed in the window but {account.landed_rows} "
            "are in clean + quarantine"
        )
    return f"{name}: {account.source_rows} records, all accounted for"


def shrink_problem(before: Mapping[str, int], after: Mapping[str, int]) -> str | None:
    """Why replacing a window's rows (per file, `before`) by `after` would silently erase data, if it would.

    Emptying a window that held rows, or losing every row of a file while the window shrinks, is refused;
    fewer rows of a file that still yields some, or a renamed file, is not.
    """
    old, new = sum(before.values()), sum(after.values())
    if old == 0 or new >= old:
        return None
    if new == 0:
        return f"its rows would go from {old} to 0 (the source files no longer yield any for it)"
    gone = sorted(f for f, n in before.items() if n and not after.get(f))
    if not gone:
        return None
    names = ", ".join(Path(f).name for f in gone[:5]) + (
        f" and {len(gone) - 5} more" if len(gone) > 5 else ""
    )
    lost = sum(before[f] for f in gone)
    return f"every row of {names} would be erased ({lost} rows; the window would go from {old} to {new})"
