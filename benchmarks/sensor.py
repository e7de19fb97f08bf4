"""Sensor benchmark: one tick of the real drift sensor with 50 features and a 1M-row reference.

    python -m benchmarks.sensor --features 50 --reference-rows 1000000 --partitions 14 --repeats 20

Builds a dataset `sensor_bench` of `--features` numeric features (the second half shifted by one standard
deviation from the middle partition on), stores the features, predictions and the reference profile of a
`--reference-rows`-row training window in a temp platform home, then materializes the real
`sensor_bench/drift_report` asset for each partition through the Dagster instance (one run per
partition, as the new-data sensor would launch them). The drift sensor is then evaluated as the
daemon does (`build_sensor_context` on that instance): a first tick with no cursor, which reads every
verdict, and steady-state ticks with the cursor it returned, which find nothing new.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
import warnings
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from benchmarks.common import machine_info, median, print_machine, print_table

DATASET = "sensor_bench"
QUIET = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}
START = date(2024, 1, 1)


def spec_dict(n_features: int, landing: Path) -> dict[str, Any]:
    columns: dict[str, Any] = {"ts": {"type": "timestamp", "nullable": False}}
    columns |= {f"f{i:02d}": {"type": "float"} for i in range(n_features)}
    columns["y"] = {"type": "int", "allowed": [0, 1]}
    return {
        "name": DATASET,
        "source": {"path": str(landing / "*.parquet"), "format": "parquet"},
        "time_column": "ts",
        "columns": columns,
        "target": {"column": "y", "task": "binary"},
        "features": {"calendar": []},
    }


def make_rows(
    n_rows: int, n_features: int, first_day: date, days: int, shift_from: date | None, seed: int
) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    seconds = np.sort(rng.integers(0, days * 86_400, n_rows))
    ts = pd.Timestamp(first_day) + pd.to_timedelta(seconds, unit="s")
    frame = pd.DataFrame({"ts": ts})
    values = rng.normal(size=(n_rows, n_features))
    if shift_from is not None:
        # The second half of the features moves by one standard deviation: a clear drift verdict.
        shifted = np.asarray(ts >= pd.Timestamp(shift_from))
        values[np.ix_(shifted, np.arange(n_features // 2, n_features))] += 1.0
    for i in range(n_features):
        frame[f"f{i:02d}"] = values[:, i]
    frame["y"] = (rng.random(n_rows) < 1 / (1 + np.exp(-(values[:, 0] - 3)))).astype(np.int64)
    return frame


def prepare_home(
    home: Path, n_features: int, reference_rows: int, partitions: int, rows_per_partition: int
) -> tuple[Any, Any]:
    """Warehouse tables and spec for the drift report; returns (definitions, spec)."""
    import duckdb
    import yaml

    from mlplatform.core.drift_reference import build_reference, monitored_columns
    from mlplatform.factory import build_definitions
    from mlplatform.home import prepare_home as prepare_platform_home
    from mlplatform.settings import load_settings
    from mlplatform.specs.loader import parse_spec

    landing, spec_dir = home / "landing", home / "specs"
    landing.mkdir(parents=True)
    spec_dir.mkdir()
    (spec_dir / f"{DATASET}.yaml").write_text(yaml.safe_dump(spec_dict(n_features, landing)))
    os.environ.update(
        MLPLATFORM_HOME=str(home), DAGSTER_HOME=str(home / "dagster"), MLPLATFORM_AUTOMATION="none"
    )
    os.environ["MLPLATFORM_SPECS"] = str(spec_dir)
    prepare_platform_home(load_settings())
    spec = parse_spec(spec_dir / f"{DATASET}.yaml")

    reference_days = 30
    current_start = START + timedelta(days=reference_days)
    train = make_rows(reference_rows, n_features, START, reference_days, None, seed=1)
    current = make_rows(
        rows_per_partition * partitions,
        n_features,
        current_start,
        partitions,
        current_start + timedelta(days=partitions // 2),
        seed=2,  # drift from the middle partition
    )
    features = pd.concat([train, current], ignore_index=True)
    for day, part in features.groupby(features["ts"].dt.date):
        part.to_parquet(landing / f"{day}.parquet")  # the source the spec's partitions are read from
    # Stand-in for a champion's scores: no model is trained, the sensor never looks at one.
    scores = 1 / (1 + np.exp(-(features["f00"].to_numpy() - 3)))
    predictions = features[["ts"]].assign(
        prediction=(scores >= 0.5).astype(np.int64), probability=scores, model_version=np.int64(1)
    )
    train_outputs = predictions.iloc[: len(train)][["prediction", "probability"]]
    columns = monitored_columns(spec, [*train.columns, "prediction", "probability"])
    reference = build_reference(pd.concat([train, train_outputs], axis=1), columns, ("roc_auc", 0.8), spec)
    reference = reference.assign(model_version=1, built_at=datetime.now())
    database = Path(load_settings().warehouse_for(DATASET))
    database.parent.mkdir(parents=True, exist_ok=True)
    with duckdb.connect(str(database)) as conn:
        conn.execute(f"CREATE SCHEMA {DATASET}")
        for table, frame in (
            ("features", features),
            ("predictions", predictions),
            ("reference_profile", reference),
        ):
            conn.register("_frame", frame)
            conn.execute(f"CREATE TABLE {DATASET}.{table} AS SELECT * FROM _frame")
            conn.unregister("_frame")
    return build_definitions(), spec


def materialize_drift_reports(defs: Any, partitions: int) -> list[float]:
    """One drift_report run per partition after the reference window; returns each run's seconds."""
    import dagster as dg

    job = defs.resolve_implicit_global_asset_job_def()
    key = dg.AssetKey([DATASET, "drift_report"])
    instance = dg.DagsterInstance.get()
    seconds = []
    for offset in range(partitions):
        partition = (START + timedelta(days=30 + offset)).isoformat()
        started = time.perf_counter()
        result = job.execute_in_process(
            instance=instance, asset_selection=[key], partition_key=partition, run_config=QUIET
        )
        seconds.append(time.perf_counter() - started)
        assert result.success, f"drift_report {partition} failed"
    return seconds


