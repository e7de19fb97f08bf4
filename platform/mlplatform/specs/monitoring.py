"""Spec sections about the model's life after its first training: `drift`, `training` and `labels`.

`drift` says when a window of new data looks different from what the champion learned; `training`
what a (re)training learns from; `labels` when the true outcome of a row becomes known.
"""

from __future__ import annotations

from datetime import timedelta

from pydantic import Field, field_validator

from mlplatform.specs.durations import parse_calendar_duration, parse_duration
from mlplatform.specs.strict import Strict as _Strict


class DriftSpec(_Strict):
    psi_threshold: float = 0.2
    pvalue_threshold: float = 0.01
    drifted_share_threshold: float = Field(default=0.3, ge=0, le=1)
    # Relative drop of the champion's primary metric on a window against its own test score (0.15:
    # RMSE 15% higher, or ROC AUC 15% lower). Tuned with `mlplatform replay` on bike sharing, see README.
    performance_drop_threshold: float = Field(default=0.15, ge=0)
    # Least time between two drift-triggered retrainings, so persistent drift cannot cause a storm.
    cooldown: str = "14d"
    # Each drift report judges the trailing `window` of data ending with its partition: one daily
    # partition can be too few rows (24 for hourly data) for PSI and tests to be trustworthy.
    # Default: 7d, or one partition when partitions are longer (month grain: 1mo); see DatasetSpec.
    # A window shorter than one partition is allowed but logged as a warning when the spec loads.
    window: str = "7d"
    # Fewest rows a window needs to be judged; with fewer the verdict is `insufficient_data` (PSI is
    # biased upwards by about (buckets - 1) / rows: 0.1 at 100 rows, half the default threshold).
    min_rows: int = Field(default=100, ge=1)
    # Columns never judged for drift (besides the calendar features, which are always left out:
    # a week of day-of-year values "drifts" from a year of them by construction).
    exclude: list[str] = Field(default_factory=list)
    # How often a failed drift-triggered retraining is requested again before the sensor gives up.
    max_retries: int = Field(default=1, ge=0)
    # Raise each column's thresholds to the drift its own training windows show (seasonal data).
    calibrate: bool = True

    @field_validator("cooldown", "window")
    @classmethod
    def _duration(cls, value: str) -> str:
        parse_calendar_duration(value)  # calendar months allowed: both shift a moment
        return value


class TrainingSpec(_Strict):
    """What a training learns from. The split fractions (`split`) apply inside the chosen window."""

    # "all": the whole history; or a duration ("180d"): only the last 180 days of the training set.
    window: str = "all"
    # Sample weights halving every `recency_half_life` of age (counted back from the end of the train
    # split); None: every row weighs the same.
    recency_half_life: str | None = None
    # After a drift verdict driven by performance (concept drift), retrain from the change point the
    # drift report located on the champion's per-partition error (core.change_point), when at least
    # `min_rows_after_change` rows and `min_days_after_change` days follow it; else the window above.
    change_point: bool = True
    min_rows_after_change: int = Field(default=2000, ge=1)
    min_days_after_change: int = Field(default=28, ge=1)

    @field_validator("window")
    @classmethod
    def _window(cls, value: str) -> str:
        if value != "all" and parse_duration(value) <= timedelta(0):
            raise ValueError(f"{value!r}: a training window must be longer than zero (or 'all')")
        return value

    @field_validator("recency_half_life")
    @classmethod
    def _half_life(cls, value: str | None) -> str | None:
        if value is not None and parse_duration(value) <= timedelta(0):
            raise ValueError(f"{value!r}: a half-life must be longer than zero (or null: no weights)")
        return value


class LabelsSpec(_Strict):
    """When labels arrive: a row's target is known only `delay` after its time (e.g. "7d" for fraud
    confirmed a week later). Drift reports judge performance only on rows whose labels have arrived by
    the end of the window; the replay simulates the same delay."""

    delay: str = "0h"

    @field_validator("delay")
    @classmethod
    def _delay(cls, value: str) -> str:
        parse_duration(value)
        return value
