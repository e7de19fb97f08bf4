"""`typed_expression` over every source type the loaders meet: the same strict rules as for text.

Each row: a value of a DuckDB type, the spec type, and what it must become (None: does not fit, so
the row is quarantined with "cannot parse"). Times come out as naive UTC whatever the session zone.
"""

from __future__ import annotations

import math
from datetime import date, datetime
from pathlib import Path

import duckdb
import pytest

from mlplatform.core.cleaning import clean_window
from mlplatform.core.source import source_files, stage_source
from mlplatform.core.sql import source_kind, typed_expression
from mlplatform.core.warehouse import replace_window
from mlplatform.specs.model import DatasetSpec

NAN = float("nan")
TABLE: list[tuple[str, str, object]] = [
    # int columns: integral values of any numeric type; nothing rounded, nothing wrapped
    ("'7'::VARCHAR", "int", 7),
    ("' -7 '::VARCHAR", "int", -7),
    ("'1.5'::VARCHAR", "int", None),
    ("'2.0'::VARCHAR", "int", 2),  # how pandas writes an int column with gaps
    ("'-3.00'::VARCHAR", "int", -3),
    ("'1e3'::VARCHAR", "int", None),
    ("'0x10'::VARCHAR", "int", None),
    ("'99999999999999999999'::VARCHAR", "int", None),
    ("7::TINYINT", "int", 7),
    ("7::INTEGER", "int", 7),
    ("7::BIGINT", "int", 7),
    ("18446744073709551615::UBIGINT", "int", None),
    ("(2::HUGEINT ** 70)::HUGEINT", "int", None),
    ("2.0::DOUBLE", "int", 2),
    ("1.5::DOUBLE", "int", None),
    ("1.5::FLOAT", "int", None),
    ("1e20::DOUBLE", "int", None),
    ("'inf'::DOUBLE", "int", None),
    ("2.00::DECIMAL(5,2)", "int", 2),
    ("1.50::DECIMAL(5,2)", "int", None),
    ("true::BOOLEAN", "int", None),
    ("DATE '2024-01-01'", "int", None),
    # float columns: finite numbers; NaN is null; inf only with allow_infinite (see below)
    ("'1.5'::VARCHAR", "float", 1.5),
    ("'abc'::VARCHAR", "float", None),
    ("'inf'::VARCHAR", "float", None),
    ("'-Infinity'::VARCHAR", "float", None),
    ("'1e309'::VARCHAR", "float", None),
    ("'NaN'::VARCHAR", "float", None),
    ("3::BIGINT", "float", 3.0),
    ("1.25::DECIMAL(5,2)", "float", 1.25),
    ("1.5::FLOAT", "float", 1.5),
    ("'-inf'::DOUBLE", "float", None),
    ("'nan'::DOUBLE", "float", None),
    ("true::BOOLEAN", "float", None),
    # bool columns: the word list for text, 0 and 1 for numbers
    ("'Yes'::VARCHAR", "bool", True),
    ("'n'::VARCHAR", "bool", False),
    ("'maybe'::VARCHAR", "bool", None),
    ("1::BIGINT", "bool", True),
    ("0::INTEGER", "bool", False),
    ("2::BIGINT", "bool", None),
    ("1.0::DOUBLE", "bool", True),
    ("0.5::DOUBLE", "bool", None),
    ("false::BOOLEAN", "bool", False),
    ("DATE '2024-01-01'", "bool", None),
    # text columns take any value as its text
    ("42::BIGINT", "category", "42"),
    ("true::BOOLEAN", "string", "true"),
    # date columns: a date, or a time at midnight (no silent truncation of a time of day)
    ("'2024-01-02'::VARCHAR", "date", date(2024, 1, 2)),
    ("'2024-01-02 00:00:00'::VARCHAR", "date", date(2024, 1, 2)),
    ("'2024-01-02 10:00'::VARCHAR", "date", None),
    ("'2024-01-02 00:00+05:00'::VARCHAR", "date", None),
    ("DATE '2024-01-02'", "date", date(2024, 1, 2)),
    ("TIMESTAMP '2024-01-02 00:00'", "date", date(2024, 1, 2)),
    ("TIMESTAMP '2024-01-02 10:00'", "date", None),
    ("TIMESTAMPTZ '2024-01-02 00:00+00'", "date", date(2024, 1, 2)),
    ("'infinity'::DATE", "date", None),
    ("20240102::BIGINT", "date", None),
    # timestamp columns: naive UTC instants
    ("'2024-01-02 10:00'::VARCHAR", "timestamp", datetime(2024, 1, 2, 10)),
    ("'2024-01-02 10:00+05:00'::VARCHAR", "timestamp", datetime(2024, 1, 2, 5)),
    ("'2024-01-02T10:00:00Z'::VARCHAR", "timestamp", datetime(2024, 1, 2, 10)),
    ("'2024-01-02 10:00 America/New_York'::VARCHAR", "timestamp", datetime(2024, 1, 2, 15)),
    ("'2024-01-02 10:00 Nowhere/Land'::VARCHAR", "timestamp", None),
    ("'2024-03-10 02:30 America/New_York'::VARCHAR", "timestamp", None),  # in its DST gap
    ("'2024-01-02 10:00 Etc/GMT+5'::VARCHAR", "timestamp", datetime(2024, 1, 2, 15)),
    ("'2024-01-02 10:00 PM'::VARCHAR", "timestamp", None),
    ("'infinity'::VARCHAR", "timestamp", None),
    ("TIMESTAMP '2024-01-02 10:00'", "timestamp", datetime(2024, 1, 2, 10)),
    ("TIMESTAMP_NS '2024-01-02 10:00'", "timestamp", datetime(2024, 1, 2, 10)),
    ("TIMESTAMPTZ '2024-01-02 10:00+05:00'", "timestamp", datetime(2024, 1, 2, 5)),
    ("TIMESTAMPTZ '2024-01-02 10:00+05:00'::TIMESTAMPTZ_NS", "timestamp", datetime(2024, 1, 2, 5)),
    ("DATE '2024-01-02'", "timestamp", datetime(2024, 1, 2)),
    ("1704189600::BIGINT", "timestamp", None),
]


