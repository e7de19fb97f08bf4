"""The warehouse's files: finding each dataset's file, reading them all in one read-only session, and
splitting the one file of an older home into a file per dataset.

Plain DuckDB, no Dagster: `mlplatform sql` and `mlplatform warehouse migrate` (mlplatform.warehouse_cli)
are thin wrappers around these functions.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import duckdb

from mlplatform.core.sql import quote_ident, quote_literal
from mlplatform.core.warehouse import explain_warehouse_error, is_lock_conflict
from mlplatform.settings import DATASET_PLACEHOLDER, is_warehouse_template, warehouse_file

# Schemas DuckDB has in every file; every other schema of a warehouse file is a dataset's.
_SYSTEM_SCHEMAS = ("main", "information_schema", "pg_catalog")
_DATASET_NAME = "[a-z][a-z0-9_]*"  # as specs name them (mlplatform.specs.model)
_RETRY_SECONDS = 0.2
SHARED_ALIAS = "shared-warehouse"  # the catalog of a single warehouse file in a `mlplatform sql` session


class WarehouseFileError(Exception):
    """A warehouse file cannot be read, or a migration would overwrite different data."""


def dataset_files(warehouse: str) -> dict[str, str]:
    """Each dataset's existing file of the warehouse template `warehouse`, by dataset name (sorted)."""
    template = Path(warehouse)
    if not is_warehouse_template(warehouse):
        raise ValueError(f"{warehouse} is one file, not a template with {DATASET_PLACEHOLDER}")
    pattern = re.compile(
        re.escape(str(template)).replace(re.escape(DATASET_PLACEHOLDER), f"({_DATASET_NAME})")
    )
    anchor = next(p for p in template.parents if DATASET_PLACEHOLDER not in str(p))
    glob = str(template.relative_to(anchor)).replace(DATASET_PLACEHOLDER, "*")
    found = {}
    for path in anchor.glob(glob):
        matched = pattern.fullmatch(str(path))
        if matched and path.is_file() and len(set(matched.groups())) == 1:
            found[matched.group(1)] = str(path)
    return dict(sorted(found.items()))


def dataset_schemas(conn: duckdb.DuckDBPyConnection, catalog: str) -> list[str]:
    """The schemas of the attached `catalog` that hold tables: one per dataset."""
    rows = conn.execute(
        "SELECT DISTINCT schema_name FROM duckdb_tables() WHERE database_name = ? ORDER BY 1", [catalog]
    ).fetchall()
    return [row[0] for row in rows if row[0] not in _SYSTEM_SCHEMAS]


def table_names(conn: duckdb.DuckDBPyConnection, catalog: str, schema: str) -> list[str]:
    rows = conn.execute(
        "SELECT table_name FROM duckdb_tables() WHERE database_name = ? AND schema_name = ? ORDER BY 1",
        [catalog, schema],
    ).fetchall()
    return [row[0] for row in rows]


def _qualified(catalog: str, schema: str, table: str) -> str:
    return ".".join(quote_ident(part) for part in (catalog, schema, table))


@dataclass(frozen=True)
class TableDigest:
    rows: int
    content: int  # sum of the rows' hashes: equal tables have equal sums, whatever their row order


def schema_digests(conn: duckdb.DuckDBPyConnection, catalog: str, schema: str) -> dict[str, TableDigest]:
    """Row count and content hash of every table of `catalog.schema` (reads every row)."""
    digests = {}
    for table in table_names(conn, catalog, schema):
        rows, content = conn.execute(
            f"SELECT count(*), coalesce(sum(hash(t)::HUGEINT), 0) FROM {_qualified(catalog, schema, table)} t"
        ).fetchall()[0]
        digests[table] = TableDigest(int(rows), int(content))
    return digests


def attach_read_only(conn: duckdb.DuckDBPyConnection, alias: str, path: str, wait_seconds: float) -> None:
    """ATTACH `path` READ_ONLY as `alias`, waiting up to `wait_seconds` for a writer to let it go (a
    run holds its file only while a step writes). Raises WarehouseFileError with the explained cause."""
    deadline = time.monotonic() + wait_seconds
    while True:
        try:
            conn.execute(f"ATTACH {quote_literal(path)} AS {quote_ident(alias)} (READ_ONLY)")
            return
        except duckdb.Error as error:
            if not is_lock_conflict(error) or time.monotonic() >= deadline:
                raise WarehouseFileError(explain_warehouse_error(error, path) or str(error)) from error
        time.sleep(_RETRY_SECONDS)


@dataclass
class ReadSession:
    """An in-memory DuckDB with the warehouse files attached read-only, `<dataset>.<table>` resolving."""

    conn: duckdb.DuckDBPyConnection
    files: dict[str, str]  # catalog alias -> file
    schemas: dict[str, str]  # dataset (schema) -> its catalog alias
    skipped: dict[str, str]  # file -> why it is not attached


