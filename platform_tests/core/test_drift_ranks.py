"""A binary window's ROC AUC and CBPE estimate from its partitions equal the ones of its rows."""

from __future__ import annotations

import math
from datetime import datetime, timedelta

import duckdb
import numpy as np
import pandas as pd
import pytest

from mlplatform.core.drift_performance import champion_facts
from mlplatform.core.drift_ranks import PairCounts, ordered_pairs, scores_by_label
from mlplatform.core.drift_reference import MonitoredColumns, build_reference, read_reference
from mlplatform.core.drift_summaries import SummaryPlan
from mlplatform.core.drift_summary_store import load_partitions
from mlplatform.core.drift_summary_windows import first_needed, report_summarised
from mlplatform.core.drift_windows import report_partition, window_rows, window_start
from mlplatform.core.metrics import compute_metric
from mlplatform.specs.model import DatasetSpec

DAY = timedelta(days=1)
FIRST = datetime(2024, 1, 1)


def _parts(rng: np.random.Generator, sizes: list[int]) -> list[tuple[np.ndarray, np.ndarray]]:
    """(labels, scores) per partition; scores rounded so that many tie, within and across partitions."""
    return [(rng.integers(0, 2, n), np.round(rng.random(n), 2)) for n in sizes]


def test_roc_auc_from_partition_pairs_equals_the_metric_on_the_rows() -> None:
    rng = np.random.default_rng(5)
    parts = _parts(rng, [400, 1, 250, 0, 90])
    pairs = PairCounts()
    keyed = [(i, scores_by_label(pd.Series(y), s)) for i, (y, s) in enumerate(parts)]
    labels = np.concatenate([y for y, _ in parts])
    scores = np.concatenate([s for _, s in parts])
    assert pairs.roc_auc(keyed) == pytest.approx(
        compute_metric("binary", "roc_auc", labels, scores, [0, 1]), abs=1e-12
    )
    # A later window of some of the same partitions reuses their pair counts and is right too.
    later = [keyed[2], keyed[4]]
    y = np.concatenate([parts[2][0], parts[4][0]])
    s = np.concatenate([parts[2][1], parts[4][1]])
    assert pairs.roc_auc(later) == pytest.approx(compute_metric("binary", "roc_auc", y, s, [0, 1]), abs=1e-12)


def test_ordered_pairs_count_ties_as_one_half() -> None:
    assert ordered_pairs(np.array([0.5, 0.9]), np.array([0.1, 0.5, 0.5])) == 1 + 1.0 + 3
    assert ordered_pairs(np.array([]), np.array([0.1])) == 0.0


def test_roc_auc_is_nan_unless_two_labels_are_present_and_unlabelled_rows_are_left_out() -> None:
    ones = scores_by_label(pd.Series([1, 1, None]), np.array([0.2, 0.4, 0.9]))
    assert list(ones) == [1.0] and len(ones[1.0]) == 2
    assert math.isnan(PairCounts().roc_auc([("a", ones)]))
    zeros = scores_by_label(pd.Series([0, 0]), np.array([0.3, 0.1]))
    assert PairCounts().roc_auc([("a", ones), ("b", zeros)]) == pytest.approx(0.75)


def _spec() -> DatasetSpec:
    return DatasetSpec.model_validate(
        {
            "name": "toy",
            "source": {"path": "unused.parquet"},
            "time_column": "ts",
            "entity_key": "card",
            "columns": {"ts": {"type": "timestamp"}, "card": {"type": "string"}, "fraud": {"type": "int"}},
            "target": {"column": "fraud", "task": "binary"},
            "drift": {"window": "3d", "min_rows": 10},
        }
    )


def _warehouse(rng: np.random.Generator) -> duckdb.DuckDBPyConnection:
    n = 10 * 400
    times = [
        FIRST + timedelta(days=i // 400, seconds=int(s)) for i, s in enumerate(rng.integers(0, 86_400, n))
    ]
    signal = rng.normal(np.where(np.arange(n) >= 7 * 400, 0.8, 0.0), 1.0)  # the last days drift
    probability = np.round(1 / (1 + np.exp(-signal)), 3)  # rounded: ties across partitions
    features = pd.DataFrame(
        {
            "ts": pd.to_datetime(times),
            "card": [f"c{i}" for i in range(n)],
            "signal": signal,
            "fraud": (rng.random(n) < probability * 0.6).astype(np.int64),
        }
    )
    predictions = features[["ts", "card"]].assign(
        prediction=(probability >= 0.5).astype(np.int64), probability=probability, model_version=3
    )
    conn = duckdb.connect()
    conn.execute("CREATE SCHEMA toy")
    for name, frame in (("features", features), ("predictions", predictions)):
        conn.register("frame", frame)
        conn.execute(f"CREATE TABLE toy.{name} AS SELECT * FROM frame")
        conn.unregister("frame")
    return conn


def test_a_binary_run_from_summaries_gives_the_realized_and_estimated_errors_of_the_rows() -> None:
    spec, conn = _spec(), _warehouse(np.random.default_rng(2))
    rows = window_rows(conn, spec, FIRST, FIRST + 10 * DAY)
    training, validation = rows[rows["ts"] < FIRST + 3 * DAY], rows[(rows["ts"] >= FIRST + 3 * DAY)]
    facts, why_not = champion_facts(
        "binary", {"signal": 1.0}, (validation["fraud"], validation), validation, [0, 1], None
    )
    assert why_not is None and facts.calibration is not None
    columns = MonitoredColumns(
        ("signal", "fraud", "probability"),
        ("prediction",),
        {"signal": "feature", "fraud": "target", "probability": "prediction", "prediction": "prediction"},
    )
    reference = read_reference(build_reference(training, columns, ("roc_auc", 0.7), champion=facts))
    run = (FIRST + 2 * DAY, FIRST + 10 * DAY)
    plan = SummaryPlan.of(reference.profile)
    loaded = load_partitions(conn, spec, plan, 3, first_needed(spec, run[0] + DAY), run)
    pairs = PairCounts()
    for day in [run[0] + i * DAY for i in range(8)]:
        end = day + DAY
        bounds = (day, window_start(spec, end), end)
        summarised = report_summarised(spec, reference, plan, 3, loaded.parts, bounds, lambda: "", pairs)[1]
        window = window_rows(conn, spec, first_needed(spec, end), end)
        direct = report_partition(spec, reference, 3, window, *bounds)[1]
        for key in ("realized_error", "estimated_error", "partition_error", "status", "reason"):
            assert summarised[key] == pytest.approx(direct[key], rel=1e-12), key
        assert summarised["estimated_error"] is not None and not math.isnan(summarised["realized_error"])
