"""Drift benchmark: the platform's drift statistics vs Evidently's DataDriftPreset on the same data.

    python -m benchmarks.drift --rows 1000000 --repeats 3      # needs the bench extra (evidently)

Generates transactions with covariate drift injected from `--drift-day` (amounts x1.6, country mix
shifted), builds the platform's features with its own SQL, takes the first `--reference-days` days as
the reference and each later day as one partition. Then, on exactly the same frames:
* platform: `core.drift_reference.build_reference` once (profile + natural-variability calibration, what
  the `reference_profile` asset stores), then `judge_window` per partition (what `drift_report` runs:
  PSI + KS + Wasserstein per numeric column, PSI + chi-square + Jensen-Shannon per categorical one);
* Evidently: one `Report([DataDriftPreset()])` per partition against the raw reference rows, with its
  defaults (normed Wasserstein for numeric, Jensen-Shannon for categorical columns at this size), and
  again with the KS test at p < 0.01.
Verdict agreement on the numeric columns is measured where both use the same test: KS at p < 0.01
(ours: KS p-value from the stored 101 quantiles) and Wasserstein / std >= 0.1 (ours from the same
quantiles). Times are medians over `--repeats`; the ratio is taken within each repeat.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb
import pandas as pd

from benchmarks.common import START, generate_landing, machine_info, median, print_machine, print_table
from mlplatform.core.drift import wasserstein_vs_quantiles
from mlplatform.core.drift_reference import (
    MonitoredColumns,
    build_reference,
    judge_window,
    monitored_columns,
    read_reference,
)
from mlplatform.core.features import features_sql
from mlplatform.core.sql import quote_literal
from mlplatform.datasets.synthetic import DriftInjection
from mlplatform.specs.loader import BUNDLED_SPECS_DIR, parse_spec
from mlplatform.specs.model import DatasetSpec

KS_P = 0.01  # the spec default drift.pvalue_threshold
WASSERSTEIN_NORMED = 0.1  # Evidently's default threshold for its default numeric test


@dataclass
class DriftData:
    spec: DatasetSpec
    columns: MonitoredColumns
    reference: pd.DataFrame
    partitions: dict[str, pd.DataFrame]


def build_data(
    rows: int, days: int, reference_days: int, drift_day: int, n_partitions: int, work: Path
) -> DriftData:
    drift_from = START + timedelta(days=drift_day)
    drift = DriftInjection(covariate_from=drift_from, amount_scale=1.6, country_mix_shift=0.5)
    files, _ = generate_landing(work / "landing", rows, days, seed=11, drift=drift)
    spec = parse_spec(BUNDLED_SPECS_DIR / "transactions.yaml")
    file_list = ", ".join(quote_literal(str(f)) for f in files)
    end = datetime.combine(START + timedelta(days=days), datetime.min.time())
    with duckdb.connect() as conn:
        conn.execute(f"CREATE TABLE clean AS SELECT * FROM read_parquet([{file_list}])")
        frame = conn.sql(features_sql(spec, "clean", datetime.combine(START, datetime.min.time()), end)).df()
    columns = monitored_columns(
        spec, [c for c in frame.columns if c != spec.target.column], with_prediction=False
    )
    keep = [spec.time_column, *columns.all]
    day = frame[spec.time_column].dt.floor("D")
    split = pd.Timestamp(START + timedelta(days=reference_days))
    later = frame[day >= split].groupby(day[day >= split])
    keys = sorted(later.groups)
    # Evenly spaced days after the reference, so stable days and drifted days are both among them.
    chosen = [
        keys[round(i * (len(keys) - 1) / max(1, n_partitions - 1))]
        for i in range(min(n_partitions, len(keys)))
    ]
    partitions = {str(key.date()): later.get_group(key)[keep].reset_index(drop=True) for key in chosen}
    return DriftData(spec, columns, frame.loc[day < split, keep].reset_index(drop=True), partitions)


def run_platform(data: DriftData) -> tuple[float, float, dict[str, pd.DataFrame]]:
    """(seconds for the reference, seconds for all partitions, per-partition column tables)."""
    started = time.perf_counter()
    reference = read_reference(build_reference(data.reference, data.columns, None, data.spec))
    built = time.perf_counter()
    tables = {
        key: judge_window(data.spec, reference, part, judge_outputs=False).columns
        for key, part in data.partitions.items()
    }
    return built - started, time.perf_counter() - built, tables


def run_evidently(data: DriftData, **preset: Any) -> tuple[float, dict[str, dict[str, float]]]:
    """(seconds for all partitions, partition -> column -> Evidently's drift value)."""
    from evidently import DataDefinition, Dataset, Report
    from evidently.presets import DataDriftPreset

    definition = DataDefinition(
        numerical_columns=list(data.columns.numeric), categorical_columns=list(data.columns.categorical)
    )
    reference = data.reference[data.columns.all]
    values: dict[str, dict[str, float]] = {}
    started = time.perf_counter()
    for key, part in data.partitions.items():
        report = Report([DataDriftPreset(columns=data.columns.all, **preset)])
        snapshot = report.run(
            Dataset.from_pandas(part[data.columns.all], data_definition=definition),
            Dataset.from_pandas(reference, data_definition=definition),
        )
        values[key] = {
            m["config"]["column"]: float(m["value"])
            for m in snapshot.dict()["metrics"]
            if m["config"].get("type", "").endswith("ValueDrift")
        }
    return time.perf_counter() - started, values


def our_same_test_verdicts(
    data: DriftData, tables: dict[str, pd.DataFrame]
) -> dict[str, dict[str, dict[str, bool]]]:
    """Per test, partition and numeric column: drifted by our statistics under Evidently's rule."""
    profile = build_reference(data.reference, data.columns, None)  # plain profile for the quantiles
    entries = read_reference(profile).profile.numeric
    ks, wasserstein = {}, {}
    for key, table in tables.items():
        p_values = dict(zip(table["feature"], table["p_value"], strict=True))
        ks[key] = {c: bool(p_values[c] <= KS_P) for c in data.columns.numeric}
        part = data.partitions[key]
        wasserstein[key] = {
            c: bool(
                wasserstein_vs_quantiles(entries[c].quantiles, part[c], normalise=False)
                / max(entries[c].std, 0.001)
                >= WASSERSTEIN_NORMED
            )
            for c in data.columns.numeric
        }
    return {"ks": ks, "wasserstein": wasserstein}


def agreement(
    ours: dict[str, dict[str, bool]], theirs: dict[str, dict[str, bool]]
) -> tuple[float, list[str], int]:
    pairs = [(key, column) for key in ours for column in ours[key]]
    differ = [
        f"{key} {column}: ours {ours[key][column]}"
        for key, column in pairs
        if ours[key][column] != theirs[key][column]
    ]
    drifted = sum(theirs[key][column] for key, column in pairs)
    return 1 - len(differ) / len(pairs), differ, drifted


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--days", type=int, default=60)
    parser.add_argument("--reference-days", type=int, default=30)
    parser.add_argument(
        "--drift-day", type=int, default=45, help="drift starts this many days after the start"
    )
    parser.add_argument("--partitions", type=int, default=10, help="daily partitions judged, evenly spaced")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-evidently", action="store_true", help="only time the platform's side")
    args = parser.parse_args(argv)
    print_machine(machine_info())
    with tempfile.TemporaryDirectory(prefix="mlplatform-drift-bench-") as work:
        data = build_data(
            args.rows, args.days, args.reference_days, args.drift_day, args.partitions, Path(work)
        )
    n_current = sum(len(p) for p in data.partitions.values())
    print(
        f"reference: {len(data.reference):,} rows ({args.reference_days} days); {len(data.partitions)} partitions, "
        f"{n_current:,} rows; drift from {date.fromordinal(START.toordinal() + args.drift_day)}; "
        f"numeric {list(data.columns.numeric)}, categorical {list(data.columns.categorical)}"
    )
    result: dict[str, Any] = {"rows": args.rows, "partitions": len(data.partitions)}
    repeats = []
    for _ in range(args.repeats):
        build_seconds, judge_seconds, tables = run_platform(data)
        run: dict[str, Any] = {"ours_reference": build_seconds, "ours_partitions": judge_seconds}
        if not args.no_evidently:
            run["evidently_default"], default_values = run_evidently(data)
            run["evidently_ks"], ks_values = run_evidently(data, num_method="ks", num_threshold=KS_P)
        repeats.append(run)
        print({k: round(v, 2) for k, v in run.items()}, flush=True)
    result["times"] = {k: median([r[k] for r in repeats]) for k in repeats[0]}
    ours_total = [r["ours_reference"] + r["ours_partitions"] for r in repeats]
    result["times"]["ours_total"] = median(ours_total)
    rows = [
        ("platform: reference profile (once)", f"{result['times']['ours_reference']:.2f}"),
        ("platform: all partitions", f"{result['times']['ours_partitions']:.2f}"),
        ("platform: total", f"{result['times']['ours_total']:.2f}"),
    ]
    if not args.no_evidently:
        result["speedup_default"] = median(
            [r["evidently_default"] / t for r, t in zip(repeats, ours_total, strict=True)]
        )
        result["speedup_ks"] = median(
            [r["evidently_ks"] / t for r, t in zip(repeats, ours_total, strict=True)]
        )
        rows += [
            ("Evidently DataDriftPreset (defaults)", f"{result['times']['evidently_default']:.2f}"),
            ("Evidently DataDriftPreset (KS, p < 0.01)", f"{result['times']['evidently_ks']:.2f}"),
        ]
        ours = our_same_test_verdicts(data, tables)
        theirs = {
            "ks": {k: {c: v[c] <= KS_P for c in data.columns.numeric} for k, v in ks_values.items()},
            "wasserstein": {
                k: {c: v[c] >= WASSERSTEIN_NORMED for c in data.columns.numeric}
                for k, v in default_values.items()
            },
        }
        result["agreement"] = {}
        for test in ("ks", "wasserstein"):
            share, differ, drifted = agreement(ours[test], theirs[test])
            result["agreement"][test] = {"share": share, "differences": differ, "evidently_drifted": drifted}
    print(
        f"\n== drift benchmark: {len(data.partitions)} partitions vs a {len(data.reference):,}-row reference =="
    )
    print_table(("work", "seconds (median)"), rows)
    if not args.no_evidently:
        print(
            f"\nEvidently / platform time: {result['speedup_default']:.1f}x (defaults), {result['speedup_ks']:.1f}x (KS)"
        )
        for test, found in result["agreement"].items():
            pairs = len(data.partitions) * len(data.columns.numeric)
            print(
                f"same test {test}: numeric verdicts agree on {found['share']:.1%} of {pairs} (partition, column) "
                f"pairs; Evidently flags {found['evidently_drifted']}; differences: {found['differences'] or 'none'}"
            )
    return result


if __name__ == "__main__":
    main()
