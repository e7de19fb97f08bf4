"""The DuckDB warehouse as a Dagster resource that fails fast and says why.

dagster_duckdb's DuckDBResource retries a held lock with backoff for about two minutes and then shows
DuckDB's raw error. A file held by another process is rarely released by waiting that long, so this
resource waits only `lock_timeout_seconds` (enough for a run that merely overlaps another one briefly),
and turns DuckDB's low-level errors (lock held, damaged file, disk full) into messages that name the
file, the holder where DuckDB reports it, and the fix. The `get_connection()` API is unchanged.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import dagster as dg
import duckdb
from dagster_duckdb import DuckDBResource
from pydantic import Field

from mlplatform.core.warehouse import explain_warehouse_error, is_lock_conflict

_LOCK_RETRY_SECONDS = 0.2


class WarehouseError(dg.Failure):
    """The warehouse file cannot be used: held by another process, damaged, or its disk is full."""


class WarehouseResource(DuckDBResource):
    """DuckDBResource with a short, bounded wait for a held file and explained file errors."""

    lock_timeout_seconds: float = Field(
        default=5.0,
        description="How long to wait for another process to release the warehouse file before failing.",
    )

    def _config(self) -> dict[str, Any]:
        return {"custom_user_agent": "dagster", **self.connection_config}

    def _connect(self) -> duckdb.DuckDBPyConnection:
        deadline = time.monotonic() + self.lock_timeout_seconds
        while True:
            try:
                return duckdb.connect(self.database, read_only=False, config=self._config())
            except duckdb.Error as error:
                if not is_lock_conflict(error) or time.monotonic() >= deadline:
                    self.raise_explained(error)
                    raise
            time.sleep(_LOCK_RETRY_SECONDS)

    def raise_explained(self, error: duckdb.Error) -> None:
        """Raise a WarehouseError saying what `error` means for the file; return if it is not about the
        file (a SQL error stays a SQL error, raised by the caller)."""
        message = explain_warehouse_error(error, self.database)
        if message is not None:
            raise WarehouseError(description=message, metadata={"warehouse": self.database}) from error

    @contextmanager
    def get_connection(self) -> Iterator[duckdb.DuckDBPyConnection]:
        conn = self._connect()
        try:
            yield conn
        except duckdb.Error as error:
            self.raise_explained(error)
            raise
        finally:
            conn.close()
