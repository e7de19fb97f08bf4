"""Reading a Kafka topic by explicit offsets with confluent-kafka (the `kafka` extra). No Dagster.

The consumer never joins a group and never commits: each tick lists the topic's partitions (a partition
added since the last tick is read from its beginning), assigns them all at the cursor's offsets and
reads until every partition is at its end, `max_records_per_tick` records were read or
`max_seconds_per_tick` passed. The group id librdkafka requires is only a label here.

Credentials come from the environment variables the spec names, never from the spec. Errors are one
line naming the broker list and the topic (a SourceError), raised `from None`.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from mlplatform.core.kafka_cursor import KafkaCursor
from mlplatform.core.kafka_records import KafkaRecord
from mlplatform.core.source import SourceError
from mlplatform.specs.model import DatasetSpec, KafkaSourceSpec
from mlplatform.specs.sources import EnvReference

METADATA_TIMEOUT_SECONDS = 10.0
MESSAGES_PER_POLL = 10_000
WATERMARK_SETTLE_SECONDS = 1.0
# consume() waits this long for a full batch: short, so a tick ends soon after the last partition's end.
POLL_SECONDS = 0.1
_LOG = logging.getLogger("mlplatform.kafka")
# Errors that no retry inside the tick repairs: the tick fails (naming them) and the cursor stays.
_FATAL_CODES = (
    "_ALL_BROKERS_DOWN",
    "UNKNOWN_TOPIC_OR_PART",
    "_UNKNOWN_TOPIC",
    "_UNKNOWN_PARTITION",
    "TOPIC_AUTHORIZATION_FAILED",
    "_AUTHENTICATION",
    "SASL_AUTHENTICATION_FAILED",
    "_SSL",
)


def kafka_source(spec: DatasetSpec) -> KafkaSourceSpec:
    if not isinstance(spec.source, KafkaSourceSpec):
        raise TypeError(f"{spec.name}: not a kafka source")
    return spec.source


def _from_env(key: str, reference: EnvReference, environ: Mapping[str, str], what: str) -> str:
    value = environ.get(reference.env, "")
    if not value:
        raise SourceError(f"{key}: environment variable {reference.env} is not set: it must hold {what}")
    return value


def bootstrap_servers(spec: DatasetSpec, environ: Mapping[str, str] | None = None) -> str:
    servers = kafka_source(spec).bootstrap_servers
    if isinstance(servers, str):
        return servers.replace(" ", "")
    what = f"the host:port list of {spec.name}'s Kafka brokers"
    return _from_env("source.bootstrap_servers", servers, os.environ if environ is None else environ, what)


def consumer_config(spec: DatasetSpec, environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """librdkafka settings: explicit offsets only (no commits, no group), the spec's security."""
    source, env = kafka_source(spec), os.environ if environ is None else environ
    security = source.security
    config: dict[str, Any] = {
        "bootstrap.servers": bootstrap_servers(spec, env),
        "group.id": f"mlplatform.{spec.name}",  # required by the client; no group is ever joined
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        "enable.partition.eof": True,  # how a tick knows a partition is read to its end
        "auto.offset.reset": "earliest",  # an offset gone (retention): from the first one kept
        "isolation.level": "read_committed",
        "fetch.wait.max.ms": 100,  # an idle partition answers (end of partition) quickly: short ticks
        "security.protocol": security.protocol,
        "logger": _LOG,
        # Critical only: a broker that is down is the tick's one-line error, not a retry log per 100 ms.
        "log_level": 2,
    }
    if security.ca_location:
        config["ssl.ca.location"] = security.ca_location
    if security.sasl_mechanism and security.username and security.password:
        config["sasl.mechanism"] = security.sasl_mechanism
        config["sasl.username"] = _from_env("source.security.username", security.username, env, "the user")
        config["sasl.password"] = _from_env(
            "source.security.password", security.password, env, "the password"
        )
    return config


@dataclass
class Consumed:
    """What one tick read."""

    partitions: list[int]  # the topic's partitions, as its metadata listed them
    records: dict[int, list[KafkaRecord]] = field(default_factory=dict)  # ascending offsets
    next_offsets: dict[int, int] = field(default_factory=dict)  # after the last record read
    high_watermarks: dict[int, int] = field(default_factory=dict)
    stopped_by: str = "every partition read to its end"

    @property
    def count(self) -> int:
        return sum(len(r) for r in self.records.values())


def _where(spec: DatasetSpec, servers: str) -> str:
    return f"kafka at {servers} (topic {kafka_source(spec).topic})"


