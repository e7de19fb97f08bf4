"""The bare baseline: the pipeline's work as one plain script, without the platform.

No Dagster, no Pandera, no MLflow, no metadata or reports: DuckDB loads the same Parquet files and
filters rows that break the spec's rules, the platform's own feature SQL (`core.features.features_sql`,
plain SQL text) builds the features, LightGBM trains with the same parameters, rounds and early
stopping on the same time split, the same metric function scores the test window, every row is scored
into a DuckDB table, and the same drift statistics (`core.drift_reference`, pure functions) judge each day's
trailing window against a profile of the training rows. So the ratio platform / bare is what the
platform's orchestration, validation, lineage, tracking and storage cost on top of the work itself.

    python -m benchmarks.bare --spec SPEC.yaml --db /tmp/bare.duckdb --result bare.json
"""

from __future__ import annotations

import argparse
import resource
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb
import lightgbm as lgb
import numpy as np
import pandas as pd

from mlplatform.core.drift_reference import build_reference, judge_window, monitored_columns, primary_error
from mlplatform.core.features import feature_names, features_sql
from mlplatform.core.metrics import compute_metrics
from mlplatform.core.source import source_files
from mlplatform.core.splits import assign_split, time_split
from mlplatform.core.sql import DUCKDB_TYPES, column_types, quote_ident, quote_literal, total_order_sql
from mlplatform.core.training import available_cpus, lightgbm_params
from mlplatform.specs.loader import parse_spec
from mlplatform.specs.model import DatasetSpec, parse_duration


class StageTimer:
    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self.intervals: dict[str, tuple[float, float]] = {}

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        started, wall = time.perf_counter(), time.time()
        yield
        self.seconds[name] = time.perf_counter() - started
        self.intervals[name] = (wall, time.time())


def valid_rows_sql(spec: DatasetSpec, relation: str) -> str:
    """The spec's columns cast to their types, keeping rows that pass nullability, ranges and allowed."""
    casts, rules = [], []
    for name, column in spec.columns.items():
        ident = quote_ident(name)
        casts.append(f"CAST({ident} AS {DUCKDB_TYPES[column.type]}) AS {ident}")
        if not column.nullable:
            rules.append(f"{ident} IS NOT NULL")
        if column.min is not None:
            rules.append(f"({ident} IS NULL OR {ident} >= {column.min})")
        if column.max is not None:
            rules.append(f"({ident} IS NULL OR {ident} <= {column.max})")
        if column.allowed is not None:
            allowed = ", ".join(quote_literal(v) if isinstance(v, str) else str(v) for v in column.allowed)
            rules.append(f"({ident} IS NULL OR {ident} IN ({allowed}))")
    where = " AND ".join(rules) or "true"
    return f"SELECT {', '.join(casts)} FROM {relation} WHERE {where}"


def as_model_input(frame: pd.DataFrame, columns: list[str], categorical: list[str]) -> pd.DataFrame:
    return pd.DataFrame(
        {c: frame[c].astype("category") if c in categorical else frame[c].astype("float64") for c in columns}
    )


def train(
    spec: DatasetSpec, frame: pd.DataFrame, features: list[str], categorical: list[str]
) -> tuple[lgb.Booster, dict[str, pd.DataFrame]]:
    windows = time_split(frame, spec.time_column, spec.split.validation_fraction, spec.split.test_fraction)
    split = assign_split(frame, spec.time_column, windows)
    parts = {name: frame[split == name] for name in ("train", "validation", "test")}
    target = spec.target.column
    params = lightgbm_params(spec.target.task, None, spec.model.params, available_cpus())
    train_set = lgb.Dataset(
        as_model_input(parts["train"], features, categorical),
        label=parts["train"][target].to_numpy(),
        categorical_feature=categorical,
        free_raw_data=False,
    )
    # Validation categories must share the training levels, as the platform's prepare_features does.
    levels = {c: train_set.data[c].cat.categories for c in categorical}
    valid_input = as_model_input(parts["validation"], features, categorical)
    for column, categories in levels.items():
        valid_input[column] = pd.Categorical(valid_input[column].astype(object), categories=categories)
    valid_set = lgb.Dataset(valid_input, label=parts["validation"][target].to_numpy(), reference=train_set)
    booster = lgb.train(
        params,
        train_set,
        num_boost_round=spec.model.num_boost_round,
        valid_sets=[valid_set],
        callbacks=[lgb.early_stopping(spec.model.early_stopping_rounds, verbose=False)],
    )
    booster.levels = levels  # type: ignore[attr-defined]
    return booster, parts


def score(
    booster: lgb.Booster, frame: pd.DataFrame, features: list[str], categorical: list[str]
) -> np.ndarray:
    model_input = as_model_input(frame, features, categorical)
    for column, categories in booster.levels.items():  # type: ignore[attr-defined]
        model_input[column] = pd.Categorical(model_input[column].astype(object), categories=categories)
    return booster.predict(model_input, num_iteration=booster.best_iteration)


