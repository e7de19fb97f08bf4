"""Rows that cannot be placed in their own partition are quarantined, with the reason, in one that
exists (mlplatform.core.placement): never dropped, never a crash, never in clean out of its window.

Each test says what happened before (`before:`).
"""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pytest

from mlplatform.assets.common import partitions_def
from mlplatform.specs.loader import SpecError, check_source
from platform_tests.hostile.corpus import (
    HEADER,
    Outcome,
    assert_accounted,
    load,
    load_with_good_file,
    rows,
    spec_for,
)

ANYTHING = {"quality": {"max_quarantine_share": 1.0}}


def _clean_times_inside_partitions(outcome: Outcome) -> None:
    first = outcome.partitions.get_first_partition_window()
    last = outcome.partitions.get_last_partition_window()
    low, high = outcome.query("SELECT min(ts), max(ts) FROM toy.clean")[0]
    assert first.start.replace(tzinfo=None) <= low and high < last.end.replace(tzinfo=None)


def test_absurd_years_do_not_stretch_the_partitions(tmp_path: Path) -> None:
    # before: 9999-12-31 gave an OverflowError when definitions loaded; year 1 built 738,888 partitions
    data = rows("1,9999-12-31,a,1", "2,0001-01-01,a,1", "3,2024-01-01,a,1")
    outcome = load_with_good_file(tmp_path, "x.csv", data)
    assert outcome.partitions.get_partition_keys() == ["2024-01-01", "2024-01-02"]
    assert_accounted(outcome, {"x.csv": 3, "good.csv": 1})
    assert outcome.reasons("x.csv") == {
        1: "ts: time 9999-12-31 00:00:00 is after the last partition (2024-01-02); kept in it",
        2: "ts: time 0001-01-01 00:00:00 is before the first partition (2024-01-01); kept in it",
    }
    _clean_times_inside_partitions(outcome)


def test_rows_outside_explicit_start_and_end(tmp_path: Path) -> None:
    # before: rows before partitions.start or after partitions.end landed in no partition and vanished
    data = rows("1,2023-12-31,a,1", "2,2024-01-01,a,1", "3,2024-01-03,a,1", "4,2024-02-01,b,1")
    outcome = load_with_good_file(
        tmp_path, "x.csv", data, partitions={"start": "2024-01-01", "end": "2024-01-03"}, **ANYTHING
    )
    assert outcome.partitions.get_partition_keys() == ["2024-01-01", "2024-01-02"]
    assert_accounted(outcome, {"x.csv": 4, "good.csv": 1})
    assert outcome.reasons("x.csv") == {
        1: "ts: time 2023-12-31 00:00:00 is before the first partition (2024-01-01); kept in it",
        3: "ts: time 2024-01-03 00:00:00 is after the last partition (2024-01-02); kept in it",
        4: "ts: time 2024-02-01 00:00:00 is after the last partition (2024-01-02); kept in it",
    }
    placed = dict(outcome.query("SELECT id, _partition_ts FROM toy.quarantine"))
    assert placed == {"1": datetime(2024, 1, 1), "3": datetime(2024, 1, 2), "4": datetime(2024, 1, 2)}
    _clean_times_inside_partitions(outcome)


def test_future_row_when_partitions_stop_at_the_data(tmp_path: Path) -> None:
    # before: a row dated next month stretched the partitions to it (and, with `end: open`, vanished)
    future = (datetime.now(UTC) + timedelta(days=30)).date()
    outcome = load_with_good_file(tmp_path, "x.csv", rows(f"1,{future},a,1", "2,2024-01-01,a,1"))
    assert outcome.partitions.get_partition_keys()[-1] == "2024-01-02"
    assert_accounted(outcome, {"x.csv": 2, "good.csv": 1})
    assert outcome.reasons("x.csv") == {
        1: f"ts: time {future} 00:00:00 is after the last partition (2024-01-02); kept in it"
    }


def test_future_row_with_open_partitions(tmp_path: Path) -> None:
    # before: open partitions stop before today: a row dated tomorrow landed in none and vanished
    today = datetime.now(UTC).date()
    start = today - timedelta(days=3)
    data = rows(f"1,{start},a,1", f"2,{today + timedelta(days=1)},a,1")
    (tmp_path / "x.csv").write_text(data)
    spec = spec_for(tmp_path, partitions={"start": str(start), "end": "open"}, **ANYTHING)
    outcome = load(spec, tmp_path / "w.duckdb")
    last = outcome.partitions.get_partition_keys()[-1]
    assert date.fromisoformat(last) < today + timedelta(days=1)
    assert_accounted(outcome, {"x.csv": 2})
    assert outcome.reasons("x.csv") == {
        2: f"ts: time {today + timedelta(days=1)} 00:00:00 is after the last partition ({last}); kept in it"
    }


def test_file_in_which_no_time_parses_goes_to_the_last_partition(tmp_path: Path) -> None:
    # before: the fill-forward borrows only within a file: these rows got no partition and vanished
    outcome = load_with_good_file(tmp_path, "x.csv", rows("1,garbage,a,1", "2,xx,a,1"))
    assert_accounted(outcome, {"x.csv": 2, "good.csv": 1})
    reason = "ts: no time parses in this row or in any other row of its file; kept in the last partition (2024-01-02)"
    assert outcome.reasons("x.csv") == {1: reason, 2: reason}


def test_unparseable_time_borrows_its_neighbour(tmp_path: Path) -> None:
    outcome = load_with_good_file(tmp_path, "x.csv", rows("1,2024-01-01,a,1", "2,oops,a,1"))
    assert_accounted(outcome, {"x.csv": 2, "good.csv": 1})
    assert outcome.reasons("x.csv") == {2: "ts: null in a non-nullable column"}
    assert outcome.query("SELECT _partition_ts FROM toy.quarantine") == [(datetime(2024, 1, 1),)]


def test_only_unparseable_times_names_the_time_column(tmp_path: Path) -> None:
    # before: "no data found in ... to start the partitions from"
    (tmp_path / "x.csv").write_text(rows("1,garbage,a,1", "2,xx,a,1"))
    with pytest.raises(SpecError, match=r"none of the 2 rows of .* has a 'ts' that parses as a timestamp"):
        check_source(spec_for(tmp_path))
    spec = spec_for(tmp_path, partitions={"start": "2024-01-01", "end": "2024-01-03"}, **ANYTHING)
    outcome = load(spec, tmp_path / "w.duckdb", raise_on_error=False)  # clean is empty: not_empty fails
    assert_accounted(outcome, {"x.csv": 2})
    assert not outcome.result.success


def test_only_empty_files_say_no_data_not_column0(tmp_path: Path) -> None:
    # before: "columns: 'id', ... not found in the source files (they have: column0)"
    (tmp_path / "x.csv").write_bytes(b"")
    with pytest.raises(SpecError, match="no data found") as error:
        check_source(spec_for(tmp_path))
    assert "column0" not in str(error.value)


def test_partitions_ignore_implausible_probe_times(tmp_path: Path) -> None:
    (tmp_path / "x.csv").write_text(HEADER + "\n1,1850-06-01,a,1\n2,2024-01-01,a,1\n3,2024-01-03,a,1\n")
    partitions = partitions_def(spec_for(tmp_path), check_source(spec_for(tmp_path)))
    assert partitions.get_partition_keys() == ["2024-01-01", "2024-01-02", "2024-01-03"]
