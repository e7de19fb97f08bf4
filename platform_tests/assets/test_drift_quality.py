"""Drift verdicts that mean something: importance weighting, estimated vs realized, delay, change point.

One binary home for the module, daily partitions of 10-minute rows (see `write_source`):
* days 0-41 trained on (`label` follows `x` and `kind`; `noise` has nothing to do with it);
* from day 42 `noise` is shifted by 3 standard deviations: drift in a feature the model ignores;
* from day 56 the concept changes (`label` follows -x): the champion's error steps up.
Predictions and drift reports cover days 30-66 in one ranged run. The tests check that the ignored
feature's drift does not drift the verdict, that the label-free estimate is there and close to the
realized metric while the concept holds, that the verdicts after the change are driven by realized
performance and carry the change point the drift sensor passes on as TRAIN_FROM_TAG, and that with
`labels.delay` a verdict is judged only on labels that have arrived.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Iterator, Sequence
from dataclasses import replace
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import dagster as dg
import duckdb
import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from mlplatform.contracts import TRAIN_FROM_TAG, DriftVerdictMetadata, Stage, VerdictStatus
from mlplatform.core.drift_performance import WindowPerformance, judge_verdict, mask_late_labels
from mlplatform.core.drift_windows import window_partitions
from mlplatform.dagster_adapter import ASSET_PARTITION_RANGE_END_TAG, ASSET_PARTITION_RANGE_START_TAG
from mlplatform.factory import build_dataset
from mlplatform.settings import load_settings
from mlplatform.specs.model import DatasetSpec
from platform_tests.assets.tiny import TinyDataset, TinySource, metadata_of

NAME = "quality"
FIRST = datetime(2024, 1, 1)
DAYS = 67
STEP = timedelta(minutes=10)
NOISE_SHIFT = FIRST + timedelta(days=42)  # 2024-02-12
CONCEPT_CHANGE = FIRST + timedelta(days=56)  # 2024-02-26
SCORED_FROM = FIRST + timedelta(days=30)
SHARE_THRESHOLD = 0.2  # 1 drifted column of the 4 voting ones (25%) would drift an unweighted verdict
DATA = (Stage.RAW, Stage.CLEAN, Stage.QUARANTINE, Stage.FEATURES)
TRAIN = (Stage.TRAINING_SET, Stage.MODEL, Stage.EVALUATION, Stage.REFERENCE_PROFILE)


def day(moment: datetime) -> str:
    return f"{moment:%Y-%m-%d}"


def write_source(path: Path, seed: int = 11) -> TinySource:
    rng = np.random.default_rng(seed)
    records = []
    for i in range(DAYS * 24 * 6):
        moment = FIRST + i * STEP
        kind = "b" if rng.random() < 0.5 else "a"
        x = rng.normal()
        noise = rng.normal() + (3.0 if moment >= NOISE_SHIFT else 0.0)
        slope = 2.0 if moment < CONCEPT_CHANGE else -1.0
        logit = slope * x + 1.5 * (kind == "b") - 0.75
        label = int(rng.random() < 1 / (1 + math.exp(-logit)))
        records.append(
            {
                "id": str(i + 1),
                "stamp": f"{moment:%Y-%m-%d %H:%M}",
                "kind": kind,
                "x": f"{x:.4f}",
                "noise": f"{noise:.4f}",
                "label": str(label),
            }
        )
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(records[0]))
        writer.writeheader()
        writer.writerows(records)
    return TinySource(path, records)


def spec_dict(source: Path, **sections: Any) -> dict[str, Any]:
    return {
        "name": NAME,
        "source": {"path": str(source)},
        "derived": {"ts": "strptime(stamp, '%Y-%m-%d %H:%M')"},
        "time_column": "ts",
        "partition_grain": "day",
        "columns": {
            "id": {"type": "int", "nullable": False, "unique": True},
            "stamp": {"type": "string", "nullable": False},
            "kind": {"type": "category", "nullable": False, "allowed": ["a", "b"]},
            "x": {"type": "float", "nullable": False},
            "noise": {"type": "float", "nullable": False},
            "label": {"type": "int", "nullable": False, "allowed": [0, 1]},
        },
        "drop": ["stamp", "id"],
        "target": {"column": "label", "task": "binary"},
        "features": {"calendar": []},
        "split": {"validation_fraction": 0.2, "test_fraction": 0.15},
        "drift": {"drifted_share_threshold": SHARE_THRESHOLD},
        "model": {
            "params": {"num_leaves": 7, "min_data_in_leaf": 40, "num_threads": 1},
            "num_boost_round": 60,
            "early_stopping_rounds": 10,
        },
        **sections,
    }


def dataset_for(home: TinyDataset, **sections: Any) -> TinyDataset:
    """The home with the spec changed by `sections` (same tables, same instance)."""
    spec = DatasetSpec.model_validate(spec_dict(home.source.path, **sections))
    return replace(home, spec=spec, built=build_dataset(spec, settings=home.settings))


def materialize_range(
    home: TinyDataset, stages: Sequence[Stage], first: datetime, last: datetime
) -> dg.ExecuteInProcessResult:
    return dg.materialize(
        home.assets,
        selection=[home.key(stage) for stage in stages],
        resources=home.resources(),
        instance=home.instance,
        tags={ASSET_PARTITION_RANGE_START_TAG: day(first), ASSET_PARTITION_RANGE_END_TAG: day(last)},
    )


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TinyDataset]:
    root = tmp_path_factory.mktemp("drift_quality")
    source = write_source(root / "quality.csv")
    spec = DatasetSpec.model_validate(spec_dict(source.path))
    settings = load_settings({"MLPLATFORM_HOME": str(root / "home")})
    built = build_dataset(spec, settings=settings)
    tiny = TinyDataset(spec, source, built, settings, root / "warehouse.duckdb", root / "mlflow")
    materialize_range(tiny, DATA, FIRST, NOISE_SHIFT - timedelta(days=1))
    tiny.materialize(TRAIN)
    materialize_range(tiny, DATA, NOISE_SHIFT, FIRST + timedelta(days=DAYS - 1))
    yield tiny


@pytest.fixture(scope="module")
def drift_run(home: TinyDataset) -> dg.ExecuteInProcessResult:
    last = FIRST + timedelta(days=DAYS - 1)
    return materialize_range(home, [Stage.PREDICTIONS, Stage.DRIFT_REPORT], SCORED_FROM, last)


def verdicts(home: TinyDataset, *names: str) -> dict[str, dict[str, Any]]:
    """The named columns of every stored verdict, by partition day."""
    rows = home.query(
        f"SELECT strftime(partition_start, '%Y-%m-%d'), {', '.join(names)} FROM {NAME}.drift_verdict ORDER BY 1"
    )
    return {row[0]: dict(zip(names, row[1:], strict=True)) for row in rows}


STABLE_COLUMNS = pd.DataFrame({"feature": ["x", "probability"], "drifted": [False, False]})


@pytest.mark.parametrize("delayed", [True, False])
def test_an_estimated_drop_votes_only_while_labels_are_delayed(delayed: bool) -> None:
    """No label has arrived (realized NaN); the estimate lost 72% of its test-window lift over random."""
    performance = WindowPerformance("roc_auc", 0.85, float("nan"), 0.86, 0.60, use_estimate=delayed)
    judged = judge_verdict(STABLE_COLUMNS, 0.3, 0.15, performance, None)
    assert judged.estimated_drop == pytest.approx(0.26 / 0.36) and judged.realized_drop is None
    assert judged.verdict.drifted == delayed
    assert judged.trigger == ("estimated" if delayed else None)
    if delayed:
        assert "estimated performance dropped 72.2% >= 15%" in judged.verdict.reason
    else:
        assert "estimated performance drop 72.2% (not voted: labels are not delayed)" in judged.verdict.reason


def test_a_realized_drop_is_the_trigger_named_when_both_drop() -> None:
    performance = WindowPerformance("roc_auc", 0.85, 0.6, 0.86, 0.6, use_estimate=True)
    judged = judge_verdict(STABLE_COLUMNS, 0.3, 0.15, performance, None)
    assert judged.trigger == "realized" and judged.verdict.drifted
    assert judged.verdict.reason.startswith("realized performance dropped 71.4% >= 15%")
    assert judged.verdict.reason.endswith("estimated performance dropped 72.2% too")


def test_late_labels_are_blanked_and_the_others_keep_their_type() -> None:
    spec = DatasetSpec.model_validate(spec_dict(Path("unused.csv")))
    times = pd.date_range("2024-02-01", periods=4, freq="D")
    frame = pd.DataFrame({"ts": times, "label": [0, 1, 1, 0]})
    masked = mask_late_labels(frame, spec, datetime(2024, 2, 3))
    assert masked["label"].tolist() == [0, 1, None, None] and isinstance(masked["label"].iloc[1], int)
    assert frame["label"].tolist() == [0, 1, 1, 0]  # a copy: the caller's rows are untouched


def test_the_drift_report_depends_on_the_partitions_the_delay_reaches_back_to() -> None:
    source = Path("unused.csv")
    assert window_partitions(DatasetSpec.model_validate(spec_dict(source))) == 7
    assert window_partitions(DatasetSpec.model_validate(spec_dict(source, labels={"delay": "3d"}))) == 10
    monthly = {"partition_grain": "month", "drift": {"window": "1mo"}}
    assert window_partitions(DatasetSpec.model_validate(spec_dict(source, **monthly))) == 1
    delayed = {**monthly, "labels": {"delay": "14d"}}
    assert window_partitions(DatasetSpec.model_validate(spec_dict(source, **delayed))) == 2


def test_the_reference_holds_importance_and_a_calibration(home: TinyDataset) -> None:
    result = home.materialize([Stage.REFERENCE_PROFILE])
    metadata = metadata_of(result, home.key(Stage.REFERENCE_PROFILE))
    shares = metadata["importance_gain_share"]
    assert set(shares) == {"kind", "x", "noise"} and sum(shares.values()) == pytest.approx(1, abs=1e-3)
    assert shares["noise"] < 0.1 < shares["kind"] < shares["x"]
    assert metadata["calibrated_on_validation_rows"] > 1000
    # The estimate on the test window sits next to the realized test metric.
    assert metadata["estimated_reference_error"] == pytest.approx(metadata["reference_error"], abs=0.04)


def test_an_ignored_features_drift_does_not_drift_the_verdict(
    home: TinyDataset, drift_run: dg.ExecuteInProcessResult
) -> None:
    stable_days = [day(NOISE_SHIFT + timedelta(days=d)) for d in range(7, 14)]  # windows all shifted
    by_day = verdicts(home, "status", "drifted_share", "importance_weighted", "reason")
    columns = home.query(
        f"SELECT strftime(partition_start, '%Y-%m-%d'), feature, drifted FROM {NAME}.drift_report "
        "WHERE role != 'target'"
    )
    for partition in stable_days:
        judged = {feature: drifted for d, feature, drifted in columns if d == partition}
        assert judged["noise"] and sum(judged.values()) / len(judged) >= SHARE_THRESHOLD, judged
        verdict = by_day[partition]
        assert verdict["status"] == VerdictStatus.STABLE, verdict
        assert verdict["importance_weighted"] and verdict["drifted_share"] < SHARE_THRESHOLD
        assert "importance-weighted" in verdict["reason"] and "noise (weight" in verdict["reason"]


def test_the_estimate_is_there_and_close_to_the_realized_metric_while_the_concept_holds(
    home: TinyDataset, drift_run: dg.ExecuteInProcessResult
) -> None:
    by_day = verdicts(home, "metric", "realized_error", "estimated_error", "estimated_reference")
    before_change = [
        v for d, v in by_day.items() if day(SCORED_FROM + timedelta(days=7)) <= d < day(CONCEPT_CHANGE)
    ]
    assert len(before_change) == 19 and all(v["metric"] == "roc_auc" for v in before_change)
    gaps = [abs(v["estimated_error"] - v["realized_error"]) for v in before_change]
    assert np.mean(gaps) <= 0.02 and max(gaps) <= 0.04, gaps
    after = by_day[day(FIRST + timedelta(days=DAYS - 1))]
    # Concept drift: the estimate cannot see it (the probabilities look as before), the labels do.
    assert after["estimated_error"] - after["realized_error"] > 0.2, after


def test_a_performance_driven_verdict_carries_the_change_point_to_the_sensors_request(
    home: TinyDataset, drift_run: dg.ExecuteInProcessResult
) -> None:
    by_day = verdicts(home, "status", "performance_trigger", "change_point", "partition_error", "reason")
    last = day(FIRST + timedelta(days=DAYS - 1))
    latest = by_day[last]
    assert latest["status"] == VerdictStatus.DRIFTED and latest["performance_trigger"] == "realized"
    assert latest["change_point"] == CONCEPT_CHANGE.isoformat(), latest
    assert "realized performance dropped" in latest["reason"] and "change point" in latest["reason"]
    assert all(v["change_point"] is None for d, v in by_day.items() if d < day(CONCEPT_CHANGE))
    # Each verdict judged on the champion's predictions has its partition's own error.
    errors = [v["partition_error"] for d, v in by_day.items() if d >= day(SCORED_FROM + timedelta(days=7))]
    assert len(errors) == DAYS - 37 and all(e is not None for e in errors)
    event = metadata_of(drift_run, home.key(Stage.DRIFT_REPORT))  # the newest partition's
    read = DriftVerdictMetadata.from_metadata(event)
    assert read is not None and read.verdict_partition == last and read.change_point == latest["change_point"]

    sensor = next(s for s in home.built.automation.sensors if s.name == f"{NAME}__drift_sensor")
    result = sensor(dg.build_sensor_context(instance=home.instance))
    [request] = result.run_requests
    assert request.tags[TRAIN_FROM_TAG] == CONCEPT_CHANGE.isoformat()


def _flip_labels(home: TinyDataset, start: datetime, end: datetime) -> None:
    with duckdb.connect(str(home.warehouse_path)) as conn:
        conn.execute(f"UPDATE {NAME}.features SET label = 1 - label WHERE ts >= ? AND ts < ?", [start, end])


def _judged(home: TinyDataset, partition: datetime) -> dict[str, Any]:
    result = home.materialize([Stage.DRIFT_REPORT], partition_key=day(partition))
    names = (
        "realized_error",
        "realized_start",
        "realized_end",
        "partition_error",
        "estimated_error",
        "reason",
    )
    stored = verdicts(home, *names)[day(partition)]
    target = home.query(
        f"SELECT psi, n_current FROM {NAME}.drift_report WHERE role = 'target' AND partition_start = ?",
        [partition],
    )
    return {**stored, "target": target, "event": metadata_of(result, home.key(Stage.DRIFT_REPORT))}


def _realized_auc(home: TinyDataset, start: datetime, end: datetime) -> float:
    rows = home.query(
        f"SELECT f.label, p.probability FROM {NAME}.features f JOIN {NAME}.predictions p USING (ts) "
        "WHERE f.ts >= ? AND f.ts < ?",
        [start, end],
    )
    return float(roc_auc_score([r[0] for r in rows], [r[1] for r in rows]))


def test_with_labels_delay_a_verdict_never_reads_labels_that_have_not_arrived(
    home: TinyDataset, drift_run: dg.ExecuteInProcessResult
) -> None:
    partition = NOISE_SHIFT + timedelta(days=3)
    window_end = partition + timedelta(days=1)
    known_before = window_end - timedelta(days=3)
    delayed = dataset_for(home, labels={"delay": "3d"})
    plain = dataset_for(home)
    seen = _judged(delayed, partition)
    assert (seen["realized_start"], seen["realized_end"]) == (known_before - timedelta(days=7), known_before)
    assert seen["realized_error"] == pytest.approx(
        _realized_auc(home, known_before - timedelta(days=7), known_before)
    )
    assert seen["partition_error"] is None  # the partition's own day is all newer than window end - 3d
    assert seen["event"]["realized_error"] == pytest.approx(seen["realized_error"])
    before_flip = _judged(plain, partition)["realized_error"]
    _flip_labels(home, known_before, window_end)  # the labels a 3d delay has not delivered yet
    try:
        flipped = _judged(delayed, partition)
        for name in ("realized_error", "partition_error", "estimated_error", "target", "reason"):
            assert flipped[name] == seen[name], name
        # Without the delay the same flip is seen: the labels are there to be read.
        assert abs(_judged(plain, partition)["realized_error"] - before_flip) > 0.05
    finally:
        _flip_labels(home, known_before, window_end)
        _judged(plain, partition)


def test_with_labels_delay_the_change_point_is_located_on_the_labels_arrived_since(
    home: TinyDataset, drift_run: dg.ExecuteInProcessResult
) -> None:
    # A 3-day delay on daily partitions: no partition's own labels have arrived when it is judged, so
    # every stored partition error is empty; the change point must come from the labels arrived since.
    delayed = dataset_for(home, labels={"delay": "3d"})
    last = FIRST + timedelta(days=DAYS - 1)
    try:
        materialize_range(delayed, [Stage.DRIFT_REPORT], SCORED_FROM, last)
        by_day = verdicts(home, "performance_trigger", "change_point", "partition_error", "reason")
        assert all(v["partition_error"] is None for v in by_day.values())
        latest = by_day[day(last)]
        assert latest["performance_trigger"] == "realized", latest
        assert latest["change_point"] == CONCEPT_CHANGE.isoformat(), latest
        # Located only on labels older than the window's end minus the delay: none after day 63.
        assert "over 8 after" in latest["reason"], latest["reason"]
    finally:
        materialize_range(home, [Stage.DRIFT_REPORT], SCORED_FROM, last)
