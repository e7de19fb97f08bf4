"""Stage 6b, `drift_report`, partitioned like `features`.

Each partition is judged on the trailing `drift.window` of rows ending with it (a single day of hourly
data is too few rows for PSI), so the verdict of a day is "the last week looks different from what the
champion learned". Results go to `<ds>.drift_report` (per column) and `<ds>.drift_verdict` (one row per
partition); each partition's verdict is also the metadata of its own materialization event, which is
all the drift sensor reads (mlplatform.assets.drift_metadata). After a verdict driven by performance
the champion's per-partition error history (stored verdicts of the same reference version, plus this
run's) is searched for the change point a retraining can start from (core.drift_performance).
"""

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import dagster as dg
import duckdb
import pandas as pd
from mlflow.exceptions import MlflowException

from mlplatform.assets.common import add_partition_metadata, spec_code_version, time_window
from mlplatform.assets.drift_metadata import partitions_metadata, run_metadata
from mlplatform.contracts import Stage, Table, asset_key
from mlplatform.core import drift_plots
from mlplatform.core.drift_performance import labels_delay, locate_change, realized_window
from mlplatform.core.drift_ranks import PairCounts
from mlplatform.core.drift_reference import Reference, read_reference
from mlplatform.core.drift_summaries import SummaryPlan
from mlplatform.core.drift_summary_store import load_partitions
from mlplatform.core.drift_summary_windows import first_needed, report_summarised, windows_on_partitions
from mlplatform.core.drift_windows import (
    arrived_partition_errors,
    empty_windows_warning,
    report_partition,
    spacing_hint,
    verdict_table,
    window_partitions,
    window_rows,
    window_start,
)
from mlplatform.core.scoring import MODEL_VERSION_COLUMN
from mlplatform.core.sql import column_types
from mlplatform.core.warehouse import read_frame, replace_window, table_exists, table_name
from mlplatform.plot_links import DRIFT_PLOTS_FOLDER, Plot, embedded_metadata, log_drift_plots, plot_metadata
from mlplatform.resources.mlflow import MlflowPlotsResource, short_error
from mlplatform.resources.warehouse import WarehouseResource
from mlplatform.specs.model import DatasetSpec

if TYPE_CHECKING:
    from mlplatform.stages import StageBuild  # the registry imports this module

_HISTORY_PARTITIONS = 120
_FRAME_VIEW = "_drift_rows"


@dataclass(frozen=True)
class _Inputs:
    reference: Reference
    version: int | None  # of the model the reference profiles
    rows: pd.DataFrame  # from the earliest realized window's start to the run's end
    errors: pd.DataFrame  # stored partition errors of that model (partition_start, partition_error)
    # With labels.delay and training.change_point: the rows since the champion's last train row, whose
    # partition errors are judged again on the labels arrived by each verdict (stored ones lack them).
    since_training: pd.DataFrame | None = None


def _read_inputs(
    spec: DatasetSpec, warehouse: WarehouseResource, start: datetime, end: datetime, with_rows: bool = True
) -> _Inputs:
    """The stored reference, the version of the model it profiles, the rows the run's windows need
    (`with_rows`) and the partition errors stored for that model outside [start, end) (this run judges
    those again)."""
    with warehouse.get_connection(spec.name) as conn:
        if not table_exists(conn, spec.name, Stage.REFERENCE_PROFILE):
            raise dg.Failure(
                f"{spec.name}.{Stage.REFERENCE_PROFILE} does not exist: no champion profiled yet"
            )
        stored = conn.sql(f"SELECT * FROM {table_name(spec.name, Stage.REFERENCE_PROFILE)}").df()
        has_version = MODEL_VERSION_COLUMN in stored and len(stored)
        version = int(stored[MODEL_VERSION_COLUMN].iloc[0]) if has_version else None
        # The first partition's realized window starts earliest (labels.delay before its window).
        rows = window_rows(conn, spec, realized_window(spec, start)[0], end) if with_rows else pd.DataFrame()
        errors = _stored_errors(conn, spec, version, start, end)
        reference = read_reference(stored)
        train_last = reference.champion.train_last
        since_training = None
        if labels_delay(spec) > timedelta(0) and spec.training.change_point and train_last is not None:
            since_training = window_rows(conn, spec, train_last.to_pydatetime(), end)
    return _Inputs(reference, version, rows, errors, since_training)


def _stored_errors(
    conn: duckdb.DuckDBPyConnection, spec: DatasetSpec, version: int | None, start: datetime, end: datetime
) -> pd.DataFrame:
    empty = pd.DataFrame({"partition_start": pd.Series(dtype="datetime64[us]"), "partition_error": []})
    if version is None or not table_exists(conn, spec.name, Table.DRIFT_VERDICT):
        return empty
    table = table_name(spec.name, Table.DRIFT_VERDICT)
    if "partition_error" not in column_types(conn, table):  # written before partition errors existed
        return empty
    return read_frame(
        conn,
        f"SELECT partition_start, partition_error FROM {table} WHERE reference_version = ? "
        "AND NOT (partition_start >= ? AND partition_start < ?) ORDER BY partition_start",
        [version, start, end],
    )


