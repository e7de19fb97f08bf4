"""Small SQL-building helpers shared by the stages (DuckDB dialect)."""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Concatenate, ParamSpec, TypeVar

if TYPE_CHECKING:
    import duckdb

    from mlplatform.specs.model import DatasetSpec

P = ParamSpec("P")
R = TypeVar("R")

DUCKDB_TYPES = {
    "int": "BIGINT",
    "float": "DOUBLE",
    "bool": "BOOLEAN",
    "string": "VARCHAR",
    "category": "VARCHAR",
    "date": "DATE",
    "timestamp": "TIMESTAMP",
}
_TRUE_WORDS = "('true', 't', '1', 'yes', 'y')"
_FALSE_WORDS = "('false', 'f', '0', 'no', 'n')"
_INTEGER_TYPES = {
    "TINYINT", "SMALLINT", "INTEGER", "BIGINT", "HUGEINT",
    "UTINYINT", "USMALLINT", "UINTEGER", "UBIGINT", "UHUGEINT",
}  # fmt: skip
_FLOAT_TYPES = {"DOUBLE", "FLOAT", "REAL"}
# A time of day followed by a zone: Z, an offset (+05, +05:30, -0800) or a name (UTC, America/New_York).
# Text without one is a wall time in the spec's `timezone`.
_ZONE_SUFFIX = r"\d:\d\d(:\d\d(\.\d*)?)?\s*(Z|z|[+-]\d\d(:?\d\d){0,2}|\s[A-Za-z][A-Za-z0-9_/+-]*)\s*$"
# Reason endings that name a check of their own in the UI's reason counts (else "parse").
NOT_FINITE = " is not a finite number (allow_infinite: true keeps it)"
DST_GAP = "(a daylight saving gap)"
_ZONE_NAME = r"\d:\d\d(:\d\d(\.\d*)?)?\s+([A-Za-z][A-Za-z0-9_/+-]*)\s*$"


def quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def quote_literal(value: str) -> str:
    return "'" + str(value).replace("'", "''") + "'"


def source_kind(source_type: str) -> str:
    """A DuckDB type's family: text, int, float, decimal, bool, date, timestamp, timestamptz or other."""
    upper = source_type.upper()
    if upper == "VARCHAR":
        return "text"
    if upper in _INTEGER_TYPES:
        return "int"
    if upper in _FLOAT_TYPES:
        return "float"
    if upper.startswith("DECIMAL"):
        return "decimal"
    if upper == "BOOLEAN":
        return "bool"
    if upper == "DATE":
        return "date"
    if "TIME ZONE" in upper or upper.startswith("TIMESTAMPTZ"):
        return "timestamptz"
    if upper.startswith("TIMESTAMP") or upper == "DATETIME":
        return "timestamp"
    return "other"


def typed_expression(
    expr: str,
    spec_type: str,
    source_type: str = "VARCHAR",
    timezone: str = "UTC",
    allow_infinite: bool = False,
) -> str:
    """`expr` (of DuckDB type `source_type`) cast to the spec type, NULL where the value does not fit.

    Stricter than a plain TRY_CAST, whatever the source type, so a bad value is quarantined instead
    of hidden: DuckDB would round 1.5 into the integer 2, read 'yes' or 7 as true, drop the offset
    of '10:00+05:00' and the time of day of a date. Times come out as naive UTC (see `_as_timestamp`);
    floats without NaN (NULL) nor, unless allowed, infinities.
    """
    kind = source_kind(source_type)
    if spec_type == "int":
        return _as_int(expr, kind)
    if spec_type == "float":
        return _as_float(expr, kind, allow_infinite)
    if spec_type == "bool":
        return _as_bool(expr, kind)
    if spec_type in ("string", "category"):
        return expr if kind == "text" else f"CAST({expr} AS VARCHAR)"
    if spec_type == "date":
        return _as_date(expr, kind, timezone)
    return _as_timestamp(expr, kind, timezone)


def _without(value: str, sql_type: str, specials: list[str]) -> str:
    """`value` with the special values turned to NULL; nullif keeps `value` computed once (DuckDB
    compares NaN equal to NaN, so it works for NaN too)."""
    for special in specials:
        value = f"nullif({value}, {quote_literal(special)}::{sql_type})"
    return value


def _as_int(expr: str, kind: str) -> str:
    if kind == "text":
        return f"TRY_CAST(CASE WHEN regexp_full_match({expr}, '\\s*[+-]?[0-9]+(\\.0*)?\\s*') THEN {expr} END AS BIGINT)"
    if kind == "int":
        return f"TRY_CAST({expr} AS BIGINT)"  # NULL where it overflows
    if kind in ("float", "decimal"):
        return f"TRY_CAST(CASE WHEN {expr} = trunc({expr}) THEN {expr} END AS BIGINT)"
    return "NULL::BIGINT"


def _as_float(expr: str, kind: str, allow_infinite: bool) -> str:
    if kind == "text":
        value = f"TRY_CAST({expr} AS DOUBLE)"
    elif kind in ("int", "float", "decimal"):
        value = f"CAST({expr} AS DOUBLE)"
    else:
        return "NULL::DOUBLE"
    return _without(value, "DOUBLE", ["nan"] if allow_infinite else ["nan", "inf", "-inf"])


