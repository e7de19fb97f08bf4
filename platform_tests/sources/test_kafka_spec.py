"""The `source: {kind: kafka, ...}` section: what validates, and errors that name the key at fault."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from mlplatform.core.kafka_consumer import consumer_config
from mlplatform.core.source import SourceError
from mlplatform.specs.loader import SpecError, check_source, validate_spec
from mlplatform.specs.model import KafkaSourceSpec
from platform_tests.sources.kafka_source import kafka_spec_dict

SPEC_PATH = Path("/specs/orders.yaml")


def error_of(raw: dict[str, Any]) -> str:
    with pytest.raises(SpecError) as caught:
        validate_spec(raw, SPEC_PATH)
    return str(caught.value)


def test_a_kafka_source_validates_and_reads_as_landed_parquet() -> None:
    spec = validate_spec(kafka_spec_dict("broker1:9092, broker2:9093"), SPEC_PATH)
    source = spec.source
    assert isinstance(source, KafkaSourceSpec)
    assert (source.format, source.time_from, source.max_records_per_tick) == ("json", "field", 100_000)
    assert spec.source_format == "parquet"
    with pytest.raises(ValueError, match="a kafka source has no file pattern"):
        _ = spec.source_pattern
    config = consumer_config(spec, environ={})
    assert config["bootstrap.servers"] == "broker1:9092,broker2:9093"
    assert config["enable.auto.commit"] is False and config["security.protocol"] == "PLAINTEXT"
    assert "sasl.password" not in config


def test_credentials_come_from_the_environment_only() -> None:
    raw = kafka_spec_dict(bootstrap_servers={"env": "ORDERS_BROKERS"})
    raw["source"]["security"] = {
        "protocol": "SASL_SSL",
        "sasl_mechanism": "SCRAM-SHA-512",
        "username": {"env": "ORDERS_USER"},
        "password": {"env": "ORDERS_PASSWORD"},
        "ca_location": "/etc/ssl/kafka-ca.pem",
    }
    spec = validate_spec(raw, SPEC_PATH)
    environ = {"ORDERS_BROKERS": "k1:9094", "ORDERS_USER": "svc", "ORDERS_PASSWORD": "s3cret"}
    config = consumer_config(spec, environ)
    assert (config["bootstrap.servers"], config["sasl.username"], config["sasl.password"]) == (
        "k1:9094",
        "svc",
        "s3cret",
    )
    assert (config["sasl.mechanism"], config["ssl.ca.location"]) == ("SCRAM-SHA-512", "/etc/ssl/kafka-ca.pem")
    with pytest.raises(
        SourceError, match=r"source\.security\.password: environment variable ORDERS_PASSWORD"
    ):
        consumer_config(spec, {"ORDERS_BROKERS": "k1:9094", "ORDERS_USER": "svc"})
    with pytest.raises(SourceError, match=r"source\.bootstrap_servers: environment variable ORDERS_BROKERS"):
        consumer_config(spec, {})


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"topic": "orders/eu"}, "key 'source.topic': 'orders/eu' is not a Kafka topic name"),
        ({"bootstrap_servers": "localhost"}, "key 'source.bootstrap_servers"),
        ({"format": "avro"}, "key 'source.format'"),
        ({"max_seconds_per_tick": 120}, "key 'source.max_seconds_per_tick'"),
        ({"security": {"protocol": "SASL_SSL"}}, "protocol SASL_SSL needs sasl_mechanism, username"),
        ({"security": {"username": {"env": "U"}}}, "username only apply to the SASL protocols"),
        (
            {
                "security": {
                    "protocol": "SASL_PLAINTEXT",
                    "sasl_mechanism": "PLAIN",
                    "username": "me",
                    "password": {"env": "P"},
                }
            },
            "key 'source.security.username'",
        ),
        ({"group_id": "x"}, "key 'source.group_id': unknown key"),
    ],
)
def test_a_wrong_source_key_is_named(change: dict[str, Any], message: str) -> None:
    raw = kafka_spec_dict()
    raw["source"].update(change)
    assert message in error_of(raw)


def test_an_unknown_kind_lists_the_known_ones() -> None:
    raw = kafka_spec_dict()
    raw["source"]["kind"] = "pulsar"
    assert "unknown source kind 'pulsar' (use files, postgres or kafka)" in error_of(raw)


def test_the_record_timestamp_cannot_fill_a_derived_time() -> None:
    raw = kafka_spec_dict(time_from="record_timestamp")
    raw["derived"] = {"ts": "strptime(stamp, '%Y')"}
    assert "source.time_from: record_timestamp fills it" in error_of(raw)


def test_definitions_never_read_the_broker_so_the_partitions_start_where_the_spec_says() -> None:
    spec = validate_spec(kafka_spec_dict("127.0.0.1:1"), SPEC_PATH)  # nothing listens there
    probe = check_source(spec)
    assert probe.files == () and probe.time_min is None
    assert probe.columns == ("ts", "id", "amount", "kind")
    raw = kafka_spec_dict()
    del raw["partitions"]
    with pytest.raises(SpecError, match=r"key 'partitions\.start': no data found in topic orders"):
        check_source(validate_spec(raw, SPEC_PATH))
