"""A partition's drift report from the summaries of the partitions its windows cover.

`core.drift_windows.report_partition` judges a window from its rows; `report_summarised` gives the
same per-column rows and verdict row from per-partition summaries (core.drift_summaries) instead, so
each partition is read and summarised once however many trailing windows it belongs to. It applies
when every window a run judges (the trailing `drift.window` and the realized window `labels.delay`
before it) starts and ends on partition boundaries (`windows_on_partitions`), which holds for the
bundled specs (e.g. 7d on daily partitions); otherwise the caller judges rows as before.

The performance half: the champion's realized error, its estimated (CBPE) error and each partition's
own error come from the window's output and label columns only (`PartitionData.outputs`, kept per
partition). A binary ROC AUC is summed from partition-pair counts (core.drift_ranks), exact; the CBPE
estimate concatenates the partitions' calibrated rows, each partition calibrated and sorted once;
other metrics concatenate the partitions' outputs and compute as before.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any

import numpy as np
import pandas as pd

from mlplatform.core.drift import FEATURE_TABLE_COLUMNS
from mlplatform.core.drift_performance import labels_known_before, probability_matrix, realized_window
from mlplatform.core.drift_ranks import PairCounts, ScoresByLabel, scores_by_label
from mlplatform.core.drift_reference import (
    Reference,
    column_table,
    column_thresholds,
    is_target,
    judged_columns,
    primary_error,
    window_report,
)
from mlplatform.core.drift_summaries import (
    PartitionSummary,
    SummaryPlan,
    coverage_counts,
    feature_drift_from_summary,
    merge,
    partition_summaries,
)
from mlplatform.core.drift_windows import (
    OutputsCoverage,
    blank_other_outputs,
    is_output,
    partition_result,
    window_start,
)
from mlplatform.core.grain import grain_floor, next_grain
from mlplatform.core.metrics import PRIMARY_METRIC
from mlplatform.core.performance_estimation import Calibration, calibrated_rows, estimate_calibrated
from mlplatform.core.scoring import MODEL_VERSION_COLUMN
from mlplatform.specs.model import DatasetSpec


@dataclass(frozen=True)
class PartitionData:
    """One partition, summarised: its summary, and the rows the reference's model scored with only
    their output columns and the target (what the performance is computed on). What the performance
    takes from them is computed once per partition, not once per window holding it (`_derived`)."""

    summary: PartitionSummary
    outputs: pd.DataFrame
    _derived: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    def ranked(self, target: str) -> ScoresByLabel:
        """The sorted probabilities of the labelled rows, per label (binary ROC AUC, drift_ranks)."""
        if "ranked" not in self._derived:
            frame = self.outputs
            self._derived["ranked"] = scores_by_label(
                frame[target], frame["probability"].to_numpy(dtype=float)
            )
        return self._derived["ranked"]

    def calibrated(self, task: str, calibration: Calibration) -> tuple[np.ndarray, np.ndarray] | None:
        """(raw, expected) of its rows under the reference's calibration; None without probabilities."""
        key = f"calibrated {id(calibration)}"
        if key not in self._derived:
            matrix = probability_matrix(task, self.outputs, calibration.classes)
            found = None if matrix is None else calibrated_rows(task, calibration, matrix)
            if found is not None and found[0].ndim == 1:  # binary: sorted by score, a run of the window's
                order = np.argsort(found[0], kind="stable")
                found = (found[0][order], found[1][order])
            self._derived[key] = found
        return self._derived[key]


def summarise_partition(
    plan: SummaryPlan, spec: DatasetSpec, rows: pd.DataFrame, version: int | None
) -> PartitionData:
    """Pure and picklable both ways: a Dask worker can run it on its partition."""
    return summarise_partitions(plan, spec, rows, np.zeros(len(rows), dtype=np.int64), 1, version)[0]


