"""Asset checks of the data spine, shown in each asset's Checks tab.

They read whole tables with one aggregate query each (cheap in DuckDB, see mlplatform.core.quality),
so they can be re-run from the UI at any time, not only right after a materialization.
"""

import dagster as dg

from mlplatform.contracts import SOURCE_ACCOUNTING_CHECK, VALIDITY_RATE_CHECK, Stage, asset_key
from mlplatform.core.accounting import accounts_markdown, read_accounts
from mlplatform.core.quality import (
    accounting_failure,
    duplicated_keys,
    quarantine_share,
    reconcile_rows,
    unique_columns,
)
from mlplatform.core.warehouse import count_rows, table_exists
from mlplatform.resources.warehouse import WarehouseResource
from mlplatform.specs.model import DatasetSpec


def build_quality_checks(spec: DatasetSpec, pool: str | None = None) -> list[dg.AssetChecksDefinition]:
    """`pool`: the dataset's Dagster pool (StageBuild.pool), which its assets have too."""
    return [
        _row_accounting_check(spec, pool),
        _source_accounting_check(spec, pool),
        _validity_rate_check(spec, pool),
        _unique_keys_check(spec, pool),
        *not_empty_checks(spec, (Stage.RAW, Stage.CLEAN, Stage.FEATURES), pool),
    ]


def _row_accounting_check(spec: DatasetSpec, pool: str | None) -> dg.AssetChecksDefinition:
    @dg.asset_check(
        asset=asset_key(spec, Stage.CLEAN),
        pool=pool,
        name="row_accounting",
        blocking=True,
        description="Every raw row is either clean or quarantined: raw = clean + quarantine, per partition.",
    )
    def row_accounting(warehouse: WarehouseResource) -> dg.AssetCheckResult:
        with warehouse.get_connection(spec.name) as conn:
            counts = reconcile_rows(conn, spec)
        mismatched = counts.mismatched
        return dg.AssetCheckResult(
            passed=not mismatched,
            severity=dg.AssetCheckSeverity.ERROR,
            description=None if not mismatched else f"{len(mismatched)} partitions do not reconcile",
            metadata={
                "raw_rows": counts.raw_rows,
                "clean_rows": counts.clean_rows,
                "quarantined_rows": counts.quarantined_rows,
                "mismatched_partitions": dg.MetadataValue.json(mismatched[:20]),
            },
        )

    return row_accounting


def _validity_rate_check(spec: DatasetSpec, pool: str | None) -> dg.AssetChecksDefinition:
    max_share = spec.quality.max_quarantine_share

    @dg.asset_check(
        asset=asset_key(spec, Stage.CLEAN),
        pool=pool,
        name=VALIDITY_RATE_CHECK,
        blocking=True,
        description=(
            f"Share of raw rows that pass validation. Fails, and blocks downstream assets, when more than "
            f"{max_share:.1%} of the rows are quarantined (spec `quality.max_quarantine_share`)."
        ),
    )
    def validity_rate(warehouse: WarehouseResource) -> dg.AssetCheckResult:
        with warehouse.get_connection(spec.name) as conn:
            quarantined = quarantine_share(conn, spec)
        share = quarantined.share
        return dg.AssetCheckResult(
            passed=share <= max_share,
            severity=dg.AssetCheckSeverity.ERROR,
            metadata={
                "validity_rate": 1 - share,
                "quarantine_share": share,
                "max_quarantine_share": max_share,
                "top_failed_checks": dg.MetadataValue.json([list(t) for t in quarantined.top_failed_checks]),
            },
        )

    return validity_rate


def _source_accounting_check(spec: DatasetSpec, pool: str | None) -> dg.AssetChecksDefinition:
    @dg.asset_check(
        asset=asset_key(spec, Stage.CLEAN),
        pool=pool,
        name=SOURCE_ACCOUNTING_CHECK,
        blocking=True,
        description=(
            "Reconciliation from the source: each source file's records, counted without DuckDB (Python's "
            "csv module, malformed lines included; the Parquet footer), were all read; the rows the last raw "
            "run placed in its window are all in clean + quarantine; and over all partitions no source row "
            "is there twice, nor does a file have more rows there than it holds (none, once it has left the "
            "source)."
        ),
    )
    def source_accounting(warehouse: WarehouseResource) -> dg.AssetCheckResult:
        with warehouse.get_connection(spec.name) as conn:
            accounts = read_accounts(conn, spec.name, spec.time_column)
        if not accounts:
            return dg.AssetCheckResult(
                passed=False,
                severity=dg.AssetCheckSeverity.ERROR,
                description=(
                    f"{spec.name}.{Stage.RAW} has recorded no source accounting yet: materialize raw first"
                ),
            )
        failing = [a for a in accounts if not a.reconciles]
        return dg.AssetCheckResult(
            passed=not failing,
            severity=dg.AssetCheckSeverity.ERROR,
            description=accounting_failure(spec.name, failing),
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

    return source_accounting


def _unique_keys_check(spec: DatasetSpec, pool: str | None) -> dg.AssetChecksDefinition:
    declared = ", ".join(unique_columns(spec)) or "none declared"

    @dg.asset_check(
        asset=asset_key(spec, Stage.CLEAN),
        pool=pool,
        name="unique_keys",
        blocking=True,
        description=f"No duplicate values in the unique columns ({declared}).",
    )
    def unique_keys(warehouse: WarehouseResource) -> dg.AssetCheckResult:
        with warehouse.get_connection(spec.name) as conn:
            duplicates = duplicated_keys(conn, spec)
        return dg.AssetCheckResult(
            passed=not any(duplicates.values()),
            severity=dg.AssetCheckSeverity.ERROR,
            metadata={"duplicated_keys": dg.MetadataValue.json(duplicates)},
        )

    return unique_keys


def not_empty_checks(
    spec: DatasetSpec, stages: tuple[str, ...], pool: str | None = None
) -> list[dg.AssetChecksDefinition]:
    return [_not_empty_check(spec, stage, pool) for stage in stages]


def _not_empty_check(spec: DatasetSpec, stage: str, pool: str | None) -> dg.AssetChecksDefinition:
    @dg.asset_check(
        asset=asset_key(spec, stage),
        pool=pool,
        name="not_empty",
        blocking=True,
        description=f"`{spec.name}.{stage}` has at least one row.",
    )
    def not_empty(warehouse: WarehouseResource) -> dg.AssetCheckResult:
        with warehouse.get_connection(spec.name) as conn:
            exists = table_exists(conn, spec.name, stage)
            rows = count_rows(conn, spec.name, stage) if exists else 0
        return dg.AssetCheckResult(
            passed=rows > 0, severity=dg.AssetCheckSeverity.ERROR, metadata={"rows": rows}
        )

    return not_empty
