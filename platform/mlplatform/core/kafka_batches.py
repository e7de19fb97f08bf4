"""Landing consumed Kafka records as micro-batch Parquet files, named by their offset range.

A batch holds the records of one topic partition, offsets `first..last`, and is named
`<topic>+p<partition>+<first>-<last>.parquet`; its footer holds the same range, the records consumed
and when it was landed. Files are written to a temp name and renamed: a batch is whole or absent.

The sensor's cursor (offsets per partition, mlplatform.core.kafka_cursor) is the single source of
truth. A batch at or past a partition's cursor was written by a tick whose cursor never got saved (the
process died between the two): its offsets are consumed again from the cursor, at least to the end of
the first such batch (`past_cursor`), and the records are cut at the batches' bounds, so a re-consumed
batch replaces itself under its own name; what follows is a new batch. A batch the records no longer
fill exactly (a compacted topic) is removed before the new batches are written, so no offset is ever
in two files. A tick that stops before the end of such a batch (out of time, or bounded) lands the
partition only up to it; the next tick reads it to its end. A file that starts before the position
consumed from but reaches past it (the cursor was lost and the topic's first offsets are gone) is
kept, and the records it holds are not landed again.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from mlplatform.core.accounting import FileCount
from mlplatform.core.database_landing import count_landed_files
from mlplatform.core.kafka_cursor import read_lag
from mlplatform.core.kafka_records import KafkaRecord, TimeFrom, records_table

FOOTER_KEY = b"mlplatform.kafka_batch"
_NAME_RE = re.compile(
    r"^(?P<topic>[A-Za-z0-9._-]+)\+p(?P<partition>\d+)\+(?P<first>\d+)-(?P<last>\d+)\.parquet$"
)


@dataclass(frozen=True, order=True)
class BatchRange:
    """The offsets `first..last` (inclusive) of one topic partition."""

    topic: str
    partition: int
    first: int
    last: int

    @property
    def file_name(self) -> str:
        return f"{self.topic}+p{self.partition}+{self.first}-{self.last}.parquet"

    @classmethod
    def parse(cls, name: str) -> BatchRange | None:
        """The range a batch file name gives, or None for any other file."""
        match = _NAME_RE.match(name)
        if match is None:
            return None
        first, last = int(match["first"]), int(match["last"])
        return cls(match["topic"], int(match["partition"]), first, last) if first <= last else None


@dataclass(frozen=True)
class LandedBatch:
    path: str
    range: BatchRange
    records: int | None  # records consumed into it (one row each, bad ones included); None: unreadable
    landed_at: str


def _batch(path: Path, batch_range: BatchRange) -> LandedBatch:
    """The batch at `path`, its footer read if the file can be (its range is its name)."""
    try:
        metadata = pq.read_schema(path).metadata or {}
        footer = json.loads(metadata[FOOTER_KEY]) if FOOTER_KEY in metadata else {}
    except (OSError, pa.ArrowException, ValueError):
        footer = {"records": None}  # a broken file: the file chain quarantines it, naming it
    records = footer.get("records")
    return LandedBatch(
        str(path),
        batch_range,
        records if isinstance(records, int) else None,
        str(footer.get("landed_at", "")),
    )


def landed_batches(folder: Path, topic: str | None = None) -> list[LandedBatch]:
    """Every batch file of `folder` (of `topic` when given), by topic, partition and offset."""
    batches = []
    for path in Path(folder).resolve().glob("*+p*+*-*.parquet"):
        batch_range = BatchRange.parse(path.name)
        if batch_range is not None and (topic is None or batch_range.topic == topic):
            batches.append(_batch(path, batch_range))
    return sorted(batches, key=lambda b: b.range)


def _partition_files(folder: Path, topic: str, partition: int) -> list[tuple[BatchRange, Path]]:
    found = []
    for path in Path(folder).glob(f"{topic}+p{partition}+*-*.parquet"):  # a topic name holds no glob sign
        batch_range = BatchRange.parse(path.name)
        if batch_range is not None and (batch_range.topic, batch_range.partition) == (topic, partition):
            found.append((batch_range, path))
    return sorted(found)


def remove_unfinished(folder: Path) -> list[Path]:
    """Temp files a tick left when it died while writing: they were never a batch."""
    leftovers = sorted(Path(folder).glob(".*.parquet.tmp"))
    for path in leftovers:
        path.unlink(missing_ok=True)
    return leftovers


def _sync(path: Path) -> None:
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def write_batch(folder: Path, batch_range: BatchRange, table: pa.Table) -> LandedBatch:
    """Write `table` as the batch of `batch_range`, atomically (temp file, then rename)."""
    landed_at = datetime.now(UTC).isoformat(timespec="seconds")
    footer = {
        "topic": batch_range.topic,
        "partition": batch_range.partition,
        "first_offset": batch_range.first,
        "last_offset": batch_range.last,
        "records": table.num_rows,
        "landed_at": landed_at,
    }
    table = table.replace_schema_metadata({**(table.schema.metadata or {}), FOOTER_KEY: json.dumps(footer)})
    path = Path(folder) / batch_range.file_name
    temp = path.with_name(f".{path.name}.tmp")
    pq.write_table(table, temp)
    _sync(temp)  # on disk before the rename, and the rename before the cursor moves past it
    os.replace(temp, path)
    _sync(path.parent)
    return LandedBatch(str(path.resolve()), batch_range, table.num_rows, landed_at)


@dataclass(frozen=True)
class PartitionLanding:
    """What landing one partition's consumed records did."""

    partition: int
    batches: tuple[LandedBatch, ...]  # written now, by offset
    replaced: tuple[str, ...]  # batches past the cursor (a tick died after writing them) landed again
    superseded: tuple[str, ...]  # batches past the cursor removed: their offsets are in other batches now
    already_landed: int  # records read again but kept in a batch that starts before them
    next_offset: int  # the partition's cursor after this landing
    held_back: int = 0  # records read but not landed: they reach into a batch not read to its end