def _failure(spec: DatasetSpec, servers: str, error: Any) -> SourceError:
    text = " ".join(str(error.str() if hasattr(error, "str") else error).split())
    return SourceError(f"source: cannot read {_where(spec, servers)}: {text}")


def _restarted(spec: DatasetSpec, servers: str, partition: int, what: str, expected: int) -> SourceError:
    """A partition whose offsets went back below the cursor: they were reused (the topic was deleted and
    created again, or its log truncated). Landing them would replace batches of other records."""
    return SourceError(
        f"source.topic: {_where(spec, servers)}: partition {partition} {what}, before the cursor's "
        f"{expected} (was the topic deleted and created again?); to read it from the start, move the landed "
        "batches of the old topic out of the landing folder and reset the sensor's cursor"
    )


def topic_partitions(consumer: Any, spec: DatasetSpec, servers: str, timeout: float) -> list[int]:
    """The topic's partitions now; an unreachable broker or a missing topic is a SourceError."""
    from confluent_kafka import KafkaException

    topic = kafka_source(spec).topic
    try:
        metadata = consumer.list_topics(topic, timeout=timeout)
    except KafkaException as exc:
        raise _failure(spec, servers, exc.args[0]) from None
    listed = metadata.topics.get(topic)
    if listed is None or listed.error is not None:
        why = listed.error.str() if listed is not None and listed.error is not None else "not listed"
        raise SourceError(f"source.topic: {_where(spec, servers)} cannot be read: {why}") from None
    return sorted(listed.partitions)


def _watermarks(
    consumer: Any, topic: str, partitions: list[int], at_end: Mapping[int, int], clock: Callable[[], float]
) -> dict[int, int]:
    """Each partition's high watermark: where it was read to its end, else what its last fetch said.

    A partition the tick stopped before fetching (the bound was reached on the others) gets a moment to
    be fetched; a record that poll returns then is not landed (the cursor does not include it: it is
    read again next tick). Failing that, the broker is asked (ListOffsets)."""
    from confluent_kafka import KafkaException, TopicPartition

    high, settle_until = dict(at_end), clock() + WATERMARK_SETTLE_SECONDS
    missing = [p for p in partitions if p not in high]
    while missing:
        for partition in list(missing):
            _, cached = consumer.get_watermark_offsets(TopicPartition(topic, partition), cached=True)
            if cached is not None and cached >= 0:
                high[partition] = cached
                missing.remove(partition)
        if not missing or clock() >= settle_until:
            break
        consumer.poll(0.05)
    for partition in missing:
        try:
            _, asked = consumer.get_watermark_offsets(TopicPartition(topic, partition), timeout=2.0)
        except KafkaException:  # the lag is then reported unknown for it; it decides nothing
            continue
        if asked is not None and asked >= 0:
            high[partition] = asked
    return high


def _consumer(spec: DatasetSpec, config: dict[str, Any]) -> Any:
    """The client; a setting it refuses (an SSL CA file that is not there) is the tick's one-line error."""
    from confluent_kafka import Consumer, KafkaException

    try:
        return Consumer(config)
    except KafkaException as exc:
        raise _failure(spec, config["bootstrap.servers"], exc.args[0]) from None


