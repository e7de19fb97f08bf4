"""The performance half of a drift verdict: realized error once labels arrive, estimated error before.

* Labels arrive `labels.delay` after a row's time. At a window ending at `we`, only rows with time
  < we - delay have their label, so the realized error is judged on the trailing window of the same
  length ending at we - delay (`realized_window`): every label in it has arrived. The target values
  of the current window that are newer than we - delay are masked (`mask_late_labels`) before
  anything reads the window, so no statistic can use a label it must not know.
* The estimated error (CBPE, `core.performance_estimation`) needs no labels: the champion's
  probabilities on the current window, calibrated on its validation window. It is computed for every
  classification window; the verdict uses it only when labels are delayed (`labels.delay` > 0), and
  compares it with the estimate on the champion's own test window (like for like, not with the
  realized test error, so a calibration bias cancels out).
* Either drop can make the verdict drifted; the reason names which (`judge_verdict`).
* Each partition's own error (`partition_error`, rows whose labels have arrived) makes a history per
  champion; after a verdict driven by performance `locate_change` finds where that error stepped up
  (`core.change_point`), the moment a retraining can start from.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any

import numpy as np
import pandas as pd

from mlplatform.core.change_point import ChangePoint, detect_change
from mlplatform.core.drift import DriftVerdict, dataset_verdict
from mlplatform.core.metrics import PRIMARY_METRIC, compute_metric, higher_is_better
from mlplatform.core.performance_estimation import Calibration, estimate_metric, fit_calibration
from mlplatform.specs.durations import parse_calendar_duration, parse_duration
from mlplatform.specs.model import DatasetSpec

REALIZED, ESTIMATED = "realized", "estimated"
PROBABILITY_PREFIX = "probability_"
# Rows of the reference profile's long table (feature, kind, key, value) about the champion itself.
IMPORTANCE_KIND = "importance"  # feature: a model input; key "gain_share"; value: its share of the gain
CALIBRATION_KIND = "calibration"  # key: the Calibration as JSON; value: validation rows it was fitted on
ESTIMATED_KIND = "estimated_performance"  # key: the metric; value: the estimate on the test window
TRAINING_KIND = "training"  # key "train_last"; value: the last train row's time, POSIX seconds
CHAMPION_KINDS = (IMPORTANCE_KIND, CALIBRATION_KIND, ESTIMATED_KIND, TRAINING_KIND)
CHAMPION_FEATURE = "__champion__"
_GAIN_SHARE, _TRAIN_LAST = "gain_share", "train_last"


def labels_delay(spec: DatasetSpec) -> timedelta:
    return parse_duration(spec.labels.delay)


def labels_known_before(spec: DatasetSpec, window_end: datetime) -> datetime:
    """Rows before this moment have their label at `window_end`; later ones do not yet."""
    return window_end - labels_delay(spec)


def realized_window(spec: DatasetSpec, window_end: datetime) -> tuple[datetime, datetime]:
    """[start, end) of the trailing `drift.window` ending at `window_end - labels.delay`."""
    end = labels_known_before(spec, window_end)
    return parse_calendar_duration(spec.drift.window).before(end), end


def mask_late_labels(frame: pd.DataFrame, spec: DatasetSpec, known_before: datetime) -> pd.DataFrame:
    """`frame` with the target blanked on rows at or after `known_before` (a copy when any is)."""
    target = spec.target.column
    if target not in frame or not len(frame):
        return frame
    late = (pd.to_datetime(frame[spec.time_column]) >= known_before).to_numpy()
    if not late.any():
        return frame
    masked = frame.copy()
    # object first: blanking an int column must not turn its labels into floats ("1" vs "1.0").
    masked[target] = masked[target].astype(object).where(~late, None)
    return masked


def _output_columns(task: str, scored: pd.DataFrame) -> list[str]:
    if task == "regression":
        return ["prediction"]
    if task == "binary":
        return ["probability"]
    return [c for c in scored.columns if c.startswith(PROBABILITY_PREFIX)]


def primary_error(
    task: str, y_true: pd.Series, scored: pd.DataFrame, classes: Sequence[Any] | None = None
) -> tuple[str, float]:
    """(metric name, value) of the task's primary metric on the labelled rows that have the model's
    outputs; NaN when undefined (no such rows, one class only for ROC AUC, ...), which core.drift
    reads as "no performance signal"."""
    metric = PRIMARY_METRIC[task]
    columns = _output_columns(task, scored)
    if not columns or any(c not in scored for c in columns):
        return metric, float("nan")
    usable = y_true.notna().to_numpy() & scored[columns].notna().all(axis=1).to_numpy()
    if not usable.any():
        return metric, float("nan")
    y = y_true[usable]
    try:
        if task == "regression":
            value = compute_metric(task, metric, y, scored.loc[usable, "prediction"])
        elif task == "binary":
            known = list(classes) if classes is not None else sorted(pd.unique(y).tolist())
            if len(known) != 2:
                return metric, float("nan")
            value = compute_metric(task, metric, y, scored.loc[usable, "probability"], known)
        else:
            known = [c.removeprefix(PROBABILITY_PREFIX) for c in columns]
            value = compute_metric(task, metric, y.astype(str), scored.loc[usable, columns].to_numpy(), known)
    except ValueError:
        return metric, float("nan")
    return metric, float(value)


def probability_matrix(task: str, frame: pd.DataFrame, classes: Sequence[str]) -> np.ndarray | None:
    """The model's probabilities in `calibration.classes` order, rows with all of them present:
    binary 1-d P(positive), multiclass (n, k). None when the frame lacks a column."""
    columns = ["probability"] if task == "binary" else [f"{PROBABILITY_PREFIX}{c}" for c in classes]
    if any(c not in frame for c in columns):
        return None
    values = frame[columns].apply(pd.to_numeric, errors="coerce").dropna().to_numpy(dtype=float)
    return values.reshape(-1) if task == "binary" else values


def estimated_error(task: str, calibration: Calibration | None, frame: pd.DataFrame) -> float | None:
    """CBPE estimate of the task's primary metric on `frame`'s outputs; None when it cannot."""
    if calibration is None or task == "regression":
        return None
    matrix = probability_matrix(task, frame, calibration.classes)
    if matrix is None or not len(matrix):
        return None
    value = estimate_metric(task, PRIMARY_METRIC[task], calibration, matrix)
    return value if math.isfinite(value) else None


@dataclass(frozen=True)
class ChampionFacts:
    """What the reference keeps about the champion besides profiles: importance, calibration."""

    importance: dict[str, float] = field(default_factory=dict)  # gain share per model input
    calibration: Calibration | None = None  # classification: fitted on its validation window
    calibration_rows: int = 0
    estimated_reference: tuple[str, float] | None = None  # (metric, CBPE estimate on its test window)
    train_last: pd.Timestamp | None = None  # time of its last train row

    def to_frame(self) -> pd.DataFrame:
        records: list[tuple[str, str, str, float]] = [
            (name, IMPORTANCE_KIND, _GAIN_SHARE, float(share)) for name, share in self.importance.items()
        ]
        if self.calibration is not None:
            records.append(
                (CHAMPION_FEATURE, CALIBRATION_KIND, self.calibration.to_json(), float(self.calibration_rows))
            )
        if self.estimated_reference is not None and math.isfinite(self.estimated_reference[1]):
            metric, value = self.estimated_reference
            records.append((CHAMPION_FEATURE, ESTIMATED_KIND, metric, float(value)))
        if self.train_last is not None and not pd.isna(self.train_last):
            records.append(
                (CHAMPION_FEATURE, TRAINING_KIND, _TRAIN_LAST, pd.Timestamp(self.train_last).timestamp())
            )
        return pd.DataFrame(records, columns=["feature", "kind", "key", "value"])

    @classmethod
    def from_frame(cls, frame: pd.DataFrame) -> ChampionFacts:
        """Inverse of to_frame; the rows of other kinds are ignored (references built before have none)."""
        kinds = frame["kind"]
        importance = frame[kinds == IMPORTANCE_KIND]
        calibration = frame[kinds == CALIBRATION_KIND]
        estimated = frame[kinds == ESTIMATED_KIND]
        training = frame[(kinds == TRAINING_KIND) & (frame["key"] == _TRAIN_LAST)]
        return cls(
            importance=dict(zip(importance["feature"], importance["value"].astype(float), strict=True)),
            calibration=Calibration.from_json(str(calibration["key"].iloc[0])) if len(calibration) else None,
            calibration_rows=int(calibration["value"].iloc[0]) if len(calibration) else 0,
            estimated_reference=(
                (str(estimated["key"].iloc[0]), float(estimated["value"].iloc[0])) if len(estimated) else None
            ),
            train_last=pd.Timestamp(float(training["value"].iloc[0]), unit="s") if len(training) else None,
        )


def gain_shares(gain: Mapping[str, float]) -> dict[str, float]:
    """Each input's share of the total gain; all zeros when the model made no split."""
    total = float(sum(max(float(v), 0.0) for v in gain.values()))
    return {name: (max(float(v), 0.0) / total if total > 0 else 0.0) for name, v in gain.items()}


