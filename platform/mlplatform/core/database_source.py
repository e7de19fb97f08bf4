"""A Postgres table or query as a source: its rows are landed as Parquet files that the file chain loads.

Pure logic over ADBC (Arrow) and the file system: no Dagster. The DSN comes only from the environment
variable the spec names; errors name the server as host:port/database, never the password.

`extract_new_rows` takes, in one REPEATABLE READ snapshot, the rows whose `incremental_column` is past
the last landed value (`> last` and `<= max at the start`: rows written meanwhile are taken next time),
in order and in batches of about `batch_rows`. Each batch is one Parquet file named by its range, next to
a sidecar JSON holding the count the database gave for exactly that range (`SELECT count(*) ... WHERE
col > a AND col <= b`): the raw stage's accounting compares what it read with the database's count.
Files are written to a temp name and renamed, the Parquet file first: a batch without its sidecar is
extracted again, under the same name, by the next run.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from datetime import UTC, date, datetime, time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo

import pyarrow as pa

from mlplatform.core.source import SourceError, SourceProbe
from mlplatform.specs.model import DatasetSpec, PostgresSourceSpec, SourceSpec

CONNECT_TIMEOUT_SECONDS = 10
INCREMENTAL_TYPES = "a timestamp or integer column"


def _source(spec: DatasetSpec) -> PostgresSourceSpec:
    if not isinstance(spec.source, PostgresSourceSpec):
        raise TypeError(f"{spec.name}: not a postgres source")
    return spec.source


def quote_pg_literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def quote_pg_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


@dataclass(frozen=True)
class Server:
    """The DSN of a spec's source, read from its environment variable, and how errors name it."""

    dsn: str
    shown: str  # host:port/database, no user or password

    def scrub(self, text: str) -> str:
        """`text` (a driver error) without the DSN or its password."""
        password = urlsplit(self.dsn).password
        text = text.replace(self.dsn, self.shown)
        return text.replace(password, "***") if password else text


def server_of(spec: DatasetSpec, environ: Mapping[str, str] | None = None) -> Server:
    variable = _source(spec).dsn.env
    dsn = (os.environ if environ is None else environ).get(variable, "")
    if not dsn:
        raise SourceError(
            f"source.dsn: environment variable {variable} is not set: it must hold the postgresql:// URI "
            f"of {spec.name}'s source database"
        )
    parts = urlsplit(dsn)
    if parts.scheme not in ("postgresql", "postgres"):
        raise SourceError(f"source.dsn: {variable} must hold a postgresql://host:port/database URI")
    shown = f"{parts.hostname or 'localhost'}:{parts.port or 5432}/{parts.path.lstrip('/') or '?'}"
    return Server(dsn=dsn, shown=shown)


def _with_timeout(dsn: str) -> str:
    if "connect_timeout=" in dsn:
        return dsn
    return f"{dsn}{'&' if '?' in dsn else '?'}connect_timeout={CONNECT_TIMEOUT_SECONDS}"


@contextmanager
def connect(server: Server) -> Iterator[Any]:
    """An ADBC cursor on the server (autocommit: transactions are explicit). Errors are raised `from
    None`: the driver's own exception may hold the DSN, password included."""
    import adbc_driver_manager
    import adbc_driver_postgresql.dbapi as adbc

    try:
        conn = adbc.connect(_with_timeout(server.dsn), autocommit=True)
    except adbc_driver_manager.Error as exc:
        raise SourceError(
            f"source.dsn: cannot connect to postgres at {server.shown}: {_first(server, exc)}"
        ) from None
    try:
        with conn.cursor() as cursor:
            # The platform only reads its sources: a `query:` cannot change the database.
            cursor.execute("SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY")
            yield cursor
    finally:
        conn.close()


def end_transaction(cursor: Any) -> None:
    """Commit (a read-only transaction: nothing to keep); a lost connection must not hide the first error."""
    import adbc_driver_manager

    with suppress(adbc_driver_manager.Error):
        cursor.execute("COMMIT")


def _first(server: Server, exc: Exception) -> str:
    """The driver error, on one line, without the DSN, the query echo or the password."""
    text = str(exc).split("Query was:")[0]
    text = re.sub(r"^[A-Z_]+: (\[libpq\] )?", "", text.strip())
    return server.scrub(" ".join(text.split()))


def run_query(cursor: Any, server: Server, key: str, what: str, sql: str) -> pa.Table:
    """The rows of `sql` as Arrow; a database error becomes a SourceError on `key` naming `what`."""
    import adbc_driver_manager

    try:
        cursor.execute(sql)
        return cursor.fetch_arrow_table()
    except adbc_driver_manager.Error as exc:
        raise SourceError(
            f"{key}: cannot read {what} in postgres at {server.shown}: {_first(server, exc)}"
        ) from None


def _scalar_row(cursor: Any, server: Server, spec: DatasetSpec, sql: str) -> dict[str, Any]:
    source = _source(spec)
    return run_query(cursor, server, "source", source.described, sql).to_pylist()[0]


