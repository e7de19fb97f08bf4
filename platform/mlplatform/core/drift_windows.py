"""The rows a drift report judges: the trailing `drift.window` ending with each partition.

A single day of hourly data is too few rows for PSI, so a partition's verdict is "the last window of
rows looks different from what the champion learned". `window_rows` joins a window's features with
the predictions of the same rows; `report_partition` judges a partition's window from its rows
(core.drift_summary_windows: from per-partition summaries) into per-column rows and a verdict row.

Windows: the one ending at `end` starts at `end - drift.window`, calendar months back for a `mo`
window (specs.durations): `1mo` on monthly partitions covers exactly one partition.

Labels: with `labels.delay` the current window's late targets are blanked and the realized error is
judged on the realized window, `drift.window` ending at `window_end - delay` (core.drift_performance);
each partition's own error (`partition_error`, its rows whose labels have arrived) is in its row too,
the history a change point is located on.

A verdict is `drifted`, `stable` or `insufficient_data` (contracts.VerdictStatus), never "stable" about
nothing: a window with no rows or fewer than `drift.min_rows` is not judged; a window whose rows were
mostly not scored by the reference's model has its prediction drift and performance unjudged, so it
is `insufficient_data` with the reason (e.g. predictions by version 3, reference of version 4) unless
its features alone show drift.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import duckdb
import pandas as pd

from mlplatform.contracts import Stage, VerdictStatus
from mlplatform.core.drift import DriftVerdict
from mlplatform.core.drift_performance import (
    labels_delay,
    labels_known_before,
    mask_late_labels,
    partition_error,
    primary_error,
    realized_window,
)
from mlplatform.core.drift_reference import Reference, WindowReport, judge_window, nan_to_none
from mlplatform.core.grain import GRAIN_DAYS, grain_floor
from mlplatform.core.scoring import MODEL_VERSION_COLUMN, PREDICTION_COLUMN
from mlplatform.core.sql import quote_ident
from mlplatform.core.warehouse import read_frame, table_exists, table_name, window_predicate
from mlplatform.specs.durations import MONTH_MIN, Duration, parse_calendar_duration
from mlplatform.specs.model import DatasetSpec

# Outputs are judged only when most of the window was scored by the reference's model (PSI bias).
MIN_SHARE_SCORED_BY_REFERENCE = 0.5
INSUFFICIENT = "insufficient data"
OUTPUTS_UNJUDGED = "prediction drift and performance unjudged"


def window_duration(spec: DatasetSpec) -> Duration:
    return parse_calendar_duration(spec.drift.window)


def window_start(spec: DatasetSpec, end: datetime) -> datetime:
    """Start of the trailing window ending at `end` (calendar months back for a `mo` window)."""
    return window_duration(spec).before(end)


def window_partitions(spec: DatasetSpec) -> int:
    """How many partitions the trailing window of one partition reaches back (including itself), its
    realized window included: `labels.delay` further back."""
    window, delay = window_duration(spec), labels_delay(spec)
    grain = timedelta(days=GRAIN_DAYS[spec.partition_grain])
    if spec.partition_grain == "month" and window.months and not window.fixed:
        # whole months on month starts: exactly that many partitions, plus the months the delay spans
        return window.months + -(-delay // MONTH_MIN)
    return max(1, -(-(window.longest + delay) // grain))


def is_output(column: str) -> bool:
    """A model output column of the predictions table: the prediction or a probability."""
    return column == PREDICTION_COLUMN or column.startswith("probability")


def window_rows(
    conn: duckdb.DuckDBPyConnection,
    spec: DatasetSpec,
    start: datetime,
    end: datetime,
    columns: Sequence[str] | None = None,
) -> pd.DataFrame:
    """Features of [start, end) with the predictions of the same rows (NULL where not scored)."""
    return read_frame(conn, window_rows_sql(conn, spec, start, end, columns))


def window_rows_sql(
    conn: duckdb.DuckDBPyConnection,
    spec: DatasetSpec,
    start: datetime,
    end: datetime,
    columns: Sequence[str] | None = None,
) -> str:
    """`window_rows`' query; `columns`: these of the features (default all), plus any model outputs."""
    features = table_name(spec.name, Stage.FEATURES)
    where = window_predicate(spec.time_column, start, end)
    keys = spec.row_keys
    inner = "*" if columns is None else ", ".join(quote_ident(c) for c in dict.fromkeys([*columns, *keys]))
    outer = "f.*" if columns is None else ", ".join(f"f.{quote_ident(c)}" for c in columns)
    if not table_exists(conn, spec.name, Stage.PREDICTIONS):
        return f"SELECT {outer} FROM (SELECT {inner} FROM {features} WHERE {where}) f"
    on = " AND ".join(f"f.{quote_ident(k)} = p.{quote_ident(k)}" for k in keys)
    predictions = table_name(spec.name, Stage.PREDICTIONS)
    output_columns = [
        c
        for c in conn.sql(f"SELECT * FROM {predictions} LIMIT 0").columns
        if is_output(c) or c == MODEL_VERSION_COLUMN
    ]
    fields = ", ".join(f"{quote_ident(c)} := {quote_ident(c)}" for c in output_columns)
    group = ", ".join(quote_ident(k) for k in keys)
    # One prediction per key (a duplicated key must not duplicate feature rows): its smallest output row.
    return (
        f"SELECT {outer}, {', '.join(f'p._outputs.{quote_ident(c)} AS {quote_ident(c)}' for c in output_columns)} "
        f"FROM (SELECT {inner} FROM {features} WHERE {where}) f "
        f"LEFT JOIN (SELECT {group}, min(struct_pack({fields})) AS _outputs FROM {predictions} "
        f"WHERE {where} GROUP BY {group}) p ON {on}"
    )


