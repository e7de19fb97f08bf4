"""A partition whose source rows are gone is not emptied silently, and `source_accounting` fails when
what a file holds and what landed differ (a file appended to while it is read, a lost row)."""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import duckdb
import pytest

from mlplatform.assets import ingestion
from mlplatform.core.accounting import FileCount, describe_account, read_accounts, shrink_problem
from platform_tests.hostile.corpus import HEADER, Outcome, assert_accounted, load, rows, spec_for

FIXED = {"partitions": {"start": "2024-01-01", "end": "2024-01-03"}}
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
    counted = ingestion.count_source

    def count_then_append(path: str, source_format: str, delimiter: str = ",") -> FileCount:
        count = counted(path, source_format, delimiter)
        with open(path, "a") as handle:  # a writer adds a record between the count and the load
            handle.write("2,2024-01-01,a,2\n")
        return count

    monkeypatch.setattr(ingestion, "count_source", count_then_append)
    spec, warehouse = spec_for(tmp_path, **FIXED), tmp_path / "w.duckdb"
    outcome = load(spec, warehouse, raise_on_error=False)
    check = outcome.check("source_accounting")
    assert not check.passed
    assert check.description == "x.csv: the file holds 1 records but the load read 2"
    monkeypatch.setattr(ingestion, "count_source", counted)
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
        "holds 2 records"
    )
    assert check.metadata["rows_counted_twice"].value == 1
    assert "| a.csv | 2 | 2 | 2 | 2 | 3 | 1 |" in check.metadata["files_not_reconciled_table"].value


def test_shrink_rule_checks_vanished_files_whatever_the_totals() -> None:
    vanished = "every row of a would be erased (100 rows; the window would go from {} to {})"
    assert shrink_problem({"a": 100, "b": 50}, {"b": 150}) == vanished.format(150, 150)  # b is not new
    assert shrink_problem({"a": 100}, {"b": 100}, known_files={"a", "b"}) == vanished.format(100, 100)
    assert shrink_problem({"a": 100}, {"b": 99}) == vanished.format(100, 99)  # too small for a rename
    assert shrink_problem({"a": 100}, {"b": 100, "c": 5}) is None  # b is a's new name
