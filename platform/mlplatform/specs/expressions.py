"""Checking a spec's `derived` SQL before anything runs it: exactly one scalar expression of the row.

The expression is parsed by DuckDB's own parser (`extract_statements`, then `json_serialize_sql`,
which turns a SELECT into its syntax tree without binding or running it), and the tree is walked.

Function names are checked against an allowlist, not a denylist: the built-in scalar functions and
macros of a bare in-memory DuckDB (so no table function such as read_csv, read_text or glob, no
aggregate, no window, nothing an extension adds), minus those whose value does not come from the row
(the clock, the session, the catalog, randomness, sequences, side effects). A denylist of dangerous
names would have to know every file-reading function of every future DuckDB and extension, and an
unknown name can make DuckDB install and load an extension from the network when the query binds.
"""

from __future__ import annotations

import json
import re
import threading
from functools import cache
from typing import Any

import duckdb

# Scalars (all CONSISTENT in DuckDB's catalog, or macros) that read the session, the catalog or the
# server, parse or plan other SQL, or are internal to DuckDB's own plans.
_DENIED_PREFIXES = ("__", "pg_", "has_", "inet_", "current_", "json_serialize", "json_deserialize")
_DENIED_NAMES = {
    "col_description",
    "obj_description",
    "shobj_description",
    "get_block_size",
    "getvariable",
    "in_search_path",
    "index_key",
    "session_user",
    "user",
    "version",
    "txid_current",
    "stats",
}
# Syntax-tree node classes an expression of the row may hold (FUNCTION and CAST are checked further).
_ALLOWED_CLASSES = {
    "BETWEEN",
    "CASE",
    "CAST",
    "COLLATE",
    "COLUMN_REF",
    "COMPARISON",
    "CONJUNCTION",
    "CONSTANT",
    "FUNCTION",
    "LAMBDA",
    "LAMBDA_REF",
    "OPERATOR",
    "TYPE",
}
_CLASS_PROBLEMS = {
    "SUBQUERY": "holds a subquery: a derived column is computed from its own row only",
    "WINDOW": "holds a window function (OVER ...): a derived column is computed from its own row only",
    "STAR": "holds * or COLUMNS(...): a derived entry is one expression",
    "PARAMETER": "holds a query parameter ($1 or ?)",
    "POSITIONAL_REFERENCE": "holds a positional reference (#n): name the column",
}
_CLAUSES = {
    "where_clause": "WHERE",
    "having": "HAVING",
    "qualify": "QUALIFY",
    "sample": "USING SAMPLE",
    "group_expressions": "GROUP BY",
    "group_sets": "GROUP BY",
    "modifiers": "DISTINCT, ORDER BY or LIMIT",
}

_lock = threading.Lock()


class ExpressionError(ValueError):
    """A derived expression is not one safe scalar expression; the message says why."""


@cache
def _connection() -> duckdb.DuckDBPyConnection:
    # Only ever parses: nothing is bound or run on it, so it needs no access to anything.
    return duckdb.connect(config={"enable_external_access": False, "autoinstall_known_extensions": False})


_KIND_REASONS = {
    "table": "a table function (they read files or run queries)",
    "table_macro": "a table function (they read files or run queries)",
    "pragma": "a pragma",
    "aggregate": "an aggregate: a derived column is computed from its own row only",
    "window": "a window function: a derived column is computed from its own row only",
}
_ROW_ONLY = "not a function of the row alone (clock, session, catalog, randomness or side effects)"


@cache
def _catalog() -> tuple[frozenset[str], dict[str, str], frozenset[str]]:
    """(allowed scalar function names, why each other function is refused, type names) of a bare DuckDB."""
    with _lock:
        rows = (
            _connection()
            .execute(
                "SELECT lower(function_name), function_type, "
                "bool_or(stability = 'CONSISTENT' OR function_type = 'macro'), "
                "bool_or(stability = 'VOLATILE' OR has_side_effects), "
                "string_agg(lower(coalesce(macro_definition, '')), ' ') "
                "FROM duckdb_functions() GROUP BY ALL"
            )
            .fetchall()
        )
        types = {
            r[0].lower() for r in _connection().execute("SELECT type_name FROM duckdb_types()").fetchall()
        }
    allowed: set[str] = set()
    refused: dict[str, str] = {}
    for name, kind, deterministic, volatile, _ in rows:
        scalar = kind == "scalar"
        denied = name in _DENIED_NAMES or name.startswith(_DENIED_PREFIXES)
        if scalar and deterministic and not volatile and not denied:
            allowed.add(name)
        elif kind != "macro":
            refused.setdefault(name, _KIND_REASONS.get(kind, _ROW_ONLY))
    _admit_macros([r for r in rows if r[1] == "macro"], allowed, refused)
    # A name can be both a scalar and a table function (e.g. range): the scalar use is allowed.
    return frozenset(allowed), {k: v for k, v in refused.items() if k not in allowed}, frozenset(types)


# Words that precede "(" in a macro body without being a function call.
_SQL_WORDS = {"case", "when", "then", "else", "end", "and", "or", "not", "in", "is", "cast", "coalesce"}