@dataclass(frozen=True)
class OutputsCoverage:
    """Which model scored a window's rows, against the model the reference profiles."""

    n_rows: int
    n_scored: int
    n_by_reference: int
    reference_version: int | None
    other_versions: tuple[int, ...] = ()  # most rows first

    @property
    def judged(self) -> bool:
        return self.n_rows > 0 and self.n_by_reference / self.n_rows >= MIN_SHARE_SCORED_BY_REFERENCE

    def unjudged_reason(self, dataset: str) -> str | None:
        """Why prediction drift and performance are not judged (None: they are)."""
        if self.judged or self.n_rows == 0:
            return None
        if self.reference_version is None:
            return f"the reference profile names no model version: {OUTPUTS_UNJUDGED}"
        if self.n_scored == 0:
            return (
                f"none of the window's {self.n_rows} rows has a prediction ({dataset}/predictions not "
                f"materialized for them): {OUTPUTS_UNJUDGED}"
            )
        versions = " and ".join(str(v) for v in self.other_versions) or "no model"
        return (
            f"predictions are by version {versions}, the reference profile is of version "
            f"{self.reference_version} ({self.n_by_reference}/{self.n_rows} rows scored by it): "
            f"{OUTPUTS_UNJUDGED} until the partitions are re-scored"
        )


def outputs_coverage(window: pd.DataFrame, version: int | None) -> OutputsCoverage:
    if MODEL_VERSION_COLUMN not in window:
        return OutputsCoverage(len(window), 0, 0, version)
    versions = pd.to_numeric(window[MODEL_VERSION_COLUMN], errors="coerce")
    by_reference = int((versions == version).sum()) if version is not None else 0
    others = versions[versions.notna() & (versions != version)].astype(int)
    ordered = tuple(int(v) for v in others.value_counts().index)
    return OutputsCoverage(len(window), int(versions.notna().sum()), by_reference, version, ordered)


def window_status(
    n_rows: int, min_rows: int, verdict: DriftVerdict, outputs_unjudged: str | None
) -> tuple[VerdictStatus, str]:
    """The status and reason of one window's verdict. Drift seen in the judged part is drifted even
    when the outputs are unjudged; "stable" needs every part judged."""
    if n_rows == 0:
        return VerdictStatus.INSUFFICIENT_DATA, f"{INSUFFICIENT}: no rows in the window"
    if n_rows < min_rows:
        return VerdictStatus.INSUFFICIENT_DATA, (
            f"{INSUFFICIENT}: {n_rows} row(s) in the window, fewer than drift.min_rows ({min_rows}): not judged"
        )
    if verdict.n_features == 0:
        return VerdictStatus.INSUFFICIENT_DATA, f"{INSUFFICIENT}: no profiled column in the window"
    if verdict.drifted:
        return VerdictStatus.DRIFTED, verdict.reason + (f"; {outputs_unjudged}" if outputs_unjudged else "")
    if outputs_unjudged:
        judged = verdict.reason.removeprefix("stable: ")
        return VerdictStatus.INSUFFICIENT_DATA, f"{INSUFFICIENT}: {judged}; {outputs_unjudged}"
    return VerdictStatus.STABLE, verdict.reason


