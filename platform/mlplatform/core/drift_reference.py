"""Drift monitoring logic shared by the monitoring assets and the replay. No Dagster, no file paths.

* Which columns are judged: the model inputs, minus calendar features (`cal_*`: a week of
  day-of-year values always "drifts" from a year of them, that is seasonality by construction) and
  minus the spec's `drift.exclude`. Categorical when the spec types them string/category/bool or
  lists `allowed` values (chi-square + Jensen-Shannon); numeric otherwise (KS + Wasserstein). The
  model output (prediction or probability) is judged too; the target is reported but not voted.
* The reference: a Profile of the champion's training rows (inputs, target, the champion's
  predictions on them) stored long with the champion's own test error as extra `performance` rows,
  so one table holds everything a drift report compares against; plus the champion's feature
  importance, its probability calibration and its estimated test error (core.drift_performance).
* Natural variability: each trailing window of the training rows is judged against the profile of
  all of them; the largest PSI and effect a column shows there are stored as `baseline` rows. A
  column then counts as drifted only beyond max(spec threshold, that baseline). Without this, data
  with seasons or autocorrelation (hourly bike rentals: any week differs from a year of weeks)
  "drifts" every single window; for i.i.d. data the baselines are tiny and the spec thresholds rule.
* One report: per-column drift of a window of rows vs the reference, the champion's error on the
  rows whose labels have arrived and its estimated error next to its test error, and the data-set
  verdict from core.drift, whose drifted share weights each column by the champion's importance:
  drift in an input the model ignores counts for nothing.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import numpy as np
import pandas as pd

from mlplatform.core.drift import (
    DEFAULT_MIN_KS_STATISTIC,
    DEFAULT_MIN_TOTAL_VARIATION,
    FEATURE_TABLE_COLUMNS,
    DriftThresholds,
    DriftVerdict,
    feature_drift,
)
from mlplatform.core.drift_performance import (
    CHAMPION_KINDS,
    ChampionFacts,
    WindowPerformance,
    estimated_error,
    judge_verdict,
    labels_delay,
)
from mlplatform.core.drift_performance import primary_error as primary_error
from mlplatform.core.drift_weights import importance_weights
from mlplatform.core.features import feature_names
from mlplatform.core.performance_estimation import Calibration
from mlplatform.core.profile import FRAME_COLUMNS, Profile, build_profile
from mlplatform.core.threads import map_in_threads
from mlplatform.specs.durations import Duration, parse_calendar_duration
from mlplatform.specs.model import DatasetSpec

PERFORMANCE_KIND = "performance"
BASELINE_KIND = "baseline"  # per-column drift the training data shows against its own profile
PERFORMANCE_FEATURE = "__performance__"
CALENDAR_PREFIX = "cal_"
ROLE_FEATURE, ROLE_PREDICTION, ROLE_TARGET = "feature", "prediction", "target"
_CATEGORICAL_TYPES = ("string", "category", "bool")


@dataclass(frozen=True)
class MonitoredColumns:
    """What a drift report judges, by role and kind."""

    numeric: tuple[str, ...]
    categorical: tuple[str, ...]
    roles: dict[str, str]

    @property
    def all(self) -> list[str]:
        return [*self.numeric, *self.categorical]


def output_column(task: str, available: Sequence[str]) -> tuple[str, bool] | None:
    """The model-output column of the predictions table and whether it is categorical."""
    if task == "binary" and "probability" in available:
        return "probability", False
    if "prediction" in available:
        return "prediction", task != "regression"
    return None


def monitored_columns(
    spec: DatasetSpec, available: Sequence[str], with_prediction: bool = True
) -> MonitoredColumns:
    """Inputs (no calendar parts, no `drift.exclude`), the target, and the model output if present."""
    excluded = set(spec.drift.exclude)
    inputs = [
        name
        for name in feature_names(spec)
        if name in available and not name.startswith(CALENDAR_PREFIX) and name not in excluded
    ]
    roles = {name: ROLE_FEATURE for name in inputs}
    numeric, categorical = [], []
    for name in inputs:
        column = spec.columns.get(name)
        is_category = column is not None and (column.type in _CATEGORICAL_TYPES or column.allowed is not None)
        (categorical if is_category else numeric).append(name)
    if spec.target.column in available and spec.target.column not in excluded:
        roles[spec.target.column] = ROLE_TARGET
        (numeric if spec.target.task == "regression" else categorical).append(spec.target.column)
    output = output_column(spec.target.task, available) if with_prediction else None
    if output is not None:
        name, is_category = output
        roles[name] = ROLE_PREDICTION
        (categorical if is_category else numeric).append(name)
    return MonitoredColumns(tuple(numeric), tuple(categorical), roles)


def natural_variability(
    spec: DatasetSpec, rows: pd.DataFrame, profile: Profile, window: Duration | pd.Timedelta
) -> pd.DataFrame:
    """Largest PSI and effect each column shows in consecutive `window`s of `rows` against `profile`
    (the profile of all of `rows`), as long `baseline` rows. Windows with under half the typical
    number of rows are skipped: their PSI is inflated by their size alone."""
    times = pd.to_datetime(rows[spec.time_column])
    if times.empty:
        return pd.DataFrame(columns=FRAME_COLUMNS)
    buckets = _window_buckets(times, window)
    sizes = pd.Series(buckets).value_counts()
    judged = [bucket for bucket, size in sizes.items() if size >= 0.5 * sizes.median() and size > 1]
    tables = map_in_threads(
        lambda bucket: feature_drift(profile, rows[buckets == bucket], spec.drift), judged
    )
    if not tables:
        return pd.DataFrame(columns=FRAME_COLUMNS)
    worst = pd.concat(tables).groupby("feature")[["psi", "effect_size"]].max()
    records = [
        (name, BASELINE_KIND, key, float(value))
        for name, row in worst.iterrows()
        for key, value in (("psi", row["psi"]), ("effect", row["effect_size"]))
        if math.isfinite(value)
    ]
    return pd.DataFrame(records, columns=FRAME_COLUMNS)


def _window_buckets(times: pd.Series, window: Duration | pd.Timedelta) -> np.ndarray:
    """Consecutive windows from the first row: calendar months for a `mo` window, else fixed lengths."""
    if isinstance(window, Duration) and window.months:
        months = times.dt.year * 12 + times.dt.month
        return ((months - months.min()) // window.months).to_numpy()
    length = pd.Timedelta(window.fixed if isinstance(window, Duration) else window)
    return ((times - times.min()) // length).to_numpy()


def build_reference(
    rows: pd.DataFrame,
    columns: MonitoredColumns,
    performance: tuple[str, float] | None,
    spec: DatasetSpec | None = None,
    champion: ChampionFacts | None = None,
) -> pd.DataFrame:
    """Long reference table: the profile of `rows`, the champion's test error as a `performance` row,
    (with `spec` and `drift.calibrate`) the natural variability of each column as `baseline` rows, and
    the `champion` facts (importance, calibration, estimated test error; core.drift_performance)."""
    profile = build_profile(rows, list(columns.numeric), list(columns.categorical))
    parts = [profile.to_frame()]
    if performance is not None and math.isfinite(performance[1]):
        parts.append(
            pd.DataFrame(
                [(PERFORMANCE_FEATURE, PERFORMANCE_KIND, performance[0], float(performance[1]))],
                columns=FRAME_COLUMNS,
            )
        )
    if spec is not None and spec.drift.calibrate:
        parts.append(natural_variability(spec, rows, profile, parse_calendar_duration(spec.drift.window)))
    if champion is not None:
        parts.append(champion.to_frame())
    return pd.concat([part for part in parts if len(part)], ignore_index=True)


@dataclass(frozen=True)
class Reference:
    profile: Profile
    performance: tuple[str, float] | None
    baseline_psi: dict[str, float]
    baseline_effect: dict[str, float]
    champion: ChampionFacts = field(default_factory=ChampionFacts)

    @property
    def importance(self) -> dict[str, float]:
        """Gain share per model input; empty for a reference built without it (then no weighting)."""
        return self.champion.importance

    @property
    def calibration(self) -> Calibration | None:
        return self.champion.calibration

    @property
    def estimated_reference(self) -> float | None:
        estimated = self.champion.estimated_reference
        return estimated[1] if estimated is not None else None


def read_reference(frame: pd.DataFrame) -> Reference:
    """Inverse of build_reference."""
    kinds = frame["kind"]
    not_profile = [PERFORMANCE_KIND, BASELINE_KIND, *CHAMPION_KINDS]
    profile = Profile.from_frame(frame.loc[~kinds.isin(not_profile), FRAME_COLUMNS])
    rows = frame.loc[kinds == PERFORMANCE_KIND]
    performance = (str(rows["key"].iloc[0]), float(rows["value"].iloc[0])) if len(rows) else None
    baseline = frame.loc[kinds == BASELINE_KIND]
    by_key = {
        key: dict(zip(part["feature"], part["value"], strict=True)) for key, part in baseline.groupby("key")
    }
    champion = ChampionFacts.from_frame(frame.loc[kinds.isin(CHAMPION_KINDS), FRAME_COLUMNS])
    return Reference(profile, performance, by_key.get("psi", {}), by_key.get("effect", {}), champion)


def column_thresholds(spec: DatasetSpec, reference: Reference, name: str) -> DriftThresholds:
    """The spec's thresholds, raised to the column's natural variability when it is larger."""
    effect = reference.baseline_effect.get(name, 0.0)
    return DriftThresholds(
        psi_threshold=max(spec.drift.psi_threshold, reference.baseline_psi.get(name, 0.0)),
        pvalue_threshold=spec.drift.pvalue_threshold,
        min_ks_statistic=max(DEFAULT_MIN_KS_STATISTIC, effect),
        min_total_variation=max(DEFAULT_MIN_TOTAL_VARIATION, effect),
    )


@dataclass(frozen=True)
class WindowReport:
    """One drift report: per-column table (core.drift columns + role) and the data-set verdict.

    `current_error` is the realized error (its name from before labels could be delayed)."""

    columns: pd.DataFrame
    verdict: DriftVerdict
    n_rows: int
    metric: str | None
    reference_error: float | None
    current_error: float | None
    prediction_psi: float | None
    estimated_reference: float | None = None
    estimated_error: float | None = None
    realized_drop: float | None = None
    estimated_drop: float | None = None
    trigger: str | None = None  # "realized" / "estimated": the performance drop that drifted it
    weighted: bool = False  # the drifted share is weighted by the champion's importance

    @property
    def realized_error(self) -> float | None:
        return self.current_error


def judge_window(
    spec: DatasetSpec,
    reference: Reference,
    window: pd.DataFrame,
    judge_outputs: bool = True,
    realized: pd.DataFrame | None = None,
) -> WindowReport:
    """Compare `window` (features + target + prediction columns) with the reference.

    The verdict's drifted share counts inputs and the model output, not the target (labels can
    arrive late; the performance check covers them), weighted by the champion's importance when the
    reference has it (core.drift_weights). `realized`: the rows whose labels have all arrived
    (core.drift_performance.realized_window; default `window`): the realized error and the target's
    own drift are judged on them. `judge_outputs` False (predictions by another model than the
    reference's) leaves the output and the performance out of the verdict."""
    labelled = window if realized is None else realized
    table = _column_table(spec, reference, window, labelled, judge_outputs)
    errors = None
    if judge_outputs and reference.performance is not None and spec.target.column in labelled.columns:
        _, realized_error = primary_error(spec.target.task, labelled[spec.target.column], labelled)
        errors = (realized_error, estimated_error(spec.target.task, reference.calibration, window))
    return window_report(spec, reference, table, len(window), errors)


def window_report(
    spec: DatasetSpec,
    reference: Reference,
    table: pd.DataFrame,
    n_rows: int,
    errors: tuple[float, float | None] | None,
) -> WindowReport:
    """The report of a window from its per-column `table` (`column_table`) and the champion's
    (realized, estimated) error on it (None: performance not judged), however they were computed."""
    voting = table[table["role"] != ROLE_TARGET].reset_index(drop=True)
    performance = None
    if errors is not None and reference.performance is not None:
        metric, reference_error = reference.performance
        estimate, delayed = reference.estimated_reference, labels_delay(spec) > timedelta(0)
        performance = WindowPerformance(metric, reference_error, errors[0], estimate, errors[1], delayed)
    weights = _voting_weights(reference, voting)
    judged = judge_verdict(
        voting,
        spec.drift.drifted_share_threshold,
        spec.drift.performance_drop_threshold,
        performance,
        weights,
    )
    outputs = table.loc[table["role"] == ROLE_PREDICTION, "psi"]
    return WindowReport(
        columns=table,
        verdict=judged.verdict,
        n_rows=n_rows,
        metric=performance.metric if performance else None,
        reference_error=performance.reference_error if performance else None,
        current_error=performance.realized_error if performance else None,
        prediction_psi=float(outputs.iloc[0]) if len(outputs) else None,
        estimated_reference=performance.estimated_reference if performance else None,
        estimated_error=performance.estimated_error if performance else None,
        realized_drop=judged.realized_drop,
        estimated_drop=judged.estimated_drop,
        trigger=judged.trigger,
        weighted=weights is not None,
    )


def judged_columns(
    spec: DatasetSpec, reference: Reference, available: Iterable[str], judge_outputs: bool
) -> list[str]:
    """The profiled columns a window with `available` columns is judged on, in profile order."""
    present = set(available)
    return [
        name
        for name in reference.profile.features
        if name in present and (judge_outputs or _role(spec, name) != ROLE_PREDICTION)
    ]


def _column_table(
    spec: DatasetSpec, reference: Reference, window: pd.DataFrame, labelled: pd.DataFrame, judge_outputs: bool
) -> pd.DataFrame:
    """Per-column drift (core.drift columns + role + the threshold applied); the target on `labelled`."""
    parts = [
        feature_drift(
            Profile(features={name: reference.profile.features[name]}),
            labelled if is_target(spec, name) else window,
            column_thresholds(spec, reference, name),
        )
        for name in judged_columns(spec, reference, window.columns, judge_outputs)
    ]
    table = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=FEATURE_TABLE_COLUMNS)
    return column_table(spec, reference, table)


