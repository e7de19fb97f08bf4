"""Drift reports from stored partition summaries against reports from the rows (core.drift_windows)."""

from __future__ import annotations

from datetime import datetime, timedelta

import duckdb
import numpy as np
import pandas as pd
import pytest

from mlplatform.contracts import Table
from mlplatform.core.drift_ranks import PairCounts
from mlplatform.core.drift_reference import MonitoredColumns, Reference, build_reference, read_reference
from mlplatform.core.drift_summaries import SummaryPlan
from mlplatform.core.drift_summary_store import fingerprints, load_partitions, rows_and_fingerprints
from mlplatform.core.drift_summary_windows import first_needed, report_summarised, windows_on_partitions
from mlplatform.core.drift_windows import report_partition, window_rows, window_start
from mlplatform.core.warehouse import replace_window
from mlplatform.specs.model import DatasetSpec

DAY = timedelta(days=1)
FIRST = datetime(2024, 1, 1)
COMPARED = ("status", "reason", "n_rows", "drifted_columns", "outputs_judged", "prediction_psi")


def _spec(window: str = "3d") -> DatasetSpec:
    return DatasetSpec.model_validate(
        {
            "name": "toy",
            "source": {"path": "unused.parquet"},
            "time_column": "ts",
            "entity_key": "store",
            "columns": {"ts": {"type": "timestamp"}, "store": {"type": "string"}, "sales": {"type": "float"}},
            "target": {"column": "sales", "task": "regression"},
            "drift": {"window": window, "min_rows": 10},
        }
    )


def _features(rng: np.random.Generator, days: int, per_day: int = 300) -> pd.DataFrame:
    times = [
        FIRST + timedelta(days=d, seconds=int(s))
        for d in range(days)
        for s in rng.integers(0, 86_400, per_day)
    ]
    n = len(times)
    shift = np.where(np.array(times) >= FIRST + 7 * DAY, 1.5, 0.0)  # the last days drift
    lag = rng.normal(shift, 1.0, n)
    return pd.DataFrame(
        {
            "ts": pd.to_datetime(times),
            "store": [f"s{i}" for i in range(n)],
            "lag_1": lag,
            "kind": rng.choice(["x", "y", "z"], n),
            "sales": 10 * lag + rng.normal(0, 1, n),
        }
    )


@pytest.fixture
def warehouse() -> tuple[duckdb.DuckDBPyConnection, Reference]:
    conn = duckdb.connect()
    rng = np.random.default_rng(11)
    features = _features(rng, 10)
    scored = features[["ts", "store"]].assign(
        prediction=10 * features["lag_1"], model_version=np.where(rng.random(len(features)) < 0.9, 3, 2)
    )
    conn.execute("CREATE SCHEMA toy")
    conn.register("f", features)
    conn.register("p", scored)
    conn.execute("CREATE TABLE toy.features AS SELECT * FROM f")
    conn.execute("CREATE TABLE toy.predictions AS SELECT * FROM p")
    columns = MonitoredColumns(
        ("lag_1", "sales", "prediction"),
        ("kind",),
        {"lag_1": "feature", "kind": "feature", "sales": "target", "prediction": "prediction"},
    )
    training = features[features["ts"] < FIRST + 4 * DAY].assign(prediction=lambda f: 10 * f["lag_1"])
    return conn, read_reference(build_reference(training, columns, ("rmse", 1.0)))


def _from_rows(
    conn: duckdb.DuckDBPyConnection, spec: DatasetSpec, reference: Reference, day: datetime
) -> dict:
    end = day + DAY
    rows = window_rows(conn, spec, first_needed(spec, end), end)
    return report_partition(spec, reference, 3, rows, day, window_start(spec, end), end)[1]