def spacing_hint(spec: DatasetSpec, times: pd.Series) -> str:
    """For an empty window: how far apart the rows are when that is longer than the window."""
    distinct = pd.Series(pd.to_datetime(times).dropna().unique()).sort_values()
    if len(distinct) < 2:
        return ""
    spacing = distinct.diff().median()
    if spacing <= pd.Timedelta(window_duration(spec).shortest):
        return ""
    hours = spacing.total_seconds() / 3600
    apart = f"{hours / 24:.0f} day(s)" if hours >= 24 else f"{hours:.0f} hour(s)"
    return (
        f" (rows are about {apart} apart, more than drift.window {spec.drift.window}: set a drift.window "
        "spanning enough rows to judge, at least drift.min_rows)"
    )


def empty_windows_warning(
    spec: DatasetSpec, verdicts: Sequence[Mapping[str, Any]], times: pd.Series
) -> str | None:
    """One warning for a run whose windows held no rows because the rows are further apart than the
    window (None: no such window). The spacing is looked at only when some window was empty."""
    empty = sum(1 for verdict in verdicts if verdict["n_rows"] == 0)
    spacing = spacing_hint(spec, times) if empty else ""
    if not spacing:
        return None
    return f"{spec.name}/drift_report: {empty} of {len(verdicts)} partition window(s) hold no rows{spacing}"


def blank_other_outputs(window: pd.DataFrame, version: int | None) -> None:
    """Outputs of another model would be compared with the wrong reference: blank them."""
    if MODEL_VERSION_COLUMN not in window or not len(window):
        return
    by_reference = pd.to_numeric(window[MODEL_VERSION_COLUMN], errors="coerce") == version
    for column in [c for c in window.columns if is_output(c)]:
        window[column] = window[column].where(by_reference)


def arrived_partition_errors(
    spec: DatasetSpec, rows: pd.DataFrame, version: int | None, known_before: datetime
) -> pd.DataFrame:
    """Each partition's own error on its rows whose labels have arrived by `known_before` (outputs of
    another model than `version` left out), as (`partition_start`, `partition_error`). With
    `labels.delay` the error stored when a partition was judged saw few or none of its labels (none
    when the delay is at least a partition long), so a change point is located on these instead."""
    times = pd.to_datetime(rows[spec.time_column])
    picked = rows[(times < known_before).to_numpy()].reset_index(drop=True)
    blank_other_outputs(picked, version)
    floors = pd.to_datetime(
        [grain_floor(moment, spec.partition_grain) for moment in pd.to_datetime(picked[spec.time_column])]
    )
    records = [
        {
            "partition_start": start,
            "partition_error": primary_error(spec.target.task, part[spec.target.column], part)[1],
        }
        for start, part in picked.groupby(floors, sort=True)
    ]
    return pd.DataFrame(records, columns=["partition_start", "partition_error"])


def _judged_rows(
    rows: pd.DataFrame, time_column: str, start: datetime, end: datetime, version: int | None
) -> tuple[pd.DataFrame, OutputsCoverage]:
    """The rows of [start, end), outputs by another model than `version` blanked, and their coverage."""
    times = rows[time_column]
    picked = rows[(times >= start) & (times < end)].reset_index(drop=True)
    coverage = outputs_coverage(picked, version)
    blank_other_outputs(picked, version)
    return picked, coverage


def report_partition(
    spec: DatasetSpec,
    reference: Reference,
    version: int | None,
    rows: pd.DataFrame,
    partition_start: datetime,
    window_start: datetime,
    window_end: datetime,
    spacing: str | None = None,
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Per-column rows and the verdict row of one partition's window (`version`: the reference's model).
    `spacing`: `spacing_hint` of `rows`, computed once by a caller judging many partitions. `rows` must
    reach back to the realized window's start (core.drift_performance.realized_window)."""
    known_before = labels_known_before(spec, window_end)
    window, coverage = _judged_rows(rows, spec.time_column, window_start, window_end, version)
    window = mask_late_labels(window, spec, known_before)
    realized_start, realized_end = realized_window(spec, window_end)
    if (realized_start, realized_end) == (window_start, window_end):  # no delay: the same rows
        realized, realized_coverage = window, coverage
    else:
        realized, realized_coverage = _judged_rows(
            rows, spec.time_column, realized_start, realized_end, version
        )
    if not realized_coverage.judged:  # mostly another model's outputs: no realized error, as for window
        realized = realized.drop(columns=[c for c in realized.columns if is_output(c)])
    report = judge_window(spec, reference, window, judge_outputs=coverage.judged, realized=realized)
    own_error = None
    if report.metric:  # the partition ends where its window does
        own_rows = window  # the partition usually starts inside its window
        if window_start > partition_start:
            own_rows = _judged_rows(rows, spec.time_column, partition_start, window_end, version)[0]
        own_error = partition_error(spec, own_rows, partition_start, window_end, known_before)
    bounds = (partition_start, window_start, window_end)
    hint = (lambda: spacing_hint(spec, rows[spec.time_column])) if spacing is None else (lambda: spacing)
    return partition_result(spec, report, (coverage, realized_coverage), version, bounds, own_error, hint)


