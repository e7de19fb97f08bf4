"""Stage 6b, `drift_report`, partitioned like `features`.

Each partition is judged on the trailing `drift.window` of rows ending with it (a single day of hourly
data is too few rows for PSI), so the verdict of a day is "the last week looks different from what the
champion learned". Results go to `<ds>.drift_report` (per column) and `<ds>.drift_verdict` (one row per
partition); the verdict of the newest partition is also materialization metadata, which is all the
drift sensor reads.
"""

import base64
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import dagster as dg
import pandas as pd

from mlplatform.assets.common import spec_code_version, time_window
from mlplatform.contracts import DriftVerdictMetadata, Stage, Table, asset_key
from mlplatform.core import drift_plots
from mlplatform.core.drift_reference import Reference, read_reference
from mlplatform.core.drift_windows import report_partition, window_length, window_partitions, window_rows
from mlplatform.core.scoring import MODEL_VERSION_COLUMN
from mlplatform.core.warehouse import replace_window, table_exists, table_name
from mlplatform.resources.warehouse import WarehouseResource
from mlplatform.specs.model import DatasetSpec

if TYPE_CHECKING:
    from mlplatform.stages import StageBuild  # the registry imports this module

# Embedding plots in metadata of a long backfill would copy them into every partition's event.
_MAX_PARTITIONS_WITH_PLOTS = 14
_HISTORY_PARTITIONS = 120
_FRAME_VIEW = "_drift_rows"


def _png_markdown(png: bytes, caption: str) -> dg.MetadataValue:
    return dg.MetadataValue.md(f"![{caption}](data:image/png;base64,{base64.b64encode(png).decode()})")


def _read_inputs(
    spec: DatasetSpec, warehouse: WarehouseResource, start: datetime, end: datetime
) -> tuple[Reference, int | None, pd.DataFrame]:
    """The stored reference, the version of the model it profiles, and the rows of [start, end)."""
    with warehouse.get_connection(spec.name) as conn:
        if not table_exists(conn, spec.name, Stage.REFERENCE_PROFILE):
            raise dg.Failure(
                f"{spec.name}.{Stage.REFERENCE_PROFILE} does not exist: no champion profiled yet"
            )
        stored = conn.sql(f"SELECT * FROM {table_name(spec.name, Stage.REFERENCE_PROFILE)}").df()
        rows = window_rows(conn, spec, start, end)
    has_version = MODEL_VERSION_COLUMN in stored and len(stored)
    version = int(stored[MODEL_VERSION_COLUMN].iloc[0]) if has_version else None
    return read_reference(stored), version, rows


def _judge_partitions(
    spec: DatasetSpec,
    partitions: dg.PartitionsDefinition,
    keys: list[str],
    inputs: tuple[Reference, int | None, pd.DataFrame],
) -> tuple[list[pd.DataFrame], list[dict[str, Any]]]:
    """Per-column frames and verdict rows of each partition in `keys`, each on its trailing window."""
    reference, version, rows = inputs
    window = window_length(spec)
    column_frames, verdicts = [], []
    for key in keys:
        partition = partitions.time_window_for_partition_key(key)  # type: ignore[attr-defined]
        p_start, p_end = partition.start.replace(tzinfo=None), partition.end.replace(tzinfo=None)
        columns, verdict = report_partition(spec, reference, version, rows, p_start, p_end - window, p_end)
        column_frames.append(columns)
        verdicts.append(verdict)
    return column_frames, verdicts


def _store(
    spec: DatasetSpec,
    warehouse: WarehouseResource,
    tables: dict[str, pd.DataFrame],
    start: datetime,
    end: datetime,
) -> pd.DataFrame:
    """Replace the run's partitions of each table; returns the newest verdicts (for the trend plot)."""
    with warehouse.get_connection(spec.name) as conn:
        for name, frame in tables.items():
            conn.register(_FRAME_VIEW, frame)
            replace_window(
                conn, spec.name, name, f"SELECT * FROM {_FRAME_VIEW}", "partition_start", start, end
            )
            conn.unregister(_FRAME_VIEW)
        return conn.sql(
            f"SELECT * FROM {table_name(spec.name, Table.DRIFT_VERDICT)} "
            f"ORDER BY partition_start DESC LIMIT {_HISTORY_PARTITIONS}"
        ).df()


