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


def _clean(spec: DatasetSpec, prescreen: bool, rows: int = len(ROWS)) -> tuple[pd.DataFrame, pd.DataFrame]:
    conn = duckdb.connect()
    staged = stage_source(conn, spec, source_files(spec), datetime(2024, 1, 1))
    window = (datetime(2000, 1, 1), datetime(2100, 1, 1))
    replace_window(conn, spec.name, "raw", f"SELECT * FROM {staged}", "_partition_ts", *window)
    result = clean_window(conn, spec, *window, prescreen=prescreen)
    assert result.raw_rows == result.clean_rows + result.quarantined_rows == rows
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


def test_a_time_pandas_cannot_hold_is_quarantined_alike_by_both_paths(tmp_path: Path) -> None:
    (tmp_path / "t.csv").write_text(HEADER + "\n" + "\n".join([*ROWS, BEYOND_PANDAS_TIMES]) + "\n")
    spec = _spec(tmp_path / "t.csv")
    screened_clean, screened_quarantine = _clean(spec, prescreen=True, rows=len(ROWS) + 1)
    full_clean, full_quarantine = _clean(spec, prescreen=False, rows=len(ROWS) + 1)
    pd.testing.assert_frame_equal(screened_clean, full_clean)
    pd.testing.assert_frame_equal(screened_quarantine, full_quarantine)
    reason = full_quarantine.set_index("_source_row")["_quarantine_reason"][len(ROWS) + 1]
    assert reason == "seen: time 2300-01-01 00:00:00 is outside what pandas can hold (1677..2262)"


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


# Non-finite numbers, zones and a daylight-saving gap (the spec reads naive times in New York), text
# that is no bool: each row holds one hostile value; the last two are fine.
HOSTILE_HEADER = "id,day,kind,value,ratio,spread,flag,seen"
HOSTILE_ROWS = [
    "1,2024-01-01,a,inf,1,1,true,2024-01-01 10:00",  # inf in a float column: a parse reason
    "2,2024-01-01,a,1,-Infinity,1,true,2024-01-01 10:00",  # also without min/max
    "3,2024-01-01,a,1,1e309,1,true,2024-01-01 10:00",  # overflows to inf
    "4,2024-01-01,a,1,NaN,1,true,2024-01-01 10:00",  # NaN is null, and ratio is nullable: clean
    "5,2024-01-01,a,1,1,inf,true,2024-01-01 10:00",  # allowed infinite, but above spread's max
    "6,2024-01-01,a,1,1,-inf,true,2024-01-01 10:00",  # allowed infinite, no min: clean
    "7,2024-01-01,a,1,1,nan,true,2024-01-01 10:00",  # NaN in a non-nullable column
    "8,2024-01-01,a,1,1,1,maybe,2024-01-01 10:00",  # no bool
    "9,2024-01-01,a,1,1,1,true,2024-03-10 02:30",  # in the spring-forward gap
    "10,2024-01-01,a,1,1,1,true,2024-01-01 10:00 Mars/Olympus",  # no such zone
    "11,2024-01-01,a,1,1,1,true,2024-01-01 10:00+05:00",
    "12,2024-01-01,a,1,1,1,no,2024-01-01 10:00",
]


@pytest.mark.parametrize("prescreen", [True, False])
def test_hostile_values_get_the_same_outcome_with_and_without_the_prescreen(
    tmp_path: Path, prescreen: bool
) -> None:
    (tmp_path / "t.csv").write_text(HOSTILE_HEADER + "\n" + "\n".join(HOSTILE_ROWS) + "\n")
    spec = toy_spec(
        tmp_path / "t.csv",
        {
            "ratio": {"type": "float"},
            "spread": {"type": "float", "nullable": False, "allow_infinite": True, "max": 5},
            "flag": {"type": "bool"},
            "seen": {"type": "timestamp"},
        },
        timezone="America/New_York",
    )
    conn = duckdb.connect()
    staged = stage_source(conn, spec, source_files(spec), datetime(2024, 1, 1))
    window = (datetime(2000, 1, 1), datetime(2100, 1, 1))
    replace_window(conn, spec.name, "raw", f"SELECT * FROM {staged}", "_partition_ts", *window)
    result = clean_window(conn, spec, *window, prescreen=prescreen)
    assert result.raw_rows == result.clean_rows + result.quarantined_rows == len(HOSTILE_ROWS)
    counts = result.reason_counts
    assert (counts["ratio: not_finite"], counts["seen: dst_gap"], counts["flag: parse"]) == (2, 1, 1)
    clean = conn.sql("SELECT id, ratio, spread, seen FROM toy.clean ORDER BY id").fetchall()
    assert clean == [
        (4, None, 1.0, datetime(2024, 1, 1, 15)),
        (6, 1.0, float("-inf"), datetime(2024, 1, 1, 15)),
        (11, 1.0, 1.0, datetime(2024, 1, 1, 5)),
        (12, 1.0, 1.0, datetime(2024, 1, 1, 15)),
    ]
    reasons = dict(conn.execute("SELECT _source_row, _quarantine_reason FROM toy.quarantine").fetchall())
    finite = " is not a finite number (allow_infinite: true keeps it)"
    assert reasons == {
        1: "value: 'inf'" + finite,
        2: "ratio: '-Infinity'" + finite,
        3: "ratio: '1e309'" + finite,
        5: "spread: less_than_or_equal_to(5.0) failed for inf",
        7: "spread: null in a non-nullable column",
        8: "flag: cannot parse 'maybe' as bool",
        9: "seen: '2024-03-10 02:30' does not exist in America/New_York (a daylight saving gap)",
        10: "seen: cannot parse '2024-01-01 10:00 Mars/Olympus' as timestamp",
    }
