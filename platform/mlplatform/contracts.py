"""The names that cross a process boundary, defined once.

Who writes and who reads each one:
* `Stage`: asset keys `<dataset>/<stage>` and warehouse tables `<dataset>.<stage>`; every module, the
  sensors (which read the event log of other processes) and the CLI.
* `DriftVerdictMetadata`: written by the `drift_report` asset on each materialization, read by the
  drift sensor in the daemon (and the replay). One codec, so neither side can drift from the other.
* `MaterializationKey`: metadata keys one asset writes and another step or check reads back from the
  event log (e.g. which model version a run registered).
* `MlflowTag`, `MlflowMetric`, `MlflowParam`: names on MLflow runs and model versions, written by
  training and evaluation, read by checks, the drift reference and the `mlplatform run` summary.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import dagster as dg

    from mlplatform.specs.model import DatasetSpec


class Stage(StrEnum):
    """The stages of one dataset: asset key `<dataset>/<stage>`, table `<dataset>.<stage>`."""

    RAW = "raw"
    CLEAN = "clean"
    QUARANTINE = "quarantine"  # written by the clean step (one multi-asset)
    FEATURES = "features"
    TRAINING_SET = "training_set"
    MODEL = "model"
    EVALUATION = "evaluation"
    PREDICTIONS = "predictions"
    REFERENCE_PROFILE = "reference_profile"
    DRIFT_REPORT = "drift_report"


def asset_key(spec: DatasetSpec, stage: str) -> dg.AssetKey:
    """The asset key of a dataset's stage: `<dataset>/<stage>`."""
    # Imported here, not at the top: core/ and `mlplatform --help` read Stage without loading Dagster.
    import dagster as dg

    # str(): Dagster's serdes refuses a StrEnum member (a `Stage`) in a key's path.
    return dg.AssetKey([spec.name, str(stage)])


class Table(StrEnum):
    """Warehouse tables that are not the table of a stage of the same name."""

    DRIFT_VERDICT = "drift_verdict"  # one row per partition, written by drift_report
    # Per (partition_start, reference_version): the partition's drift summary, long (feature, key, value),
    # written by drift_report and merged into the trailing windows of later runs (core.drift_summaries).
    DRIFT_SUMMARY = "drift_summary"
    SOURCE_ACCOUNTING = "_source_accounting"  # per-file record counts, written by raw


class MaterializationKey(StrEnum):
    """Metadata keys read back from the event log by another step, check or process.

    Write them with `.value`: Dagster refuses to serialize an Enum member as a metadata key."""

    MODEL_VERSION = "model_version"  # on `model`: the version this materialization registered
    CHALLENGER_VERSION = "challenger_version"  # on `evaluation`: the version it evaluated
    ROWS_PENDING_PARTITION = "rows_pending_partition"  # on `raw`: rows waiting for their partition
    # On `evaluation` (read by the alerts sensor): `promoted`, `not promoted` or `already champion`.
    DECISION = "decision"
    CHAMPION_VERSION = "champion_version"  # on `evaluation`, and on a rollback's `model` observation
    PREVIOUS_CHAMPION_VERSION = "previous_champion_version"
    CHAMPION_CHANGE = "champion_change"  # on a `model` observation: `rollback` (mlplatform rollback)


# The asset check on `clean` whose result the `mlplatform run` summary reads (a plain str: Dagster
# refuses to serialize an Enum as a check name).
SOURCE_ACCOUNTING_CHECK = "source_accounting"
VALIDITY_RATE_CHECK = "validity_rate"  # the quarantine gate: `mlplatform run` explains it by its reasons


class MlflowTag(StrEnum):
    """Tags on model versions (`_` form) and training runs (`.` form)."""

    DAGSTER_RUN_ID = "dagster_run_id"  # model version: the Dagster run that trained it
    TRAINING_SET_DATA_VERSION = "training_set_data_version"
    CODE_VERSION = "code_version"
    MODEL_VERSION = "model_version"  # training run: the version it registered
    PROMOTION_DECISION = "promotion.decision"
    PROMOTION_REASON = "promotion.reason"
    PROMOTION_METRIC = "promotion.metric"
    PROMOTION_CHAMPION_BEFORE = "promotion.champion_before"
    EVALUATION_BASELINE = "evaluation.baseline"
    EVALUATION_REPORT = "evaluation.report"
    CHAMPION_HISTORY = "mlplatform.champion_history"  # registered model: champions in order
    PREVIOUS_CHAMPION = "previous_champion"  # model version: the champion its promotion replaced
    PROMOTED_AT = "promoted_at"  # model version: when it was promoted
    ROLLBACK = "rollback"  # model version: champion again by `mlplatform rollback`

    @property
    def on_model_version(self) -> str:
        """Model version tags use `_` where run tags use `.` (e.g. `promotion_decision`)."""
        return self.value.replace(".", "_")