def champion_facts(
    task: str,
    gain: Mapping[str, float],
    validation: tuple[pd.Series, pd.DataFrame] | None,
    test_outputs: pd.DataFrame | None,
    classes: Sequence[Any] | None,
    train_last: pd.Timestamp | None,
) -> tuple[ChampionFacts, str | None]:
    """The facts and, when no calibration could be fitted for a classifier, why not.

    `validation`: (labels, the champion's outputs) of its validation rows; `test_outputs`: its outputs
    on its test rows, where the estimated reference is computed (like the realized test error)."""
    facts = ChampionFacts(importance=gain_shares(gain), train_last=train_last)
    if task == "regression":
        return facts, None
    if validation is None or not len(validation[0]) or classes is None:
        return facts, "no validation rows: no calibration, no estimated performance"
    labels, outputs = validation
    matrix = probability_matrix(task, outputs, [str(c) for c in classes])
    if matrix is None or len(matrix) != len(labels):
        return facts, "validation rows without the champion's probabilities: no calibration"
    try:
        calibration = fit_calibration(task, labels.tolist(), matrix, list(classes))
    except ValueError as error:  # e.g. one class only in the validation window
        return facts, f"calibration not fitted: {error}"
    estimate = estimated_error(task, calibration, test_outputs) if test_outputs is not None else None
    estimated = (PRIMARY_METRIC[task], estimate) if estimate is not None else None
    return replace(
        facts, calibration=calibration, calibration_rows=len(labels), estimated_reference=estimated
    ), None


