"""Landing Kafka records as batches named by offset range: no offset is ever in two files."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from mlplatform.core.kafka_batches import (
    BatchRange,
    PartitionLanding,
    land_records,
    landed_batches,
    landed_counts,
    landing_summary,
    past_cursor,
)
from mlplatform.core.kafka_cursor import Lag, write_lag
from mlplatform.core.kafka_records import KafkaRecord

COLUMNS = ["ts", "amount"]


def records(partition: int, first: int, last: int, topic: str = "orders") -> list[KafkaRecord]:
    value = json.dumps({"ts": "2024-01-01 00:00", "amount": 1}).encode()
    return [
        KafkaRecord(topic, partition, offset, 1_704_067_200_000, value) for offset in range(first, last + 1)
    ]


def land(folder: Path, *batches: list[KafkaRecord]) -> list[PartitionLanding]:
    by_partition = {batch[0].partition: batch for batch in batches}
    return land_records(folder, by_partition, COLUMNS, "ts", "field")


def offsets_on_disk(folder: Path) -> list[tuple[int, int]]:
    """(partition, offset) of every row in every landed file, duplicates kept."""
    found = []
    for batch in landed_batches(folder):
        table = pq.read_table(batch.path, columns=["_kafka_partition", "_kafka_offset"])
        found += list(
            zip(table["_kafka_partition"].to_pylist(), table["_kafka_offset"].to_pylist(), strict=True)
        )
    return sorted(found)


def test_a_batch_name_is_its_offset_range() -> None:
    batch_range = BatchRange("orders.v2_x-y", 3, 120, 4999)
    assert batch_range.file_name == "orders.v2_x-y+p3+120-4999.parquet"
    assert BatchRange.parse(batch_range.file_name) == batch_range
    assert BatchRange.parse("orders+p3+9-2.parquet") is None  # first after last
    assert BatchRange.parse("batch_000001_start_2024.parquet") is None


def names_on_disk(folder: Path) -> list[str]:
    return [Path(b.path).name for b in landed_batches(folder)]


def test_batches_are_written_whole_with_their_range_in_the_footer(tmp_path: Path) -> None:
    (landing,) = land(tmp_path, records(0, 0, 99))
    (batch,) = landing.batches
    assert Path(batch.path).name == "orders+p0+0-99.parquet" and landing.next_offset == 100
    footer = json.loads(pq.read_schema(batch.path).metadata[b"mlplatform.kafka_batch"])
    assert (footer["first_offset"], footer["last_offset"], footer["records"]) == (0, 99, 100)
    assert not list(tmp_path.glob(".*.tmp"))
    (tmp_path / ".orders+p0+100-199.parquet.tmp").write_bytes(b"half a file")  # a tick died writing it
    land(tmp_path, records(0, 100, 149))
    assert not list(tmp_path.glob(".*.tmp"))
    assert offsets_on_disk(tmp_path) == [(0, o) for o in range(150)]


def test_a_batch_past_the_cursor_replaces_itself_when_its_offsets_are_consumed_again(tmp_path: Path) -> None:
    land(tmp_path, records(0, 0, 99), records(1, 0, 49))
    # A tick landed 100..199 of partition 0 but died before its cursor was saved (cursor: 100, 50).
    land(tmp_path, records(0, 100, 199))
    assert past_cursor(tmp_path, "orders", {0: 100, 1: 50}) == {0: 200}  # the next tick reads to 199
    # A partition the cursor does not name yet (a first tick that died): its first batch.
    assert past_cursor(tmp_path, "orders", {}) == {0: 100, 1: 50}
    # More records had arrived: they are cut at the dead tick's batch, which is landed again as itself.
    (again,) = land(tmp_path, records(0, 100, 250))
    assert again.replaced == ("orders+p0+100-199.parquet",) and again.superseded == ()
    assert [b.range for b in again.batches] == [
        BatchRange("orders", 0, 100, 199),
        BatchRange("orders", 0, 200, 250),
    ]
    assert again.next_offset == 251
    assert names_on_disk(tmp_path) == [
        "orders+p0+0-99.parquet",
        "orders+p0+100-199.parquet",
        "orders+p0+200-250.parquet",
        "orders+p1+0-49.parquet",
    ]
    assert offsets_on_disk(tmp_path) == [(0, o) for o in range(251)] + [(1, o) for o in range(50)]


def test_a_batch_that_no_longer_fills_its_range_is_removed_first(tmp_path: Path) -> None:
    land(tmp_path, records(0, 0, 99))
    land(tmp_path, records(0, 100, 199))  # a dead tick's batch
    # Compaction removed offset 199 since: the records read again no longer end where it did.
    (again,) = land(tmp_path, [*records(0, 100, 198), *records(0, 200, 250)])
    assert again.superseded == ("orders+p0+100-199.parquet",) and again.replaced == ()
    assert names_on_disk(tmp_path) == [
        "orders+p0+0-99.parquet",
        "orders+p0+100-198.parquet",
        "orders+p0+200-250.parquet",
    ]
    assert offsets_on_disk(tmp_path) == [(0, o) for o in range(251) if o != 199]


def test_landing_stops_before_a_batch_it_did_not_read_to_the_end(tmp_path: Path) -> None:
    land(tmp_path, records(0, 0, 99))
    land(tmp_path, records(0, 100, 199))  # a dead tick's batch
    # No cursor for the partition (a first tick): read from 0, but only to 150 within the bound.
    (landing,) = land(tmp_path, records(0, 0, 150))
    assert landing.replaced == ("orders+p0+0-99.parquet",) and landing.next_offset == 100
    assert landing.held_back == 51 and landing.already_landed == 0  # 100..150: read again next tick
    assert names_on_disk(tmp_path) == ["orders+p0+0-99.parquet", "orders+p0+100-199.parquet"]
    assert past_cursor(tmp_path, "orders", {0: landing.next_offset}) == {0: 200}
    assert offsets_on_disk(tmp_path) == [(0, o) for o in range(200)]


def test_records_already_in_a_batch_that_starts_before_them_are_not_landed_twice(tmp_path: Path) -> None:
    land(tmp_path, records(0, 0, 99))
    # The cursor was lost and the topic's first offsets are gone: consumption restarts at 40.
    (landing,) = land(tmp_path, records(0, 40, 129))
    assert landing.already_landed == 60 and landing.superseded == landing.replaced == ()
    assert [b.range for b in landing.batches] == [BatchRange("orders", 0, 100, 129)]
    assert landing.next_offset == 130
    (nothing_new,) = land(tmp_path, records(0, 40, 80))
    assert nothing_new.batches == () and nothing_new.already_landed == 41
    assert nothing_new.next_offset == 100  # what follows is in the batch past it, read next
    assert offsets_on_disk(tmp_path) == [(0, o) for o in range(130)]


def test_other_topics_are_left_alone(tmp_path: Path) -> None:
    land(tmp_path, records(0, 0, 9, topic="old"))
    land(tmp_path, records(0, 0, 9))
    assert [b.range.topic for b in landed_batches(tmp_path)] == ["old", "orders"]
    assert [b.range.topic for b in landed_batches(tmp_path, "orders")] == ["orders"]


def test_counts_and_summary_come_from_the_batches(tmp_path: Path) -> None:
    unmeasured = landing_summary(tmp_path, "orders")
    assert unmeasured["kafka_lag"] == "not measured yet (no tick of the kafka sensor)"
    assert "kafka_lag_records" not in unmeasured and unmeasured["kafka_offsets_landed"] == "none"
    land(tmp_path, records(0, 0, 99), records(1, 5, 9))
    land(tmp_path, records(0, 100, 119))
    (tmp_path / "orders+p1+10-20.parquet").write_bytes(b"PAR1 broken")
    counts = landed_counts(tmp_path)
    assert {Path(p).name: c.rows for p, c in counts.items() if not c.unreadable} == {
        "orders+p0+0-99.parquet": 100,
        "orders+p0+100-119.parquet": 20,
        "orders+p1+5-9.parquet": 5,
    }
    assert [Path(p).name for p, c in counts.items() if c.unreadable] == ["orders+p1+10-20.parquet"]
    write_lag(tmp_path, Lag("orders", "2024-01-01T00:00:00+00:00", {0: 3, 1: 0}))
    summary = landing_summary(tmp_path, "orders")
    assert summary["kafka_records_landed"] == 125 and summary["kafka_batches_landed"] == 4
    assert summary["kafka_offsets_landed"] == "p0 0..119, p1 5..20"
    assert (summary["kafka_lag"], summary["kafka_lag_records"]) == ("lag 3 records (p0 3, p1 0)", 3)


@pytest.mark.parametrize("partition", [0, 7])
def test_partitions_without_records_land_nothing(tmp_path: Path, partition: int) -> None:
    assert land_records(tmp_path, {partition: []}, COLUMNS, "ts", "field") == []
    assert landed_batches(tmp_path) == []
