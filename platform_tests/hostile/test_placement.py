"""Rows that cannot be placed in their own partition are quarantined, with the reason, in one that
exists (mlplatform.core.placement): never dropped, never a crash, never in clean out of its window.

Each test says what happened before (`before:`).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import duckdb
import pytest

from mlplatform.assets.common import partitions_def
from mlplatform.core.placement import PartitionBounds, pending_predicate, place_rows
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
FUTURE = "is more than a day in the future; kept in the first partition"


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
        1: f"ts: time 9999-12-31 00:00:00 {FUTURE} (2024-01-01)",
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
    # before: a row dated next month was kept in the last partition, which moves as data arrives:
    # the next partition's run loaded it a second time
    future = (datetime.now(UTC) + timedelta(days=30)).date()
    outcome = load_with_good_file(tmp_path, "x.csv", rows(f"1,{future},a,1", "2,2024-01-01,a,1"))
    assert outcome.partitions.get_partition_keys()[-1] == "2024-01-02"
    assert_accounted(outcome, {"x.csv": 2, "good.csv": 1})
    assert outcome.reasons("x.csv") == {1: f"ts: time {future} 00:00:00 {FUTURE} (2024-01-01)"}


def test_rows_of_today_with_open_partitions_wait_for_their_partition(tmp_path: Path) -> None:
    # before: open partitions stop at yesterday: a row of today was quarantined there ("after the last
    # partition"), then loaded again, clean, once today's partition existed: counted twice
    today = datetime.now(UTC).date()
    start = today - timedelta(days=3)
    (tmp_path / "x.csv").write_text(rows(f"1,{start},a,1", f"2,{today},a,1"))
    warehouse = tmp_path / "w.duckdb"
    outcome = load(spec_for(tmp_path, partitions={"start": str(start), "end": "open"}), warehouse)
    assert outcome.partitions.get_partition_keys()[-1] == str(today - timedelta(days=1))
    assert outcome.landed() == {"x.csv": (1, 0)}  # row 2 is read, and waits for its partition
    assert outcome.raw_metadata()["rows_pending_partition"] == 1
    assert outcome.check("source_accounting").passed
    # a day later its partition exists: that partition's run loads it, once
    later_spec = spec_for(tmp_path, partitions={"start": str(start), "end": str(today + timedelta(days=1))})
    later = load(later_spec, warehouse, partition_keys=(str(today), str(today)))
    assert_accounted(later, {"x.csv": 2})
    assert later.landed() == {"x.csv": (2, 0)}


def test_timeless_file_stays_in_the_first_partition_as_partitions_grow(tmp_path: Path) -> None:
    # before: its rows went to the last partition: when a later file added a partition, that
    # partition's run loaded them again (4 rows for 2)
    (tmp_path / "a.csv").write_text(rows("5,2024-01-01,a,1"))
    outcome = load_with_good_file(tmp_path, "x.csv", rows("1,garbage,a,1", "2,xx,a,1"))
    reason = (
        "ts: no time parses in this row or in any other row of its file; kept in the first partition "
        "(2024-01-01)"
    )
    assert outcome.reasons("x.csv") == {1: reason, 2: reason}
    (tmp_path / "c.csv").write_text(rows("9,2024-01-03,a,1"))
    spec, warehouse = spec_for(tmp_path, **ANYTHING), tmp_path / "warehouse.duckdb"
    grown = load(spec, warehouse, partition_keys=("2024-01-03", "2024-01-03"))
    assert grown.partitions.get_partition_keys()[-1] == "2024-01-03"
    written = {"x.csv": 2, "a.csv": 1, "good.csv": 1, "c.csv": 1}
    assert_accounted(grown, written)
    assert_accounted(load(spec, warehouse, partition_keys=("2024-01-01", "2024-01-02")), written)


def test_placement_rule_over_a_staged_table() -> None:
    # before: every row after the last partition was clamped into it, whatever its time
    now = datetime.now(UTC).replace(tzinfo=None)
    first, last, end = datetime(2024, 1, 1), datetime(2024, 1, 2), datetime(2024, 1, 3)
    times = [datetime(2023, 6, 1), datetime(2024, 1, 2, 5), datetime(2024, 1, 9), now + timedelta(days=3)]
    conn = duckdb.connect()
    conn.execute(
        "CREATE TEMP TABLE staged (_source_file VARCHAR, _source_row BIGINT, _parse_error VARCHAR, "
        "_partition_ts TIMESTAMP)"
    )
    conn.executemany("INSERT INTO staged VALUES ('a', ?, NULL, ?)", [[i, t] for i, t in enumerate(times, 1)])
    conn.execute("INSERT INTO staged VALUES ('b', 1, NULL, NULL), ('b', 2, NULL, NULL)")
    conn.execute("CREATE TABLE original AS SELECT * FROM staged")

    def placed(bounds: PartitionBounds) -> dict[tuple[str, int], datetime]:
        conn.execute("CREATE OR REPLACE TEMP TABLE staged AS SELECT * FROM original")
        place_rows(conn, "staged", "ts", bounds)
        found = conn.execute("SELECT _source_file, _source_row, _partition_ts FROM staged").fetchall()
        return {(f, r): ts for f, r, ts in found}

    from_data = PartitionBounds(first, last, end)
    assert placed(from_data) == {
        ("a", 1): first,  # before the first partition
        ("a", 2): times[1],
        ("a", 3): times[2],  # plausible, its partition does not exist yet: pending
        ("a", 4): first,  # more than a day in the future: the first partition, which does not move
        ("b", 1): first,  # a file in which no time parses
        ("b", 2): first,
    }
    assert conn.execute(f"SELECT count(*) FROM staged WHERE {pending_predicate(from_data)}").fetchall() == [
        (1,)
    ]
    fixed = placed(PartitionBounds(first, last, end, spec_end=end))  # past partitions.end: the last one
    assert (fixed[("a", 3)], fixed[("a", 4)], fixed[("b", 1)]) == (last, last, first)
    not_reached = placed(PartitionBounds(first, last, end, spec_end=now + timedelta(days=2)))
    assert (not_reached[("a", 3)], not_reached[("a", 4)]) == (times[2], times[3])  # wait for the end


def test_unparseable_time_borrows_its_neighbour(tmp_path: Path) -> None:
    outcome = load_with_good_file(tmp_path, "x.csv", rows("1,2024-01-01,a,1", "2,oops,a,1"))
    assert_accounted(outcome, {"x.csv": 2, "good.csv": 1})
    reason = "ts: did not parse: derived ts = strptime(day, '%Y-%m-%d') gave no value for day 'oops'"
    assert outcome.reasons("x.csv") == {2: reason}
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