def _admit_macros(macros: list[tuple[Any, ...]], allowed: set[str], refused: dict[str, str]) -> None:
    """Macros whose body calls only allowed functions, with no query in it (e.g. `ago` reads the clock
    through current_timestamp, `format_type` queries the catalog: both refused)."""
    bodies = {name: body for name, _, _, _, body in macros}
    pending = {n for n in bodies if not (n in _DENIED_NAMES or n.startswith(_DENIED_PREFIXES))}
    for name in set(bodies) - pending:
        refused.setdefault(name, _ROW_ONLY)
    changed = True
    while changed:  # a macro may call another macro: admit in rounds until nothing changes
        changed = False
        for name in sorted(pending):
            calls = set(re.findall(r"([a-z_][a-z0-9_]*)\s*\(", bodies[name])) - _SQL_WORDS
            words = set(re.findall(r"[a-z_][a-z0-9_]*", bodies[name]))
            if not ({"select", "from", "current_timestamp", "current_date"} & words) and calls <= allowed:
                allowed.add(name)
                pending.discard(name)
                changed = True
    for name in pending:
        refused.setdefault(name, _ROW_ONLY)


def _parse(expression: str) -> dict[str, Any]:
    """The SELECT node of `SELECT <expression>`; raises ExpressionError on anything else."""
    sql = f"SELECT {expression}"
    try:
        statements = duckdb.extract_statements(sql)
    except duckdb.Error as exc:
        raise ExpressionError(f"is not a valid SQL expression: {exc}") from None
    if len(statements) != 1:
        then = statements[1].query.strip()
        raise ExpressionError(
            f"holds {len(statements)} SQL statements (the second: {then[:60]!r}): "
            "a derived entry is one expression, no ';'"
        )
    with _lock:
        tree = json.loads(_connection().execute("SELECT json_serialize_sql(?)", [sql]).fetchall()[0][0])
    if tree.get("error"):
        raise ExpressionError(f"is not a valid SQL expression: {tree.get('error_message')}")
    node = tree["statements"][0]["node"]
    if node.get("type") != "SELECT_NODE":
        raise ExpressionError("is a query (UNION, VALUES ...), not one expression")
    return node


def _check_query_shape(node: dict[str, Any]) -> dict[str, Any]:
    """The only select item of a SELECT with no FROM and no other clause."""
    if node.get("from_table", {}).get("type") != "EMPTY":
        raise ExpressionError(
            "holds a FROM clause: a derived column reads its own row, never a table or file"
        )
    for key, clause in _CLAUSES.items():
        if node.get(key):
            raise ExpressionError(f"holds {clause}: a derived entry is one expression of the row")
    if node.get("cte_map", {}).get("map"):
        raise ExpressionError("holds a WITH clause: a derived entry is one expression of the row")
    items = node.get("select_list", [])
    if len(items) != 1:
        raise ExpressionError(f"is {len(items)} expressions (a top-level ','): a derived entry is one")
    if items[0].get("alias"):
        raise ExpressionError(f"has an alias (AS {items[0]['alias']}): the derived key names the column")
    return items[0]


def _check_function(node: dict[str, Any]) -> None:
    allowed, refused, _ = _catalog()
    name = str(node.get("function_name", ""))
    if node.get("schema") or node.get("catalog"):
        raise ExpressionError(
            f"calls {node.get('schema') or node.get('catalog')}.{name}: use built-in functions"
        )
    if name.lower() in allowed:
        return
    if name.lower() in refused:
        raise ExpressionError(f"calls {name}(), which is {refused[name.lower()]}")
    raise ExpressionError(f"calls {name}(), which is not a built-in DuckDB scalar function")


def _walk(node: Any) -> None:
    if isinstance(node, list):
        for item in node:
            _walk(item)
        return
    if not isinstance(node, dict):
        return
    kind = node.get("class")
    if kind is not None:
        if kind in _CLASS_PROBLEMS:
            raise ExpressionError(_CLASS_PROBLEMS[kind])
        if kind not in _ALLOWED_CLASSES:
            raise ExpressionError(f"holds a {kind.lower()} expression, which a derived entry cannot use")
        if kind == "FUNCTION":
            _check_function(node)
        if kind == "TYPE" and str(node.get("type_name", "")).lower() not in _catalog()[2]:
            raise ExpressionError(f"casts to {node.get('type_name')}, which is not a built-in DuckDB type")
    for value in node.values():
        _walk(value)


def check_expression(expression: str) -> str:
    """Return `expression` if it is one scalar SQL expression of the row; raise ExpressionError if not.

    Nothing is executed: the text is only parsed, so validating a spec can have no side effect.
    """
    if not expression.strip():
        raise ExpressionError("is empty")
    _walk(_check_query_shape(_parse(expression)))
    try:
        # The stages embed the expression as `TRY(<expression>)`: it must parse there too.
        wrapped = len(duckdb.extract_statements(f"SELECT ({expression})"))
    except duckdb.Error:
        wrapped = 0
    if wrapped != 1:
        raise ExpressionError("does not parse inside parentheses (a trailing ';' or '--' comment?)")
    return expression
