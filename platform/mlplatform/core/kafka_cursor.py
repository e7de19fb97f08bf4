"""The Kafka sensor's cursor (the next offset to read of each topic partition) and its lag. Pure.

The cursor is the single source of truth of what has been consumed: `{"topic": t, "offsets": {"0":
5000, "1": 4998}}`, the offset after the last record landed of each partition. A partition it does
not name (a new partition, or a first tick) is read from its beginning. A cursor written for another
topic (the spec's topic changed) holds nothing for this one.

Lag is what is behind the end after a tick: the partition's high watermark (the offset the next record
will get) minus the cursor's offset.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

LAG_FILE = "kafka_lag.json"  # beside the batches: what the raw asset reports (not a .parquet file)


@dataclass(frozen=True)
class KafkaCursor:
    topic: str
    offsets: dict[int, int] = field(default_factory=dict)  # partition -> next offset to read

    def advanced(self, next_offsets: Mapping[int, int]) -> KafkaCursor:
        """This cursor with the partitions of `next_offsets` moved on (never moved back)."""
        offsets = dict(self.offsets)
        for partition, offset in next_offsets.items():
            offsets[partition] = max(offset, offsets.get(partition, 0))
        return KafkaCursor(self.topic, offsets)


def encode_cursor(cursor: KafkaCursor) -> str:
    offsets = {str(p): cursor.offsets[p] for p in sorted(cursor.offsets)}
    return json.dumps({"topic": cursor.topic, "offsets": offsets}, separators=(",", ":"))


def decode_cursor(text: str | None, topic: str) -> KafkaCursor:
    """The cursor of `topic` from the sensor's stored cursor (empty when none, or of another topic)."""
    if not text:
        return KafkaCursor(topic)
    data = json.loads(text)
    if not isinstance(data, dict) or data.get("topic") != topic:
        return KafkaCursor(topic)
    offsets = data.get("offsets") or {}
    return KafkaCursor(topic, {int(p): int(o) for p, o in offsets.items()})


@dataclass(frozen=True)
class Lag:
    """Records behind the end of each partition, when measured."""

    topic: str
    measured_at: str  # ISO, UTC
    behind: dict[int, int]  # partition -> records; a partition whose end is unknown is absent
    unknown: tuple[int, ...] = ()  # partitions whose high watermark the broker did not give

    @property
    def total(self) -> int:
        return sum(self.behind.values())

    def describe(self) -> str:
        """One line, e.g. `lag 1200 records (p0 1000, p1 200)`."""
        parts = [f"p{p} {n}" for p, n in sorted(self.behind.items())]
        parts += [f"p{p} unknown" for p in self.unknown]
        return f"lag {self.total} records ({', '.join(parts) or 'no partitions'})"

    def to_json(self) -> str:
        behind = {str(p): n for p, n in sorted(self.behind.items())}
        return json.dumps(
            {
                "topic": self.topic,
                "measured_at": self.measured_at,
                "behind": behind,
                "unknown": list(self.unknown),
            }
        )

    @classmethod
    def from_json(cls, text: str) -> Lag:
        data = json.loads(text)
        behind = {int(p): int(n) for p, n in data["behind"].items()}
        return cls(data["topic"], data["measured_at"], behind, tuple(int(p) for p in data.get("unknown", ())))


def measure_lag(
    cursor: KafkaCursor,
    partitions: list[int],
    high_watermarks: Mapping[int, int],
    now: datetime | None = None,
) -> Lag:
    """Lag of each partition: its high watermark minus the cursor's offset (0 when not read yet: the
    whole partition is behind), never below 0 (a watermark a little stale)."""
    behind, unknown = {}, []
    for partition in sorted(partitions):
        high = high_watermarks.get(partition)
        if high is None or high < 0:
            unknown.append(partition)
            continue
        behind[partition] = max(0, high - cursor.offsets.get(partition, 0))
    moment = (now or datetime.now(UTC)).isoformat(timespec="seconds")
    return Lag(cursor.topic, moment, behind, tuple(unknown))


def write_lag(folder: Path, lag: Lag) -> None:
    """Keep the latest lag beside the batches, atomically."""
    folder.mkdir(parents=True, exist_ok=True)
    temp = folder / f".{LAG_FILE}.tmp"
    temp.write_text(lag.to_json())
    temp.replace(folder / LAG_FILE)


def read_lag(folder: Path) -> Lag | None:
    path = Path(folder) / LAG_FILE
    try:
        return Lag.from_json(path.read_text())
    except (OSError, ValueError, KeyError):
        return None
