"""A partition whose source rows are gone is not emptied silently, and `source_accounting` fails when
what a file holds and what landed differ (a file appended to while it is read, a lost row)."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import dagster as dg
import duckdb
import pytest

from mlplatform.assets import ingestion, landing
from mlplatform.core.accounting import FileCount, describe_account, read_accounts, shrink_problem
from mlplatform.core.cleaning import drop_rows_outside
from mlplatform.specs.model import DatasetSpec
from platform_tests.hostile.corpus import HEADER, Outcome, assert_accounted, load, rows, spec_for

FIXED = {"partitions": {"start": "2024-01-01", "end": "2024-01-03"}}
FIX = ". To reload every partition from the files as they are: `mlplatform run --dataset toy` (add --allow-shrink where files were removed on purpose)"
ALLOW_SHRINK = {"ops": {"toy__raw": {"config": {"allow_shrink": True}}}}


def _raw_failure(outcome: Outcome) -> str:
    failures = [e for e in outcome.result.all_events if e.is_step_failure and e.step_key == "toy__raw"]
    assert failures, "raw did not fail"
    return failures[0].step_failure_data.error.message


def _two_files(folder: Path) -> None:
    (folder / "a.csv").write_text(rows("1,2024-01-01,a,1", "2,2024-01-01,a,2"))
    (folder / "b.csv").write_text(rows("3,2024-01-01,b,3", "4,2024-01-02,b,4"))


def test_emptying_a_partition_needs_allow_shrink(tmp_path: Path) -> None:
    # before: the re-run replaced the partition's rows with nothing and every check passed
    _two_files(tmp_path)
    spec, warehouse = spec_for(tmp_path, **FIXED), tmp_path / "w.duckdb"
    load(spec, warehouse)
    for name in ("a.csv", "b.csv"):
        (tmp_path / name).write_text(HEADER + "\n")
    day = ("2024-01-01", "2024-01-01")
    refused = load(spec, warehouse, partition_keys=day, raise_on_error=False)
    message = _raw_failure(refused)
    assert "toy.raw for 2024-01-01 .. 2024-01-01: its rows would go from 3 to 0" in message
    assert "Nothing was changed" in message and "allow_shrink: true" in message
    assert refused.query("SELECT count(*) FROM toy.raw") == [(4,)]
    allowed = load(spec, warehouse, partition_keys=day, run_config=ALLOW_SHRINK, raise_on_error=False)
    assert allowed.query("SELECT count(*) FROM toy.raw WHERE _partition_ts < '2024-01-02'") == [(0,)]


def test_losing_a_file_needs_allow_shrink_but_renaming_it_does_not(tmp_path: Path) -> None:
    _two_files(tmp_path)
    spec, warehouse = spec_for(tmp_path, **FIXED), tmp_path / "w.duckdb"
    load(spec, warehouse)
    (tmp_path / "a.csv").rename(tmp_path / "a_renamed.csv")
    renamed = load(spec, warehouse)
    assert_accounted(renamed, {"a_renamed.csv": 2, "b.csv": 2})
    (tmp_path / "a_renamed.csv").unlink()
    message = _raw_failure(load(spec, warehouse, raise_on_error=False))
    assert "every row of a_renamed.csv would be erased (2 rows; the window would go from 4 to 2)" in message


def test_a_file_appended_to_while_read_fails_source_accounting(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # before: nothing compared a file's records with what the load read
    (tmp_path / "x.csv").write_text(rows("1,2024-01-01,a,1"))
    counted = landing.count_source

    def count_then_append(path: str, source_format: str, delimiter: str = ",") -> FileCount:
        count = counted(path, source_format, delimiter)
        with open(path, "a") as handle:  # a writer adds a record between the count and the load
            handle.write("2,2024-01-01,a,2\n")
        return count

    monkeypatch.setattr(landing, "count_source", count_then_append)
    spec, warehouse = spec_for(tmp_path, **FIXED), tmp_path / "w.duckdb"
    outcome = load(spec, warehouse, raise_on_error=False)
    check = outcome.check("source_accounting")
    assert not check.passed
    assert check.description == "x.csv: the file holds 1 records but the load read 2" + FIX
    monkeypatch.setattr(landing, "count_source", counted)
    assert_accounted(load(spec, warehouse), {"x.csv": 2})  # the next run reconciles


def test_a_row_missing_from_clean_is_reported_per_file(tmp_path: Path) -> None:
    _two_files(tmp_path)
    outcome = load(spec_for(tmp_path, **FIXED), tmp_path / "w.duckdb")
    with duckdb.connect(str(outcome.warehouse)) as conn:
        conn.execute("DELETE FROM toy.clean WHERE id = 2")
        accounts = read_accounts(conn, "toy", "ts")
    failing = [a for a in accounts if not a.reconciles]
    assert [describe_account(a) for a in failing] == [
        "a.csv: 2 rows placed in the window but 1 are in clean + quarantine"
    ]


def test_shrink_rule() -> None:
    assert shrink_problem({}, {}) is None
    assert shrink_problem({"a": 3}, {"a": 1}) is None  # fewer rows of a file that still yields some
    assert shrink_problem({"a": 3}, {"b": 3}) is None  # renamed
    assert (
        shrink_problem({"a": 3}, {})
        == "its rows would go from 3 to 0 (the source files no longer yield any for it)"
    )
    assert shrink_problem({"a": 3, "b": 1}, {"b": 1}) == (
        "every row of a would be erased (3 rows; the window would go from 4 to 1)"
    )


def test_raw_config_is_a_dagster_config() -> None:
    assert issubclass(ingestion.RawConfig, dg.Config)
    assert ingestion.RawConfig().allow_shrink is False


def test_a_file_emptied_while_another_grows_needs_allow_shrink(tmp_path: Path) -> None:
    # before: the window's total did not shrink (2 -> 2), so every row of a.csv was erased silently
    (tmp_path / "a.csv").write_text(rows("1,2024-01-01,a,1", "2,2024-01-01,a,2"))
    (tmp_path / "b.csv").write_text(rows("3,2024-01-02,b,3"))
    spec, warehouse = spec_for(tmp_path, **FIXED), tmp_path / "w.duckdb"
    load(spec, warehouse)
    (tmp_path / "a.csv").write_text(HEADER + "\n")
    (tmp_path / "b.csv").write_text(rows("3,2024-01-02,b,3", "5,2024-01-01,b,3", "6,2024-01-01,b,3"))
    day = ("2024-01-01", "2024-01-01")
    message = _raw_failure(load(spec, warehouse, partition_keys=day, raise_on_error=False))
    assert "every row of a.csv would be erased (2 rows; the window would go from 2 to 2)" in message


def test_source_accounting_sees_rows_twice_or_too_many_over_all_partitions(tmp_path: Path) -> None:
    # before: the check compared only the last run's window: copies in other partitions passed
    _two_files(tmp_path)
    spec, warehouse = spec_for(tmp_path, **FIXED), tmp_path / "w.duckdb"
    load(spec, warehouse)
    with duckdb.connect(str(warehouse)) as conn:  # rows in 2024-01-02, outside the next run's window
        day2 = "'2024-01-02 01:00'::TIMESTAMP AS ts"
        conn.execute(f"INSERT INTO toy.clean SELECT * REPLACE ({day2}) FROM toy.clean WHERE id = 1")
        conn.execute(
            f"INSERT INTO toy.clean SELECT * REPLACE ({day2}, 99 AS _source_row) FROM toy.clean WHERE id = 3"
        )
    outcome = load(spec, warehouse, partition_keys=("2024-01-01", "2024-01-01"), raise_on_error=False)
    check = outcome.check("source_accounting")
    assert not check.passed
    assert check.description == (
        "a.csv: 1 rows are in clean + quarantine twice (the same source row in more than one place, over "
        "all partitions); b.csv: clean + quarantine hold 3 rows of it over all partitions, but the file "
        "holds 2 records" + FIX
    )
    assert check.metadata["rows_counted_twice"].value == 1
    assert "| a.csv | 2 | 2 | 2 | 2 | 3 | 1 |" in check.metadata["files_not_reconciled_table"].value


def test_shrink_rule_checks_vanished_files_whatever_the_totals() -> None:
    vanished = "every row of a would be erased (100 rows; the window would go from {} to {})"
    assert shrink_problem({"a": 100, "b": 50}, {"b": 150}) == vanished.format(150, 150)  # b is not new
    assert shrink_problem({"a": 100}, {"b": 100}, known_files={"a", "b"}) == vanished.format(100, 100)
    assert shrink_problem({"a": 100}, {"b": 99}) == vanished.format(100, 99)  # too small for a rename
    assert shrink_problem({"a": 100}, {"b": 100, "c": 5}) is None  # b is a's new name


def _days_from_the_data(folder: Path) -> tuple[DatasetSpec, Path]:
    """a.csv: 2024-01-02 .. 01-03; b.csv reaches 01-04: partitions from the data, 01-02 .. 01-04."""
    (folder / "a.csv").write_text(rows("1,2024-01-02,a,1", "2,2024-01-02,a,2", "3,2024-01-03,a,3"))
    (folder / "b.csv").write_text(rows("10,2024-01-03,b,1", "11,2024-01-03,b,2", "12,2024-01-04,b,3"))
    spec, warehouse = spec_for(folder), folder / "w.duckdb"
    first = load(spec, warehouse)
    assert first.partitions.get_partition_keys() == ["2024-01-02", "2024-01-03", "2024-01-04"]
    assert_accounted(first, {"a.csv": 3, "b.csv": 3})
    return spec, warehouse


def test_a_deleted_file_leaves_no_row_in_partitions_that_no_longer_exist(tmp_path: Path) -> None:
    # before: the refusal counted 2 rows of b.csv (its rows in the shrunk window, not its 3), and with
    # allow_shrink id 12 (2024-01-04, a partition gone with b.csv) stayed in raw and clean, checks green
    spec, warehouse = _days_from_the_data(tmp_path)
    (tmp_path / "b.csv").unlink()
    refused = load(spec, warehouse, raise_on_error=False)
    assert refused.partitions.get_partition_keys() == ["2024-01-02", "2024-01-03"]
    message = _raw_failure(refused)
    assert "every row of b.csv would be erased (3 rows; the window would go from 5 to 3)" in message
    assert (
        "1 rows of b.csv (1 rows) are in partitions that no longer exist (outside 2024-01-02 .. 2024-01-03: "
        "the source no longer holds data that far), and would be erased. Nothing was changed." in message
    )
    assert "`mlplatform run --dataset toy --allow-shrink`" in message
    assert refused.query("SELECT count(*) FROM toy.raw") == [(6,)]

    allowed = load(spec, warehouse, run_config=ALLOW_SHRINK)
    assert_accounted(allowed, {"a.csv": 3})
    assert allowed.query("SELECT _source_file, count(*) FROM toy.raw GROUP BY 1") == [
        (str(tmp_path / "a.csv"), 3)
    ]
    assert allowed.query("SELECT max(ts) FROM toy.clean") == [(datetime(2024, 1, 3),)]
    assert allowed.raw_metadata()["rows_removed_outside_partitions"] == 1


def test_a_file_cut_short_needs_allow_shrink_for_its_rows_past_the_partitions(tmp_path: Path) -> None:
    # before: b.csv still yields rows in the window, so nothing was refused and id 12 stayed for good
    spec, warehouse = _days_from_the_data(tmp_path)
    (tmp_path / "b.csv").write_text(rows("10,2024-01-03,b,1", "11,2024-01-03,b,2"))
    message = _raw_failure(load(spec, warehouse, raise_on_error=False))
    assert "toy.raw for 2024-01-02 .. 2024-01-03: 1 rows of b.csv (1 rows) are in partitions" in message
    assert "would be erased (" not in message  # no window shrinks: only the rows past the partitions
    allowed = load(spec, warehouse, run_config=ALLOW_SHRINK)
    assert_accounted(allowed, {"a.csv": 3, "b.csv": 2})
    assert sorted(i for (i,) in allowed.query("SELECT id FROM toy.clean")) == [1, 2, 3, 10, 11]


def test_source_accounting_fails_while_clean_holds_rows_of_a_file_gone_from_the_source(
    tmp_path: Path,
) -> None:
    # before: a file no longer in the source was not "recorded", and its rows left in clean passed
    _two_files(tmp_path)
    spec, warehouse = spec_for(tmp_path, **FIXED), tmp_path / "w.duckdb"
    load(spec, warehouse)
    (tmp_path / "b.csv").unlink()
    day = ("2024-01-01", "2024-01-01")  # b.csv's 2024-01-02 row stays until that partition re-runs
    partial = load(spec, warehouse, partition_keys=day, run_config=ALLOW_SHRINK, raise_on_error=False)
    check = partial.check("source_accounting")
    assert not check.passed
    assert check.description == (
        "b.csv: clean + quarantine hold 1 rows of it, but the file is no longer in the source" + FIX
    )
    assert_accounted(load(spec, warehouse, run_config=ALLOW_SHRINK), {"a.csv": 2})


def test_shrink_rule_counts_a_vanished_file_over_the_whole_table() -> None:
    assert shrink_problem({"a": 2, "b": 1}, {"b": 1}, stored={"a": 5, "b": 4}) == (
        "every row of a would be erased (5 rows; the window would go from 3 to 1)"
    )


def test_cleaning_drops_rows_outside_the_partitions_only_once_raw_let_them_go() -> None:
    inside, outside = "'2024-01-02'::TIMESTAMP", "'2024-01-05'::TIMESTAMP"
    spec = spec_for(Path("unused"))
    with duckdb.connect() as conn:
        conn.execute("CREATE SCHEMA toy")
        conn.execute(f"CREATE TABLE toy.raw AS SELECT 'b.csv' AS _source_file, {outside} AS _partition_ts")
        conn.execute(f"CREATE TABLE toy.clean AS SELECT * FROM VALUES ({inside}), ({outside}) t(ts)")
        conn.execute(f"CREATE TABLE toy.quarantine AS SELECT {outside} AS _partition_ts")
        bounds = (datetime(2024, 1, 1), datetime(2024, 1, 4))
        assert drop_rows_outside(conn, spec, *bounds) == 0  # raw still holds its row: the shrink is refused
        conn.execute("DELETE FROM toy.raw")  # raw let it go (allow_shrink)
        assert drop_rows_outside(conn, spec, *bounds) == 2
        assert conn.execute("SELECT ts FROM toy.clean").fetchall() == [(datetime(2024, 1, 2),)]
        assert conn.execute("SELECT count(*) FROM toy.quarantine").fetchall() == [(0,)]
