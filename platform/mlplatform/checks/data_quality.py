"""Asset checks of the data spine, shown in each asset's Checks tab.

They read whole tables with one aggregate query each (cheap in DuckDB), so they can be re-run from
the UI at any time, not only right after a materialization.
"""

import dagster as dg
from dagster_duckdb import DuckDBResource

from mlplatform.assets.common import asset_key
from mlplatform.core.accounting import accounts_markdown, describe_account, read_accounts
from mlplatform.core.sql import quote_ident
from mlplatform.core.validation import FAILED_CHECKS
from mlplatform.core.warehouse import count_rows, table_exists, table_name
from mlplatform.specs.model import DatasetSpec


def build_quality_checks(spec: DatasetSpec) -> list[dg.AssetChecksDefinition]:
    clean_key = asset_key(spec, "clean")
    raw, clean, quarantine = (table_name(spec.name, t) for t in ("raw", "clean", "quarantine"))
    grain = spec.partition_grain
    max_share = spec.quality.max_quarantine_share

    @dg.asset_check(
        asset=clean_key,
        name="row_accounting",
        blocking=True,
        description="Every raw row is either clean or quarantined: raw = clean + quarantine, per partition.",
    )
    def row_accounting(warehouse: DuckDBResource) -> dg.AssetCheckResult:
        t = quote_ident(spec.time_column)
        with warehouse.get_connection() as conn:
            rows = conn.execute(
                f"""
                WITH r AS (SELECT date_trunc('{grain}', _partition_ts) p, count(*) n FROM {raw} GROUP BY 1),
                     c AS (SELECT date_trunc('{grain}', {t}) p, count(*) n FROM {clean} GROUP BY 1),
                     q AS (SELECT date_trunc('{grain}', _partition_ts) p, count(*) n FROM {quarantine} GROUP BY 1)
                SELECT coalesce(r.p, c.p, q.p) AS p, coalesce(r.n, 0), coalesce(c.n, 0), coalesce(q.n, 0)
                FROM r FULL JOIN c USING (p) FULL JOIN q USING (p)
                ORDER BY 1
                """
            ).fetchall()
        mismatched = [
            (str(p), n_raw, n_clean, n_q) for p, n_raw, n_clean, n_q in rows if n_raw != n_clean + n_q
        ]
        totals = [sum(r[i] for r in rows) for i in (1, 2, 3)]
        return dg.AssetCheckResult(
            passed=not mismatched,
            severity=dg.AssetCheckSeverity.ERROR,
            description=None if not mismatched else f"{len(mismatched)} partitions do not reconcile",
            metadata={
                "raw_rows": totals[0],
                "clean_rows": totals[1],
                "quarantined_rows": totals[2],
                "mismatched_partitions": dg.MetadataValue.json(mismatched[:20]),
            },
        )

    @dg.asset_check(
        asset=clean_key,
        name="validity_rate",
        blocking=True,
        description=(
            f"Share of raw rows that pass validation. Fails, and blocks downstream assets, when more than "
            f"{max_share:.1%} of the rows are quarantined (spec `quality.max_quarantine_share`)."
        ),
    )
    def validity_rate(warehouse: DuckDBResource) -> dg.AssetCheckResult:
        with warehouse.get_connection() as conn:
            n_clean = count_rows(conn, spec.name, "clean")
            n_quarantined = count_rows(conn, spec.name, "quarantine")
            top = (
                conn.execute(
                    f"SELECT {FAILED_CHECKS}, count(*) FROM {quarantine} GROUP BY 1 ORDER BY 2 DESC LIMIT 5"
                ).fetchall()
                if n_quarantined
                else []
            )
        total = n_clean + n_quarantined
        share = n_quarantined / total if total else 0.0
        return dg.AssetCheckResult(
            passed=share <= max_share,
            severity=dg.AssetCheckSeverity.ERROR,
            metadata={
                "validity_rate": 1 - share,
                "quarantine_share": share,
                "max_quarantine_share": max_share,
                "top_failed_checks": dg.MetadataValue.json([[str(k), int(v)] for k, v in top]),
            },
        )

    @dg.asset_check(
        asset=clean_key,
        name="source_accounting",
        blocking=True,
        description=(
            "Reconciliation from the source: each source file's records, counted without DuckDB (Python's "
            "csv module, malformed lines included; the Parquet footer), were all read; the rows the last raw "
            "run placed in its window are all in clean + quarantine; and over all partitions no source row "
            "is there twice, nor does a file have more rows there than it holds (none, once it has left the "
            "source)."
        ),
    )
    def source_accounting(warehouse: DuckDBResource) -> dg.AssetCheckResult:
        with warehouse.get_connection() as conn:
            accounts = read_accounts(conn, spec.name, spec.time_column)
        if not accounts:
            return dg.AssetCheckResult(
                passed=False,
                severity=dg.AssetCheckSeverity.ERROR,
                description=f"{spec.name}.raw has recorded no source accounting yet: materialize raw first",
            )
        failing = [a for a in accounts if not a.reconciles]
        more = f"; and {len(failing) - 3} more file(s)" if len(failing) > 3 else ""
        # Rows loaded twice or left behind come from partitions run at different times (a partial run
        # after the files or the partitions changed): one run over every partition loads each row once.
        fix = (
            f". To reload every partition from the files as they are: `mlplatform run --dataset {spec.name}`"
            f" (add --allow-shrink where files were removed on purpose)"
            if failing
            else ""
        )
        return dg.AssetCheckResult(
            passed=not failing,
            severity=dg.AssetCheckSeverity.ERROR,
            description=("; ".join(describe_account(a) for a in failing[:3]) + more + fix) or None,
            metadata={
                "files": sum(1 for a in accounts if a.recorded),
                "files_not_reconciled": len(failing),
                "source_rows": sum(a.source_rows for a in accounts),
                "rows_read": sum(a.read_rows for a in accounts),
                "rows_in_window": sum(a.window_rows for a in accounts),
                "rows_landed": sum(a.landed_rows for a in accounts),
                "rows_counted_twice": sum(a.duplicate_rows for a in accounts),
                "files_not_reconciled_table": dg.MetadataValue.md(
                    accounts_markdown(failing, with_landed=True, limit=50)
                    if failing
                    else "_every file reconciles_"
                ),
            },
        )

    unique_columns = [name for name, col in spec.columns.items() if col.unique]

    @dg.asset_check(
        asset=clean_key,
        name="unique_keys",
        blocking=True,
        description=f"No duplicate values in the unique columns ({', '.join(unique_columns) or 'none declared'}).",
    )
    def unique_keys(warehouse: DuckDBResource) -> dg.AssetCheckResult:
        duplicates: dict[str, int] = {}
        with warehouse.get_connection() as conn:
            for name in unique_columns:
                col = quote_ident(name)
                duplicates[name] = int(
                    conn.execute(
                        f"SELECT count(*) FROM (SELECT {col} FROM {clean} WHERE {col} IS NOT NULL "
                        f"GROUP BY 1 HAVING count(*) > 1)"
                    ).fetchall()[0][0]
                )
        return dg.AssetCheckResult(
            passed=not any(duplicates.values()),
            severity=dg.AssetCheckSeverity.ERROR,
            metadata={"duplicated_keys": dg.MetadataValue.json(duplicates)},
        )

    return [
        row_accounting,
        source_accounting,
        validity_rate,
        unique_keys,
        *not_empty_checks(spec, ("raw", "clean", "features")),
    ]


def not_empty_checks(spec: DatasetSpec, stages: tuple[str, ...]) -> list[dg.AssetChecksDefinition]:
    return [_not_empty_check(spec, stage) for stage in stages]


def _not_empty_check(spec: DatasetSpec, stage: str) -> dg.AssetChecksDefinition:
    @dg.asset_check(
        asset=asset_key(spec, stage),
        name="not_empty",
        blocking=True,
        description=f"`{spec.name}.{stage}` has at least one row.",
    )
    def not_empty(warehouse: DuckDBResource) -> dg.AssetCheckResult:
        with warehouse.get_connection() as conn:
            exists = table_exists(conn, spec.name, stage)
            rows = count_rows(conn, spec.name, stage) if exists else 0
        return dg.AssetCheckResult(
            passed=rows > 0, severity=dg.AssetCheckSeverity.ERROR, metadata={"rows": rows}
        )

    return not_empty
