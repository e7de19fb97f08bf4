"""The dataset spec: one YAML file per data set, validated by these typed models.

Only `name`, `source`, `time_column`, `columns` and `target` are required; every other section has
defaults, so a minimal spec works and later sections slot in without breaking old files.
"""

from __future__ import annotations

import logging
import re
from datetime import date, timedelta
from pathlib import Path
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import AfterValidator, Field, field_validator, model_validator

from mlplatform.specs.alerts import AlertsSpec
from mlplatform.specs.durations import (
    DEFAULT_DRIFT_WINDOW_BY_GRAIN,
    parse_calendar_duration,
    parse_duration,
    shorter_than_grain,
)
from mlplatform.specs.expressions import check_expression
from mlplatform.specs.monitoring import DriftSpec, LabelsSpec, TrainingSpec
from mlplatform.specs.sources import (
    LANDED_SOURCES,
    AnySource,
    KafkaSourceSpec,
    PostgresSourceSpec,
    SourceSpec,
)
from mlplatform.specs.strict import Strict as _Strict

__all__ = [
    "AnySource",
    "DatasetSpec",
    "DriftSpec",
    "KafkaSourceSpec",
    "LabelsSpec",
    "PostgresSourceSpec",
    "SourceSpec",
    "TrainingSpec",
    "parse_duration",
]

ColumnType = Literal["int", "float", "bool", "string", "category", "date", "timestamp"]
Task = Literal["regression", "binary", "multiclass"]
Grain = Literal["day", "week", "month"]

_NAME_RE = re.compile(r"^[a-z][a-z0-9_]*$")
_OWNER_RE = re.compile(r"^(team:[A-Za-z0-9_.-]+|[^@\s]+@[^@\s]+\.[^@\s]+)$")
_TAG_RE = re.compile(r"^[A-Za-z0-9_.-]{1,63}$")  # what Dagster accepts as a tag key or value
# LightGBM refuses feature names holding JSON syntax (its CheckAllowedJSON), and a line break splits
# the feature_names line of its model file, so the saved model no longer loads.
_LIGHTGBM_REFUSED = '",:[]{}\n\r'
_LOG = logging.getLogger("mlplatform.specs")


class ColumnSpec(_Strict):
    type: ColumnType
    nullable: bool = True
    min: float | None = None
    max: float | None = None
    allowed: list[Any] | None = None
    unique: bool = False
    description: str | None = None
    # Float columns only: keep inf and -inf instead of quarantining them.
    allow_infinite: bool = False

    @model_validator(mode="after")
    def _range_fits_type(self) -> ColumnSpec:
        if self.allow_infinite and self.type != "float":
            raise ValueError(f"allow_infinite applies to float columns, not {self.type}")
        if (self.min is not None or self.max is not None) and self.type not in ("int", "float"):
            raise ValueError(f"min/max apply to int and float columns, not {self.type}")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"min ({self.min}) is greater than max ({self.max})")
        return self


class TargetSpec(_Strict):
    column: str
    task: Task


class PartitionsSpec(_Strict):
    """Partition range. By default it spans the data found in the source when definitions load."""

    start: date | None = None
    end: date | Literal["open"] | None = None

    @model_validator(mode="after")
    def _start_before_end(self) -> PartitionsSpec:
        if isinstance(self.start, date) and isinstance(self.end, date) and self.start >= self.end:
            raise ValueError(f"start ({self.start}) must be before end ({self.end})")
        return self


class LagSpec(_Strict):
    column: str
    lag: str

    @field_validator("lag")
    @classmethod
    def _duration(cls, value: str) -> str:
        parse_duration(value)
        return value


class RollingSpec(_Strict):
    column: str
    window: str
    gap: str = "0h"
    agg: Literal["mean", "sum", "min", "max", "count", "std"] = "mean"

    @field_validator("window", "gap")
    @classmethod
    def _duration(cls, value: str) -> str:
        parse_duration(value)
        return value