def source_schema(cursor: Any, server: Server, spec: DatasetSpec) -> pa.Schema:
    """The columns of the table or query; a missing table, column or type becomes a SourceError."""
    source = _source(spec)
    key = "source.table" if source.table is not None else "source.query"
    schema = run_query(
        cursor, server, key, source.described, f"SELECT * FROM {source.relation} LIMIT 0"
    ).schema
    names = ", ".join(schema.names)
    missing = [c for c in spec.source_columns if c not in schema.names]
    if missing:
        raise SourceError(
            f"columns: {', '.join(repr(m) for m in missing)} not found in {source.described} at "
            f"{server.shown} (it has: {names})"
        )
    column = source.incremental_column
    if column not in schema.names:
        raise SourceError(
            f"source.incremental_column: column {column!r} not found in {source.described} at "
            f"{server.shown} (it has: {names})"
        )
    kind = schema.field(column).type
    if not (pa.types.is_timestamp(kind) or pa.types.is_integer(kind)):
        # A date cannot tell one day's rows apart: rows added later to the last landed day would never be
        # extracted (extraction takes the rows past the watermark).
        why = "; rows added to a landed day later would never be taken" if pa.types.is_date(kind) else ""
        raise SourceError(
            f"source.incremental_column: column {column!r} of {source.described} is {kind}{why}; use "
            f"{INCREMENTAL_TYPES}"
        )
    time_type = schema.field(spec.time_column).type
    if not (pa.types.is_timestamp(time_type) or pa.types.is_date(time_type)):
        raise SourceError(
            f"time_column: column {spec.time_column!r} of {source.described} is {time_type}; a postgres "
            "source needs a timestamp or date column (cast it in `query:`)"
        )
    return schema


def naive_utc(value: datetime | date | None, timezone: str) -> datetime | None:
    """A database time as the platform stores times: naive UTC (naive values are in the spec's zone)."""
    if value is None:
        return None
    if not isinstance(value, datetime):
        value = datetime.combine(value, time())
    if value.tzinfo is None:
        value = value.replace(tzinfo=ZoneInfo(timezone))
    return value.astimezone(UTC).replace(tzinfo=None)


def time_range(
    cursor: Any, server: Server, spec: DatasetSpec, after: str | None = None
) -> tuple[datetime | None, datetime | None]:
    """First and last plausible row time (1900 .. tomorrow, as for files), of the rows past `after`."""
    source = _source(spec)
    column = quote_pg_ident(spec.time_column)
    where = [f"{column} >= '1900-01-01'", f"{column} < now() + interval '1 day'"]
    if after is not None:
        where.append(f"{quote_pg_ident(source.incremental_column)} > {quote_pg_literal(after)}")
    row = _scalar_row(
        cursor,
        server,
        spec,
        f"SELECT min({column}) AS first, max({column}) AS last FROM {source.relation} WHERE {' AND '.join(where)}",
    )
    return naive_utc(row["first"], spec.timezone), naive_utc(row["last"], spec.timezone)


def probe_database(spec: DatasetSpec, environ: Mapping[str, str] | None = None) -> SourceProbe:
    """Columns and plausible time range of the table or query, asked of the database."""
    server = server_of(spec, environ)
    with connect(server) as cursor:
        schema = source_schema(cursor, server, spec)
        first, last = time_range(cursor, server, spec)
    return SourceProbe(files=(), columns=tuple(schema.names), time_min=first, time_max=last)


@dataclass(frozen=True)
class TableState:
    """What the new-data sensor compares with its cursor."""

    max_value: str | None  # of the incremental column, as the database writes it
    rows: int
    rows_without_value: int  # NULL in the incremental column: never extracted


def table_state(spec: DatasetSpec, environ: Mapping[str, str] | None = None) -> TableState:
    source = _source(spec)
    column = quote_pg_ident(source.incremental_column)
    server = server_of(spec, environ)
    with connect(server) as cursor:
        row = _scalar_row(
            cursor,
            server,
            spec,
            f"SELECT max({column})::text AS max_value, count(*) AS n, count(*) FILTER (WHERE {column} IS NULL) "
            f"AS nulls FROM {source.relation}",
        )
    return TableState(row["max_value"], int(row["n"]), int(row["nulls"]))


def new_rows_time_range(
    spec: DatasetSpec, after: str | None, environ: Mapping[str, str] | None = None
) -> tuple[datetime | None, datetime | None]:
    """The time range of the rows whose incremental column is past `after` (all rows when None)."""
    server = server_of(spec, environ)
    with connect(server) as cursor:
        return time_range(cursor, server, spec, after)


def landing_dir(home: Path, dataset: str) -> Path:
    """Where a dataset's database rows are landed: under the platform home."""
    return Path(home) / "landing" / dataset


def landed_spec(spec: DatasetSpec, folder: Path) -> DatasetSpec:
    """The spec as the file chain reads it: the landed Parquet files of `folder`."""
    files = SourceSpec(path=str(Path(folder).resolve() / "*.parquet"), format="parquet")
    return spec.model_copy(update={"source": files})
