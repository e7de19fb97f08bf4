"""Landed Kafka batches through raw -> clean + quarantine (no broker: the batches are landed directly), the
sensor's wiring, and a tick against a broker that is not there."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import dagster as dg
import duckdb
import pytest

from mlplatform.core.accounting import describe_account, read_accounts
from mlplatform.core.kafka_batches import land_records
from mlplatform.core.kafka_records import KafkaRecord
from mlplatform.factory import DatasetDefinitions, build_dataset, location_resources
from mlplatform.sensors.kafka import KafkaTickError, _nothing_landed
from mlplatform.settings import Settings, load_settings
from platform_tests.servers import free_port
from platform_tests.sources.kafka_source import BAD_FIELDS, BAD_VALUES, kafka_spec, planned_record

# Bad records of the first 60 ids: each kind once.
BAD = {
    3: "not_json",
    9: "array",
    14: "tombstone",
    20: "no_time",
    31: "amount_text",
    40: "negative",
    52: "kind",
}


def build(
    tmp_path: Path, bootstrap: str = "127.0.0.1:9092", **source: Any
) -> tuple[DatasetDefinitions, Settings]:
    settings = load_settings(
        {
            "MLPLATFORM_HOME": str(tmp_path / "home"),
            "MLPLATFORM_WAREHOUSE": str(tmp_path / "warehouse.duckdb"),
        }
    )
    return build_dataset(
        kafka_spec(tmp_path / "specs", bootstrap, "orders", **source), settings=settings
    ), settings


def test_landed_batches_load_with_each_bad_record_quarantined_with_its_lineage(tmp_path: Path) -> None:
    built, settings = build(tmp_path)
    planned = [planned_record(i, i % 2, BAD.get(i)) for i in range(60)]
    by_partition: dict[int, list[KafkaRecord]] = {0: [], 1: []}
    for p in planned:
        records = by_partition[p.partition]
        records.append(KafkaRecord("orders", p.partition, 100 + len(records), None, p.value))
    land_records(settings.home / "landing" / "orders", by_partition, built.spec.source_columns, "ts", "field")

    with dg.instance_for_test() as instance:
        result = dg.materialize(
            built.assets,
            selection=[dg.AssetKey(["orders", stage]) for stage in ("raw", "clean", "quarantine")],
            partition_key="2024-01-01",
            resources=location_resources(settings),
            instance=instance,
        )
    assert result.success
    raw = next(e for e in result.get_asset_materialization_events() if e.asset_key.path[-1] == "raw")
    metadata = {k: v.value for k, v in raw.materialization.metadata.items()}
    assert metadata["source_rows"] == metadata["kafka_records_landed"] == 60
    assert metadata["kafka_offsets_landed"] == "p0 100..129, p1 100..129"
    assert metadata["kafka_lag"] == "not measured yet (no tick of the kafka sensor)"

    with duckdb.connect(settings.warehouse_path, read_only=True) as conn:
        rows = conn.execute(
            "SELECT _kafka_partition, _kafka_offset, _quarantine_reason, _failed_columns "
            "FROM orders.quarantine ORDER BY 1, 2"
        ).fetchall()
        clean = conn.execute("SELECT count(*), count(DISTINCT id) FROM orders.clean").fetchall()
        accounts = read_accounts(conn, "orders", "ts")
    reasons = {k: r for k, (_, r) in {**BAD_VALUES, **BAD_FIELDS}.items()}
    expected = sorted((i % 2, 100 + i // 2, reasons[kind]) for i, kind in BAD.items())
    assert [(p, o) for p, o, *_ in rows] == [(p, o) for p, o, _ in expected]
    for (_, _, reason, columns), (_, _, start) in zip(rows, expected, strict=True):
        assert reason.startswith(start), reason
        if start.startswith("_record"):  # the whole record failed: no column adds a reason of its own
            assert ";" not in reason and columns == "_record"
    assert clean == [(60 - len(BAD), 60 - len(BAD))]
    assert accounts and all(a.reconciles for a in accounts), [describe_account(a) for a in accounts]


def test_a_kafka_dataset_is_watched_by_its_kafka_sensor(tmp_path: Path) -> None:
    built, _ = build(tmp_path)
    names = {s.name for s in built.automation.sensors}
    assert "orders__kafka_sensor" in names and "orders__new_data_sensor" not in names
    (schedule,) = built.automation.schedules
    assert schedule.description is not None and "Backstop for orders__kafka_sensor" in schedule.description


def test_an_unreachable_broker_fails_the_tick_in_one_line_and_keeps_the_cursor(tmp_path: Path) -> None:
    bootstrap = f"127.0.0.1:{free_port()}"  # nothing listens there
    built, settings = build(tmp_path, bootstrap, max_seconds_per_tick=1)
    sensor = next(s for s in built.automation.sensors if s.name == "orders__kafka_sensor")
    cursor = '{"topic":"orders","offsets":{"0":5000,"1":4998}}'
    started = time.monotonic()
    with dg.instance_for_test() as instance, pytest.raises(KafkaTickError) as caught:
        sensor(dg.build_sensor_context(instance=instance, cursor=cursor))
    assert time.monotonic() - started < 10
    message = str(caught.value)
    assert message.startswith(f"orders: source: cannot read kafka at {bootstrap} (topic orders): ")
    assert "\n" not in message
    assert not list((settings.home / "landing" / "orders").glob("*.parquet"))


def test_a_setting_the_client_refuses_fails_the_tick_in_one_line(tmp_path: Path) -> None:
    missing_ca = tmp_path / "no-such-ca.pem"  # librdkafka refuses to create the consumer
    bootstrap = f"127.0.0.1:{free_port()}"
    built, settings = build(tmp_path, bootstrap, security={"protocol": "SSL", "ca_location": str(missing_ca)})
    sensor = next(s for s in built.automation.sensors if s.name == "orders__kafka_sensor")
    with dg.instance_for_test() as instance, pytest.raises(KafkaTickError) as caught:
        sensor(dg.build_sensor_context(instance=instance, cursor='{"topic":"orders","offsets":{"0":7}}'))
    message = str(caught.value)
    assert message.startswith(f"orders: source: cannot read kafka at {bootstrap} (topic orders): ")
    assert "ssl.ca.location" in message and "\n" not in message
    assert not list((settings.home / "landing" / "orders").glob("*.parquet"))


def test_a_tick_that_lands_nothing_says_why(tmp_path: Path) -> None:
    value = b'{"ts": "2024-01-01 00:00:00", "id": 1, "amount": 1, "kind": "a"}'
    columns = ["ts", "id", "amount", "kind"]

    def read(first: int, last: int) -> dict[int, list[KafkaRecord]]:
        return {0: [KafkaRecord("orders", 0, o, None, value) for o in range(first, last + 1)]}

    land_records(tmp_path, read(0, 99), columns, "ts", "field")  # a tick that died landed 0..99
    # The next one ran out of time at offset 49, inside that batch: it lands nothing, and says so.
    (short,) = land_records(tmp_path, read(0, 49), columns, "ts", "field")
    assert not short.batches and short.next_offset == 0
    assert _nothing_landed("topic orders", 50, [short]).startswith(
        "50 of the 50 records read reach into a batch"
    )
    assert _nothing_landed("topic orders", 0, []) == "no new records in topic orders"