CalendarPart = Literal[
    "hour", "day_of_week", "day_of_month", "day_of_year", "week_of_year", "month", "is_weekend"
]


class FeaturesSpec(_Strict):
    calendar: list[CalendarPart] = Field(
        default_factory=lambda: ["hour", "day_of_week", "day_of_month", "day_of_year", "month", "is_weekend"],
        description=(
            "Parts of the time column derived as `cal_<part>` features. A part is left out when a kept "
            "numeric column already carries it by name (hour, hr; day_of_week, weekday, dow; day_of_month; "
            "day_of_year, doy; week_of_year; month, mnth; is_weekend, weekend): decided by name, not by "
            "content, so every partition's features table has the same columns."
        ),
    )
    lags: list[LagSpec] = Field(default_factory=list)
    rolling: list[RollingSpec] = Field(default_factory=list)
    entity_key_feature: bool | Literal["auto"] = Field(
        default="auto",
        description=(
            "Whether `entity_key` is a (categorical) model input. auto: yes when the training set holds at "
            "most 100 distinct entities (a few stocks, stores or sensors the model must tell apart); no "
            "above that (customer or device ids: the model would memorise ids, and unseen ones score as "
            "missing). true/false force it."
        ),
    )


class QualitySpec(_Strict):
    # Above this share of quarantined rows the validity check fails and blocks downstream assets.
    max_quarantine_share: float = Field(default=0.05, ge=0, le=1)


class SplitSpec(_Strict):
    validation_fraction: float = Field(default=0.1, gt=0, lt=0.5)
    test_fraction: float = Field(default=0.1, gt=0, lt=0.5)


class ModelSpec(_Strict):
    params: dict[str, Any] = Field(default_factory=dict)
    num_boost_round: int = Field(default=2000, gt=0)
    early_stopping_rounds: int = Field(default=50, gt=0)


class PromotionSpec(_Strict):
    metric: str | None = None
    min_improvement: float = 0.0


