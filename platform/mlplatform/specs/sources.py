"""The `source` section of a dataset spec: files (the default), a Postgres table or query, a Kafka topic."""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import Discriminator, Field, Tag, field_validator, model_validator

from mlplatform.specs.strict import Strict as _Strict

_ENV_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_TABLE_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_$]*(\.[A-Za-z_][A-Za-z0-9_$]*)?$")
_TOPIC_RE = re.compile(r"^[A-Za-z0-9._-]{1,249}$")  # what Kafka accepts as a topic name
_SERVERS_RE = re.compile(r"^[A-Za-z0-9.\[\]:_-]+:\d+(,[A-Za-z0-9.\[\]:_-]+:\d+)*$")
# Dagster times a sensor evaluation out after 60 s: a tick must stop consuming well before that.
MAX_SECONDS_PER_TICK = 50.0


class SourceSpec(_Strict):
    """Files: one path or a glob, CSV or Parquet."""

    kind: Literal["files"] = "files"
    path: str
    format: Literal["csv", "parquet"] | None = None
    # Explicit, not sniffed: a file with malformed lines can fool a delimiter sniffer.
    delimiter: str = Field(default=",", min_length=1, max_length=1)

    @property
    def is_glob(self) -> bool:
        return any(ch in self.path for ch in "*?[")


class EnvReference(_Strict):
    """A value read from the environment when it is used, never written in the spec (credentials)."""

    env: str

    @field_validator("env")
    @classmethod
    def _env_name(cls, value: str) -> str:
        if not _ENV_NAME_RE.match(value):
            raise ValueError(f"{value!r} is not an environment variable name (letters, digits and '_')")
        return value


class PostgresSourceSpec(_Strict):
    """A Postgres table or query, extracted incrementally by `incremental_column` into Parquet files
    under the platform home (mlplatform.core.database_source) that the file chain then loads."""

    kind: Literal["postgres"]
    dsn: EnvReference  # a postgresql:// URI in that environment variable
    table: str | None = None
    query: str | None = None
    # Rows are taken when this column (a timestamp or integer; not a date) passes the last value landed.
    incremental_column: str
    batch_rows: int = Field(default=100_000, gt=0)

    @field_validator("table")
    @classmethod
    def _table_name(cls, value: str | None) -> str | None:
        if value is not None and not _TABLE_RE.match(value):
            raise ValueError(
                f"{value!r} is not a table name: use table or schema.table (letters, digits, '_')"
            )
        return value

    @field_validator("query")
    @classmethod
    def _one_select(cls, value: str | None) -> str | None:
        if value is None:
            return value
        query = value.strip().rstrip(";").strip()
        if not query or ";" in query:
            raise ValueError("the query must be one SELECT statement (it is read as a subquery)")
        return query

    @model_validator(mode="after")
    def _table_or_query(self) -> PostgresSourceSpec:
        if (self.table is None) == (self.query is None):
            raise ValueError("give exactly one of `table` or `query`")
        return self

    @property
    def relation(self) -> str:
        """SQL naming the rows: the quoted table, or the query as a subquery."""
        if self.table is not None:
            return ".".join('"' + part + '"' for part in self.table.split("."))
        return f"({self.query}) AS _source_query"

    @property
    def described(self) -> str:
        return f"table {self.table}" if self.table is not None else "the source query"


class KafkaSecurity(_Strict):
    """How the consumer authenticates: the protocol, and for SASL the user and password, both read from
    the environment when the sensor connects (never written in the spec)."""

    protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = None
    username: EnvReference | None = None
    password: EnvReference | None = None
    ca_location: str | None = None  # a CA certificate file for SSL (a path, not a secret)

    @model_validator(mode="after")
    def _sasl_needs_credentials(self) -> KafkaSecurity:
        sasl = self.protocol.startswith("SASL")
        given = [name for name in ("sasl_mechanism", "username", "password") if getattr(self, name)]
        if sasl and len(given) < 3:
            raise ValueError(
                f"protocol {self.protocol} needs sasl_mechanism, username: {{env: VAR}} and password: "
                "{env: VAR}"
            )
        if not sasl and given:
            raise ValueError(f"{', '.join(given)} only apply to the SASL protocols (not {self.protocol})")
        return self


class KafkaSourceSpec(_Strict):
    """A Kafka topic: `<ds>__kafka_sensor` consumes it by explicit partition offsets (its cursor) and lands
    micro-batch Parquet files that the file chain then loads (mlplatform.core.kafka_batches)."""

    kind: Literal["kafka"]
    bootstrap_servers: str | EnvReference  # host:port[,host:port...], or {env: VAR} holding that list
    topic: str
    format: Literal["json"] = "json"  # each record's value is a JSON object keyed by the spec's columns
    # Where the time column's value comes from: the record's own field, or the Kafka record timestamp.
    time_from: Literal["field", "record_timestamp"] = "field"
    security: KafkaSecurity = KafkaSecurity()
    max_records_per_tick: int = Field(default=100_000, gt=0)
    max_seconds_per_tick: float = Field(default=20.0, gt=0, le=MAX_SECONDS_PER_TICK)

    @field_validator("topic")
    @classmethod
    def _topic_name(cls, value: str) -> str:
        if not _TOPIC_RE.match(value) or value in (".", ".."):
            raise ValueError(f"{value!r} is not a Kafka topic name (letters, digits, '.', '_', '-')")
        return value

    @field_validator("bootstrap_servers")
    @classmethod
    def _servers(cls, value: str | EnvReference) -> str | EnvReference:
        if isinstance(value, str) and not _SERVERS_RE.match(value.replace(" ", "")):
            raise ValueError(f"{value!r} is not a host:port list (e.g. broker1:9092,broker2:9092)")
        return value

    @property
    def described(self) -> str:
        return f"topic {self.topic}"


def _source_kind(raw: Any) -> str:
    """The model a `source` mapping is read with: its `kind`, files when it has none."""
    kind = raw.get("kind", "files") if isinstance(raw, dict) else getattr(raw, "kind", "files")
    return str(kind)  # an unknown kind is refused naming the known ones


SOURCE_KINDS = ("files", "postgres", "kafka")
AnySource = Annotated[
    Annotated[SourceSpec, Tag("files")]
    | Annotated[PostgresSourceSpec, Tag("postgres")]
    | Annotated[KafkaSourceSpec, Tag("kafka")],
    Discriminator(_source_kind),
]
# Sources whose records are landed as Parquet files under the platform home before the file chain reads them.
LANDED_SOURCES = (PostgresSourceSpec, KafkaSourceSpec)