def _value(conn: duckdb.DuckDBPyConnection, literal: str, spec_type: str, **options: object) -> object:
    source_type = conn.sql(f"SELECT typeof({literal})").fetchall()[0][0]
    expr = typed_expression("x", spec_type, source_type, **options)  # type: ignore[arg-type]
    return conn.sql(f"SELECT {expr} FROM (SELECT {literal} AS x)").fetchall()[0][0]


@pytest.mark.parametrize("session_zone", ["UTC", "Asia/Kolkata"])
def test_every_source_type_is_typed_strictly(session_zone: str) -> None:
    conn = duckdb.connect()
    conn.execute(f"SET TimeZone = '{session_zone}'")
    wrong = {
        f"{literal} as {spec_type}": (got, expected)
        for literal, spec_type, expected in TABLE
        if (got := _value(conn, literal, spec_type)) != expected
    }
    assert wrong == {}


def test_the_table_covers_every_source_family() -> None:
    conn = duckdb.connect()
    kinds = {source_kind(conn.sql(f"SELECT typeof({literal})").fetchall()[0][0]) for literal, _, _ in TABLE}
    assert kinds == {"text", "int", "float", "decimal", "bool", "date", "timestamp", "timestamptz"}


def test_allow_infinite_keeps_infinities_but_not_nan() -> None:
    conn = duckdb.connect()
    assert _value(conn, "'-inf'::VARCHAR", "float", allow_infinite=True) == -math.inf
    assert _value(conn, "'inf'::DOUBLE", "float", allow_infinite=True) == math.inf
    assert _value(conn, "'nan'::DOUBLE", "float", allow_infinite=True) is None


@pytest.mark.parametrize(
    ("literal", "spec_type", "expected"),
    [
        ("'2024-01-02 10:00'::VARCHAR", "timestamp", datetime(2024, 1, 2, 9)),  # CET, +01:00
        ("'2024-07-02 10:00'::VARCHAR", "timestamp", datetime(2024, 7, 2, 8)),  # CEST, +02:00
        ("'2024-07-02 10:00Z'::VARCHAR", "timestamp", datetime(2024, 7, 2, 10)),  # the offset wins
        ("TIMESTAMP '2024-07-02 10:00'", "timestamp", datetime(2024, 7, 2, 8)),
        ("'2024-03-31 02:30'::VARCHAR", "timestamp", None),  # in the spring-forward gap
        ("'2024-10-27 02:30'::VARCHAR", "timestamp", datetime(2024, 10, 27, 1, 30)),  # ambiguous: CET
        ("TIMESTAMPTZ '2024-01-02 23:00+00'", "date", date(2024, 1, 3)),  # midnight in Berlin
    ],
)
def test_naive_times_are_read_in_the_spec_timezone(literal: str, spec_type: str, expected: object) -> None:
    assert _value(duckdb.connect(), literal, spec_type, timezone="Europe/Berlin") == expected