@dataclass(frozen=True)
class WindowPerformance:
    """The champion's error on a window next to its reference, realized and estimated."""

    metric: str
    reference_error: float
    realized_error: float  # NaN: no labelled rows scored by the champion in the realized window
    estimated_reference: float | None = None  # the estimate on the champion's test window
    estimated_error: float | None = None
    use_estimate: bool = False  # labels are delayed: the estimate votes too

    def _mapping(self, reference: float, current: float, source: str) -> dict[str, Any]:
        return {
            "metric": self.metric,
            "reference": reference,
            "current": current,
            "higher_is_better": higher_is_better(self.metric),
            "source": source,
        }

    def realized(self) -> dict[str, Any]:
        return self._mapping(self.reference_error, self.realized_error, REALIZED)

    def estimated(self) -> dict[str, Any] | None:
        if self.estimated_error is None or self.estimated_reference is None:
            return None
        return self._mapping(self.estimated_reference, self.estimated_error, ESTIMATED)


@dataclass(frozen=True)
class JudgedVerdict:
    verdict: DriftVerdict
    trigger: str | None  # REALIZED or ESTIMATED: the performance drop that made it drifted
    realized_drop: float | None
    estimated_drop: float | None


def _dropped(verdict: DriftVerdict, threshold: float) -> bool:
    drop = verdict.performance_drop
    return drop is not None and drop > 0 and drop >= threshold


