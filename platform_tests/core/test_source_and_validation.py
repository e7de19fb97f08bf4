"""Reading sources and validating rows: lineage, malformed lines, quarantine reasons, Pandera schema."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import duckdb
import pandas as pd
import pandera.pandas as pa
import pytest

from mlplatform.core.cleaning import clean_window
from mlplatform.core.source import source_files, stage_source
from mlplatform.core.validation import build_schema
from mlplatform.core.warehouse import replace_window
from mlplatform.specs.model import DatasetSpec
from platform_tests.core.toy_spec import toy_spec

HEADER = "id,day,kind,value"


def _load(spec: DatasetSpec) -> duckdb.DuckDBPyConnection:
    conn = duckdb.connect()
    staged = stage_source(conn, spec, source_files(spec), datetime(2024, 1, 1))
    window = (datetime(2000, 1, 1), datetime(2100, 1, 1))
    replace_window(conn, spec.name, "raw", f"SELECT * FROM {staged}", "_partition_ts", *window)
    clean_window(conn, spec, *window)
    return conn


def test_row_numbers_match_the_file_across_malformed_lines_and_files(tmp_path: Path) -> None:
    (tmp_path / "a.csv").write_text(
        f"{HEADER}\n1,2024-01-01,a,1\n2,2024-01-01\n3,2024-01-02,b,2,extra\n4,2024-01-02,a,3\n"
    )
    (tmp_path / "b.csv").write_text(f"{HEADER}\n5,2024-01-03,a,4\n6,2024-01-03,b,5\n")
    conn = _load(toy_spec(tmp_path / "*.csv"))
    raw = conn.sql("SELECT id, _source_file, _source_row, _parse_error FROM toy.raw ORDER BY id").df()
    assert raw.id.tolist() == ["1", "2", "3", "4", "5", "6"]
    assert [Path(f).name for f in raw._source_file] == ["a.csv"] * 4 + ["b.csv"] * 2
    assert raw._source_row.tolist() == [1, 2, 3, 4, 1, 2]
    assert raw._parse_error.notna().tolist() == [False, True, True, False, False, False]
    quarantine = conn.sql("SELECT id, _quarantine_reason FROM toy.quarantine ORDER BY id").df()
    assert quarantine.id.tolist() == ["2", "3"]
    assert "missing columns" in quarantine._quarantine_reason[0]
    assert "too many columns" in quarantine._quarantine_reason[1]


def test_each_kind_of_bad_value_gets_its_reason_and_nothing_is_lost(tmp_path: Path) -> None:
    rows = [
        "1,2024-01-01,a,1",
        "2,2024-01-01,a,abc",  # not a number
        "3,2024-01-01,a,11",  # out of range
        "4,2024-01-01,z,1",  # unknown category
        "5,2024-01-01,a,",  # null in a non-null column
        "1,2024-01-02,b,2",  # duplicate key
        "1.5,2024-01-02,b,2",  # an int that is not one (DuckDB would round it)
        "8,2024-13-45,b,2",  # time that does not parse: kept, in the previous row's partition
    ]
    (tmp_path / "t.csv").write_text(HEADER + "\n" + "\n".join(rows) + "\n")
    conn = _load(toy_spec(tmp_path / "t.csv"))
    counts = conn.execute(
        "SELECT (SELECT count(*) FROM toy.raw), (SELECT count(*) FROM toy.clean), (SELECT count(*) FROM toy.quarantine)"
    ).fetchall()[0]
    assert counts == (8, 1, 7)
    reasons = dict(conn.execute("SELECT _source_row, _quarantine_reason FROM toy.quarantine").fetchall())
    assert reasons[2] == "value: cannot parse 'abc' as float"
    assert reasons[3] == "value: less_than_or_equal_to(10.0) failed for 11"
    assert reasons[4] == "kind: isin(['a', 'b']) failed for 'z'"
    assert reasons[5] == "value: null in a non-nullable column"
    assert reasons[6] == "id: duplicate key 1"
    assert reasons[7] == "id: cannot parse '1.5' as int"
    # It says the time did not parse, with the expression and the value (issue 15), not "null".
    expected = "ts: did not parse: derived ts = strptime(day, '%Y-%m-%d') gave no value for day '2024-13-45'"
    assert reasons[8] == expected
    placed = conn.execute("SELECT _partition_ts FROM toy.quarantine WHERE _source_row = 8").fetchall()[0][0]
    assert placed == datetime(2024, 1, 2)
    columns = dict(conn.execute("SELECT _source_row, _failed_columns FROM toy.quarantine").fetchall())
    assert columns[4] == "kind"


def test_duplicate_key_in_another_partition_is_quarantined(tmp_path: Path) -> None:
    (tmp_path / "t.csv").write_text(f"{HEADER}\n1,2024-01-01,a,1\n1,2024-01-05,a,1\n")
    spec = toy_spec(tmp_path / "t.csv")
    conn = duckdb.connect()
    staged = stage_source(conn, spec, source_files(spec), datetime(2024, 1, 1))
    everything = (datetime(2000, 1, 1), datetime(2100, 1, 1))
    replace_window(conn, spec.name, "raw", f"SELECT * FROM {staged}", "_partition_ts", *everything)
    clean_window(conn, spec, datetime(2024, 1, 1), datetime(2024, 1, 2))
    result = clean_window(conn, spec, datetime(2024, 1, 5), datetime(2024, 1, 6))
    assert (result.clean_rows, result.quarantined_rows) == (0, 1)
    reason = conn.execute("SELECT _quarantine_reason FROM toy.quarantine").fetchall()[0][0]
    assert reason == "id: duplicate key 1 (already clean in another partition)"


def test_schema_follows_the_spec(tmp_path: Path) -> None:
    schema = build_schema(toy_spec(tmp_path / "t.csv"))
    assert set(schema.columns) == {"id", "day", "kind", "value", "ts"}
    assert schema.columns["id"].unique and not schema.columns["id"].nullable
    assert not schema.columns["ts"].nullable
    good = pd.DataFrame(
        {
            "id": pd.array([1, 2], dtype="Int64"),
            "day": ["x", "y"],
            "kind": ["a", None],
            "value": [0.0, 10.0],
            "ts": pd.to_datetime(["2024-01-01", "2024-01-02"]),
        }
    )
    schema.validate(good)
    with pytest.raises(pa.errors.SchemaError):
        schema.validate(good.assign(value=[0.0, 10.5]))
