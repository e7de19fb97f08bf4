"""What the data-quality checks measure over whole tables: one aggregate query each (cheap in DuckDB)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import duckdb

from mlplatform.contracts import Stage
from mlplatform.core.accounting import FileAccount, describe_account
from mlplatform.core.sql import fetch_row, quote_ident
from mlplatform.core.validation import FAILED_CHECKS
from mlplatform.core.warehouse import count_rows, table_name, window_column
from mlplatform.specs.model import DatasetSpec


@dataclass(frozen=True)
class RowReconciliation:
    """raw = clean + quarantine, per partition."""

    raw_rows: int
    clean_rows: int
    quarantined_rows: int
    mismatched: list[tuple[str, int, int, int]]  # (partition, raw, clean, quarantine) that do not add up


def reconcile_rows(conn: duckdb.DuckDBPyConnection, spec: DatasetSpec) -> RowReconciliation:
    """Raw, clean and quarantine rows per partition (the three tables must exist)."""
    grain = spec.partition_grain
    per_partition = [
        f"SELECT date_trunc('{grain}', {quote_ident(window_column(stage, spec.time_column))}) p, "
        f"count(*) n FROM {table_name(spec.name, stage)} GROUP BY 1"
        for stage in (Stage.RAW, Stage.CLEAN, Stage.QUARANTINE)
    ]
    rows = conn.execute(
        f"""
        WITH r AS ({per_partition[0]}), c AS ({per_partition[1]}), q AS ({per_partition[2]})
        SELECT coalesce(r.p, c.p, q.p) AS p, coalesce(r.n, 0), coalesce(c.n, 0), coalesce(q.n, 0)
        FROM r FULL JOIN c USING (p) FULL JOIN q USING (p)
        ORDER BY 1
        """
    ).fetchall()
    return RowReconciliation(
        raw_rows=sum(r[1] for r in rows),
        clean_rows=sum(r[2] for r in rows),
        quarantined_rows=sum(r[3] for r in rows),
        mismatched=[
            (str(p), n_raw, n_clean, n_q) for p, n_raw, n_clean, n_q in rows if n_raw != n_clean + n_q
        ],
    )


@dataclass(frozen=True)
class QuarantineShare:
    clean_rows: int
    quarantined_rows: int
    top_failed_checks: list[tuple[str, int]]  # the 5 most frequent `_failed_checks` values, with their rows

    @property
    def share(self) -> float:
        total = self.clean_rows + self.quarantined_rows
        return self.quarantined_rows / total if total else 0.0


def quarantine_share(conn: duckdb.DuckDBPyConnection, spec: DatasetSpec) -> QuarantineShare:
    n_clean = count_rows(conn, spec.name, Stage.CLEAN)
    n_quarantined = count_rows(conn, spec.name, Stage.QUARANTINE)
    quarantine = table_name(spec.name, Stage.QUARANTINE)
    top = (
        conn.execute(
            f"SELECT {FAILED_CHECKS}, count(*) FROM {quarantine} GROUP BY 1 ORDER BY 2 DESC LIMIT 5"
        ).fetchall()
        if n_quarantined
        else []
    )
    return QuarantineShare(n_clean, n_quarantined, [(str(k), int(v)) for k, v in top])


def duplicated_keys(conn: duckdb.DuckDBPyConnection, spec: DatasetSpec) -> dict[str, int]:
    """Per unique column of the spec, how many values clean holds more than once (nulls aside)."""
    clean = table_name(spec.name, Stage.CLEAN)
    duplicates: dict[str, int] = {}
    for name in unique_columns(spec):
        col = quote_ident(name)
        duplicates[name] = int(
            fetch_row(
                conn,
                f"SELECT count(*) FROM (SELECT {col} FROM {clean} WHERE {col} IS NOT NULL "
                f"GROUP BY 1 HAVING count(*) > 1)",
            )[0]
        )
    return duplicates


def unique_columns(spec: DatasetSpec) -> list[str]:
    return [name for name, col in spec.columns.items() if col.unique]


def accounting_failure(dataset: str, failing: Sequence[FileAccount]) -> str | None:
    """What the source accounting check says of the files that do not reconcile (None if all do)."""
    if not failing:
        return None
    more = f"; and {len(failing) - 3} more file(s)" if len(failing) > 3 else ""
    # Rows loaded twice or left behind come from partitions run at different times (a partial run
    # after the files or the partitions changed): one run over every partition loads each row once.
    fix = (
        f". To reload every partition from the files as they are: `mlplatform run --dataset {dataset}`"
        f" (add --allow-shrink where files were removed on purpose)"
    )
    return "; ".join(describe_account(a) for a in failing[:3]) + more + fix