def time_ticks(defs: Any, repeats: int) -> tuple[list[float], list[float], Any]:
    import dagster as dg

    with warnings.catch_warnings():  # "get_sensor_def will not resolve resources": it needs none
        warnings.simplefilter("ignore", UserWarning)
        sensor = defs.get_sensor_def(f"{DATASET}__drift_sensor")
    instance = dg.DagsterInstance.get()
    first, steady, result = [], [], None
    for _ in range(repeats):
        started = time.perf_counter()
        result = sensor(dg.build_sensor_context(instance=instance, cursor=None, definitions=defs))
        first.append(time.perf_counter() - started)
        cursor = result.cursor
        started = time.perf_counter()
        sensor(dg.build_sensor_context(instance=instance, cursor=cursor, definitions=defs))
        steady.append(time.perf_counter() - started)
    return first, steady, result


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--features", type=int, default=50)
    parser.add_argument("--reference-rows", type=int, default=1_000_000)
    parser.add_argument("--partitions", type=int, default=14)
    parser.add_argument("--rows-per-partition", type=int, default=20_000)
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args(argv)
    print_machine(machine_info())
    with tempfile.TemporaryDirectory(prefix="mlplatform-sensor-bench-") as work:
        started = time.perf_counter()
        defs, _ = prepare_home(
            Path(work) / "home", args.features, args.reference_rows, args.partitions, args.rows_per_partition
        )
        prepared = time.perf_counter() - started
        report_seconds = materialize_drift_reports(defs, args.partitions)
        first, steady, result = time_ticks(defs, args.repeats)
    requested = [request.run_key for request in result.run_requests or []]
    summary = {
        "features": args.features,
        "reference_rows": args.reference_rows,
        "partitions": args.partitions,
        "prepare_seconds": prepared,
        "drift_report_run_seconds": median(report_seconds),
        "first_tick_seconds": median(first),
        "steady_tick_seconds": median(steady),
        "max_tick_seconds": max(first + steady),
        "requested": requested,
    }
    print(f"\n== drift sensor tick: {args.features} features, {args.reference_rows:,}-row reference ==")
    print_table(
        ("what", "seconds (median)"),
        [
            (
                f"drift_report run, one partition of {args.rows_per_partition:,} rows (context)",
                f"{summary['drift_report_run_seconds']:.2f}",
            ),
            (
                f"sensor tick, no cursor (reads {args.partitions} verdicts)",
                f"{summary['first_tick_seconds']:.4f}",
            ),
            ("sensor tick, steady state (cursor, nothing new)", f"{summary['steady_tick_seconds']:.4f}"),
            (f"slowest of {2 * args.repeats} ticks", f"{summary['max_tick_seconds']:.4f}"),
        ],
    )
    print(f"first tick requested: {requested or 'nothing'}")
    return summary


if __name__ == "__main__":
    main()
