"""The `source: {kind: postgres, ...}` section: what validates, and errors as clear as the file ones."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from mlplatform.specs.loader import SpecError, validate_spec
from mlplatform.specs.model import PostgresSourceSpec, SourceSpec


def postgres_spec_dict(**source: Any) -> dict[str, Any]:
    """A small spec over a table `trips`: ts (the time and the incremental column), zone, rides (target)."""
    return {
        "name": "trips",
        "source": {"kind": "postgres", "dsn": {"env": "TRIPS_DSN"}, "table": "trips", **source},
        "time_column": "ts",
        "columns": {
            "ts": {"type": "timestamp", "nullable": False},
            "zone": {"type": "category", "allowed": ["north", "south"]},
            "rides": {"type": "float", "nullable": False, "min": 0},
        },
        "target": {"column": "rides", "task": "regression"},
        "partitions": {"end": "open"},
    }


def error_of(raw: dict[str, Any]) -> str:
    with pytest.raises(SpecError) as caught:
        validate_spec(raw, Path("/specs/trips.yaml"))
    return str(caught.value)


def test_a_postgres_source_validates_and_reads_as_parquet() -> None:
    spec = validate_spec(postgres_spec_dict(incremental_column="ts"), Path("/specs/trips.yaml"))
    assert isinstance(spec.source, PostgresSourceSpec)
    assert spec.source.relation == '"trips"' and spec.source.batch_rows == 100_000
    assert spec.source_format == "parquet"
    with pytest.raises(ValueError, match="a postgres source has no file pattern"):
        _ = spec.source_pattern
    schema_table = postgres_spec_dict(table="sales.trips", incremental_column="ts")
    source = validate_spec(schema_table, Path("/s.yaml")).source
    assert isinstance(source, PostgresSourceSpec) and source.relation == '"sales"."trips"'


def test_the_query_form_is_read_as_a_subquery() -> None:
    raw = postgres_spec_dict(incremental_column="ts", query="SELECT * FROM trips WHERE zone <> 'x';")
    del raw["source"]["table"]
    source = validate_spec(raw, Path("/s.yaml")).source
    assert isinstance(source, PostgresSourceSpec)
    assert source.relation == "(SELECT * FROM trips WHERE zone <> 'x') AS _source_query"


def test_file_sources_are_unchanged_and_default_to_files() -> None:
    raw = postgres_spec_dict()
    raw["source"] = {"path": "data/*.csv"}
    spec = validate_spec(raw, Path("/specs/trips.yaml"))
    assert isinstance(spec.source, SourceSpec) and spec.source.kind == "files"
    assert spec.source_pattern == "/specs/data/*.csv"


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        (
            {"dsn": "postgresql://me:secret@db/prod", "incremental_column": "ts"},
            "key 'source.dsn': write `dsn: {env: VARIABLE}`",
        ),
        (
            {"dsn": {"env": "NOT A NAME"}, "incremental_column": "ts"},
            "key 'source.dsn.env': 'NOT A NAME' is not",
        ),
        ({}, "key 'source.incremental_column': required key is missing"),
        (
            {"incremental_column": "ts", "query": "SELECT 1"},
            "key 'source': give exactly one of `table` or `query`",
        ),
        (
            {"incremental_column": "ts", "table": "trips; DROP TABLE x"},
            "key 'source.table': 'trips; DROP TABLE x'",
        ),
        ({"incremental_column": "ts", "path": "x.csv"}, "key 'source.path': unknown key"),
        ({"incremental_column": "ts", "batch_rows": 0}, "key 'source.batch_rows'"),
        ({"kind": "mysql"}, "key 'source.kind': unknown source kind 'mysql' (use files, postgres or kafka)"),
    ],
)
def test_bad_postgres_sources_name_the_key(source: dict[str, Any], expected: str) -> None:
    raw = postgres_spec_dict()
    raw["source"] = {**raw["source"], **source}
    message = error_of(raw)
    assert message.startswith("spec file /specs/trips.yaml: ") and expected in message
    assert "secret" not in message


def test_a_query_holding_more_than_one_statement_is_refused() -> None:
    raw = postgres_spec_dict(incremental_column="ts", query="SELECT * FROM trips; DELETE FROM trips")
    del raw["source"]["table"]
    assert "key 'source.query': the query must be one SELECT statement" in error_of(raw)


def test_a_derived_time_column_is_refused_for_a_database_source() -> None:
    raw = postgres_spec_dict(incremental_column="ts")
    raw["derived"] = {"hour_ts": "date_trunc('hour', ts)"}
    raw["time_column"] = "hour_ts"
    assert "time_column: 'hour_ts' is derived, but a postgres source needs a column" in error_of(raw)