def open_read_session(files: Mapping[str, str], wait_seconds: float = 5.0) -> ReadSession:
    """Attach each `alias -> file`; a file that cannot be read is skipped with its reason.

    Each attached file's catalog is named `alias`, never a dataset's name: DuckDB resolves a two-part
    `x.y` as catalog x or schema x and refuses the name when both exist. So `<dataset>.<table>` resolves
    through the search path, which lists every dataset's schema in its catalog.
    """
    conn = duckdb.connect()
    session = ReadSession(conn, {}, {}, {})
    for alias, path in files.items():
        try:
            attach_read_only(conn, alias, path, wait_seconds)
        except WarehouseFileError as error:
            session.skipped[path] = str(error)
            continue
        session.files[alias] = path
        for schema in dataset_schemas(conn, alias):
            session.schemas.setdefault(schema, alias)
    entries = [f"{quote_ident(alias)}.{quote_ident(schema)}" for schema, alias in session.schemas.items()]
    if entries:
        conn.execute(f"SET search_path = {quote_literal(','.join(entries))}")
    return session


@dataclass(frozen=True)
class MigratedDataset:
    dataset: str
    file: str
    tables: dict[str, TableDigest]
    already_there: bool  # an earlier, interrupted migration had written it


def _staged(target: Path) -> Path:
    """Where a target file is written before it is verified: `<its folder>.migrating/`, so the folder
    appears complete in one rename (the home's layout is chosen by the folder's existence)."""
    return target.parent.with_name(target.parent.name + ".migrating") / target.name


def _remove_file(path: Path) -> None:
    for leftover in (path, Path(f"{path}.wal")):
        leftover.unlink(missing_ok=True)


def _copy_schema(conn: duckdb.DuckDBPyConnection, schema: str, staged: Path) -> dict[str, TableDigest]:
    """Copy `legacy.<schema>` into a new file `staged`; returns the copy's digests, read back read-only."""
    staged.parent.mkdir(parents=True, exist_ok=True)
    _remove_file(staged)  # left by an interrupted migration: never verified, so never used
    conn.execute(f"ATTACH {quote_literal(str(staged))} AS staged")
    try:
        conn.execute(f"CREATE SCHEMA staged.{quote_ident(schema)}")
        for table in table_names(conn, "legacy", schema):
            conn.execute(
                f"CREATE TABLE {_qualified('staged', schema, table)} AS "
                f"SELECT * FROM {_qualified('legacy', schema, table)}"
            )
        conn.execute("CHECKPOINT staged")
    finally:
        conn.execute("DETACH staged")
    attach_read_only(conn, "staged", str(staged), 0)
    try:
        return schema_digests(conn, "staged", schema)
    finally:
        conn.execute("DETACH staged")


def _existing_target(
    conn: duckdb.DuckDBPyConnection, schema: str, target: Path, expected: dict[str, TableDigest]
) -> bool:
    """True if `target` already holds exactly `expected`; False if it does not exist; else refuses."""
    if not target.exists():
        return False
    attach_read_only(conn, "existing", str(target), 0)
    try:
        found = schema_digests(conn, "existing", schema)
    finally:
        conn.execute("DETACH existing")
    if found != expected:
        differing = sorted(t for t in set(found) | set(expected) if found.get(t) != expected.get(t))
        raise WarehouseFileError(
            f"{target} already exists with other data than schema {schema} of the old warehouse (tables "
            f"{', '.join(differing)} differ); nothing was changed. Move it away (or delete it if it is a "
            "leftover) and run the migration again."
        )
    return True


def split_warehouse(legacy: Path, template: str) -> list[MigratedDataset]:
    """Copy each dataset schema of the single file `legacy` into its file of `template`, verify every
    table's row count and content, then rename `legacy` to `<legacy>.migrated` (nothing is deleted).

    Refuses, before changing anything, a target file that exists with other content; one that holds the
    same (an interrupted migration) is kept. Raises WarehouseFileError.
    """
    conn = duckdb.connect()
    try:
        attach_read_only(conn, "legacy", str(legacy), 0)
        plan = {schema: Path(warehouse_file(template, schema)) for schema in dataset_schemas(conn, "legacy")}
        expected = {schema: schema_digests(conn, "legacy", schema) for schema in plan}
        present = {s: _existing_target(conn, s, target, expected[s]) for s, target in plan.items()}
        for schema, target in plan.items():
            if present[schema]:
                continue
            copied = _copy_schema(conn, schema, _staged(target))
            if copied != expected[schema]:
                raise WarehouseFileError(
                    f"the copy of {schema} in {_staged(target)} does not match the old warehouse; the old "
                    "file is unchanged and still in use"
                )
        conn.execute("DETACH legacy")
    finally:
        conn.close()
    _move_staged([target for schema, target in plan.items() if not present[schema]])
    _retire(legacy)
    return [MigratedDataset(s, str(t), expected[s], present[s]) for s, t in plan.items()]


def _move_staged(targets: list[Path]) -> None:
    """Put verified staged files in place: a whole staged folder in one rename when its folder does not
    exist yet, else file by file."""
    for target in targets:
        staged = _staged(target)
        if not target.parent.exists():
            os.rename(staged.parent, target.parent)
        elif staged.exists():
            os.replace(staged, target)
    for folder in {_staged(t).parent for t in targets}:
        if folder.is_dir() and not any(folder.iterdir()):
            folder.rmdir()


def migrated_name(legacy: Path) -> Path:
    return legacy.with_name(legacy.name + ".migrated")


def _retire(legacy: Path) -> None:
    """`<legacy>.migrated` (with its WAL, which DuckDB finds next to the file), kept for the user."""
    retired = migrated_name(legacy)
    wal = Path(f"{legacy}.wal")
    if wal.exists():
        os.rename(wal, Path(f"{retired}.wal"))
    os.rename(legacy, retired)
