"""Small SQL-building helpers shared by the stages (DuckDB dialect)."""

from __future__ import annotations

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


def quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def quote_literal(value: str) -> str:
    return "'" + str(value).replace("'", "''") + "'"


def typed_expression(expr: str, spec_type: str, source_type: str = "VARCHAR") -> str:
    """`expr` cast to the spec type, NULL where the value does not fit.

    Text gets stricter rules than a plain TRY_CAST: DuckDB would round '1.5' into the integer 2 and
    read 'yes' as true, which would hide a bad value instead of quarantining it.
    """
    target = DUCKDB_TYPES[spec_type]
    if source_type.upper() != "VARCHAR":
        return f"TRY_CAST({expr} AS {target})"
    if spec_type == "int":
        return (
            f"TRY_CAST(CASE WHEN regexp_full_match({expr}, '\\s*[+-]?[0-9]+\\s*') THEN {expr} END AS BIGINT)"
        )
    if spec_type == "bool":
        return (
            f"CASE WHEN lower(trim({expr})) IN {_TRUE_WORDS} THEN true "
            f"WHEN lower(trim({expr})) IN {_FALSE_WORDS} THEN false END"
        )
    if spec_type in ("string", "category"):
        return expr
    return f"TRY_CAST({expr} AS {target})"


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
