"""A Kafka topic through `<ds>__kafka_sensor` -> landing -> raw -> clean + quarantine, on a real broker.

10,000 records (bad ones planted) are produced over the topic's partitions while the sensor ticks with a
bound of 2,000 records a tick; one tick dies between writing its batches and saving its cursor; a
partition appears mid-stream. Every record produced is then in raw exactly once, in clean or in
quarantine (with its reason and its topic/partition/offset), and the accounting reconciles.

Tansu (the broker) cannot add partitions to a topic (no CreatePartitions), so the topic is created with
three and the metadata the sensor reads lists only two until the third is "added": the third then
appears in the listing with records already in it, as after a real partition increase.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dagster as dg
import duckdb
import pytest

import mlplatform.core.kafka_consumer as kafka_consumer
import mlplatform.sensors.kafka as kafka_sensor_module
from mlplatform.core.accounting import describe_account, read_accounts
from mlplatform.core.kafka_batches import landed_batches
from mlplatform.core.kafka_cursor import decode_cursor, read_lag
from mlplatform.dagster_adapter import ASSET_PARTITION_RANGE_END_TAG, ASSET_PARTITION_RANGE_START_TAG
from mlplatform.factory import DatasetDefinitions, build_dataset, location_resources
from mlplatform.sensors.kafka import KafkaTickError
from mlplatform.settings import Settings, load_settings
from platform_tests.kafka_broker import KafkaBroker, ProducedRecord, kafka_broker  # noqa: F401
from platform_tests.sources.kafka_source import BAD_FIELDS, BAD_VALUES, Planned, kafka_spec, planned_record

pytestmark = pytest.mark.e2e  # a broker process and three ranged runs of raw/clean/quarantine (~10 s)

BAD_IDS = {
    "not_json": [17, 4001, 8003],
    "array": [250],
    "tombstone": [5003],
    "no_time": [777, 9001],
    "amount_text": [1500],
    "negative": [3333, 8888],
    "kind": [6100],
}
PER_TICK = 2000


@dataclass
class Orders:
    """The dataset over topic `topic`, its sensor's cursor, and everything produced into it."""

    broker: KafkaBroker
    topic: str
    built: DatasetDefinitions
    settings: Settings
    instance: dg.DagsterInstance
    cursor: str | None = None
    produced: list[Planned] = field(default_factory=list)
    requests: list[dg.RunRequest] = field(default_factory=list)

    @property
    def landing(self) -> Path:
        return self.settings.home / "landing" / "orders"

    @property
    def sensor(self) -> dg.SensorDefinition:
        return next(s for s in self.built.automation.sensors if s.name == "orders__kafka_sensor")

    def produce(self, ids: range, partition_of: Callable[[int], int]) -> None:
        bad = {i: kind for kind, ids_of_kind in BAD_IDS.items() for i in ids_of_kind}
        planned = [planned_record(i, partition_of(i), bad.get(i)) for i in ids]
        self.broker.produce(self.topic, [ProducedRecord(p.partition, p.value) for p in planned])
        self.produced += planned

    def tick(self) -> dg.SensorResult:
        result = self.sensor(dg.build_sensor_context(instance=self.instance, cursor=self.cursor))
        assert isinstance(result, dg.SensorResult)
        self.cursor = result.cursor
        self.requests += result.run_requests or []
        return result

    def tick_until_caught_up(self, limit: int = 10) -> dg.SensorResult:
        for _ in range(limit):
            result = self.tick()
            if not result.run_requests:
                return result
        raise AssertionError(f"still landing after {limit} ticks")

    def materialize_requested(self) -> dg.ExecuteInProcessResult:
        """raw, clean and quarantine over the range the sensor's requests cover, as one ranged run."""
        starts = [r.tags[ASSET_PARTITION_RANGE_START_TAG] for r in self.requests]
        ends = [r.tags[ASSET_PARTITION_RANGE_END_TAG] for r in self.requests]
        return dg.materialize(
            self.built.assets,
            selection=[dg.AssetKey(["orders", stage]) for stage in ("raw", "clean", "quarantine")],
            tags={ASSET_PARTITION_RANGE_START_TAG: min(starts), ASSET_PARTITION_RANGE_END_TAG: max(ends)},
            resources=location_resources(self.settings),
            instance=self.instance,
        )

    def query(self, sql: str) -> list[tuple[Any, ...]]:
        with duckdb.connect(self.settings.warehouse_path, read_only=True) as conn:
            return conn.execute(sql).fetchall()