def _judge_partitions(
    spec: DatasetSpec, partitions: dg.PartitionsDefinition, keys: list[str], inputs: _Inputs
) -> tuple[list[pd.DataFrame], list[dict[str, Any]]]:
    """Per-column frames and verdict rows of each partition in `keys`, each on its trailing window."""
    spacing = spacing_hint(spec, inputs.rows[spec.time_column])  # once: the same for every empty window
    column_frames, verdicts = [], []
    for key in keys:
        partition = partitions.time_window_for_partition_key(key)  # type: ignore[attr-defined]
        p_start, p_end = partition.start.replace(tzinfo=None), partition.end.replace(tzinfo=None)
        columns, verdict = report_partition(
            spec,
            inputs.reference,
            inputs.version,
            inputs.rows,
            p_start,
            window_start(spec, p_end),
            p_end,
            spacing,
        )
        if verdict["performance_trigger"] and spec.training.change_point:
            _add_change_point(spec, verdict, inputs, verdicts)
        column_frames.append(columns)
        verdicts.append(verdict)
    return column_frames, verdicts


def _partition_bounds(partitions: dg.PartitionsDefinition, key: str) -> tuple[datetime, datetime]:
    partition = partitions.time_window_for_partition_key(key)  # type: ignore[attr-defined]
    return partition.start.replace(tzinfo=None), partition.end.replace(tzinfo=None)


def _judge_summarised(
    spec: DatasetSpec,
    partitions: dg.PartitionsDefinition,
    keys: list[str],
    warehouse: WarehouseResource,
    inputs: _Inputs,
) -> tuple[list[pd.DataFrame], list[dict[str, Any]], pd.Series]:
    """As _judge_partitions, from per-partition summaries (core.drift_summary_windows), which are
    stored; returns the time column of the rows read too."""
    bounds = [_partition_bounds(partitions, key) for key in keys]
    run = (bounds[0][0], bounds[-1][1])
    plan = SummaryPlan.of(inputs.reference.profile)
    with warehouse.get_connection(spec.name) as conn:
        loaded = load_partitions(conn, spec, plan, inputs.version, first_needed(spec, bounds[0][1]), run)
        if inputs.version is not None:  # a summary is reused for the same reference version only
            conn.register(_FRAME_VIEW, loaded.to_store)
            select, first = f"SELECT * FROM {_FRAME_VIEW}", min(loaded.parts)
            replace_window(conn, spec.name, Table.DRIFT_SUMMARY, select, "partition_start", first, run[1])
            conn.unregister(_FRAME_VIEW)
    spacing_text: list[str] = []

    def spacing() -> str:  # once, and only when a window is empty
        if not spacing_text:
            spacing_text.append(spacing_hint(spec, loaded.times))
        return spacing_text[0]

    column_frames, verdicts, pairs = [], [], PairCounts()
    for p_start, p_end in bounds:
        window = (p_start, window_start(spec, p_end), p_end)
        columns, verdict = report_summarised(
            spec, inputs.reference, plan, inputs.version, loaded.parts, window, spacing, pairs
        )
        if verdict["performance_trigger"] and spec.training.change_point:
            _add_change_point(spec, verdict, inputs, verdicts)
        column_frames.append(columns)
        verdicts.append(verdict)
    return column_frames, verdicts, loaded.times


def _add_change_point(
    spec: DatasetSpec, verdict: dict[str, Any], inputs: _Inputs, earlier: list[dict[str, Any]]
) -> None:
    """After a verdict driven by performance: where the champion's partition error stepped, from the
    stored errors and this run's (up to this partition), into the row and its reason. With
    `labels.delay` each partition's error is judged again on the labels arrived by this verdict's
    window end minus the delay (those stored when it was judged lacked its late labels)."""
    judged = pd.DataFrame(
        [
            {"partition_start": v["partition_start"], "partition_error": v["partition_error"]}
            for v in [*earlier, verdict]
        ]
    )
    history = pd.concat([inputs.errors, judged], ignore_index=True)
    if inputs.since_training is not None:  # labels.delay: errors on the labels arrived by now
        arrived = arrived_partition_errors(
            spec, inputs.since_training, inputs.version, verdict["window_end"] - labels_delay(spec)
        )
        starts = pd.to_datetime(history["partition_start"])
        replaced = starts.isin(pd.to_datetime(arrived["partition_start"])) | history["partition_error"].isna()
        kept = history[~replaced.to_numpy()]  # an empty error says nothing: NaN is skipped anyway
        history = arrived if kept.empty else pd.concat([kept, arrived], ignore_index=True)
    found, n_errors = locate_change(
        history, str(verdict["metric"]), inputs.reference.champion.train_last, verdict["partition_start"]
    )
    if found is None:
        verdict["reason"] += (
            f"; no change point in the {n_errors} partition error(s) of version {inputs.version} "
            "after its training rows"
        )
        return
    verdict["change_point"] = pd.Timestamp(found.at).isoformat()
    verdict["reason"] += f"; {found.describe()}"


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