class DatasetSpec(_Strict):
    name: str
    description: str | None = None
    owners: list[str] = Field(default_factory=list)
    tags: dict[str, str] = Field(default_factory=dict)
    source: AnySource
    # Parsed, never run, at validation: one scalar SQL expression of the row each (specs/expressions.py).
    derived: dict[str, Annotated[str, AfterValidator(check_expression)]] = Field(default_factory=dict)
    time_column: str
    # The zone of naive times in the source; every time is stored as naive UTC.
    timezone: str = "UTC"
    partition_grain: Grain = "day"
    partitions: PartitionsSpec = Field(default_factory=PartitionsSpec)
    entity_key: str | None = None
    columns: dict[str, ColumnSpec]
    target: TargetSpec
    drop: list[str] = Field(default_factory=list)
    features: FeaturesSpec = Field(default_factory=FeaturesSpec)
    quality: QualitySpec = Field(default_factory=QualitySpec)
    split: SplitSpec = Field(default_factory=SplitSpec)
    model: ModelSpec = Field(default_factory=ModelSpec)
    promotion: PromotionSpec = Field(default_factory=PromotionSpec)
    drift: DriftSpec = Field(default_factory=DriftSpec)
    # What the model trains on (all history, the last N days, recency weights, from a detected change).
    training: TrainingSpec = Field(default_factory=TrainingSpec)
    # When labels arrive: drift reports judge performance only where they have.
    labels: LabelsSpec = Field(default_factory=LabelsSpec)
    # Messages when runs or checks fail, drift retrains, a champion changes (specs/alerts.py).
    alerts: AlertsSpec | None = None
    # Set by the loader, not by the YAML: where the spec came from, to resolve relative paths.
    spec_path: Path | None = Field(default=None, exclude=True)

    @field_validator("owners")
    @classmethod
    def _owner_format(cls, value: list[str]) -> list[str]:
        bad = [owner for owner in value if not _OWNER_RE.match(owner)]
        if bad:
            raise ValueError(f"{bad} are not owners: use an email address or team:<name>")
        return value

    @field_validator("tags")
    @classmethod
    def _tag_format(cls, value: dict[str, str]) -> dict[str, str]:
        bad = [f"{k}: {v}" for k, v in value.items() if not (_TAG_RE.match(k) and _TAG_RE.match(str(v)))]
        if bad:
            raise ValueError(f"{bad}: tag keys and values are 1-63 letters, digits, '_', '.' or '-'")
        return value

    @field_validator("timezone")
    @classmethod
    def _known_timezone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(
                f"{value!r} is not a time zone name (use an IANA name such as 'UTC' or 'Europe/Berlin')"
            ) from None
        return value

    @field_validator("name")
    @classmethod
    def _name_format(cls, value: str) -> str:
        if not _NAME_RE.match(value):
            raise ValueError(
                f"{value!r} must match [a-z][a-z0-9_]* (it names a DuckDB schema and asset keys)"
            )
        return value

    @model_validator(mode="after")
    def _columns_exist(self) -> DatasetSpec:
        if not self.columns:
            raise ValueError("columns: at least one column is required")
        known = set(self.columns) | set(self.derived)
        problems: list[str] = []

        def need(key: str, column: str) -> None:
            if column not in known:
                problems.append(f"{key}: unknown column {column!r} (not in columns or derived)")

        need("time_column", self.time_column)
        need("target.column", self.target.column)
        if self.entity_key:
            need("entity_key", self.entity_key)
        elif self.features.entity_key_feature is True:
            problems.append("features.entity_key_feature: true needs an entity_key")
        for i, column in enumerate(self.drop):
            need(f"drop[{i}]", column)
        for i, lag in enumerate(self.features.lags):
            need(f"features.lags[{i}].column", lag.column)
        for i, rolling in enumerate(self.features.rolling):
            need(f"features.rolling[{i}].column", rolling.column)
        for i, lag in enumerate(self.features.lags):
            if lag.column == self.target.column and not parse_duration(lag.lag):
                problems.append(f"features.lags[{i}].lag: a lag of 0 on the target would leak the label")
        for i, rolling in enumerate(self.features.rolling):
            if rolling.column == self.target.column and not parse_duration(rolling.gap):
                problems.append(f"features.rolling[{i}].gap: a rolling window of the target needs a gap > 0")
        if self.target.column in self.drop:
            problems.append(f"drop: the target column {self.target.column!r} cannot be dropped")
        if self.time_column in self.columns and self.columns[self.time_column].type not in (
            "date",
            "timestamp",
        ):
            problems.append(f"columns.{self.time_column}.type: the time column must be date or timestamp")
        if problems:
            raise ValueError("; ".join(problems))
        return self

    @model_validator(mode="after")
    def _feature_names_lightgbm_accepts(self) -> DatasetSpec:
        """Refused when the spec loads, not at the model step: names of columns the model reads."""
        used = {*self.feature_columns, *(lag.column for lag in self.features.lags)}
        used |= {rolling.column for rolling in self.features.rolling}
        problems = []
        for name in sorted(used):
            bad = next((ch for ch in name if ch in _LIGHTGBM_REFUSED), None)
            if bad is not None:
                section = "columns" if name in self.columns else "derived"
                shown = "a line break" if bad in "\r\n" else repr(bad)
                problems.append(
                    f"key '{section}.{name}': the name holds {shown}, which LightGBM refuses in a "
                    f"feature name (none of {_LIGHTGBM_REFUSED[:7]} or a line break): give it a safe name "
                    "with `derived` (e.g. safe_name: '\"<the name>\"'), keep the original in `columns` and "
                    "add it to `drop`"
                )
        if problems:
            raise ValueError("; ".join(problems))
        return self

    @model_validator(mode="before")
    @classmethod
    def _drift_window_follows_grain(cls, data: Any) -> Any:
        """Without `drift.window` the window is 7d, or one partition when partitions are longer
        (month grain: 1mo), so a window never starts out shorter than the partition it judges."""
        if not isinstance(data, dict) or data.get("partition_grain") not in DEFAULT_DRIFT_WINDOW_BY_GRAIN:
            return data
        drift = data.get("drift") or {}
        if isinstance(drift, dict) and "window" not in drift:
            window = DEFAULT_DRIFT_WINDOW_BY_GRAIN[data["partition_grain"]]
            return {**data, "drift": {**drift, "window": window}}
        return data

    @model_validator(mode="after")
    def _warn_drift_window_shorter_than_partition(self) -> DatasetSpec:
        """Allowed (a window of recent rows can be what is wanted) but most likely a mistake."""
        if shorter_than_grain(parse_calendar_duration(self.drift.window), self.partition_grain):
            _LOG.warning(
                f"spec {self.name}: drift.window {self.drift.window} is shorter than one partition "
                f"(partition_grain: {self.partition_grain}); each verdict judges only the end of its "
                f"partition, and none at all when the data are spaced further apart: set drift.window to "
                f"at least {DEFAULT_DRIFT_WINDOW_BY_GRAIN[self.partition_grain]}"
            )
        return self

    # Derived facts the stages share, so no stage re-derives them differently.
    @model_validator(mode="after")
    def _database_time_column(self) -> DatasetSpec:
        if isinstance(self.source, PostgresSourceSpec) and self.time_column in self.derived:
            raise ValueError(
                f"time_column: {self.time_column!r} is derived, but a postgres source needs a column of "
                "the table (compute it in `query:` instead)"
            )
        kafka = self.source if isinstance(self.source, KafkaSourceSpec) else None
        if kafka is not None and kafka.time_from == "record_timestamp" and self.time_column in self.derived:
            raise ValueError(
                f"time_column: {self.time_column!r} is derived, but source.time_from: record_timestamp "
                "fills it with each record's Kafka timestamp (use time_from: field for a derived time)"
            )
        return self

    @property
    def source_format(self) -> Literal["csv", "parquet"]:
        if isinstance(self.source, LANDED_SOURCES):
            # The rows are landed as Parquet files (mlplatform.core.database_source, core.kafka_batches).
            return "parquet"
        if self.source.format:
            return self.source.format
        return "parquet" if self.source.path.lower().endswith((".parquet", ".pq")) else "csv"

    @property
    def source_pattern(self) -> str:
        """Absolute path or glob of the source files."""
        if isinstance(self.source, LANDED_SOURCES):
            # Its files are under the platform home, which the spec does not know.
            kind = self.source.kind
            raise ValueError(f"{self.name}: a {kind} source has no file pattern; use its landed spec")
        path = Path(self.source.path).expanduser()
        if not path.is_absolute() and self.spec_path is not None:
            path = self.spec_path.parent / path
        return str(path.resolve())

    @property
    def row_keys(self) -> list[str]:
        """The time column, then the entity key if there is one: how rows are identified and ordered."""
        return [self.time_column, *([self.entity_key] if self.entity_key else [])]

    @property
    def source_columns(self) -> list[str]:
        """Spec columns read from the files (the rest of `columns` are derived)."""
        return [c for c in self.columns if c not in self.derived]

    @property
    def feature_columns(self) -> list[str]:
        """Kept columns that feed the model as they are."""
        excluded = {*self.drop, self.target.column, self.time_column}
        if self.entity_key:
            excluded.add(self.entity_key)
        # A derived column may also be declared in `columns` (to type and check it): one feature, not two.
        names = dict.fromkeys([*self.columns, *self.derived])
        return [c for c in names if c not in excluded and not c.startswith("_")]

    @property
    def lookback(self) -> timedelta:
        """How far back the features of a row reach, so a partition's features can be built alone."""
        spans = [parse_duration(lag.lag) for lag in self.features.lags]
        spans += [parse_duration(r.window) + parse_duration(r.gap) for r in self.features.rolling]
        return max(spans, default=timedelta(0))