def column_table(spec: DatasetSpec, reference: Reference, table: pd.DataFrame) -> pd.DataFrame:
    """core.drift's per-column rows with each column's role and the PSI threshold it was judged on."""
    table.insert(1, "role", [_role(spec, name) for name in table["feature"]])
    table["psi_threshold"] = [column_thresholds(spec, reference, n).psi_threshold for n in table["feature"]]
    return table


def _voting_weights(reference: Reference, voting: pd.DataFrame) -> dict[str, float] | None:
    """Importance weights of the voting columns; None (every column counts alike) without importance."""
    if not reference.importance:
        return None
    roles = dict(zip(voting["feature"], voting["role"], strict=True))
    inputs = [name for name, role in roles.items() if role == ROLE_FEATURE]
    outputs = [name for name, role in roles.items() if role == ROLE_PREDICTION]
    return importance_weights(reference.importance, inputs, outputs)


def is_target(spec: DatasetSpec, name: str) -> bool:
    return name == spec.target.column


def _role(spec: DatasetSpec, name: str) -> str:
    if is_target(spec, name):
        return ROLE_TARGET
    if name in ("prediction", "probability"):
        return ROLE_PREDICTION
    return ROLE_FEATURE


def nan_to_none(value: Any) -> Any:
    """JSON/metadata-friendly: NaN and numpy scalars become None and plain Python numbers."""
    if value is None:
        return None
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
