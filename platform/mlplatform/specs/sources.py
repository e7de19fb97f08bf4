"""The `source` section of a dataset spec: files (the default) or a Postgres table or query."""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import Discriminator, Field, Tag, field_validator, model_validator

from mlplatform.specs.strict import Strict as _Strict

_ENV_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_TABLE_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_$]*(\.[A-Za-z_][A-Za-z0-9_$]*)?$")


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


def _source_kind(raw: Any) -> str:
    """The model a `source` mapping is read with: its `kind`, files when it has none."""
    kind = raw.get("kind", "files") if isinstance(raw, dict) else getattr(raw, "kind", "files")
    return str(kind)  # an unknown kind is refused naming the known ones


SOURCE_KINDS = ("files", "postgres")
AnySource = Annotated[
    Annotated[SourceSpec, Tag("files")] | Annotated[PostgresSourceSpec, Tag("postgres")],
    Discriminator(_source_kind),
]