@pytest.fixture
def orders(kafka_broker: KafkaBroker, tmp_path: Path) -> Iterator[Orders]:  # noqa: F811
    topic = f"orders-{tmp_path.name[-12:].strip('_')}"
    kafka_broker.create_topic(topic, partitions=3)
    settings = load_settings(
        {
            "MLPLATFORM_HOME": str(tmp_path / "home"),
            "MLPLATFORM_WAREHOUSE": str(tmp_path / "warehouse.duckdb"),
        }
    )
    spec = kafka_spec(tmp_path / "specs", kafka_broker.bootstrap, topic, max_records_per_tick=PER_TICK)
    with dg.instance_for_test() as instance:
        yield Orders(kafka_broker, topic, build_dataset(spec, settings=settings), settings, instance)


def raw_metadata(result: dg.ExecuteInProcessResult) -> dict[str, Any]:
    event = next(e for e in result.get_asset_materialization_events() if e.asset_key.path[-1] == "raw")
    return {name: value.value for name, value in event.materialization.metadata.items()}


def die_after_landing(monkeypatch: pytest.MonkeyPatch) -> None:
    """The next tick writes its batches, then its process dies before the cursor is saved."""
    land = kafka_sensor_module.land_records

    def land_then_die(*args: Any, **kwargs: Any) -> Sequence[Any]:
        land(*args, **kwargs)
        raise SystemExit("killed between the batch write and the cursor update")

    monkeypatch.setattr(kafka_sensor_module, "land_records", land_then_die)


def hide_partitions_from(monkeypatch: pytest.MonkeyPatch, hidden: set[int]) -> None:
    """The topic's metadata lists its partitions without those in `hidden` ("not added yet"), as long as
    they are in it: empty the set to add them."""
    listing = kafka_consumer.topic_partitions

    def listed(*args: Any, **kwargs: Any) -> list[int]:
        return [p for p in listing(*args, **kwargs) if p not in hidden]

    monkeypatch.setattr(kafka_consumer, "topic_partitions", listed)


def assert_every_record_once(orders: Orders) -> None:
    """raw holds each produced record exactly once: per partition, offsets 0..n-1 with no gap or copy."""
    produced = Counter(p.partition for p in orders.produced)
    raw = orders.query(
        "SELECT _kafka_partition, list(_kafka_offset ORDER BY _kafka_offset) FROM orders.raw GROUP BY 1"
    )
    assert {p: offsets for p, offsets in raw} == {p: list(range(n)) for p, n in produced.items()}
    landed = [(b.range.partition, b.range.first, b.range.last) for b in landed_batches(orders.landing)]
    assert sum(last - first + 1 for _, first, last in landed) == len(orders.produced)  # no overlap


def assert_clean_and_quarantine_split_the_records(orders: Orders) -> None:
    bad = {i: kind for kind, ids in BAD_IDS.items() for i in ids}
    good = sorted(p.id for p in orders.produced if p.id not in bad)
    clean = orders.query("SELECT id FROM orders.clean ORDER BY id")
    assert [i for (i,) in clean] == good
    rows = orders.query(
        "SELECT id, _kafka_topic, _kafka_partition, _kafka_offset, _quarantine_reason FROM orders.quarantine"
    )
    assert len(rows) == sum(len(ids) for ids in BAD_IDS.values())
    assert all(
        topic == orders.topic and partition is not None and offset is not None
        for _, topic, partition, offset, _ in rows
    )
    reasons = {**{k: r for k, (_, r) in BAD_VALUES.items()}, **{k: r for k, (_, r) in BAD_FIELDS.items()}}
    with_id = {int(i): reason for i, *_, reason in rows if i is not None}
    for record_id, reason in with_id.items():
        assert reason.startswith(reasons[bad[record_id]]), (record_id, reason)
    # Records that are no JSON object carry no id: they are told apart by their reason alone.
    without_id = Counter(
        next(k for k, r in BAD_VALUES.items() if reason.startswith(r[1]))
        for i, *_, reason in rows
        if i is None
    )
    assert without_id == {k: len(BAD_IDS[k]) for k in BAD_VALUES}


