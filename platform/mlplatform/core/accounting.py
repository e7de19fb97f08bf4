"""Counting the records each source file holds, independently of the DuckDB load, and reconciling them.

"Nothing lost" is proved from the source, not between warehouse tables: each file's records are
counted here with Python's csv module (CSV, malformed lines included) or from the Parquet footer,
and compared with the rows that landed in clean + quarantine for that file (`_source_file`).

A file that cannot be read at all (a truncated Parquet file, a path that cannot be opened) is left
out of the read and counts as one record: one quarantine row (`_source_row` 0, reason `file
unreadable: <error>`) in the first partition stands for it, so the file is reconciled and named.

A CSV file whose quoting is broken (a quote that never closes) has no well-defined records: it is
then counted, and read by `read_csv_records`, one physical line per record, so that a stray quote
cannot swallow the rest of the file into one field.
"""

from __future__ import annotations

import codecs
import csv
from collections.abc import Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TextIO

import duckdb
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from mlplatform.contracts import Stage, Table
from mlplatform.core.sql import quote_ident, quote_literal
from mlplatform.core.warehouse import table_exists, table_name, window_column

csv.field_size_limit(1 << 30)  # a 3 MB field is data, not an error


@dataclass(frozen=True)
class FileCount:
    """What a source file holds, read without DuckDB."""

    path: str
    rows: int  # data records, header excluded, malformed records included, blank lines not
    header: tuple[str, ...]
    encoding: str  # "utf-8", "utf-8-sig" (BOM) or "utf-16" (BOM); undecodable bytes are kept as U+FFFD
    by_lines: bool = False  # quoting is broken: each physical line is one record
    problem: str | None = None  # why `by_lines`, or why the file is empty or unreadable
    unreadable: bool = False  # cannot be read at all: one record, the quarantine row that names it


UNREADABLE = "file unreadable"


@dataclass(frozen=True)
class FileAccount:
    """One source file in one run: its records against what landed."""

    source_file: str
    source_rows: int  # counted from the file (FileCount.rows)
    read_rows: int  # rows the load read from it, in every partition or pending
    window_rows: int  # of those, rows placed in the run's window
    landed_rows: int = 0  # rows of the window in clean + quarantine
    stored_rows: int = 0  # rows of the file in clean + quarantine, over all partitions
    duplicate_rows: int = 0  # of those, extra copies of one source row (counted twice)
    recorded: bool = True  # in the source at the last raw run (else it holds no record: gone)
    note: str | None = None

    @property
    def read_in_full(self) -> bool:
        return self.source_rows == self.read_rows

    @property
    def reconciles(self) -> bool:
        return (
            self.read_in_full
            and self.window_rows == self.landed_rows
            and self.duplicate_rows == 0
            and self.stored_rows <= self.source_rows  # a file gone from the source: none stored
        )


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


def unreadable_reason(path: str, source_format: str) -> str | None:
    """`file unreadable: <error>` when the file cannot be opened (or its Parquet footer read), else None."""
    try:
        if Path(path).stat().st_size == 0:
            return None  # empty, not broken: it holds no record
        if source_format == "parquet":
            pq.ParquetFile(path).close()
        else:
            with open(path, "rb") as handle:
                handle.read(1)
    except (OSError, pa.ArrowException) as exc:
        return f"{UNREADABLE}: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"
    return None


def count_source(path: str, source_format: str, delimiter: str = ",") -> FileCount:
    reason = unreadable_reason(path, source_format)
    if reason is not None:
        return FileCount(path=path, rows=1, header=(), encoding="binary", problem=reason, unreadable=True)
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


def rows_per_file(conn: duckdb.DuckDBPyConnection, relation: str, where: str | None = None) -> dict[str, int]:
    clause = f" WHERE {where}" if where else ""
    rows = conn.execute(f"SELECT _source_file, count(*) FROM {relation}{clause} GROUP BY 1").fetchall()
    return {str(f): int(n) for f, n in rows}


def recorded_files(conn: duckdb.DuckDBPyConnection, schema: str) -> set[str]:
    """The source files the last raw run recorded (empty before the first run)."""
    if not table_exists(conn, schema, Table.SOURCE_ACCOUNTING):
        return set()
    query = f"SELECT source_file FROM {table_name(schema, Table.SOURCE_ACCOUNTING)}"
    return {str(f) for (f,) in conn.execute(query).fetchall()}


