"""`mlplatform sql` and `mlplatform warehouse migrate`: the warehouse files seen from the command line.

`sql` reads every dataset's file read-only in one in-memory DuckDB session (no `duckdb` CLI needed,
and a file is held only while the query runs). `warehouse migrate` splits the one `warehouse.duckdb` of
a home made before per-dataset files (mlplatform.core.warehouse_files does the work).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mlplatform.errors import UserError
from mlplatform.settings import (
    HOME_ENV,
    LEGACY_WAREHOUSE_FILE,
    WAREHOUSE_ENV,
    WAREHOUSE_FILE_TEMPLATE,
    WAREHOUSE_FOLDER,
    Settings,
)

if TYPE_CHECKING:
    from mlplatform.core.warehouse_files import ReadSession

MAX_ROWS = 100  # rows `mlplatform sql` prints (the count of the others is printed)


def warehouse_files(settings: Settings) -> dict[str, str]:
    """The files a `mlplatform sql` session attaches, by catalog alias: `<dataset>-warehouse` each, or
    the one shared file."""
    from mlplatform.core.warehouse_files import SHARED_ALIAS, dataset_files

    if not settings.warehouse_per_dataset:
        return {SHARED_ALIAS: settings.warehouse_path} if Path(settings.warehouse_path).exists() else {}
    return {f"{name}-warehouse": path for name, path in dataset_files(settings.warehouse_path).items()}


def warehouse_session(settings: Settings, wait_seconds: float = 5.0) -> ReadSession:
    """Every dataset's file attached read-only, tables named `<dataset>.<table>` (close its `conn`)."""
    from mlplatform.core.warehouse_files import open_read_session

    return open_read_session(warehouse_files(settings), wait_seconds)


def format_table(columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
    """Aligned text columns: numbers to the right, NULL for missing values."""
    texts = [["NULL" if value is None else str(value) for value in row] for row in rows]
    widths = [max([len(name), *(len(row[i]) for row in texts)]) for i, name in enumerate(columns)]
    numeric = [
        bool(rows) and all(isinstance(r[i], int | float) or r[i] is None for r in rows)
        for i in range(len(columns))
    ]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(
            cell.rjust(width) if right else cell.ljust(width)
            for cell, width, right in zip(cells, widths, numeric, strict=True)
        ).rstrip()

    return [line(list(columns)), line(["-" * width for width in widths]), *(line(row) for row in texts)]


def cmd_sql(args: argparse.Namespace, settings: Settings) -> int:
    import duckdb

    from mlplatform.core.sql import quote_ident
    from mlplatform.core.warehouse_files import table_names

    session = warehouse_session(settings, args.wait)
    for path, reason in session.skipped.items():
        print(f"mlplatform: {path} not attached: {reason}", file=sys.stderr)
    if not session.files and not session.skipped:
        raise UserError(f"no warehouse files at {settings.warehouse_path} yet: run `mlplatform run` first")
    with session.conn as conn:
        if args.query is None:
            for schema, alias in session.schemas.items():
                print(f"{schema}  ({session.files[alias]})")
                for table in table_names(conn, alias, schema):
                    name = ".".join(quote_ident(part) for part in (alias, schema, table))
                    rows = conn.execute(f"SELECT count(*) FROM {name}").fetchall()[0][0]
                    print(f"  {schema}.{table}  {rows:,} rows")
            return 0
        try:
            result = conn.sql(args.query)
            if result is None:  # a statement without a result set
                print("OK")
                return 0
            rows = result.limit(MAX_ROWS + 1).fetchall()
        except duckdb.Error as error:
            raise UserError(f"query failed: {error}") from None
        for line in format_table(result.columns, rows[:MAX_ROWS]):
            print(line)
        more = (
            f"; only the first {MAX_ROWS} shown (add a LIMIT or an aggregate)" if len(rows) > MAX_ROWS else ""
        )
        print(f"({min(len(rows), MAX_ROWS)} rows{more})")
    return 0


def migration_paths(settings: Settings) -> tuple[Path, str]:
    """The single file to split and the per-dataset template to split it into."""
    if settings.warehouse_per_dataset:  # the home's default, or $MLPLATFORM_WAREHOUSE is a template
        return settings.home / LEGACY_WAREHOUSE_FILE, settings.warehouse_path
    return Path(settings.warehouse_path), str(settings.home / WAREHOUSE_FOLDER / WAREHOUSE_FILE_TEMPLATE)


def cmd_migrate(args: argparse.Namespace, settings: Settings) -> int:
    from mlplatform.core.warehouse_files import WarehouseFileError, migrated_name, split_warehouse

    legacy, template = migration_paths(settings)
    if not legacy.exists():
        done = migrated_name(legacy).exists()
        print(f"{legacy}: {'already migrated' if done else 'not there'}; nothing to do (files: {template})")
        return 0
    try:
        migrated = split_warehouse(legacy, template)
    except (WarehouseFileError, ValueError) as error:  # ValueError: a template DuckDB cannot resolve
        raise UserError(str(error)) from None
    for dataset in migrated:
        rows = sum(digest.rows for digest in dataset.tables.values())
        how = "already there, verified" if dataset.already_there else "copied and verified"
        print(f"{dataset.dataset}: {len(dataset.tables)} tables, {rows:,} rows -> {dataset.file} ({how})")
    print(f"{legacy} renamed to {migrated_name(legacy)} (delete it once you no longer need it)")
    if legacy != settings.home / LEGACY_WAREHOUSE_FILE:  # $MLPLATFORM_WAREHOUSE named the old file
        print(f"set {WAREHOUSE_ENV}={template} (or unset it) before the next run")
    print("restart a running dagster-daemon, dagster dev or mlplatform up: they use the new files then")
    return 0


def add_warehouse_command(sub: argparse._SubParsersAction) -> None:
    """`mlplatform sql [QUERY]` and `mlplatform warehouse migrate`."""
    home_help = f"platform home (default: ${HOME_ENV} or ./.mlplatform)"
    sql = sub.add_parser(
        "sql",
        help="query the warehouse read-only: SELECT ... FROM <dataset>.<table> (no query: list the tables)",
        description=(
            "Run one SQL query over every dataset's warehouse file, attached read-only in an in-memory "
            "DuckDB, and print the result; tables are named <dataset>.<table>, e.g. bike_sharing.clean. "
            "Without a query, list the datasets and their tables. A file a run is writing is waited for "
            "(--wait), then left out with a note."
        ),
    )
    sql.add_argument("query", nargs="?", help='e.g. "SELECT count(*) FROM bike_sharing.clean"')
    sql.add_argument("--wait", type=float, default=5.0, help="seconds to wait for a file a run holds (5)")
    sql.add_argument("--home", help=home_help)
    sql.set_defaults(func=cmd_sql)

    warehouse = sub.add_parser("warehouse", help="manage the warehouse files")
    actions = warehouse.add_subparsers(dest="action", required=True, metavar="ACTION")
    migrate = actions.add_parser(
        "migrate",
        help="split the one warehouse.duckdb of an older home into a file per dataset",
        description=(
            "Copy each dataset's schema of warehouse.duckdb into its own file (warehouse/<dataset>-"
            "warehouse.duckdb), verify every table's row count and content, then rename the old file to "
            "warehouse.duckdb.migrated (nothing is deleted). Safe to run again; refuses to overwrite a file "
            "that holds other data. Stop the home's dagster-daemon / dagster dev first."
        ),
    )
    migrate.add_argument("--home", help=home_help)
    migrate.set_defaults(func=cmd_migrate)
