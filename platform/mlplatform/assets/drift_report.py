"""Stage 6b, `drift_report`, partitioned like `features`.

Each partition is judged on the trailing `drift.window` of rows ending with it (a single day of hourly
data is too few rows for PSI), so the verdict of a day is "the last week looks different from what the
champion learned". Results go to `<ds>.drift_report` (per column) and `<ds>.drift_verdict` (one row per
partition); the verdict of the newest partition is also materialization metadata, which is all the
drift sensor reads.
"""

import base64
from datetime import UTC, datetime, timedelta

import dagster as dg
import duckdb
import pandas as pd
from dagster_duckdb import DuckDBResource

from mlplatform.assets.common import GRAIN_DAYS, asset_key, spec_code_version, time_window
from mlplatform.core import drift_plots
from mlplatform.core.drift_reference import (
    Reference,
    judge_window,
    nan_to_none,
    read_reference,
)
from mlplatform.core.sql import quote_ident
from mlplatform.core.warehouse import read_frame, replace_window, table_exists, table_name, window_predicate
from mlplatform.specs.model import DatasetSpec, parse_duration

# Embedding plots in metadata of a long backfill would copy them into every partition's event.
_MAX_PARTITIONS_WITH_PLOTS = 14
_HISTORY_PARTITIONS = 120
# Outputs are judged only when most of the window was scored by the reference's model: a few rows
# give a PSI biased upwards by about (buckets - 1) / rows.
_MIN_SHARE_SCORED_BY_REFERENCE = 0.5


def window_length(spec: DatasetSpec) -> timedelta:
    return parse_duration(spec.drift.window)