def _plots(spec: DatasetSpec, key: str, columns: pd.DataFrame, history: pd.DataFrame) -> list[Plot]:
    """Per-column drift of the newest partition and, with some history, the verdicts over time."""
    plots = []
    if len(columns):
        bars = drift_plots.feature_drift_bars(columns, f"{spec.name} {key} (trailing {spec.drift.window})")
        plots.append(Plot("feature_drift", "per-column drift", bars))
    if len(history) > 1:
        trend = drift_plots.drift_history(
            history.sort_values("partition_start"),
            spec.drift.drifted_share_threshold,
            spec.drift.performance_drop_threshold,
        )
        plots.append(Plot("drift_over_partitions", "drift over partitions", trend))
    return plots


def _show_plots(
    context: dg.AssetExecutionContext,
    mlflow: MlflowPlotsResource,
    spec: DatasetSpec,
    columns: pd.DataFrame,
    history: pd.DataFrame,
) -> None:
    """The plots as artifacts of an MLflow run of their own, shown inline on the newest partition's event
    only (which is the asset's latest): a long backfill does not copy them into every partition's."""
    key = context.partition_keys[-1]
    plots = _plots(spec, key, columns, history)
    if not plots:
        return
    try:
        run_id = log_drift_plots(mlflow, spec.name, context.run.run_id, key, plots)
        metadata = plot_metadata(mlflow, run_id, DRIFT_PLOTS_FOLDER, plots)
    except (MlflowException, OSError) as error:  # OSError: requests' connection errors among them
        # The verdict is what the drift sensor needs: without MLflow the plots are only embedded.
        context.log.warning(
            f"{spec.name} drift {key}: could not log the plots to MLflow at {mlflow.tracking_uri} "
            f"({short_error(error)}); the images are embedded in the metadata instead"
        )
        metadata = embedded_metadata(plots)
    context.add_asset_metadata(metadata, partition_key=key)


def _metadata(spec: DatasetSpec) -> dict[str, Any]:
    """What every partition's event carries besides its own verdict (mlplatform.assets.drift_metadata)."""
    return {"window": spec.drift.window, "dagster/table_name": f"{spec.name}.{Stage.DRIFT_REPORT}"}


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
        code_version=spec_code_version(spec, "drift", "features", "columns", "target", "labels", "training"),
        description=(
            f"Drift of {spec.name} per partition: the trailing {spec.drift.window} of rows ending with the "
            "partition against the champion's reference profile. Per column PSI plus KS (numeric) or "
            "chi-square (categorical) with Wasserstein / Jensen-Shannon distances; prediction drift; the "
            "champion's realized error on rows whose labels have arrived (spec `labels.delay`) and, for a "
            "classifier, its label-free estimated error, next to their references; a data-set verdict "
            "(spec `drift`) whose drifted share is weighted by the champion's feature importance, with the "
            "change point of its per-partition error after a drop. Tables "
            f"`{spec.name}.{Stage.DRIFT_REPORT}` and `{spec.name}.{Table.DRIFT_VERDICT}`."
        ),
    )
    def drift_report(
        context: dg.AssetExecutionContext, warehouse: WarehouseResource, mlflow_plots: MlflowPlotsResource
    ) -> dg.MaterializeResult:
        start, end = time_window(context)
        keys = context.partition_keys
        ends = [_partition_bounds(partitions, key)[1] for key in keys]
        if windows_on_partitions(spec, ends):  # whole partitions: merged from per-partition summaries
            inputs = _read_inputs(spec, warehouse, start, end, with_rows=False)
            column_frames, verdicts, times = _judge_summarised(spec, partitions, keys, warehouse, inputs)
        else:
            inputs = _read_inputs(spec, warehouse, start, end)
            column_frames, verdicts = _judge_partitions(spec, partitions, keys, inputs)
            times = inputs.rows[spec.time_column]
        empty_windows = empty_windows_warning(spec, verdicts, times)
        if empty_windows:  # once per run, however many partitions it judged
            context.log.warning(empty_windows)
        column_table = pd.concat(column_frames, ignore_index=True)
        verdict_rows = verdict_table(verdicts).assign(computed_at=datetime.now(UTC).replace(tzinfo=None))
        tables = {Stage.DRIFT_REPORT.value: column_table, Table.DRIFT_VERDICT.value: verdict_rows}
        history = _store(spec, warehouse, tables, start, end)
        run = run_metadata(keys, verdicts)
        own = partitions_metadata(keys, verdicts, column_frames)
        add_partition_metadata(context, asset_key(spec, Stage.DRIFT_REPORT), own, run)
        context.log.info(
            f"{spec.name} drift {keys[0]} .. {keys[-1]}: {run['drifted_partitions_in_run']}/{len(keys)} "
            f"drifted; latest: {verdicts[-1]['reason']}"
        )
        _show_plots(context, mlflow_plots, spec, column_frames[-1], history)
        return dg.MaterializeResult(metadata=_metadata(spec))

    return drift_report
