"""The DuckDB warehouse as a Dagster resource that fails fast and says why.

dagster_duckdb's DuckDBResource retries a held lock with backoff for about two minutes and then shows
DuckDB's raw error. A file held by another process is rarely released by waiting that long, so this
resource waits only `lock_timeout_seconds` (enough for a run that merely overlaps another one briefly),
and turns DuckDB's low-level errors (lock held, damaged file, disk full) into messages that name the
file, the holder where DuckDB reports it, and the fix.

`database` may be a template holding `{dataset}` (a file per dataset, see mlplatform.settings): then
`get_connection(dataset)` opens that dataset's file, and each file has its own lock and messages.

With `lake` set (the Dask engine) the stage tables live as Parquet partitions there, behind views in
the warehouse file: each connection is marked as a lake connection with the dataset's partition grain
(`lake_grains`), so core.warehouse's writers write the lake (mlplatform.core.lake_tables).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import dagster as dg
import duckdb
from dagster_duckdb import DuckDBResource
from pydantic import Field

from mlplatform.core.lake import remove_stale_staging
from mlplatform.core.lake_tables import set_lake
from mlplatform.core.warehouse import explain_warehouse_error, is_lock_conflict
from mlplatform.settings import is_warehouse_template, warehouse_file

_LOCK_RETRY_SECONDS = 0.2
_SWEPT_LAKES: set[str] = set()  # lakes whose stale staging this process has removed (once each)


class WarehouseError(dg.Failure):
    """The warehouse file cannot be used: held by another process, damaged, or its disk is full."""


class WarehouseResource(DuckDBResource):
    """DuckDBResource with a short, bounded wait for a held file and explained file errors."""

    lock_timeout_seconds: float = Field(
        default=5.0,
        description="How long to wait for another process to release the warehouse file before failing.",
    )
    lake: str | None = Field(
        default=None,
        description="The Parquet lake of the stage tables (Dask engine): a folder or fsspec URL; None: in the file.",
    )
    lake_grains: dict[str, str] = Field(
        default_factory=dict,
        description="Each dataset's partition grain (day, week, month): its lake partitions.",
    )

    def _config(self) -> dict[str, Any]:
        return {"custom_user_agent": "dagster", **self.connection_config}

    def database_for(self, dataset: str | None) -> str:
        """The file `dataset`'s tables live in (`database` itself when it is one file for all)."""
        if dataset is None:
            if is_warehouse_template(self.database):
                raise WarehouseError(
                    description=(
                        f"warehouse {self.database} is one DuckDB file per dataset: "
                        "get_connection(dataset) needs the dataset's name"
                    )
                )
            return self.database
        try:
            return warehouse_file(self.database, dataset)
        except ValueError as error:
            raise WarehouseError(description=str(error)) from None

    def _connect(self, database: str) -> duckdb.DuckDBPyConnection:
        if "://" not in database and not database.startswith(("md:", ":memory:")):
            Path(database).parent.mkdir(parents=True, exist_ok=True)  # a template's folders, per dataset
        deadline = time.monotonic() + self.lock_timeout_seconds
        while True:
            try:
                return duckdb.connect(database, read_only=False, config=self._config())
            except duckdb.Error as error:
                if not is_lock_conflict(error) or time.monotonic() >= deadline:
                    self.raise_explained(error, database)
                    raise
            time.sleep(_LOCK_RETRY_SECONDS)

    @staticmethod
    def raise_explained(error: duckdb.Error, database: str) -> None:
        """Raise a WarehouseError saying what `error` means for the file `database`; return if it is not
        about the file (a SQL error stays a SQL error, raised by the caller)."""
        message = explain_warehouse_error(error, database)
        if message is not None:
            raise WarehouseError(description=message, metadata={"warehouse": database}) from error

    @contextmanager
    def get_connection(self, dataset: str | None = None) -> Iterator[duckdb.DuckDBPyConnection]:
        """A read-write connection to `dataset`'s file (required when `database` is a template)."""
        database = self.database_for(dataset)
        conn = self._connect(database)
        try:
            if self.lake is not None:
                set_lake(conn, self.lake, self.lake_grains.get(dataset) if dataset else None)
                if self.lake not in _SWEPT_LAKES:  # what writers killed over an hour ago left behind
                    _SWEPT_LAKES.add(self.lake)
                    remove_stale_staging(self.lake)
            yield conn
        except duckdb.Error as error:
            self.raise_explained(error, database)
            raise
        finally:
            conn.close()
