"""Landing a Postgres source's new rows as Parquet batch files (see mlplatform.core.database_source).

A batch is `batch_<n>_<after>_<through>.parquet` (the range of the incremental column it holds) and its
sidecar `batch_<n>_....json`: the source, the range, the rows the database counted for exactly that range
and the rows written. The last sidecar's `through` is the watermark the next extraction starts after.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from mlplatform.core.accounting import FileCount, count_source
from mlplatform.core.database_source import (
    Server,
    connect,
    end_transaction,
    quote_pg_ident,
    quote_pg_literal,
    run_query,
    server_of,
    source_schema,
)
from mlplatform.specs.model import DatasetSpec, PostgresSourceSpec


@dataclass(frozen=True)
class LandedBatch:
    path: str  # the Parquet file
    source: str  # e.g. "table public.trips"
    incremental_column: str
    after: str | None  # exclusive lower bound (None: from the first row)
    through: str  # inclusive upper bound
    database_rows: int  # SELECT count(*) for exactly this range, in the extraction's snapshot
    landed_rows: int  # rows written to the file
    extracted_at: str


def _safe(value: str | None) -> str:
    return re.sub(r"[^0-9A-Za-z]+", "-", value).strip("-") if value is not None else "start"


def _sidecar(path: Path) -> Path:
    return path.with_suffix(".json")


def landed_batches(folder: Path) -> list[LandedBatch]:
    """Every batch with a sidecar, oldest first."""
    batches = []
    for sidecar in sorted(Path(folder).resolve().glob("batch_*.json")):
        data = json.loads(sidecar.read_text())
        batches.append(LandedBatch(**{**data, "path": str(sidecar.with_suffix(".parquet"))}))
    return batches


def landed_watermark(folder: Path) -> str | None:
    """The incremental column's last landed value (None before the first batch)."""
    batches = landed_batches(folder)
    return batches[-1].through if batches else None


LOCK_FILE = ".extract.lock"