def _spec(column: dict[str, object], **extra: object) -> DatasetSpec:
    return DatasetSpec.model_validate(
        {
            "name": "typing",
            "source": {"path": "unused.csv"},
            "time_column": "ts",
            "columns": {"ts": {"type": "timestamp"}, "v": column},
            "target": {"column": "v", "task": "regression"},
            **extra,
        }
    )


def test_allow_infinite_is_for_float_columns_only() -> None:
    assert _spec({"type": "float", "allow_infinite": True}).columns["v"].allow_infinite
    with pytest.raises(ValueError, match="allow_infinite applies to float columns, not int"):
        _spec({"type": "int", "allow_infinite": True})


def test_an_unknown_timezone_is_refused_naming_the_key() -> None:
    assert _spec({"type": "float"}, timezone="Asia/Kolkata").timezone == "Asia/Kolkata"
    with pytest.raises(ValueError, match=r"timezone\n.*'Mars/Olympus' is not a time zone name"):
        _spec({"type": "float"}, timezone="Mars/Olympus")


@pytest.mark.parametrize(
    ("derived", "timezone"),
    [
        ("strptime(day || ' ' || zone, '%Y-%m-%d %H:%M %z')", "UTC"),  # TIMESTAMPTZ
        ("strptime(day, '%Y-%m-%d %H:%M')", "Europe/Berlin"),  # naive, read in Berlin
    ],
)
def test_a_derived_time_places_rows_where_cleaning_puts_them(
    tmp_path: Path, derived: str, timezone: str
) -> None:
    """The row's partition time (from the load) and its clean time are the same UTC instant."""
    (tmp_path / "t.csv").write_text("day,zone,v\n2024-01-01 23:30,+05:00,1\n2024-07-01 00:30,-08:00,2\n")
    spec = DatasetSpec.model_validate(
        {
            "name": "typing",
            "source": {"path": str(tmp_path / "t.csv")},
            "derived": {"ts": derived},
            "time_column": "ts",
            "timezone": timezone,
            "columns": {"v": {"type": "float"}},
            "target": {"column": "v", "task": "regression"},
        }
    )
    conn = duckdb.connect()
    conn.execute("SET TimeZone = 'Asia/Kolkata'")  # DuckDB's own casts would follow it
    staged = stage_source(conn, spec, source_files(spec), datetime(2024, 1, 1))
    window = (datetime(2000, 1, 1), datetime(2100, 1, 1))
    replace_window(conn, spec.name, "raw", f"SELECT * FROM {staged}", "_partition_ts", *window)
    clean_window(conn, spec, *window)
    rows = conn.sql(
        "SELECT r._partition_ts, c.ts FROM typing.raw r JOIN typing.clean c USING (_source_row) ORDER BY 1"
    ).fetchall()
    expected = {
        "UTC": [datetime(2024, 1, 1, 18, 30), datetime(2024, 7, 1, 8, 30)],
        "Europe/Berlin": [datetime(2024, 1, 1, 22, 30), datetime(2024, 6, 30, 22, 30)],
    }[timezone]
    assert rows == [(t, t) for t in expected]


def test_nan_in_a_float_source_of_an_int_column_is_null_not_a_parse_error() -> None:
    """pandas stores an int column with missing values as floats with NaN: NaN is a missing value."""
    from mlplatform.core.sql import parse_error_expression

    spec = _spec({"type": "int"})
    conn = duckdb.connect()
    errors = conn.sql(
        f"SELECT {parse_error_expression(spec, 'v', 'DOUBLE')} FROM (SELECT unnest([2.0, 'nan'::DOUBLE, 1.5]) AS v)"
    ).fetchall()
    assert errors == [(None,), (None,), ("v: cannot parse '1.5' as int",)]