def _as_bool(expr: str, kind: str) -> str:
    if kind == "text":
        return (
            f"CASE WHEN lower(trim({expr})) IN {_TRUE_WORDS} THEN true "
            f"WHEN lower(trim({expr})) IN {_FALSE_WORDS} THEN false END"
        )
    if kind == "bool":
        return expr
    if kind in ("int", "float", "decimal"):
        return f"CASE WHEN {expr} = 1 THEN true WHEN {expr} = 0 THEN false END"
    return "NULL::BOOLEAN"


def _midnight_date(timestamp: str) -> str:
    """The date of a wall time at midnight, NULL for any other time of day (no silent truncation)."""
    return f"(CASE WHEN {timestamp} = date_trunc('day', {timestamp}) THEN CAST({timestamp} AS DATE) END)"


def _as_date(expr: str, kind: str, timezone: str) -> str:
    if kind == "text":
        naive = f"NOT regexp_matches({expr}, {quote_literal(_ZONE_SUFFIX)})"
        value = f"(CASE WHEN {naive} THEN {_midnight_date(f'TRY_CAST({expr} AS TIMESTAMP)')} END)"
    elif kind == "date":
        value = expr
    elif kind == "timestamp":
        value = _midnight_date(f"CAST({expr} AS TIMESTAMP)")
    elif kind == "timestamptz":  # the calendar day in the spec's zone
        value = _midnight_date(f"CAST(timezone({quote_literal(timezone)}, {expr}) AS TIMESTAMP)")
    else:
        return "NULL::DATE"
    return _without(value, "DATE", ["infinity", "-infinity"])


def _is_utc(timezone: str) -> bool:
    return timezone.upper() in ("UTC", "ETC/UTC")


def _local_to_utc(wall: str, timezone: str) -> str:
    """A wall time in `timezone` as naive UTC; NULL where that wall time does not exist (a DST gap).

    DuckDB (ICU) would move a time in a spring-forward gap by the gap; the round trip catches it. An
    ambiguous time (the repeated hour in autumn) is ICU's choice: the second occurrence, standard time.
    Three ICU conversions a row: only for a spec whose `timezone` is not UTC.
    """
    if _is_utc(timezone):
        return wall
    zone = quote_literal(timezone)
    return (
        f"(CASE WHEN CAST(timezone({zone}, timezone({zone}, {wall})) AS TIMESTAMP) = {wall} "
        f"THEN CAST(timezone('UTC', timezone({zone}, {wall})) AS TIMESTAMP) END)"
    )


def _as_timestamp(expr: str, kind: str, timezone: str) -> str:
    """Naive UTC. timezone('UTC', x) and not CAST(x AS TIMESTAMP): the cast uses the session's
    TimeZone, which DuckDB takes from the machine (TZ), so the same file would load differently."""
    if kind == "text":
        zoned = f"regexp_matches({expr}, {quote_literal(_ZONE_SUFFIX)})"
        instant = f"CAST(timezone('UTC', TRY_CAST({expr} AS TIMESTAMPTZ)) AS TIMESTAMP)"
        wall = _local_to_utc(f"TRY_CAST({expr} AS TIMESTAMP)", timezone)
        value = (
            f"(CASE WHEN NOT {zoned} THEN {wall} WHEN NOT coalesce({_named_zone_gap(expr)}, false) "
            f"THEN {instant} END)"
        )
    elif kind in ("timestamp", "date"):
        value = _local_to_utc(f"CAST({expr} AS TIMESTAMP)", timezone)
    elif kind == "timestamptz":
        value = f"CAST(timezone('UTC', {expr}) AS TIMESTAMP)"
    else:
        return "NULL::TIMESTAMP"
    return _without(value, "TIMESTAMP", ["infinity", "-infinity"])


def _named_zone_gap(expr: str) -> str:
    """SQL true where text names its zone ('02:30 America/New_York') and that wall time falls in
    the zone's spring-forward gap, which DuckDB would move by the gap instead of refusing."""
    zone = f"regexp_extract({expr}, {quote_literal(_ZONE_NAME)}, 3)"
    instant = f"TRY_CAST({expr} AS TIMESTAMPTZ)"
    # CASE, not AND: timezone() fails on '' even where the other operand is false
    return (
        f"(CASE WHEN {zone} <> '' AND {instant} IS NOT NULL "
        f"THEN CAST(timezone({zone}, {instant}) AS TIMESTAMP) <> TRY_CAST({expr} AS TIMESTAMP) END)"
    )


def _column_options(spec: DatasetSpec, name: str) -> tuple[str, str, bool]:
    """Spec type, zone and allow_infinite of a column; an undeclared (derived) time column is a timestamp."""
    column = spec.columns.get(name)
    spec_type = column.type if column is not None else "timestamp"
    return spec_type, spec.timezone, column is not None and column.allow_infinite