def past_cursor(folder: Path, topic: str, offsets: Mapping[int, int]) -> dict[int, int]:
    """Per partition, the offset after the first batch landed at or past its cursor offset (0 for a
    partition the cursor does not name): such a batch was written by a tick that died before saving its
    cursor, and the next tick reads at least that far, so that it is landed again under its own name.
    Later ones follow, one per tick at least (landing stops before a batch it did not read to its end)."""
    ends: dict[int, int] = {}
    found = (BatchRange.parse(path.name) for path in Path(folder).glob(f"{topic}+p*+*-*.parquet"))
    for batch_range in sorted(r for r in found if r is not None and r.topic == topic):
        partition = batch_range.partition
        if partition not in ends and batch_range.first >= offsets.get(partition, 0):
            ends[partition] = batch_range.last + 1
    return ends


def _chunks(records: Sequence[KafkaRecord], ranges: Sequence[BatchRange]) -> list[list[KafkaRecord]]:
    """`records` cut at the bounds of `ranges`: the records inside each range, and each run between."""
    if not ranges:
        return [list(records)] if records else []
    chunks: list[list[KafkaRecord]] = []
    owner: BatchRange | None = None
    for record in records:
        inside = next((r for r in ranges if r.first <= record.offset <= r.last), None)
        if not chunks or inside != owner:
            chunks.append([])
        chunks[-1].append(record)
        owner = inside
    return chunks


def land_partition(
    folder: Path,
    records: Sequence[KafkaRecord],
    columns: Sequence[str],
    time_column: str,
    time_from: TimeFrom,
) -> PartitionLanding:
    """Land one partition's records (ascending offsets, from the position consumed from), cut so that a
    batch landed past the cursor before is landed again under its own name (see the module's rule)."""
    topic, partition, start = records[0].topic, records[0].partition, records[0].offset
    own = _partition_files(folder, topic, partition)  # by name only: no footer is read
    keep_from = max([start, *(r.last + 1 for r, _ in own if r.first < start <= r.last)])
    # A batch past this position that reaches beyond what was read (the tick ran out of time, or had no
    # cursor for the partition) is left as it is: landing stops before it, and the next tick reads on
    # from there, to its end at least.
    beyond = [r.first for r, _ in own if r.first >= keep_from and r.last > records[-1].offset]
    stop = min(beyond, default=records[-1].offset + 1)
    orphans = [(r, path) for r, path in own if keep_from <= r.first < stop]
    fresh = [r for r in records if keep_from <= r.offset < stop]
    cut = _chunks(fresh, [r for r, _ in orphans])
    chunks = [(BatchRange(topic, partition, c[0].offset, c[-1].offset), c) for c in cut]
    names = {batch_range.file_name for batch_range, _ in chunks}
    superseded = [path for r, path in orphans if path.name not in names]
    for path in superseded:  # first: no offset is ever in two files, even if this tick dies now
        path.unlink(missing_ok=True)
    batches = [write_batch(folder, r, records_table(c, columns, time_column, time_from)) for r, c in chunks]
    return PartitionLanding(
        partition,
        tuple(batches),
        tuple(path.name for r, path in orphans if path.name in names),
        tuple(path.name for path in superseded),
        sum(1 for r in records if r.offset < keep_from),
        max(stop, keep_from),
        sum(1 for r in records if r.offset >= max(stop, keep_from)),
    )


def land_records(
    folder: Path,
    records: Mapping[int, Sequence[KafkaRecord]],
    columns: Sequence[str],
    time_column: str,
    time_from: TimeFrom,
) -> list[PartitionLanding]:
    """Land each partition's records (see the module's rule); partitions without records are left alone."""
    folder.mkdir(parents=True, exist_ok=True)
    remove_unfinished(folder)
    return [
        land_partition(folder, records[partition], columns, time_column, time_from)
        for partition in sorted(records)
        if records[partition]
    ]


def landed_counts(folder: Path) -> dict[str, FileCount]:
    """Each landed file's records for the raw stage's accounting: the records the consumer put in it (as
    its footer says; any other Parquet file, or one that cannot be read, is counted as Parquet)."""
    consumed = {b.path: b.records for b in landed_batches(folder) if b.records is not None}
    return count_landed_files(folder, consumed)


def landing_summary(folder: Path, topic: str) -> dict[str, int | str]:
    """What the raw asset says of the landing: the batches and records landed, the offsets they span per
    partition, and the lag the sensor measured at its last tick (and when)."""
    batches = landed_batches(folder, topic)
    spans: dict[int, tuple[int, int]] = {}
    for batch in batches:
        first, last = spans.get(batch.range.partition, (batch.range.first, batch.range.last))
        spans[batch.range.partition] = (min(first, batch.range.first), max(last, batch.range.last))
    lag = read_lag(folder)
    summary: dict[str, int | str] = {
        "kafka_topic": topic,
        "kafka_batches_landed": len(batches),
        "kafka_records_landed": sum(b.records or 0 for b in batches),
        "kafka_offsets_landed": ", ".join(f"p{p} {a}..{b}" for p, (a, b) in sorted(spans.items())) or "none",
        "kafka_lag": "not measured yet (no tick of the kafka sensor)",
    }
    if lag is not None and lag.topic == topic:
        summary.update(
            kafka_lag=lag.describe(), kafka_lag_records=lag.total, kafka_lag_measured_at=lag.measured_at
        )
    return summary
