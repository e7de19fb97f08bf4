"""The SQL pre-screen of the cleaning stage changes its cost, never its outcome.

Every kind of bad value goes through both paths (Pandera over every row, and Pandera over only the
rows the SQL screen cannot prove valid); clean and quarantine must come out identical.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import duckdb
import pandas as pd
import pytest

from mlplatform.core.cleaning import clean_window
from mlplatform.core.source import source_files, stage_source
from mlplatform.core.warehouse import replace_window
from mlplatform.specs.model import DatasetSpec
from platform_tests.core.toy_spec import toy_spec

HEADER = "id,day,kind,value,flag,code,seen"
ROWS = [
    "1,2024-01-01,a,1,0,10,2024-01-01 10:00:00",
    "2,2024-01-01,a,abc,1,11,2024-01-01 11:00:00",  # not a number
    "3,2024-01-01,a,11,1,12,2024-01-01 12:00:00",  # above max
    "4,2024-01-01,z,1,0,13,2024-01-01 13:00:00",  # unknown category
    "5,2024-01-01,a,,0,14,2024-01-01 14:00:00",  # null in a non-null column
    "1,2024-01-02,b,2,0,15,2024-01-02 10:00:00",  # duplicate key
    "1.5,2024-01-02,b,2,0,16,2024-01-02 10:00:00",  # an int that is not one
    "8,2024-13-45,b,2,0,17,2024-01-02 10:00:00",  # time that does not parse
    "9,2024-01-02,b,nan,0,18,2024-01-02 10:00:00",  # NaN: null to Pandera
    "10,2024-01-02,b,-1,0,19,2024-01-02 10:00:00",  # below min
    "11,2024-01-02,b,3,2,20,2024-01-02 10:00:00",  # int not among allowed
    "12,2024-01-02,,3,1,,2024-01-02 10:00:00",  # nulls where allowed (kind, code)
    "13,2024-01-02,a,3,1,,2024-01-02 10:00:00",  # a second null in a nullable unique column
    "14,2024-01-02,a,3,1,21,2024-01-02 10:00:00",  # duplicate of a nullable unique column
    "15,2024-01-02,a,3,1,21,2024-01-02 10:00:00",
    "16,2024-01-02,b,10,1,22,2024-01-02 10:00:00",  # on the max: fine
]
BEYOND_PANDAS_TIMES = "17,2024-01-02,a,3,1,23,2300-01-01 00:00:00"


def _spec(path: Path) -> DatasetSpec:
    return toy_spec(
        path,
        {
            "flag": {"type": "int", "allowed": [0, 1]},
            "code": {"type": "int", "unique": True},
            "seen": {"type": "timestamp"},
        },
    )


def _clean(spec: DatasetSpec, prescreen: bool) -> tuple[pd.DataFrame, pd.DataFrame]:
    conn = duckdb.connect()
    staged = stage_source(conn, spec, source_files(spec), datetime(2024, 1, 1))
    window = (datetime(2000, 1, 1), datetime(2100, 1, 1))
    replace_window(conn, spec.name, "raw", f"SELECT * FROM {staged}", "_partition_ts", *window)
    result = clean_window(conn, spec, *window, prescreen=prescreen)
    assert result.raw_rows == result.clean_rows + result.quarantined_rows == len(ROWS)
    clean = conn.sql("SELECT * EXCLUDE (_loaded_at) FROM toy.clean ORDER BY _source_row").df()
    quarantine = conn.sql("SELECT * EXCLUDE (_loaded_at) FROM toy.quarantine ORDER BY _source_row").df()
    return clean, quarantine


def test_prescreened_cleaning_equals_validating_every_row(tmp_path: Path) -> None:
    (tmp_path / "t.csv").write_text(HEADER + "\n" + "\n".join(ROWS) + "\n")
    spec = _spec(tmp_path / "t.csv")
    full_clean, full_quarantine = _clean(spec, prescreen=False)
    screened_clean, screened_quarantine = _clean(spec, prescreen=True)
    pd.testing.assert_frame_equal(screened_clean, full_clean)
    pd.testing.assert_frame_equal(screened_quarantine, full_quarantine)
    assert full_clean["id"].tolist() == [1, 12, 13, 14, 16]  # two nulls are no duplicate key
    reasons = dict(zip(full_quarantine["_source_row"], full_quarantine["_quarantine_reason"], strict=True))
    assert reasons[9] == "value: null in a non-nullable column"
    assert "greater_than_or_equal_to" in reasons[10]
    assert "isin" in reasons[11]
    assert "duplicate key" in reasons[15]
    assert 14 not in reasons  # the first of a duplicated key stays clean


@pytest.mark.parametrize("prescreen", [True, False])
def test_a_time_pandas_cannot_hold_fails_both_paths_alike(tmp_path: Path, prescreen: bool) -> None:
    (tmp_path / "t.csv").write_text(HEADER + "\n" + "\n".join([*ROWS, BEYOND_PANDAS_TIMES]) + "\n")
    with pytest.raises(ValueError, match="'seen' fails coerce_dtype"):
        _clean(_spec(tmp_path / "t.csv"), prescreen)


@pytest.mark.parametrize("prescreen", [True, False])
def test_a_clean_parquet_window_needs_no_pandera_rows(tmp_path: Path, prescreen: bool) -> None:
    frame = pd.DataFrame(
        {
            "id": range(1, 1001),
            "day": ["2024-01-01"] * 1000,
            "kind": ["a", "b"] * 500,
            "value": [i % 10 for i in range(1000)],
            "flag": [0, 1] * 500,
            "code": range(1000),
            "seen": pd.Timestamp("2024-01-01"),
        }
    )
    frame.to_parquet(tmp_path / "t.parquet")
    clean, quarantine = _clean_parquet(_spec(tmp_path / "t.parquet"), prescreen)
    assert (len(clean), len(quarantine)) == (1000, 0)


def _clean_parquet(spec: DatasetSpec, prescreen: bool) -> tuple[pd.DataFrame, pd.DataFrame]:
    conn = duckdb.connect()
    staged = stage_source(conn, spec, source_files(spec), datetime(2024, 1, 1))
    window = (datetime(2000, 1, 1), datetime(2100, 1, 1))
    replace_window(conn, spec.name, "raw", f"SELECT * FROM {staged}", "_partition_ts", *window)
    clean_window(conn, spec, *window, prescreen=prescreen)
    clean = conn.sql("SELECT * FROM toy.clean").df()
    quarantine = conn.sql("SELECT * FROM toy.quarantine").df() if _has(conn, "quarantine") else pd.DataFrame()
    return clean, quarantine


def _has(conn: duckdb.DuckDBPyConnection, table: str) -> bool:
    rows = conn.execute(
        "SELECT count(*) FROM information_schema.tables WHERE table_schema = 'toy' AND table_name = ?",
        [table],
    ).fetchall()
    return bool(rows[0][0])