def _summarised(
    conn: duckdb.DuckDBPyConnection, spec: DatasetSpec, reference: Reference, run: tuple[datetime, datetime]
) -> tuple[list[dict], int]:
    """Verdict rows of the run's days from summaries, stored afterwards; and how many rows were read."""
    plan = SummaryPlan.of(reference.profile)
    loaded = load_partitions(conn, spec, plan, 3, first_needed(spec, run[0] + DAY), run)
    conn.register("summaries", loaded.to_store)
    replace_window(
        conn,
        "toy",
        Table.DRIFT_SUMMARY,
        "SELECT * FROM summaries",
        "partition_start",
        min(loaded.parts),
        run[1],
    )
    days = [run[0] + i * DAY for i in range((run[1] - run[0]) // DAY)]
    pairs = PairCounts()
    verdicts = [
        report_summarised(
            spec,
            reference,
            plan,
            3,
            loaded.parts,
            (d, window_start(spec, d + DAY), d + DAY),
            lambda: "",
            pairs,
        )[1]
        for d in days
    ]
    return verdicts, len(loaded.times)


def _assert_same(summarised: dict, direct: dict) -> None:
    for key in COMPARED:
        assert summarised[key] == pytest.approx(direct[key], rel=1e-9), key
    for key in ("realized_error", "partition_error", "drifted_share"):
        assert summarised[key] == pytest.approx(direct[key], rel=1e-9, nan_ok=True), key


def test_a_run_judged_from_summaries_gives_the_verdicts_judged_from_rows(warehouse) -> None:
    conn, reference = warehouse
    spec = _spec()
    assert windows_on_partitions(spec, [FIRST + 10 * DAY]) and not windows_on_partitions(
        _spec("36h"), [FIRST + DAY]
    )
    verdicts, _ = _summarised(conn, spec, reference, (FIRST, FIRST + 10 * DAY))
    for index, verdict in enumerate(verdicts):
        _assert_same(verdict, _from_rows(conn, spec, reference, FIRST + index * DAY))
    # lag_1 shifts from the 8th day on (the prediction drifts throughout: a tenth of it is by version 2)
    assert "lag_1" not in verdicts[0]["drifted_columns"] and "lag_1" in verdicts[-1]["drifted_columns"]


def test_a_later_run_merges_the_stored_summaries_unless_their_rows_changed(warehouse) -> None:
    conn, reference = warehouse
    spec = _spec()
    _summarised(conn, spec, reference, (FIRST, FIRST + 9 * DAY))
    last = FIRST + 9 * DAY
    (verdict,), rows_read = _summarised(conn, spec, reference, (last, last + DAY))
    assert rows_read == 300  # the two earlier days of its window came from their stored summaries
    _assert_same(verdict, _from_rows(conn, spec, reference, last))
    # Features re-materialized for an earlier day since: its summary no longer holds and is recomputed.
    conn.execute("UPDATE toy.features SET sales = sales + 3 WHERE ts >= ? AND ts < ?", [last - DAY, last])
    (changed,), rows_read = _summarised(conn, spec, reference, (last, last + DAY))
    assert rows_read == 600
    _assert_same(changed, _from_rows(conn, spec, reference, last))
    assert changed["realized_error"] != pytest.approx(verdict["realized_error"])


def test_fingerprints_from_the_rows_read_equal_the_sql_ones(warehouse) -> None:
    """A run's own partitions are fingerprinted from the rows it reads (no second scan); a later run
    checks them with the SQL of `fingerprints`: both must give the same strings."""
    conn, _ = warehouse
    spec, starts = _spec(), [FIRST + i * DAY for i in range(10)]
    columns = ["ts", "lag_1", "kind", "sales"]
    rows, part, prints = rows_and_fingerprints(conn, spec, columns, starts, FIRST + 10 * DAY)
    assert prints == fingerprints(conn, spec, columns, FIRST, FIRST + 10 * DAY)
    assert len(prints) == 10 and len(rows) == 3000 and "_row_hash" not in rows
    assert np.bincount(part).tolist() == [300] * 10