def consume(
    spec: DatasetSpec,
    cursor: KafkaCursor,
    read_to: Mapping[int, int] | None = None,
    environ: Mapping[str, str] | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> Consumed:
    """Read what arrived past `cursor`, within the spec's bounds per tick; a partition of `read_to` is
    read at least to that offset (past `max_records_per_tick`; the time bound still holds)."""
    try:
        from confluent_kafka import OFFSET_BEGINNING, KafkaException, TopicPartition
    except ImportError:
        raise SourceError(
            "source.kind: a kafka source needs the confluent-kafka client: pip install 'mlplatform[kafka]'"
        ) from None
    source = kafka_source(spec)
    config = consumer_config(spec, environ)
    servers = config["bootstrap.servers"]
    deadline = clock() + source.max_seconds_per_tick
    consumer = _consumer(spec, config)
    try:
        timeout = min(METADATA_TIMEOUT_SECONDS, source.max_seconds_per_tick)
        consumed = Consumed(topic_partitions(consumer, spec, servers, timeout))
        starts = {p: cursor.offsets.get(p, OFFSET_BEGINNING) for p in consumed.partitions}
        consumer.assign([TopicPartition(source.topic, p, offset) for p, offset in starts.items()])
        reading = _Reading(spec, servers, cursor, consumed, dict(read_to or {}))
        at_end = reading.read(consumer, deadline, clock)
        consumed.high_watermarks = _watermarks(consumer, source.topic, consumed.partitions, at_end, clock)
    except KafkaException as exc:  # the client's own refusals: one line too, not a traceback
        raise _failure(spec, servers, exc.args[0]) from None
    finally:
        consumer.close()
    return consumed


@dataclass
class _Reading:
    """One tick's polling: which partitions are at their end, which are closed (the record bound was
    reached and they owe nothing to `read_to`: their later records are left for the next tick)."""

    spec: DatasetSpec
    servers: str
    cursor: KafkaCursor
    consumed: Consumed
    read_to: dict[int, int]
    at_end: dict[int, int] = field(default_factory=dict)
    closed: set[int] = field(default_factory=set)
    warned: set[str] = field(default_factory=set)
    bound: int = 0  # max_records_per_tick

    def position(self, partition: int) -> int:
        return self.consumed.next_offsets.get(partition, self.cursor.offsets.get(partition, 0))

    def open_partitions(self) -> list[int]:
        return [p for p in self.consumed.partitions if p not in self.at_end and p not in self.closed]

    def short(self, partition: int) -> bool:
        """Not yet read to its `read_to` offset."""
        return self.position(partition) < self.read_to.get(partition, -1)

    def close_if_bounded(self) -> None:
        """At the record bound, every partition but those short of `read_to` is closed."""
        if self.consumed.count >= self.bound:
            self.closed |= {p for p in self.consumed.partitions if not self.short(p)}
            self.consumed.stopped_by = "max_records_per_tick"

    def read(self, consumer: Any, deadline: float, clock: Callable[[], float]) -> dict[int, int]:
        """Poll until every partition is at its end or closed, or time is up; returns the ends."""
        self.bound = kafka_source(self.spec).max_records_per_tick
        while True:
            self.close_if_bounded()
            left = deadline - clock()
            if not self.open_partitions() or left <= 0:
                if left <= 0 and self.open_partitions():
                    self.consumed.stopped_by = "max_seconds_per_tick"
                return self.at_end
            wanted = min(max(self.bound - self.consumed.count, 1), MESSAGES_PER_POLL)
            if self.closed:  # reading on only for `read_to`: the others' records are dropped
                wanted = MESSAGES_PER_POLL
            messages = consumer.consume(wanted, timeout=min(left, POLL_SECONDS))
            for message in messages:
                self.take(message)
            if not messages:
                _check_ends(consumer, self.spec, self.servers, self.cursor, self.consumed, self.at_end)

    def take(self, message: Any) -> None:
        error, partition = message.error(), message.partition()
        if error is None:
            self.close_if_bounded()  # per record: a poll may bring more than the bound needs
            if partition not in self.closed:
                _take(message, self.spec, self.servers, self.cursor, self.consumed)
                self.at_end.pop(partition, None)
        elif error.name() == "_PARTITION_EOF":
            self.at_end[partition] = message.offset()
        elif error.fatal() or error.name() in _FATAL_CODES:
            raise _failure(self.spec, self.servers, error)
        elif error.str() not in self.warned:  # transient (a broker restarting): the client retries
            self.warned.add(error.str())
            _LOG.warning(f"{_where(self.spec, self.servers)}: {error.str()}")


def _take(message: Any, spec: DatasetSpec, servers: str, cursor: KafkaCursor, consumed: Consumed) -> None:
    """One record into `consumed`; a partition whose first record comes before the cursor is refused."""
    partition, offset = message.partition(), message.offset()
    if partition not in consumed.records and offset < cursor.offsets.get(partition, 0):
        raise _restarted(
            spec, servers, partition, f"starts again at offset {offset}", cursor.offsets[partition]
        )
    stamp_type, stamp = message.timestamp()
    record = KafkaRecord(message.topic(), partition, offset, stamp if stamp_type else None, message.value())
    consumed.records.setdefault(partition, []).append(record)
    consumed.next_offsets[partition] = offset + 1


def _check_ends(
    consumer: Any,
    spec: DatasetSpec,
    servers: str,
    cursor: KafkaCursor,
    consumed: Consumed,
    at_end: Mapping[int, int],
) -> None:
    """While idle: a partition whose end (as its last fetch said) is before the cursor was truncated or
    created again. Some brokers answer a fetch past the end with nothing rather than an offset error."""
    from confluent_kafka import TopicPartition

    topic = kafka_source(spec).topic
    for partition in consumed.partitions:
        expected = cursor.offsets.get(partition, 0)
        if partition in at_end or partition in consumed.records or not expected:
            continue
        _, high = consumer.get_watermark_offsets(TopicPartition(topic, partition), cached=True)
        if high is not None and 0 <= high < expected:
            raise _restarted(spec, servers, partition, f"ends at offset {high}", expected)