@contextmanager
def extraction_lock(folder: Path) -> Iterator[None]:
    """One extraction of a folder at a time, across processes: two would start from the same watermark
    and land overlapping batches (`mlplatform run` executes in its own process, outside the pools)."""
    with open(folder / LOCK_FILE, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _remove_unfinished(folder: Path) -> None:
    """Drop a batch file whose sidecar was never written (a run died between the two renames): it was
    never accounted, its rows are extracted again, and under another name when rows arrived meanwhile."""
    for path in folder.glob("batch_*.parquet"):
        if not _sidecar(path).exists():
            path.unlink()


def _range_predicate(column: str, after: str | None, through: str) -> str:
    quoted = quote_pg_ident(column)
    upper = f"{quoted} <= {quote_pg_literal(through)}"
    return upper if after is None else f"{quoted} > {quote_pg_literal(after)} AND {upper}"


def _for_parquet(table: pa.Table) -> pa.Table:
    """Driver extension types (e.g. Postgres numeric) as their storage type (text): Parquet keeps them."""
    columns = [
        column.cast(column.type.storage_type) if isinstance(column.type, pa.ExtensionType) else column
        for column in table.columns
    ]
    return pa.table(columns, names=table.column_names)


def _write_atomically(path: Path, write: Any) -> None:
    temp = path.with_name(f".{path.name}.tmp")
    write(temp)
    os.replace(temp, path)


def _land_batch(folder: Path, number: int, table: pa.Table, batch: LandedBatch) -> LandedBatch:
    name = f"batch_{number:06d}_{_safe(batch.after)}_{_safe(batch.through)}"
    path = folder / f"{name}.parquet"
    _write_atomically(path, lambda temp: pq.write_table(_for_parquet(table), temp))
    landed = LandedBatch(**{**asdict(batch), "path": str(path)})
    record = {k: v for k, v in asdict(landed).items() if k != "path"}
    _write_atomically(_sidecar(path), lambda temp: temp.write_text(json.dumps(record, indent=1)))
    return landed


def _batch_end(cursor: Any, server: Server, source: PostgresSourceSpec, after: str | None, end: str) -> str:
    """The incremental value closing the next batch: that of its `batch_rows`-th row (ties go with it)."""
    column = quote_pg_ident(source.incremental_column)
    sql = (
        f"SELECT max(v)::text AS through FROM (SELECT {column} AS v FROM {source.relation} WHERE "
        f"{_range_predicate(source.incremental_column, after, end)} ORDER BY {column} LIMIT {source.batch_rows}) b"
    )
    return run_query(cursor, server, "source", source.described, sql).to_pylist()[0]["through"]


def _read_batch(
    cursor: Any, server: Server, source: PostgresSourceSpec, after: str | None, through: str
) -> tuple[pa.Table, LandedBatch]:
    """The rows of (after, through], in order, and the database's own count of them."""
    where = _range_predicate(source.incremental_column, after, through)
    order = quote_pg_ident(source.incremental_column)
    read = f"SELECT * FROM {source.relation} WHERE {where} ORDER BY {order}"
    rows = run_query(cursor, server, "source", source.described, read)
    count = f"SELECT count(*) AS n FROM {source.relation} WHERE {where}"
    counted = run_query(cursor, server, "source", source.described, count).to_pylist()[0]["n"]
    batch = LandedBatch(
        path="",
        source=source.described,
        incremental_column=source.incremental_column,
        after=after,
        through=through,
        database_rows=int(counted),
        landed_rows=rows.num_rows,
        extracted_at=datetime.now(UTC).isoformat(timespec="seconds"),
    )
    return rows, batch


def extract_new_rows(
    spec: DatasetSpec, folder: Path, environ: Mapping[str, str] | None = None
) -> list[LandedBatch]:
    """Land the rows past the watermark as batch files in `folder`; returns the new batches."""
    source = spec.source
    if not isinstance(source, PostgresSourceSpec):
        raise TypeError(f"{spec.name}: not a postgres source")
    folder.mkdir(parents=True, exist_ok=True)
    server = server_of(spec, environ)
    with extraction_lock(folder):
        _remove_unfinished(folder)
        return _extract(spec, source, server, folder)


def _extract(
    spec: DatasetSpec, source: PostgresSourceSpec, server: Server, folder: Path
) -> list[LandedBatch]:
    after = landed_watermark(folder)
    number = len(landed_batches(folder)) + 1
    new: list[LandedBatch] = []
    with connect(server) as cursor:
        source_schema(cursor, server, spec)  # a missing table or column fails naming it
        # One snapshot: the end, each batch and its count agree; rows written meanwhile wait for next time.
        cursor.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
        try:
            sql = f"SELECT max({quote_pg_ident(source.incremental_column)})::text AS m FROM {source.relation}"
            end = run_query(cursor, server, "source", source.described, sql).to_pylist()[0]["m"]
            while end is not None and after != end:
                through = _batch_end(cursor, server, source, after, end)
                if through is None:  # nothing past `after` (rows were deleted)
                    break
                rows, batch = _read_batch(cursor, server, source, after, through)
                new.append(_land_batch(folder, number, rows, batch))
                after, number = through, number + 1
        finally:
            end_transaction(cursor)
    return new


def landed_counts(folder: Path) -> dict[str, FileCount]:
    """Each landed file's records for the raw stage's accounting: the count the database gave for its
    range (a file without a sidecar, or one that cannot be read, is counted as any Parquet file)."""
    return count_landed_files(folder, {b.path: b.database_rows for b in landed_batches(folder)})


def count_landed_files(folder: Path, recorded: Mapping[str, int]) -> dict[str, FileCount]:
    """Every Parquet file of a landing folder counted, its count replaced by what the source recorded
    for it (`recorded`, by resolved path: the database's rows, the records a consumer put in); a file
    with no record, or one that cannot be read, is counted as any Parquet file."""
    counts = {}
    for path in sorted(str(p) for p in Path(folder).resolve().glob("*.parquet")):
        count = count_source(path, "parquet")
        if path in recorded and not count.unreadable:
            count = FileCount(path, recorded[path], count.header, count.encoding)
        counts[path] = count
    return counts