def judge_verdict(
    table: pd.DataFrame,
    share_threshold: float,
    drop_threshold: float,
    performance: WindowPerformance | None,
    weights: Mapping[str, float] | None,
) -> JudgedVerdict:
    """The data-set verdict on the realized performance and, when labels are delayed, the estimated
    one: either drop can make it drifted. Realized, where it triggers, is the one reported."""
    realized = dataset_verdict(
        table,
        share_threshold,
        performance.realized() if performance else None,
        drop_threshold,
        weights=weights,
    )
    estimated_mapping = performance.estimated() if performance else None
    estimated = (
        dataset_verdict(table, share_threshold, estimated_mapping, drop_threshold, weights=weights)
        if estimated_mapping is not None
        else None
    )
    estimated_drop = estimated.performance_drop if estimated is not None else None
    use_estimate = performance is not None and performance.use_estimate
    estimated_votes = estimated if use_estimate and estimated is not None else None
    estimate_dropped = estimated_votes is not None and _dropped(estimated_votes, drop_threshold)
    chosen, trigger = realized, None
    if _dropped(realized, drop_threshold):
        trigger = REALIZED
        if estimate_dropped:
            chosen = replace(
                realized, reason=f"{realized.reason}; estimated performance dropped {estimated_drop:.1%} too"
            )
    elif estimated_votes is not None and estimate_dropped:
        chosen, trigger = estimated_votes, ESTIMATED
    elif estimated_drop is not None and not math.isnan(estimated_drop):
        separator = "; " if realized.drifted else ", "
        used = "" if use_estimate else " (not voted: labels are not delayed)"
        chosen = replace(
            realized,
            reason=f"{realized.reason}{separator}estimated performance drop {estimated_drop:.1%}{used}",
        )
    return JudgedVerdict(chosen, trigger, realized.performance_drop, estimated_drop)


def partition_error(
    spec: DatasetSpec,
    rows: pd.DataFrame,
    start: datetime,
    end: datetime,
    known_before: datetime,
    classes: Sequence[Any] | None = None,
) -> float:
    """The champion's primary metric on the rows of [start, end) whose labels have arrived (time <
    `known_before`) and that carry its outputs; NaN when there are none."""
    times = pd.to_datetime(rows[spec.time_column])
    own = rows[((times >= start) & (times < min(end, known_before))).to_numpy()]
    if not len(own):
        return float("nan")
    return primary_error(spec.target.task, own[spec.target.column], own, classes)[1]


def locate_change(
    history: pd.DataFrame, metric: str, after: pd.Timestamp | None, upto: datetime
) -> tuple[ChangePoint | None, int]:
    """The change in the champion's per-partition error (`partition_start`, `partition_error`) over the
    partitions starting after its last training row (`after`: in-sample errors would read as a step)
    up to `upto`, and how many partition errors were looked at."""
    starts = pd.to_datetime(history["partition_start"])
    keep = starts <= pd.Timestamp(upto)
    if after is not None:
        keep &= starts > after
    picked = history[keep.to_numpy()].assign(partition_start=starts[keep]).sort_values("partition_start")
    values = pd.to_numeric(picked["partition_error"], errors="coerce").astype(float)
    n_values = int(values.notna().sum())
    found = detect_change(
        list(picked["partition_start"]), values.tolist(), higher_is_better=higher_is_better(metric)
    )
    return found, n_values