def window_partitions(spec: DatasetSpec) -> int:
    """How many partitions the trailing window of one partition reaches back (including itself)."""
    grain = timedelta(days=GRAIN_DAYS[spec.partition_grain])
    return max(1, -(-window_length(spec) // grain))


def _png_markdown(png: bytes, caption: str) -> dg.MetadataValue:
    return dg.MetadataValue.md(f"![{caption}](data:image/png;base64,{base64.b64encode(png).decode()})")


def window_rows(
    conn: duckdb.DuckDBPyConnection, spec: DatasetSpec, start: datetime, end: datetime
) -> pd.DataFrame:
    """Features of [start, end) with the predictions of the same rows (NULL where not scored)."""
    features = table_name(spec.name, "features")
    where = window_predicate(spec.time_column, start, end)
    if not table_exists(conn, spec.name, "predictions"):
        return read_frame(conn, f"SELECT * FROM {features} WHERE {where}")
    keys = spec.row_keys
    on = " AND ".join(f"f.{quote_ident(k)} = p.{quote_ident(k)}" for k in keys)
    predictions = table_name(spec.name, "predictions")
    output_columns = [
        c
        for c in conn.sql(f"SELECT * FROM {predictions} LIMIT 0").columns
        if c == "prediction" or c == "model_version" or c.startswith("probability")
    ]
    picked = ", ".join(f"any_value({quote_ident(c)}) AS {quote_ident(c)}" for c in output_columns)
    group = ", ".join(quote_ident(k) for k in keys)
    # One prediction per key: a duplicated (time, entity) pair must not duplicate feature rows.
    return read_frame(
        conn,
        f"SELECT f.*, {', '.join('p.' + quote_ident(c) for c in output_columns)} "
        f"FROM (SELECT * FROM {features} WHERE {where}) f "
        f"LEFT JOIN (SELECT {group}, {picked} FROM {predictions} WHERE {where} GROUP BY {group}) p ON {on}",
    )


def report_partition(
    spec: DatasetSpec,
    reference: Reference,
    version: int | None,
    rows: pd.DataFrame,
    partition_start: datetime,
    window_start: datetime,
    window_end: datetime,
) -> tuple[pd.DataFrame, dict]:
    """Per-column rows and the verdict row of one partition's window (`version`: the reference's model)."""
    times = rows[spec.time_column]
    window = rows[(times >= window_start) & (times < window_end)].reset_index(drop=True)
    judge_outputs = False
    if "model_version" in window and len(window):
        by_reference = pd.to_numeric(window["model_version"], errors="coerce") == version
        judge_outputs = by_reference.mean() >= _MIN_SHARE_SCORED_BY_REFERENCE
        # Outputs of another model would be compared with the wrong reference: blank them.
        for column in [c for c in window.columns if c == "prediction" or c.startswith("probability")]:
            window[column] = window[column].where(by_reference)
    report = judge_window(spec, reference, window, judge_outputs=judge_outputs)
    columns = report.columns.copy()
    columns.insert(0, "partition_start", partition_start)
    columns.insert(1, "window_start", window_start)
    columns.insert(2, "window_end", window_end)
    columns["reference_version"] = version
    verdict = report.verdict
    row = {
        "partition_start": partition_start,
        "window_start": window_start,
        "window_end": window_end,
        "n_rows": report.n_rows,
        "drifted": bool(verdict.drifted and report.n_rows > 0),
        "drifted_share": float(verdict.drifted_share),
        "n_drifted": int(verdict.n_drifted),
        "n_judged": int(verdict.n_features),
        "drifted_columns": ", ".join(verdict.drifted_features),
        "metric": report.metric,
        "reference_error": nan_to_none(report.reference_error),
        "current_error": nan_to_none(report.current_error),
        "performance_drop": nan_to_none(verdict.performance_drop),
        "prediction_psi": nan_to_none(report.prediction_psi),
        "outputs_judged": judge_outputs,
        "reason": verdict.reason if report.n_rows else "no rows in the window",
        "reference_version": version,
    }
    return columns, row


def build_drift_report_asset(spec: DatasetSpec, partitions: dg.PartitionsDefinition) -> dg.AssetsDefinition:
    reach = window_partitions(spec)
    mapping = dg.TimeWindowPartitionMapping(start_offset=-(reach - 1)) if reach > 1 else None

    @dg.asset(
        key=asset_key(spec, "drift_report"),
        partitions_def=partitions,
        backfill_policy=dg.BackfillPolicy.single_run(),
        deps=[
            dg.AssetDep(asset_key(spec, "features"), partition_mapping=mapping),
            dg.AssetDep(asset_key(spec, "predictions"), partition_mapping=mapping),
            asset_key(spec, "reference_profile"),
        ],
        group_name="monitoring",
        kinds={"duckdb"},
        owners=spec.owners,
        tags=spec.tags,
        code_version=spec_code_version(spec, "drift", "features", "columns", "target"),
        description=(
            f"Drift of {spec.name} per partition: the trailing {spec.drift.window} of rows ending with the "
            "partition against the champion's reference profile. Per column PSI plus KS (numeric) or "
            "chi-square (categorical) with Wasserstein / Jensen-Shannon distances; prediction drift; the "
            "champion's error where labels are present next to its test error; a data-set verdict "
            f"(spec `drift`). Tables `{spec.name}.drift_report` and `{spec.name}.drift_verdict`."
        ),
    )
    def drift_report(context: dg.AssetExecutionContext, warehouse: DuckDBResource) -> dg.MaterializeResult:
        start, end = time_window(context)
        keys = context.partition_keys
        window = window_length(spec)
        with warehouse.get_connection() as conn:
            if not table_exists(conn, spec.name, "reference_profile"):
                raise dg.Failure(f"{spec.name}.reference_profile does not exist: no champion profiled yet")
            stored = conn.sql(f"SELECT * FROM {table_name(spec.name, 'reference_profile')}").df()
            rows = window_rows(conn, spec, start - window, end)
        reference = read_reference(stored)
        version = int(stored["model_version"].iloc[0]) if "model_version" in stored and len(stored) else None
        column_frames, verdicts = [], []
        for key in keys:
            partition = partitions.time_window_for_partition_key(key)  # type: ignore[attr-defined]
            p_start, p_end = partition.start.replace(tzinfo=None), partition.end.replace(tzinfo=None)
            columns, verdict = report_partition(
                spec, reference, version, rows, p_start, p_end - window, p_end
            )
            column_frames.append(columns)
            verdicts.append(verdict)
        computed_at = datetime.now(UTC).replace(tzinfo=None)
        column_table = pd.concat(column_frames, ignore_index=True)
        verdict_table = pd.DataFrame(verdicts).assign(computed_at=computed_at)
        with warehouse.get_connection() as conn:
            for name, frame in (("drift_report", column_table), ("drift_verdict", verdict_table)):
                conn.register("_drift_rows", frame)
                replace_window(
                    conn, spec.name, name, "SELECT * FROM _drift_rows", "partition_start", start, end
                )
                conn.unregister("_drift_rows")
            history = conn.sql(
                f"SELECT * FROM {table_name(spec.name, 'drift_verdict')} "
                f"ORDER BY partition_start DESC LIMIT {_HISTORY_PARTITIONS}"
            ).df()
        latest = verdicts[-1]
        n_drifted = sum(v["drifted"] for v in verdicts)
        context.log.info(
            f"{spec.name} drift {keys[0]} .. {keys[-1]}: {n_drifted}/{len(keys)} drifted; latest: {latest['reason']}"
        )
        metadata: dict = {
            "drifted": latest["drifted"],
            "verdict_partition": keys[-1],
            "reason": latest["reason"],
            "drifted_share": latest["drifted_share"],
            "performance_drop": latest["performance_drop"],
            "current_error": latest["current_error"],
            "reference_error": latest["reference_error"],
            "reference_version": latest["reference_version"],
            "drifted_partitions_in_run": int(n_drifted),
            "window": spec.drift.window,
            "dagster/row_count": len(column_table),
            "dagster/table_name": f"{spec.name}.drift_report",
        }
        if len(keys) <= _MAX_PARTITIONS_WITH_PLOTS:
            bars = drift_plots.feature_drift_bars(
                column_frames[-1],
                spec.drift.psi_threshold,
                f"{spec.name} {keys[-1]} (trailing {spec.drift.window})",
            )
            metadata["feature_drift"] = _png_markdown(bars, "per-column drift")
            if len(history) > 1:
                trend = drift_plots.drift_history(
                    history.sort_values("partition_start"),
                    spec.drift.drifted_share_threshold,
                    spec.drift.performance_drop_threshold,
                )
                metadata["drift_over_partitions"] = _png_markdown(trend, "drift over partitions")
        return dg.MaterializeResult(metadata={k: v for k, v in metadata.items() if v is not None})

    return drift_report
