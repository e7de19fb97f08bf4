"""Kafka records as landed rows: every record is one row, good or bad, with a reason for the bad ones."""

from __future__ import annotations

import json

import pytest

from mlplatform.core.kafka_records import KafkaRecord, record_row, record_time_text, records_table

COLUMNS = ["ts", "amount", "kind"]


def record(value: bytes | None, offset: int = 7, timestamp_ms: int | None = 1_704_067_200_123) -> KafkaRecord:
    return KafkaRecord("orders", 1, offset, timestamp_ms, value)


def row_of(value: bytes | None, **kwargs: object) -> tuple[dict[str, str | None], str | None]:
    return record_row(record(value), COLUMNS, "ts", **kwargs)  # type: ignore[arg-type]


def test_values_keep_the_text_they_were_written_with() -> None:
    value = b'{"ts": "2024-01-01 10:00", "amount": 0.10, "kind": true, "extra": 1}'
    cells, error = row_of(value, time_from="field")
    assert error is None
    # 0.10 keeps its zero (no float round trip), a boolean is a word, keys outside the spec are dropped.
    assert cells == {"ts": "2024-01-01 10:00", "amount": "0.10", "kind": "true"}
    big = b'{"ts": "x", "amount": 12345678901234567890.123456789, "kind": {"a": [1, 2.50, null]}}'
    cells, _ = row_of(big, time_from="field")
    assert cells["amount"] == "12345678901234567890.123456789"
    assert cells["kind"] == '{"a":[1,2.50,null]}'
    assert row_of(b'{"ts": "x", "amount": null}', time_from="field")[0]["amount"] is None


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (b"not json", "_record: the value is not valid JSON (Expecting value at line 1 column 1)"),
        (b'{"ts": "2024-01-01"', "_record: the value is not valid JSON (Expecting ',' delimiter"),
        (b"\xff\xfe\x00garbage", "_record: the value is not"),
        (b"[1, 2]", "_record: the value is an array in JSON, not an object keyed by the spec's columns"),
        (b'"text"', "_record: the value is a string in JSON, not an object"),
        (b"42", "_record: the value is a number in JSON, not an object"),
        (b"null", "_record: the value is null in JSON, not an object"),
        (None, "_record: the record has no value (a tombstone)"),
        (b'{"amount": 3}', "ts: the record has no field 'ts'"),
        (b'{"ts": null, "amount": 3}', "ts: the record's field 'ts' is null"),
    ],
)
def test_a_record_that_is_not_a_row_says_why(value: bytes | None, reason: str) -> None:
    _, error = row_of(value, time_from="field")
    assert error is not None and error.startswith(reason), error


def test_the_record_timestamp_can_be_the_time() -> None:
    assert record_time_text(1_704_067_200_123) == "2024-01-01 00:00:00.123+00:00"
    assert record_time_text(-1) is None and record_time_text(None) is None
    cells, error = row_of(b'{"ts": "ignored", "amount": 1}', time_from="record_timestamp")
    assert (cells["ts"], error) == ("2024-01-01 00:00:00.123+00:00", None)
    # A bad value still gets its time, so the record lands in the partition it arrived in.
    cells, error = row_of(b"oops", time_from="record_timestamp")
    assert cells["ts"] == "2024-01-01 00:00:00.123+00:00" and error is not None
    missing = record_row(record(b"{}", timestamp_ms=None), COLUMNS, "ts", "record_timestamp")
    assert missing[1] == "ts: the record has no Kafka timestamp (time_from: record_timestamp)"


def test_the_table_has_one_row_per_record_with_its_lineage() -> None:
    records = [
        record(json.dumps({"ts": "2024-01-01 00:00", "amount": 1, "kind": "a"}).encode(), offset=10),
        record(b"bad", offset=11),
        record(None, offset=14, timestamp_ms=None),
    ]
    table = records_table(records, COLUMNS, "ts", "field")
    assert table.column_names == [
        *COLUMNS,
        "_kafka_topic",
        "_kafka_partition",
        "_kafka_offset",
        "_kafka_timestamp",
        "_parse_error",
    ]
    rows = table.to_pylist()
    assert [r["_kafka_offset"] for r in rows] == [10, 11, 14]
    assert {(r["_kafka_topic"], r["_kafka_partition"]) for r in rows} == {("orders", 1)}
    assert rows[0]["_parse_error"] is None and rows[0]["amount"] == "1"
    assert rows[1]["_parse_error"].startswith("_record: the value is not valid JSON")
    assert (
        rows[2]["_kafka_timestamp"] is None
        and str(rows[0]["_kafka_timestamp"]) == "2024-01-01 00:00:00.123000"
    )
    assert all(table.schema.field(c).type == "string" for c in COLUMNS)
