"""The Kafka sensor's cursor (next offset per partition) and its lag."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from mlplatform.core.kafka_cursor import (
    KafkaCursor,
    Lag,
    decode_cursor,
    encode_cursor,
    measure_lag,
    read_lag,
    write_lag,
)


def test_the_cursor_round_trips_and_belongs_to_its_topic() -> None:
    cursor = KafkaCursor("orders", {1: 4998, 0: 5000})
    text = encode_cursor(cursor)
    assert text == '{"topic":"orders","offsets":{"0":5000,"1":4998}}'
    assert decode_cursor(text, "orders") == cursor
    assert decode_cursor(text, "payments") == KafkaCursor("payments")  # the spec's topic changed
    assert decode_cursor(None, "orders") == decode_cursor("", "orders") == KafkaCursor("orders")
    assert decode_cursor('{"files": {}}', "orders") == KafkaCursor("orders")  # not a kafka cursor


def test_the_cursor_only_moves_forward_and_adds_new_partitions() -> None:
    cursor = KafkaCursor("orders", {0: 100, 1: 50})
    moved = cursor.advanced({0: 120, 1: 40, 2: 7})
    assert moved.offsets == {0: 120, 1: 50, 2: 7}
    assert cursor.offsets == {0: 100, 1: 50}  # unchanged: a failed tick keeps the old one


def test_lag_is_the_end_minus_the_cursor() -> None:
    now = datetime(2024, 5, 1, 12, tzinfo=UTC)
    cursor = KafkaCursor("orders", {0: 100, 1: 50})
    lag = measure_lag(cursor, [0, 1, 2, 3], {0: 150, 1: 49, 2: 30}, now)
    # Partition 1's watermark is a little stale (below the cursor): 0, never negative. Partition 2 was
    # never read: all 30 are behind. Partition 3's end is unknown.
    assert lag.behind == {0: 50, 1: 0, 2: 30} and lag.unknown == (3,)
    assert lag.total == 80
    assert lag.describe() == "lag 80 records (p0 50, p1 0, p2 30, p3 unknown)"
    assert lag.measured_at == "2024-05-01T12:00:00+00:00"


def test_the_lag_file_round_trips(tmp_path: Path) -> None:
    assert read_lag(tmp_path) is None
    lag = Lag("orders", "2024-05-01T12:00:00+00:00", {0: 5, 1: 0}, (2,))
    write_lag(tmp_path / "landing", lag)
    assert read_lag(tmp_path / "landing") == lag
    (tmp_path / "landing" / "kafka_lag.json").write_text("{broken")
    assert read_lag(tmp_path / "landing") is None
