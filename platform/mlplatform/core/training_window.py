"""Which labelled rows a training learns from (spec `training`), and how much each one weighs.

The window rule: a training starts at the LATEST of
1. the first labelled row;
2. the last labelled row minus `training.window`, unless the window is "all";
3. the change point a retraining was asked to train from (run tag `mlplatform/train_from`), when
   `training.change_point` is on and enough data follows it: at least `min_rows_after_change` rows
   and `min_days_after_change` days from the change point to the last labelled row. With less, the
   change point is not used (the reason says why) and 1-2 decide: a model fitted on a few days of
   the new regime can be worse than one that also saw the old.
The split fractions then apply inside the window, so the newest data is still what the model is
tested on. The start is always the time of a real row: the first one at or after the cut.

`recency_half_life` weighs the train rows 0.5 ** (age / half-life), the age counted back from the
train split's newest row (`recency_weights`); validation rows are not weighted.

The rule and the weights are pure functions; `choose_table_window` and `write_training_set` apply
the rule to the warehouse (plain DuckDB, for the training_set asset).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

import duckdb
import numpy as np
import pandas as pd

from mlplatform.contracts import TRAIN_FROM_TAG, Stage
from mlplatform.core.splits import SPLIT_COLUMN, SplitWindows, assign_split, time_split
from mlplatform.core.sql import quote_ident
from mlplatform.core.warehouse import read_frame, replace_table, table_name
from mlplatform.specs.durations import parse_duration
from mlplatform.specs.model import DatasetSpec
from mlplatform.specs.monitoring import TrainingSpec


@dataclass(frozen=True)
class TrainingWindow:
    """The rows a training learns from: those with time >= `start`."""

    start: pd.Timestamp  # the first labelled row's time inside the window
    reason: str  # why it starts there, for metadata, the run log and the MLflow run
    train_from: pd.Timestamp | None  # the change point asked for, whether it was used or not
    change_point_used: bool


def parse_train_from(text: str | None) -> pd.Timestamp | None:
    """The run tag's ISO time as a naive UTC timestamp (like the tables); None or "" -> None.

    A time with an offset is converted to UTC; a naive one is read as UTC. Anything else raises
    ValueError naming the tag (a mistyped hand-set tag must not train on a silently different window).
    """
    if text is None or not text.strip():
        return None
    try:
        moment = pd.Timestamp(text.strip())
    except ValueError as error:
        raise ValueError(
            f"run tag {TRAIN_FROM_TAG}={text!r} is not an ISO 8601 time (e.g. 2024-03-01T00:00:00)"
        ) from error
    if moment is pd.NaT:
        raise ValueError(f"run tag {TRAIN_FROM_TAG}={text!r} is not a time")
    return moment.tz_convert("UTC").tz_localize(None) if moment.tzinfo is not None else moment


def _first_at_or_after(times: pd.Series, cut: pd.Timestamp) -> pd.Timestamp:
    return pd.Timestamp(times[times >= cut].min())


def _base_window(times: pd.Series, window: str) -> tuple[pd.Timestamp, str]:
    """Start and reason from rules 1-2 (the first row, the last `window` of rows)."""
    first, last = pd.Timestamp(times.min()), pd.Timestamp(times.max())
    if window == "all":
        return first, f"all labelled rows from {first} (training.window: all)"
    cut = last - parse_duration(window)
    if cut <= first:
        return first, f"all labelled rows from {first} (training.window {window} reaches past the first row)"
    start = _first_at_or_after(times, cut)
    return start, f"the last {window} of labelled rows: from {start} to {last}"


def _change_point_refusal(times: pd.Series, train_from: pd.Timestamp, training: TrainingSpec) -> str | None:
    """Why the change point cannot start the window (None: it can)."""
    label = f"change point {train_from} (run tag {TRAIN_FROM_TAG}) not used"
    if not training.change_point:
        return f"{label}: training.change_point is off"
    last = pd.Timestamp(times.max())
    rows = int((times >= train_from).sum())
    if rows < training.min_rows_after_change:
        return (
            f"{label}: {rows:,} labelled rows after it, fewer than "
            f"training.min_rows_after_change {training.min_rows_after_change:,}"
        )
    days = max(last - train_from, timedelta(0)) / timedelta(days=1)
    if days < training.min_days_after_change:
        return (
            f"{label}: {days:.1f} days of labelled rows after it, fewer than "
            f"training.min_days_after_change {training.min_days_after_change}"
        )
    return None


def choose_training_window(
    times: pd.Series, training: TrainingSpec, train_from: pd.Timestamp | None = None
) -> TrainingWindow:
    """The window rule of this module over the labelled rows' `times` (naive UTC)."""
    times = pd.Series(pd.to_datetime(times), copy=False).dropna()
    if times.empty:
        raise ValueError("no labelled rows to train on")
    start, reason = _base_window(times, training.window)
    if train_from is None:
        return TrainingWindow(start, reason, None, change_point_used=False)
    if train_from <= start:
        # The latest of the three wins: a change point before the window start changes nothing.
        note = f"change point {train_from} (run tag {TRAIN_FROM_TAG}) is not after the window start"
        return TrainingWindow(start, f"{reason}; {note}", train_from, change_point_used=False)
    refusal = _change_point_refusal(times, train_from, training)
    if refusal is not None:
        return TrainingWindow(start, f"{refusal}; {reason}", train_from, change_point_used=False)
    after = times[times >= train_from]
    start = pd.Timestamp(after.min())
    days = (pd.Timestamp(after.max()) - train_from) / timedelta(days=1)
    reason = (
        f"from the change point {train_from} (run tag {TRAIN_FROM_TAG}): {after.size:,} labelled rows "
        f"over {days:.1f} days after it, first at {start}"
    )
    return TrainingWindow(start, reason, train_from, change_point_used=True)