def typed_column(spec: DatasetSpec, name: str, source_type: str, expr: str | None = None) -> str:
    """The spec column `name` (or `expr`, of `source_type`) typed by the spec's rules."""
    spec_type, timezone, allow_infinite = _column_options(spec, name)
    return typed_expression(expr or quote_ident(name), spec_type, source_type, timezone, allow_infinite)


def parse_error_expression(spec: DatasetSpec, name: str, source_type: str) -> str:
    """SQL giving why column `name` does not type (naming the column and value), or NULL if it does.

    A null stays null, and so does NaN in a float column: it is read as null, so the column's
    `nullable` rule decides. Infinities and daylight-saving gaps get their own reason.
    """
    spec_type, timezone, allow_infinite = _column_options(spec, name)
    ident, kind = quote_ident(name), source_kind(source_type)
    typed = typed_expression(ident, spec_type, source_type, timezone, allow_infinite)
    value = f"{quote_literal(chr(39))} || CAST({ident} AS VARCHAR) || {quote_literal(chr(39))}"
    cases = [f"WHEN {ident} IS NULL OR {typed} IS NOT NULL THEN NULL"]
    if spec_type == "int" and kind == "float":  # pandas writes an int column with gaps as floats, NaN
        cases.append(f"WHEN isnan({ident}) THEN NULL")
    if spec_type == "float" and kind in ("text", "float"):
        number = f"TRY_CAST({ident} AS DOUBLE)" if kind == "text" else ident
        cases.append(f"WHEN isnan({number}) THEN NULL")
        cases.append(
            f"WHEN isinf({number}) THEN {quote_literal(name + ': ')} || {value} || {quote_literal(NOT_FINITE)}"
        )
    if spec_type == "timestamp" and kind in ("text", "timestamp") and not _is_utc(timezone):
        wall = f"TRY_CAST({ident} AS TIMESTAMP)"
        gap = f"isfinite({wall}) AND {_local_to_utc(wall, timezone)} IS NULL"
        if kind == "text":
            gap = f"NOT regexp_matches({ident}, {quote_literal(_ZONE_SUFFIX)}) AND {gap}"
        cases.append(
            f"WHEN {gap} THEN {quote_literal(name + ': ')} || {value} "
            f"|| {quote_literal(' does not exist in ' + timezone + ' ' + DST_GAP)}"
        )
    if spec_type == "timestamp" and kind == "text":
        cases.append(
            f"WHEN coalesce({_named_zone_gap(ident)}, false) THEN {quote_literal(name + ': ')} || {value} "
            f"|| {quote_literal(' does not exist in its zone ' + DST_GAP)}"
        )
    reason = f"{quote_literal(name + ': cannot parse ')} || {value} || {quote_literal(' as ' + spec_type)}"
    return f"CASE {' '.join(cases)} ELSE {reason} END"


def total_order_sql(leading: list[str], columns: list[str]) -> str:
    """An ORDER BY list: the `leading` columns, then every other one of `columns`.

    DuckDB orders tied rows differently from run to run; ordering on every column makes the order
    total (rows equal in every column are interchangeable), so the same rows read the same way twice.
    """
    rest = [c for c in columns if c not in leading]
    return ", ".join(quote_ident(c) for c in [*leading, *rest])


def column_types(conn, relation: str) -> dict[str, str]:  # type: ignore[no-untyped-def]
    """Column name -> DuckDB type of a table, view or query."""
    return {row[0]: row[1] for row in conn.sql(f"DESCRIBE {relation}").fetchall()}


def fetch_row(conn, sql: str, params: list | None = None) -> tuple:  # type: ignore[no-untyped-def,type-arg]
    """The first row of a query (DuckDB wants every result read to its end before the next call)."""
    rows = conn.execute(sql, params or []).fetchall()
    return rows[0] if rows else ()


@contextmanager
def session_timezone(conn: Any, zone: str) -> Iterator[None]:  # a DuckDB connection
    """Run with DuckDB's TimeZone setting at `zone`, then restore it.

    Where DuckDB itself must turn naive times into instants, it reads them in that setting (the
    machine's TZ by default): a Parquet glob whose files disagree (TIMESTAMP in one, TIMESTAMPTZ in
    another) is unified by `union_by_name` into TIMESTAMPTZ. Reading with the spec's `timezone` there
    gives naive times the meaning the spec says, on every machine.
    """
    previous = conn.execute("SELECT current_setting('TimeZone')").fetchall()[0][0]
    conn.execute(f"SET TimeZone = {quote_literal(zone)}")
    try:
        yield
    finally:
        conn.execute(f"SET TimeZone = {quote_literal(previous)}")


def in_spec_timezone(
    read: Callable[Concatenate[duckdb.DuckDBPyConnection, DatasetSpec, P], R],
) -> Callable[Concatenate[duckdb.DuckDBPyConnection, DatasetSpec, P], R]:
    """Run `read` with DuckDB reading naive times in the spec's zone (see `session_timezone`)."""

    @functools.wraps(read)
    def in_zone(conn: duckdb.DuckDBPyConnection, spec: DatasetSpec, *args: P.args, **kwargs: P.kwargs) -> R:
        with session_timezone(conn, spec.timezone):
            return read(conn, spec, *args, **kwargs)

    return in_zone