def summarise_partitions(
    plan: SummaryPlan,
    spec: DatasetSpec,
    rows: pd.DataFrame,
    part: np.ndarray,
    n_parts: int,
    version: int | None,
) -> list[PartitionData]:
    """`summarise_partition` of each of `n_parts` partitions at once, row i in partition `part[i]`."""
    picked = rows.copy(deep=False)  # blanking replaces columns of the copy, never the caller's
    blank_other_outputs(picked, version)
    summaries = partition_summaries(plan, picked, part, n_parts, MODEL_VERSION_COLUMN)
    scored, columns = _scored(spec, picked)
    order = np.argsort(part[scored], kind="stable")
    outputs = picked.loc[scored, columns].take(order).reset_index(drop=True)
    ends = np.searchsorted(part[scored][order], np.arange(n_parts + 1), side="left")
    frames = [outputs.iloc[ends[i] : ends[i + 1]].reset_index(drop=True) for i in range(n_parts)]
    return [PartitionData(summary, frame) for summary, frame in zip(summaries, frames, strict=True)]


def partition_codes(times: pd.Series, starts: Sequence[datetime], end: datetime) -> np.ndarray:
    """The index in `starts` of each row's partition (-1 / len(starts) outside [starts[0], end))."""
    edges = np.array([*starts, end], dtype="datetime64[us]")
    return np.searchsorted(edges, times.to_numpy(dtype="datetime64[us]"), side="right") - 1


def scored_outputs(spec: DatasetSpec, rows: pd.DataFrame, version: int | None) -> pd.DataFrame:
    """The rows the reference's model (`version`) scored: their output columns and the target."""
    picked = rows.copy(deep=False)
    blank_other_outputs(picked, version)
    scored, columns = _scored(spec, picked)
    return picked.loc[scored, columns].reset_index(drop=True)


def _scored(spec: DatasetSpec, rows: pd.DataFrame) -> tuple[np.ndarray, list[str]]:
    """Which rows have every output (others' already blanked), and the output and target columns."""
    outputs = [c for c in rows.columns if is_output(c)]
    columns = [*outputs, *([spec.target.column] if spec.target.column in rows else [])]
    if not outputs:
        return np.zeros(len(rows), dtype=bool), columns
    return rows[outputs].notna().all(axis=1).to_numpy(), columns


def partition_starts(spec: DatasetSpec, start: datetime, end: datetime) -> list[datetime]:
    """Starts of the partitions covering [start, end), `start` on a partition boundary."""
    starts, day = [], grain_floor(start, spec.partition_grain)
    while _midnight(day) < end:
        starts.append(_midnight(day))
        day = next_grain(day, spec.partition_grain)
    return starts


def _midnight(day: date) -> datetime:
    return datetime(day.year, day.month, day.day)


def _on_boundary(spec: DatasetSpec, moment: datetime) -> bool:
    return _midnight(grain_floor(moment, spec.partition_grain)) == moment


def windows_on_partitions(spec: DatasetSpec, partition_ends: Sequence[datetime]) -> bool:
    """Whether every window judged for partitions ending at `partition_ends` is whole partitions."""
    for end in partition_ends:
        realized_start, realized_end = realized_window(spec, end)
        moments = (window_start(spec, end), realized_start, realized_end)
        if not all(_on_boundary(spec, moment) for moment in moments):
            return False
    return True


def first_needed(spec: DatasetSpec, first_end: datetime) -> datetime:
    """The earliest moment the run's windows read: the first partition's realized window start."""
    return min(window_start(spec, first_end), realized_window(spec, first_end)[0])


@dataclass(frozen=True)
class _Window:
    summary: PartitionSummary
    coverage: OutputsCoverage
    parts: tuple[tuple[datetime, PartitionData], ...]

    @property
    def output_columns(self) -> pd.Index:
        return self.parts[0][1].outputs.columns  # every partition's outputs have the same columns


def _window(
    plan: SummaryPlan,
    spec: DatasetSpec,
    parts: Mapping[datetime, PartitionData],
    bounds: tuple[datetime, datetime],
    version: int | None,
) -> _Window:
    starts = partition_starts(spec, *bounds)
    picked = [parts[start] for start in starts]
    summary = merge(plan, [part.summary for part in picked])
    n_scored, n_by_reference, others = coverage_counts(summary, version)
    coverage = OutputsCoverage(summary.n_rows, n_scored, n_by_reference, version, others)
    return _Window(summary, coverage, tuple(zip(starts, picked, strict=True)))


