"""Kafka records as the rows of a landed batch: pure parsing, no client, no Dagster.

Every record consumed becomes exactly one row, good or bad, so that nothing is ever dropped:

* the spec's source columns as text, as a CSV file would give them (JSON numbers keep their exact
  text, `true`/`false` stay words, a nested value is its JSON): typing happens in cleaning, where a
  value that does not parse, is out of range or not allowed is a quarantine reason like any other;
* the lineage `_kafka_topic`, `_kafka_partition`, `_kafka_offset` and `_kafka_timestamp` (the record
  timestamp, UTC), which raw and quarantine keep beside `_source_file`/`_source_row`;
* `_parse_error`, set for a record that cannot be read as a row: no value (a tombstone), a value that
  is not UTF-8 JSON or not a JSON object, or (time from a field) no time field. The file chain takes a
  landed file's own `_parse_error` as the row's read error, so cleaning quarantines the record with it.

Keys of the JSON object that are not spec columns are not kept (a batch's columns are the spec's).
With `time_from: record_timestamp` the time column is the record's Kafka timestamp (ISO, UTC offset
written), whatever the value holds under that key.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

import pyarrow as pa

PARSE_ERROR = "_parse_error"
RECORD = "_record"  # the "column" a problem of the whole record is reported under
LINEAGE_TYPES = {
    "_kafka_topic": pa.string(),
    "_kafka_partition": pa.int32(),
    "_kafka_offset": pa.int64(),
    "_kafka_timestamp": pa.timestamp("ms"),  # naive UTC, as the platform stores times
}
TimeFrom = Literal["field", "record_timestamp"]


@dataclass(frozen=True)
class KafkaRecord:
    """One consumed record, as the client gave it."""

    topic: str
    partition: int
    offset: int
    timestamp_ms: int | None  # create or log-append time; None when the broker gives none
    value: bytes | None


class _Number(str):
    """A JSON number kept as the text it was written with (no float rounding, no lost zeros)."""

    __slots__ = ()


def _json_text(value: Any) -> str:
    """A nested JSON value written back as JSON, numbers as they were written."""
    if isinstance(value, _Number):
        return str(value)
    if isinstance(value, dict):
        return "{" + ",".join(f"{json.dumps(k)}:{_json_text(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ",".join(_json_text(v) for v in value) + "]"
    return json.dumps(value)


def _cell(value: Any) -> str | None:
    """A JSON value as the text a CSV cell would hold (None for null)."""
    if value is None:
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):  # _Number too
        return str(value)
    return _json_text(value)


def _decode(value: bytes | None) -> tuple[dict[str, Any] | None, str | None]:
    """The record's JSON object, or why there is none (a reason for the quarantine)."""
    if value is None:
        return None, f"{RECORD}: the record has no value (a tombstone)"
    try:
        parsed = json.loads(value, parse_int=_Number, parse_float=_Number, parse_constant=_Number)
    except UnicodeDecodeError as exc:
        return None, f"{RECORD}: the value is not UTF-8 text ({exc.reason} at byte {exc.start})"
    except json.JSONDecodeError as exc:
        return (
            None,
            f"{RECORD}: the value is not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno})",
        )
    if not isinstance(parsed, dict):
        kind = {list: "an array", str: "a string", bool: "a boolean"}.get(type(parsed), "a number")
        kind = "null" if parsed is None else kind
        return None, f"{RECORD}: the value is {kind} in JSON, not an object keyed by the spec's columns"
    return parsed, None


def record_time_text(timestamp_ms: int | None) -> str | None:
    """The Kafka timestamp as ISO text with its UTC offset, which cleaning reads as an instant."""
    if timestamp_ms is None or timestamp_ms < 0:
        return None
    moment = datetime.fromtimestamp(timestamp_ms / 1000, UTC)
    return moment.isoformat(sep=" ", timespec="milliseconds")


def record_row(
    record: KafkaRecord, columns: Sequence[str], time_column: str, time_from: TimeFrom
) -> tuple[dict[str, str | None], str | None]:
    """The record's cells for `columns` and its read error (None when it reads as a row)."""
    parsed, error = _decode(record.value)
    cells = {name: _cell(parsed.get(name)) if parsed is not None else None for name in columns}
    if time_from == "record_timestamp":
        cells[time_column] = record_time_text(record.timestamp_ms)
        if cells[time_column] is None and error is None:
            error = f"{time_column}: the record has no Kafka timestamp (time_from: record_timestamp)"
    elif parsed is not None and time_column in columns:
        if time_column not in parsed:
            error = f"{time_column}: the record has no field {time_column!r}"
        elif parsed[time_column] is None:
            error = f"{time_column}: the record's field {time_column!r} is null"
    return cells, error


def records_table(
    records: Sequence[KafkaRecord], columns: Sequence[str], time_column: str, time_from: TimeFrom
) -> pa.Table:
    """One row per record, in the order given: the columns as text, the lineage, `_parse_error`."""
    names = list(dict.fromkeys([*columns, *([time_column] if time_from == "record_timestamp" else [])]))
    cells: dict[str, list[str | None]] = {name: [] for name in names}
    errors: list[str | None] = []
    for record in records:
        row, error = record_row(record, names, time_column, time_from)
        for name in names:
            cells[name].append(row[name])
        errors.append(error)
    lineage = {
        "_kafka_topic": [r.topic for r in records],
        "_kafka_partition": [r.partition for r in records],
        "_kafka_offset": [r.offset for r in records],
        "_kafka_timestamp": [
            r.timestamp_ms if r.timestamp_ms is not None and r.timestamp_ms >= 0 else None for r in records
        ],
    }
    arrays = [pa.array(cells[name], pa.string()) for name in names]
    arrays += [pa.array(values, LINEAGE_TYPES[name]) for name, values in lineage.items()]
    arrays.append(pa.array(errors, pa.string()))
    return pa.table(arrays, names=[*names, *lineage, PARSE_ERROR])