def _plots(spec: DatasetSpec, key: str, columns: pd.DataFrame, history: pd.DataFrame) -> dict[str, Any]:
    """Per-column drift of the newest partition and, with some history, the verdicts over time."""
    bars = drift_plots.feature_drift_bars(
        columns, spec.drift.psi_threshold, f"{spec.name} {key} (trailing {spec.drift.window})"
    )
    plots = {"feature_drift": _png_markdown(bars, "per-column drift")}
    if len(history) > 1:
        trend = drift_plots.drift_history(
            history.sort_values("partition_start"),
            spec.drift.drifted_share_threshold,
            spec.drift.performance_drop_threshold,
        )
        plots["drift_over_partitions"] = _png_markdown(trend, "drift over partitions")
    return plots


def _metadata(
    spec: DatasetSpec, keys: list[str], verdicts: list[dict[str, Any]], rows: int
) -> dict[str, Any]:
    """The newest partition's verdict (as the drift sensor reads it) and the run's summary."""
    latest = verdicts[-1]
    return {
        **DriftVerdictMetadata(latest["drifted"], keys[-1], latest["reason"]).to_metadata(),
        "drifted_share": latest["drifted_share"],
        "performance_drop": latest["performance_drop"],
        "current_error": latest["current_error"],
        "reference_error": latest["reference_error"],
        "reference_version": latest["reference_version"],
        "drifted_partitions_in_run": int(sum(v["drifted"] for v in verdicts)),
        "window": spec.drift.window,
        "dagster/row_count": rows,
        "dagster/table_name": f"{spec.name}.{Stage.DRIFT_REPORT}",
    }


def build_drift_report_asset(stage: "StageBuild") -> dg.AssetsDefinition:
    spec, partitions = stage.spec, stage.partitions
    reach = window_partitions(spec)
    mapping = dg.TimeWindowPartitionMapping(start_offset=-(reach - 1)) if reach > 1 else None

    @dg.asset(
        key=asset_key(spec, Stage.DRIFT_REPORT),
        pool=stage.pool,
        partitions_def=partitions,
        backfill_policy=dg.BackfillPolicy.single_run(),
        deps=[
            dg.AssetDep(asset_key(spec, Stage.FEATURES), partition_mapping=mapping),
            dg.AssetDep(asset_key(spec, Stage.PREDICTIONS), partition_mapping=mapping),
            asset_key(spec, Stage.REFERENCE_PROFILE),
        ],
        owners=spec.owners,
        tags=spec.tags,
        code_version=spec_code_version(spec, "drift", "features", "columns", "target"),
        description=(
            f"Drift of {spec.name} per partition: the trailing {spec.drift.window} of rows ending with the "
            "partition against the champion's reference profile. Per column PSI plus KS (numeric) or "
            "chi-square (categorical) with Wasserstein / Jensen-Shannon distances; prediction drift; the "
            "champion's error where labels are present next to its test error; a data-set verdict "
            f"(spec `drift`). Tables `{spec.name}.{Stage.DRIFT_REPORT}` and `{spec.name}.{Table.DRIFT_VERDICT}`."
        ),
    )
    def drift_report(context: dg.AssetExecutionContext, warehouse: WarehouseResource) -> dg.MaterializeResult:
        start, end = time_window(context)
        keys = context.partition_keys
        inputs = _read_inputs(spec, warehouse, start - window_length(spec), end)
        column_frames, verdicts = _judge_partitions(spec, partitions, keys, inputs)
        column_table = pd.concat(column_frames, ignore_index=True)
        verdict_table = pd.DataFrame(verdicts).assign(computed_at=datetime.now(UTC).replace(tzinfo=None))
        tables = {Stage.DRIFT_REPORT.value: column_table, Table.DRIFT_VERDICT.value: verdict_table}
        history = _store(spec, warehouse, tables, start, end)
        metadata = _metadata(spec, keys, verdicts, len(column_table))
        context.log.info(
            f"{spec.name} drift {keys[0]} .. {keys[-1]}: {metadata['drifted_partitions_in_run']}/{len(keys)} "
            f"drifted; latest: {verdicts[-1]['reason']}"
        )
        if len(keys) <= _MAX_PARTITIONS_WITH_PLOTS:
            metadata.update(_plots(spec, keys[-1], column_frames[-1], history))
        return dg.MaterializeResult(metadata={k: v for k, v in metadata.items() if v is not None})

    return drift_report