def run_bare(spec_path: Path, db_path: Path) -> dict[str, Any]:
    spec = parse_spec(spec_path)
    timer = StageTimer()
    files = source_files(spec)
    t, target = quote_ident(spec.time_column), spec.target.column
    with duckdb.connect(str(db_path)) as conn:
        with timer.stage("raw"):
            file_list = ", ".join(quote_literal(f) for f in files)
            conn.execute(f"CREATE TABLE raw AS SELECT * FROM read_parquet([{file_list}])")
        with timer.stage("clean"):
            conn.execute(f"CREATE TABLE clean AS {valid_rows_sql(spec, 'raw')}")
        with timer.stage("features"):
            first, last = conn.execute(f"SELECT min({t}), max({t}) FROM clean").fetchall()[0]
            start = datetime.combine(first.date(), datetime.min.time())
            end = datetime.combine(last.date(), datetime.min.time()) + timedelta(days=1)
            conn.execute(f"CREATE TABLE features AS {features_sql(spec, 'clean', start, end)}")
        with timer.stage("training_set"):
            # Ordered like the platform's training set: LightGBM's result depends on the row order.
            order = total_order_sql(spec.row_keys, list(column_types(conn, "features")))
            frame = conn.sql(
                f"SELECT * FROM features WHERE {quote_ident(target)} IS NOT NULL ORDER BY {order}"
            ).df()
        inputs = feature_names(spec)
        categorical = [
            c for c in inputs if c in spec.columns and spec.columns[c].type in ("string", "category")
        ]
        with timer.stage("model"):
            booster, parts = train(spec, frame, inputs, categorical)
        with timer.stage("evaluation"):
            test_scores = score(booster, parts["test"], inputs, categorical)
            metrics = compute_metrics(spec.target.task, parts["test"][target], test_scores)
        with timer.stage("predictions"):
            everything = conn.sql("SELECT * FROM features").df()
            keys = spec.row_keys
            scored = everything[keys].copy()
            scored["probability"] = score(booster, everything, inputs, categorical)
            scored["prediction"] = (scored["probability"] >= 0.5).astype(np.int64)
            conn.register("scored", scored)
            conn.execute("CREATE TABLE predictions AS SELECT * FROM scored")
            conn.unregister("scored")
        with timer.stage("reference_profile"):
            reference = monitoring_reference(spec, booster, parts, inputs, categorical)
        with timer.stage("drift_report"):
            drifted_days = drift_days(spec, reference, everything, scored, start, end)
    return {
        "stages": timer.seconds,
        "intervals": timer.intervals,
        "rows": {"features": len(everything), "training_set": len(frame)},
        "metrics": {f"test_{k}": v for k, v in metrics.items()} | {"best_iteration": booster.best_iteration},
        "drifted_days": drifted_days,
    }


def _with_outputs(frame: pd.DataFrame, probability: np.ndarray) -> pd.DataFrame:
    return frame.assign(probability=probability, prediction=(probability >= 0.5).astype(np.int64))


def monitoring_reference(
    spec: DatasetSpec,
    booster: lgb.Booster,
    parts: dict[str, pd.DataFrame],
    inputs: list[str],
    categorical: list[str],
) -> Any:
    from mlplatform.core.drift_reference import read_reference

    train_rows = _with_outputs(parts["train"], score(booster, parts["train"], inputs, categorical))
    test_outputs = _with_outputs(parts["test"], score(booster, parts["test"], inputs, categorical))
    performance = primary_error(spec.target.task, parts["test"][spec.target.column], test_outputs, [0, 1])
    columns = monitored_columns(spec, list(train_rows.columns))
    return read_reference(build_reference(train_rows, columns, performance, spec))


def drift_days(
    spec: DatasetSpec,
    reference: Any,
    features: pd.DataFrame,
    scored: pd.DataFrame,
    start: datetime,
    end: datetime,
) -> int:
    """Each day's trailing drift window judged against the reference; returns the drifted days."""
    rows = features.assign(
        probability=scored["probability"].to_numpy(), prediction=scored["prediction"].to_numpy()
    )
    times = rows[spec.time_column]
    window = parse_duration(spec.drift.window)
    drifted, day = 0, start
    while day < end:
        day_end = day + timedelta(days=1)
        in_window = rows[(times >= day_end - window) & (times < day_end)].reset_index(drop=True)
        drifted += judge_window(spec, reference, in_window).verdict.drifted
        day = day_end
    return drifted


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--spec", required=True, type=Path)
    parser.add_argument("--db", required=True, type=Path, help="DuckDB file to create (replaced)")
    parser.add_argument("--result", required=True, type=Path)
    args = parser.parse_args()
    from benchmarks.common import RssSampler, write_result

    args.db.unlink(missing_ok=True)
    with RssSampler() as sampler:
        payload = run_bare(args.spec, args.db)
    intervals = payload.pop("intervals")
    payload["stage_peak_rss_bytes"] = {name: sampler.peak_between(*span) for name, span in intervals.items()}
    payload["self_peak_rss_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    write_result(args.result, payload)


if __name__ == "__main__":
    main()
