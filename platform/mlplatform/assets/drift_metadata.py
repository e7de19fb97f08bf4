"""The metadata of `drift_report`'s events: each partition's own verdict, and the run's summary.

A ranged run writes one event per partition. Each carries the verdict of its partition, read by the
drift sensor (`DriftVerdictMetadata`, in event order, so the newest partition's verdict is the last
word, with the change point a retraining starts from) and plotted by the UI's Plots tab over
partitions (drifted share, realized and estimated error side by side with the reference error,
prediction PSI...).
The newest partition's event, the asset's latest, also carries the run's summary, in keys named as
the run's (`run_partitions`, `drifted_partitions_in_run`...).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping, Sequence
from datetime import date, datetime
from typing import Any

import pandas as pd

from mlplatform.assets.common import Metadata, run_summary
from mlplatform.contracts import DriftVerdictMetadata, VerdictStatus

_VERDICT_KEYS = ("drifted", "status", "reason", "change_point")  # written through DriftVerdictMetadata


def _plain(value: Any) -> Any:
    """A verdict field as a metadata value; None for nothing to show (None, NaN)."""
    if isinstance(value, datetime):  # pd.Timestamp too
        return value.isoformat(sep=" ")
    if isinstance(value, date):
        return value.isoformat()
    value = value.item() if hasattr(value, "item") and not isinstance(value, str) else value  # numpy
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    return value if isinstance(value, (bool, int, float, str)) else str(value)


def verdict_of(key: str, verdict: Mapping[str, Any]) -> DriftVerdictMetadata:
    status = verdict.get("status")
    if not status:  # report_partition always sets one: a row without is a bug, not a stable verdict
        raise ValueError(f"drift verdict row of partition {key} has no status: {dict(verdict)}")
    change_point = verdict.get("change_point")
    return DriftVerdictMetadata(
        bool(verdict["drifted"]),
        key,
        str(verdict["reason"]),
        VerdictStatus(status),
        str(change_point) if change_point else None,
    )


def partition_metadata(key: str, verdict: Mapping[str, Any], column_rows: int) -> Metadata:
    """One partition's verdict: every field of its `drift_verdict` row, and its per-column rows."""
    fields = {name: _plain(value) for name, value in verdict.items() if name not in _VERDICT_KEYS}
    return {
        **{name: value for name, value in fields.items() if value is not None},
        **verdict_of(key, verdict).to_metadata(),
        "dagster/row_count": column_rows,
    }


def partitions_metadata(
    keys: Sequence[str], verdicts: Sequence[Mapping[str, Any]], column_frames: Sequence[pd.DataFrame]
) -> dict[str, Metadata]:
    return {
        key: partition_metadata(key, verdict, len(columns))
        for key, verdict, columns in zip(keys, verdicts, column_frames, strict=True)
    }


def run_metadata(keys: Sequence[str], verdicts: Sequence[Mapping[str, Any]]) -> Metadata:
    """How many partitions of the run drifted, were stable or could not be judged."""
    statuses = Counter(verdict_of(k, v).status for k, v in zip(keys, verdicts, strict=True))
    return {
        **run_summary(keys),
        "drifted_partitions_in_run": statuses[VerdictStatus.DRIFTED],
        "stable_partitions_in_run": statuses[VerdictStatus.STABLE],
        "insufficient_data_partitions_in_run": statuses[VerdictStatus.INSUFFICIENT_DATA],
    }