def recency_weights(
    times: pd.Series, half_life: timedelta | None, end: pd.Timestamp | None = None
) -> np.ndarray:
    """Sample weights 0.5 ** (age / half_life), the age counted back from `end` (default: the newest
    of `times`), so the newest row weighs 1 and one `half_life` older weighs 0.5. None: all ones.

    Rows newer than `end` weigh 1 (an age is never negative)."""
    values = pd.to_datetime(pd.Series(times, copy=False))
    if half_life is None:
        return np.ones(len(values), dtype=np.float64)
    if half_life <= timedelta(0):
        raise ValueError(f"recency half-life must be positive, got {half_life}")
    newest = pd.Timestamp(values.max()) if end is None else pd.Timestamp(end)
    ages = (newest - values).clip(lower=pd.Timedelta(0)) / half_life
    return np.power(0.5, ages.to_numpy(dtype=np.float64))


# The rule over the warehouse: plain functions over a DuckDB connection, for the training_set asset.


def choose_table_window(
    conn: duckdb.DuckDBPyConnection, spec: DatasetSpec, train_from: pd.Timestamp | None
) -> tuple[TrainingWindow, int]:
    """The training window over the labelled rows of `features`, and how many labelled rows it
    leaves out (those older than its start)."""
    features, time = table_name(spec.name, Stage.FEATURES), quote_ident(spec.time_column)
    labelled = f"{quote_ident(spec.target.column)} IS NOT NULL"
    times = pd.to_datetime(
        read_frame(conn, f"SELECT {time} FROM {features} WHERE {labelled}")[spec.time_column]
    )
    window = choose_training_window(times, spec.training, train_from)
    return window, int((times < window.start).sum())


def write_training_set(
    conn: duckdb.DuckDBPyConnection, spec: DatasetSpec, start: pd.Timestamp
) -> tuple[pd.DataFrame, SplitWindows]:
    """Copy the labelled rows of `features` from `start` on into `training_set`, each with its split
    (the spec's fractions of the window's time range). Returns the rows written and the windows."""
    features, time = table_name(spec.name, Stage.FEATURES), quote_ident(spec.time_column)
    labelled = f"{quote_ident(spec.target.column)} IS NOT NULL"
    frame = read_frame(
        conn, f"SELECT * FROM {features} WHERE {labelled} AND {time} >= ?::TIMESTAMP", [str(start)]
    )
    split = spec.split
    windows = time_split(frame, spec.time_column, split.validation_fraction, split.test_fraction)
    frame[SPLIT_COLUMN] = assign_split(frame, spec.time_column, windows)
    conn.register("training_set_frame", frame)
    try:
        replace_table(conn, spec.name, Stage.TRAINING_SET, "SELECT * FROM training_set_frame")
    finally:
        conn.unregister("training_set_frame")
    return frame, windows