def record_accounting(
    conn: duckdb.DuckDBPyConnection,
    schema: str,
    counts: Mapping[str, FileCount],
    read: Mapping[str, int],
    in_window: Mapping[str, int],
    window: tuple[datetime, datetime],
    notes: Mapping[str, str],
) -> list[FileAccount]:
    """Keep one row per source file of this run in `<schema>._source_accounting`, for the checks."""
    files = sorted(set(counts) | set(read))
    accounts = [
        FileAccount(
            source_file=f,
            source_rows=counts[f].rows if f in counts else 0,
            read_rows=read.get(f, 0),
            window_rows=in_window.get(f, 0),
            note=notes.get(f) or (counts[f].problem if f in counts else None),
        )
        for f in files
    ]
    frame = pd.DataFrame(
        {
            "source_file": pd.Series(files, dtype="object"),
            "source_rows": pd.Series([a.source_rows for a in accounts], dtype="int64"),
            "read_rows": pd.Series([a.read_rows for a in accounts], dtype="int64"),
            "window_rows": pd.Series([a.window_rows for a in accounts], dtype="int64"),
            "note": pd.Series([a.note for a in accounts], dtype="object"),
        }
    )
    conn.register("_accounting_df", frame)
    start, end = (f"{quote_literal(moment.isoformat(sep=' '))}::TIMESTAMP" for moment in window)
    conn.execute(
        f"CREATE OR REPLACE TABLE {table_name(schema, Table.SOURCE_ACCOUNTING)} AS "
        "SELECT source_file::VARCHAR AS source_file, source_rows, read_rows, window_rows, "
        f"{start} AS window_start, {end} AS window_end, note::VARCHAR AS note FROM _accounting_df"
    )
    conn.unregister("_accounting_df")
    return accounts


def _accounts_sql(conn: duckdb.DuckDBPyConnection, schema: str, time_column: str) -> str:
    """One aggregate over clean + quarantine (all partitions) joined to the recorded accounts: per file,
    its rows in the recorded window, in all partitions, and extra copies of one (file, source row)."""
    parts = [
        f"SELECT _source_file AS f, _source_row AS r, {quote_ident(column)} >= w.s "
        f"AND {quote_ident(column)} < w.e AS in_window FROM {table_name(schema, stage)}, w"
        for stage, column in ((s, window_column(s, time_column)) for s in (Stage.CLEAN, Stage.QUARANTINE))
        if table_exists(conn, schema, stage)
    ] or ["SELECT NULL::VARCHAR AS f, NULL::BIGINT AS r, NULL::BOOLEAN AS in_window WHERE false"]
    return f"""
        WITH acc AS (SELECT * FROM {table_name(schema, Table.SOURCE_ACCOUNTING)}),
        w AS (SELECT min(window_start) AS s, max(window_end) AS e FROM acc),
        stored AS ({" UNION ALL ".join(parts)}),
        per_row AS (
            SELECT f, r, count(*) AS n, count(*) FILTER (WHERE in_window) AS n_window
            FROM stored GROUP BY f, r
        ),
        per_file AS (
            SELECT f, sum(n) AS n, sum(n_window) AS n_window,
                   sum(n - 1) FILTER (WHERE r IS NOT NULL) AS copies
            FROM per_row GROUP BY f
        )
        SELECT coalesce(acc.source_file, p.f), acc.source_rows, acc.read_rows, acc.window_rows, acc.note,
               coalesce(p.n_window, 0), coalesce(p.n, 0), coalesce(p.copies, 0)
        FROM acc FULL JOIN per_file p ON acc.source_file = p.f
        ORDER BY 1
    """


def read_accounts(conn: duckdb.DuckDBPyConnection, schema: str, time_column: str) -> list[FileAccount]:
    """The accounts the last raw run recorded, with what clean + quarantine now hold of each file.

    For the run summary: `[a for a in read_accounts(conn, spec.name, spec.time_column) if not
    a.reconciles]` lists the files that do not reconcile. Empty when raw never recorded any.
    """
    if not table_exists(conn, schema, Table.SOURCE_ACCOUNTING):
        return []
    return [
        FileAccount(
            source_file=str(f),
            source_rows=int(source or 0),
            read_rows=int(read or 0),
            window_rows=int(window or 0),
            landed_rows=int(landed),
            stored_rows=int(stored),
            duplicate_rows=int(copies),
            recorded=source is not None,
            note=note,
        )
        for f, source, read, window, note, landed, stored, copies in conn.execute(
            _accounts_sql(conn, schema, time_column)
        ).fetchall()
    ]