class MlflowMetric:
    """Metric names on a training run: `<split>_<metric>`, plus the evaluation's comparisons."""

    BEST_ITERATION = "best_iteration"
    TRAINING_SECONDS = "training_seconds"

    @staticmethod
    def split(split: str, metric: str) -> str:
        return f"{split}_{metric}"

    @staticmethod
    def test(metric: str) -> str:
        return f"test_{metric}"

    @staticmethod
    def baseline_test(metric: str) -> str:
        return f"baseline_test_{metric}"

    @staticmethod
    def champion_test(metric: str) -> str:
        return f"champion_test_{metric}"


class MlflowParam:
    """Parameters on a training run that other steps read back."""

    @staticmethod
    def window(split: str) -> str:
        """`window_<split>` = "<first> .. <last>": the time window of a split, as trained on."""
        return f"window_{split}"

    WINDOW_SEPARATOR = " .. "


# The folder inside a logged MLflow model that holds the LightGBM text model (read by the pyfunc
# wrapper of every logged model, so it must not change).
MODEL_ARTIFACT_KEY = "lightgbm"
CHAMPION_ALIAS = "champion"
# Run tag of a retraining: train from this time on (ISO 8601), the change point a drift report located
# after a performance-driven verdict (spec `training.change_point`); set by the drift sensor, or by hand.
TRAIN_FROM_TAG = "mlplatform/train_from"
CHALLENGER_ALIAS = "challenger"


class VerdictStatus(StrEnum):
    """What a drift verdict says: `insufficient_data` means not (fully) judged, never "stable".

    Insufficient: no or too few rows in the window (`drift.min_rows`), or no predictions by the
    reference's model, so prediction drift and performance are unjudged (the reason says which part
    and why). Sensors treat it as "do not retrain" without reporting it as stable."""

    DRIFTED = "drifted"
    STABLE = "stable"
    INSUFFICIENT_DATA = "insufficient_data"


@dataclass(frozen=True)
class DriftVerdictMetadata:
    """The verdict a `drift_report` materialization carries, as the drift sensor reads it.

    A ranged run writes one event per partition, each with the verdict of its own partition, which
    `verdict_partition` names (read in event order, the newest partition's is the last word). `drifted` is True only for
    status `drifted`; events written before `status` existed read as drifted or stable. `change_point`
    (ISO time): where the champion's per-partition error stepped up, located after a verdict driven by
    performance; the drift sensor passes it to the retraining as `TRAIN_FROM_TAG`.
    """

    drifted: bool
    verdict_partition: str
    reason: str
    status: VerdictStatus = VerdictStatus.STABLE
    change_point: str | None = None

    REASON_LIMIT = 300  # what a sensor keeps of the reason (cursor and run tags are small)

    def __post_init__(self) -> None:
        status = VerdictStatus(self.status)
        if self.drifted and status == VerdictStatus.STABLE:  # the default: built without a status
            status = VerdictStatus.DRIFTED
        if self.drifted != (status == VerdictStatus.DRIFTED):
            raise ValueError(f"drifted={self.drifted} contradicts status {status.value}")
        object.__setattr__(self, "status", status)

    def to_metadata(self) -> dict[str, Any]:
        found = {
            "drifted": self.drifted,
            "status": self.status.value,
            "verdict_partition": self.verdict_partition,
            "reason": self.reason,
        }
        return found | ({"change_point": self.change_point} if self.change_point else {})

    @classmethod
    def from_metadata(cls, metadata: Mapping[str, Any]) -> DriftVerdictMetadata | None:
        """The verdict in an event's metadata (values or Dagster MetadataValues); None if it has none."""
        drifted = metadata_value(metadata.get("drifted"))
        if drifted is None:
            return None
        partition = metadata_value(metadata.get("verdict_partition"))
        reason = metadata_value(metadata.get("reason"))
        status = metadata_value(metadata.get("status"))
        change_point = metadata_value(metadata.get("change_point"))
        return cls(
            bool(drifted),
            str(partition) if partition is not None else "",
            str(reason)[: cls.REASON_LIMIT] if reason is not None else "",
            VerdictStatus(status) if status is not None else _legacy_status(bool(drifted)),
            str(change_point) if change_point else None,
        )


def _legacy_status(drifted: bool) -> VerdictStatus:
    return VerdictStatus.DRIFTED if drifted else VerdictStatus.STABLE


def metadata_value(value: Any) -> Any:
    """A Dagster MetadataValue's value (it has `.value`), or the value itself."""
    return getattr(value, "value", value)