def partition_result(
    spec: DatasetSpec,
    report: WindowReport,
    coverages: tuple[OutputsCoverage, OutputsCoverage],
    version: int | None,
    bounds: tuple[datetime, datetime, datetime],
    own_error: float | None,
    spacing: Callable[[], str],
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Per-column rows and verdict row of a judged window. `coverages`: of the window and its realized
    window; `bounds`: partition start, window start and end; `spacing`: asked for when it is empty."""
    coverage, realized_coverage = coverages
    realized_start, realized_end = realized_window(spec, bounds[2])
    status, reason = window_status(
        report.n_rows, spec.drift.min_rows, report.verdict, coverage.unjudged_reason(spec.name)
    )
    if report.n_rows == 0:
        reason += spacing()
    elif (
        status != VerdictStatus.INSUFFICIENT_DATA
        and report.metric
        and nan_to_none(report.current_error) is None
    ):
        reason += _no_realized_error(spec, realized_start, realized_end, realized_coverage)
    named = dict(zip(("partition_start", "window_start", "window_end"), bounds, strict=True))
    columns = report.columns.copy()
    for position, (name, value) in enumerate(named.items()):
        columns.insert(position, name, value)
    columns["reference_version"] = version
    row = {
        **named,
        "n_rows": report.n_rows,
        "drifted": status == VerdictStatus.DRIFTED,
        "status": status.value,
        **_verdict_fields(report, status, (realized_start, realized_end)),
        "partition_error": nan_to_none(own_error),
        "change_point": None,  # set by the caller, who holds the partition-error history
        "outputs_judged": coverage.judged,
        "reason": reason,
        "reference_version": version,
    }
    return columns, row


def _verdict_fields(
    report: WindowReport, status: VerdictStatus, realized: tuple[datetime, datetime]
) -> dict[str, Any]:
    """What a verdict row says about the drifted share and the performance."""
    verdict = report.verdict
    return {
        "drifted_share": float(verdict.drifted_share),
        "n_drifted": int(verdict.n_drifted),
        "n_judged": int(verdict.n_features),
        "drifted_columns": ", ".join(verdict.drifted_features),
        "importance_weighted": report.weighted,
        "metric": report.metric,
        "reference_error": nan_to_none(report.reference_error),
        "current_error": nan_to_none(report.current_error),  # = realized_error (the older name)
        "realized_error": nan_to_none(report.current_error),
        "realized_start": realized[0],
        "realized_end": realized[1],
        "estimated_reference": nan_to_none(report.estimated_reference),
        "estimated_error": nan_to_none(report.estimated_error),
        "performance_drop": nan_to_none(report.realized_drop),
        "estimated_drop": nan_to_none(report.estimated_drop),
        "performance_trigger": report.trigger if status == VerdictStatus.DRIFTED else None,
        "prediction_psi": nan_to_none(report.prediction_psi),
    }


def _no_realized_error(spec: DatasetSpec, start: datetime, end: datetime, coverage: OutputsCoverage) -> str:
    """Why the verdict has no realized error (appended to its reason)."""
    if labels_delay(spec) == timedelta(0):
        return "; performance unjudged: no labelled rows in the window"
    where = f"[{start:%Y-%m-%d %H:%M}, {end:%Y-%m-%d %H:%M})"
    if coverage.n_rows and not coverage.judged:
        return f"; realized performance unjudged: the rows of {where} were mostly not scored by the reference's model"
    return f"; realized performance unjudged: no labelled rows in {where} (labels.delay {spec.labels.delay})"


_FLOAT_COLUMNS = (
    "reference_error",
    "current_error",
    "realized_error",
    "estimated_reference",
    "estimated_error",
    "performance_drop",
    "estimated_drop",
    "partition_error",
    "prediction_psi",
)
_TEXT_COLUMNS = ("metric", "performance_trigger", "change_point", "drifted_columns", "reason")


def verdict_table(verdicts: Sequence[Mapping[str, Any]]) -> pd.DataFrame:
    """The `drift_verdict` rows of a run, typed: a column that is empty in every row of a first run
    must still be created as a number or a text, or a later run could not write a value into it."""
    frame = pd.DataFrame(list(verdicts))
    types = {
        **{name: "Float64" for name in _FLOAT_COLUMNS if name in frame},
        **{name: "string" for name in _TEXT_COLUMNS if name in frame},
    }
    return frame.astype(types)