def _cell(value: object) -> str:
    return "" if value is None else str(value).replace("|", "\\|").replace("\n", " ")


def accounts_markdown(accounts: Sequence[FileAccount], with_landed: bool, limit: int = 20) -> str:
    """The accounts as a markdown table (UI metadata), files that do not add up first, then noted ones.

    `with_landed`: also what clean + quarantine hold (the check; raw's step knows only what it read).
    """
    if not accounts:
        return "_no files_"

    def adds_up(account: FileAccount) -> bool:
        return account.reconciles if with_landed else account.read_in_full

    shown = sorted(accounts, key=lambda a: (adds_up(a), a.note is None))[:limit]
    head = ["file", "source records", "read", "placed in window"]
    head += ["clean + quarantine (window)", "clean + quarantine (all)", "copies"] if with_landed else []
    lines = ["| " + " | ".join([*head, "note"]) + " |", "|" + "---|" * (len(head) + 1)]
    for a in shown:
        cells: list[object] = [Path(a.source_file).name, a.source_rows, a.read_rows, a.window_rows]
        cells += [a.landed_rows, a.stored_rows, a.duplicate_rows] if with_landed else []
        lines.append("| " + " | ".join(_cell(c) for c in [*cells, a.note]) + " |")
    more = len(accounts) - len(shown)
    return "\n".join(lines + ([f"\n_and {more} more file(s)_"] if more > 0 else []))


def describe_account(account: FileAccount) -> str:
    """One line a user can act on, e.g. for the run summary."""
    name = Path(account.source_file).name
    if not account.recorded and account.stored_rows:
        return (
            f"{name}: clean + quarantine hold {account.stored_rows} rows of it, but the file is no longer in "
            "the source"
        )
    if account.source_rows != account.read_rows:
        return f"{name}: the file holds {account.source_rows} records but the load read {account.read_rows}"
    if account.window_rows != account.landed_rows:
        return (
            f"{name}: {account.window_rows} rows placed in the window but {account.landed_rows} "
            "are in clean + quarantine"
        )
    if account.duplicate_rows:
        return (
            f"{name}: {account.duplicate_rows} rows are in clean + quarantine twice (the same source row "
            "in more than one place, over all partitions)"
        )
    if account.stored_rows > account.source_rows:
        return (
            f"{name}: clean + quarantine hold {account.stored_rows} rows of it over all partitions, but the "
            f"file holds {account.source_rows} records"
        )
    return f"{name}: {account.source_rows} records, all accounted for"


def shrink_problem(
    before: Mapping[str, int],
    after: Mapping[str, int],
    known_files: Collection[str] = (),
    stored: Mapping[str, int] | None = None,
) -> str | None:
    """Why replacing a window's rows (per file, `before`) by `after` would silently erase data, if it would.
    A vanished file's figure is its rows in the whole table (`stored`, per file) when given.

    Emptying a window that held rows, or losing every row of a file, is refused whatever the totals;
    fewer rows of a file that still yields some is not, nor a renamed file: one that vanished while a
    file new in the window (not in `known_files`, the files the last run read) holds at least as many rows.
    """
    old, new = sum(before.values()), sum(after.values())
    if old == 0:
        return None
    if new == 0:
        return f"its rows would go from {old} to 0 (the source files no longer yield any for it)"
    newcomers = sorted(n for f, n in after.items() if n and not before.get(f) and f not in known_files)
    gone = []
    for f in sorted((f for f, n in before.items() if n and not after.get(f)), key=lambda f: -before[f]):
        renamed = next((i for i, n in enumerate(newcomers) if n >= before[f]), None)
        if renamed is None:
            gone.append(f)
        else:
            newcomers.pop(renamed)  # the smallest new file that can hold it: each new file is one rename
    if not gone:
        return None
    gone.sort()
    names = ", ".join(Path(f).name for f in gone[:5]) + (
        f" and {len(gone) - 5} more" if len(gone) > 5 else ""
    )
    lost = sum({**before, **(stored or {})}[f] for f in gone)
    return f"every row of {names} would be erased ({lost} rows; the window would go from {old} to {new})"