def _table(
    spec: DatasetSpec,
    reference: Reference,
    plan: SummaryPlan,
    window: _Window,
    realized: _Window,
    judge_outputs: bool,
) -> pd.DataFrame:
    rows = []
    for name in judged_columns(spec, reference, window.summary.columns, judge_outputs):
        source = realized if is_target(spec, name) else window
        thresholds = column_thresholds(spec, reference, name)
        rows.append(feature_drift_from_summary(plan, name, source.summary.columns[name], thresholds))
    return column_table(spec, reference, pd.DataFrame(rows, columns=FEATURE_TABLE_COLUMNS))


def _error(spec: DatasetSpec, parts: Sequence[tuple[datetime, PartitionData]], pairs: PairCounts) -> float:
    """The primary metric on the partitions' rows: a binary ROC AUC from pair counts, else
    `primary_error` on their outputs concatenated."""
    target = spec.target.column
    outputs = [part.outputs for _, part in parts]
    if target not in outputs[0] or not any(is_output(c) for c in outputs[0].columns):
        return float("nan")
    if spec.target.task == "binary" and PRIMARY_METRIC["binary"] == "roc_auc" and "probability" in outputs[0]:
        return pairs.roc_auc([(when, part.ranked(target)) for when, part in parts])
    rows = pd.concat(outputs, ignore_index=True) if len(outputs) > 1 else outputs[0]
    return primary_error(spec.target.task, rows[target], rows)[1]


def _estimated_error(spec: DatasetSpec, calibration: Calibration | None, window: _Window) -> float | None:
    """`drift_performance.estimated_error` of the window, each partition calibrated once."""
    task = spec.target.task
    if calibration is None or task == "regression":
        return None
    found = [part.calibrated(task, calibration) for _, part in window.parts]
    if any(rows is None for rows in found):
        return None
    raw = np.concatenate([rows[0] for rows in found if rows is not None])
    if not len(raw):
        return None
    expected = np.concatenate([rows[1] for rows in found if rows is not None])
    value = estimate_calibrated(task, PRIMARY_METRIC[task], raw, expected)
    return value if np.isfinite(value) else None


def report_summarised(
    spec: DatasetSpec,
    reference: Reference,
    plan: SummaryPlan,
    version: int | None,
    parts: Mapping[datetime, PartitionData],
    bounds: tuple[datetime, datetime, datetime],
    spacing: Callable[[], str],
    pairs: PairCounts,
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Per-column rows and verdict row of the partition starting at bounds[0], its window
    [bounds[1], bounds[2]), as core.drift_windows.report_partition gives them; `parts`: the data of
    every partition the window and its realized window cover; `pairs`: the run's ROC AUC pair counts."""
    partition_start, start, end = bounds
    window = _window(plan, spec, parts, (start, end), version)
    realized_bounds = realized_window(spec, end)
    realized = (
        window if realized_bounds == (start, end) else _window(plan, spec, parts, realized_bounds, version)
    )
    judge_outputs = window.coverage.judged
    table = _table(spec, reference, plan, window, realized, judge_outputs)
    errors = None
    if judge_outputs and reference.performance is not None and spec.target.column in realized.output_columns:
        realized_error = _error(spec, realized.parts, pairs) if realized.coverage.judged else float("nan")
        errors = (realized_error, _estimated_error(spec, reference.calibration, window))
    report = window_report(spec, reference, table, window.summary.n_rows, errors)
    own_error = None
    if report.metric:  # all its rows are labelled without labels.delay, none with whole partitions of delay
        known = labels_known_before(spec, end) > partition_start
        own = parts[partition_start]
        own_error = (
            _error(spec, [(partition_start, own)], pairs) if known and len(own.outputs) else float("nan")
        )
    coverages = (window.coverage, realized.coverage)
    return partition_result(spec, report, coverages, version, bounds, own_error, spacing)
