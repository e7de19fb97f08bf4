"""An `orders` spec over a Kafka topic, and the records the Kafka tests produce into it."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from mlplatform.specs.loader import validate_spec
from mlplatform.specs.model import DatasetSpec

FIRST_TIME = datetime(2024, 1, 1)
STEP = timedelta(minutes=6)  # 10,000 records span 2024-01-01 .. 2024-02-11: both monthly partitions


def kafka_spec_dict(
    bootstrap: str = "127.0.0.1:9092", topic: str = "orders", **source: Any
) -> dict[str, Any]:
    return {
        "name": "orders",
        "source": {"kind": "kafka", "bootstrap_servers": bootstrap, "topic": topic, **source},
        "time_column": "ts",
        "partition_grain": "month",
        "columns": {
            "ts": {"type": "timestamp", "nullable": False},
            "id": {"type": "int", "nullable": False, "unique": True},
            "amount": {"type": "float", "nullable": False, "min": 0},
            "kind": {"type": "category", "allowed": ["a", "b"]},
        },
        "drop": ["id"],
        "target": {"column": "amount", "task": "regression"},
        "features": {"calendar": ["hour"]},
        "partitions": {"start": "2024-01-01", "end": "2024-03-01"},
    }


def kafka_spec(spec_dir: Path, bootstrap: str, topic: str, **source: Any) -> DatasetSpec:
    spec_dir.mkdir(parents=True, exist_ok=True)
    return validate_spec(kafka_spec_dict(bootstrap, topic, **source), spec_dir / "orders.yaml")


# Bad records planted by id: what the value is made into, and how its quarantine reason starts.
BAD_VALUES: dict[str, tuple[bytes | None, str]] = {
    "not_json": (b"{not json", "_record: the value is not valid JSON"),
    "array": (b"[1, 2, 3]", "_record: the value is an array in JSON"),
    "tombstone": (None, "_record: the record has no value (a tombstone)"),
}
# A field set to None is left out of the record.
BAD_FIELDS: dict[str, tuple[dict[str, Any], str]] = {
    "no_time": ({"ts": None}, "ts: the record has no field 'ts'"),
    "amount_text": ({"amount": "lots"}, "amount: cannot parse 'lots' as float"),
    "negative": ({"amount": -5}, "amount: greater_than_or_equal_to(0.0) failed for -5"),
    "kind": ({"kind": "z"}, "kind: isin(['a', 'b']) failed for 'z'"),
}


@dataclass(frozen=True)
class Planned:
    """One produced record: its id (its place in the stream), partition, value and, if bad, the reason."""

    id: int
    partition: int
    value: bytes | None
    reason: str | None


def planned_record(record_id: int, partition: int, bad: str | None = None) -> Planned:
    """Record `record_id` at FIRST_TIME + id * STEP; `bad` names one of BAD_VALUES / BAD_FIELDS."""
    fields: dict[str, Any] = {
        "ts": (FIRST_TIME + record_id * STEP).strftime("%Y-%m-%d %H:%M:%S"),
        "id": record_id,
        "amount": round(10 + (record_id % 97) * 0.5, 2),
        "kind": "ab"[record_id % 2],
    }
    if bad in BAD_VALUES:
        value, reason = BAD_VALUES[bad]
        return Planned(record_id, partition, value, reason)
    reason = None
    if bad is not None:
        change, reason = BAD_FIELDS[bad]
        fields.update(change)
        fields = {name: value for name, value in fields.items() if value is not None}
    return Planned(record_id, partition, json.dumps(fields).encode(), reason)