def test_a_topic_lands_exactly_once_through_a_crash_and_a_new_partition(
    orders: Orders, monkeypatch: pytest.MonkeyPatch
) -> None:
    not_added = {2}
    hide_partitions_from(monkeypatch, not_added)
    orders.produce(range(0, 6000), lambda i: i % 2)
    first = orders.tick()
    assert len(first.run_requests) == 1 and first.run_requests[0].job_name == "orders__all"  # no champion yet
    lag = read_lag(orders.landing)
    assert lag is not None and lag.total == 6000 - PER_TICK and sorted(lag.behind) == [0, 1]

    with monkeypatch.context() as crash:
        die_after_landing(crash)
        with pytest.raises(SystemExit):
            orders.tick()
    cursor = decode_cursor(orders.cursor, orders.topic)
    past_cursor = [
        b for b in landed_batches(orders.landing) if b.range.first >= cursor.offsets.get(b.range.partition, 0)
    ]
    assert past_cursor  # the dead tick's batches, never committed by a cursor
    orders.produce(range(6000, 8000), lambda i: i % 2)  # more arrives: the next tick's ranges differ
    # A run that reads the landing before the next tick sees the dead tick's batches; it is replaced later.
    assert orders.materialize_requested().success
    caught_up = orders.tick_until_caught_up()
    # Each batch of the dead tick was landed again as itself (same offsets, same name): no rename for raw.
    assert {Path(b.path).name for b in past_cursor} <= {
        Path(b.path).name for b in landed_batches(orders.landing)
    }
    assert "no new records" in str(caught_up.skip_reason) and "lag 0 records (p0 0, p1 0)" in str(
        caught_up.skip_reason
    )

    not_added.clear()  # partition 2 is added, and written to at once
    orders.produce(range(8000, 10_000), lambda i: i % 3)
    orders.tick_until_caught_up()
    assert decode_cursor(orders.cursor, orders.topic).offsets[2] == sum(
        1 for p in orders.produced if p.partition == 2
    )
    result = orders.materialize_requested()
    assert result.success

    assert len(orders.produced) == 10_000
    assert_every_record_once(orders)
    assert_clean_and_quarantine_split_the_records(orders)
    [(clean, quarantined)] = orders.query(
        "SELECT (SELECT count(*) FROM orders.clean), (SELECT count(*) FROM orders.quarantine)"
    )
    assert clean + quarantined == 10_000
    metadata = raw_metadata(result)
    assert metadata["source_rows"] == metadata["kafka_records_landed"] == 10_000  # consumed
    assert metadata["kafka_lag_records"] == 0 and metadata["kafka_lag"] == "lag 0 records (p0 0, p1 0, p2 0)"
    with duckdb.connect(orders.settings.warehouse_path, read_only=True) as conn:
        accounts = read_accounts(conn, "orders", "ts")
    assert accounts and all(a.reconciles for a in accounts), [describe_account(a) for a in accounts]
    requested = {
        (r.tags[ASSET_PARTITION_RANGE_START_TAG], r.tags[ASSET_PARTITION_RANGE_END_TAG])
        for r in orders.requests
    }
    assert min(s for s, _ in requested) == "2024-01-01" and max(e for _, e in requested) == "2024-02-01"


def test_a_deleted_topic_fails_the_tick_in_one_line_and_keeps_the_cursor(orders: Orders) -> None:
    orders.produce(range(0, 50), lambda i: i % 2)
    orders.tick()
    before = orders.cursor
    landed = sorted(b.path for b in landed_batches(orders.landing))
    orders.broker.delete_topic(orders.topic)
    with pytest.raises(KafkaTickError) as caught:
        orders.tick()
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith(
        f"orders: source.topic: kafka at {orders.broker.bootstrap} (topic {orders.topic})"
    )
    assert orders.cursor == before and sorted(b.path for b in landed_batches(orders.landing)) == landed

    # Created again under the same name, its offsets start over: landing them would replace the old
    # topic's batches of the same names, so the tick refuses, naming the partition and the cursor.
    orders.broker.create_topic(orders.topic, partitions=2)
    orders.produce(range(50, 60), lambda i: 0)
    # Kafka resets the position and gives offset 0; Tansu answers the fetch past its end with nothing.
    refused = r"partition 0 (starts again at offset 0|ends at offset 10), before the cursor's 25"
    with pytest.raises(KafkaTickError, match=refused):
        orders.tick()
    assert orders.cursor == before and sorted(b.path for b in landed_batches(orders.landing)) == landed


def test_a_dead_ticks_batch_is_read_to_its_end_even_past_a_smaller_bound(
    orders: Orders, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    orders.produce(range(0, 300), lambda i: 0)
    with monkeypatch.context() as crash:
        die_after_landing(crash)
        with pytest.raises(SystemExit):
            orders.tick()  # lands p0 0..299, its cursor never saved
    # Restarted with a bound below that batch (lowered, or shared with other partitions now).
    spec = kafka_spec(tmp_path / "smaller", orders.broker.bootstrap, orders.topic, max_records_per_tick=50)
    orders.built = build_dataset(spec, settings=orders.settings)
    result = orders.tick()
    # Read to the dead tick's end and landed again as itself; without that, landing would stop before
    # the batch (it cannot be cut) and no tick with this bound would ever move the cursor.
    assert decode_cursor(orders.cursor, orders.topic).offsets == {0: 300}
    assert [Path(b.path).name for b in landed_batches(orders.landing)] == [f"{orders.topic}+p0+0-299.parquet"]
    assert len(result.run_requests) == 1
