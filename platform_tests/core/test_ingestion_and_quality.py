"""The core of the raw stage (load a window, refuse a silent shrink) and of the data-quality checks,
on a real in-memory DuckDB, without Dagster."""

from __future__ import annotations

import csv
from datetime import date, datetime
from pathlib import Path

import duckdb

from mlplatform.contracts import Stage
from mlplatform.core.accounting import count_source, read_accounts
from mlplatform.core.cleaning import clean_window, reason_counts_markdown
from mlplatform.core.features import write_features_window
from mlplatform.core.ingestion import (
    RawLoad,
    ShrinkRefusal,
    load_raw_window,
    outside_problem,
    with_spec_end,
)
from mlplatform.core.placement import PartitionBounds
from mlplatform.core.quality import (
    accounting_failure,
    duplicated_keys,
    quarantine_share,
    reconcile_rows,
)
from mlplatform.core.source import source_files
from mlplatform.core.warehouse import PARTITION_TIME, window_column
from mlplatform.specs.model import DatasetSpec
from platform_tests.core.toy_spec import toy_spec

HEADER = "id,day,kind,value"
WINDOW = (datetime(2024, 1, 1), datetime(2024, 1, 4))
BOUNDS = PartitionBounds(first_start=datetime(2024, 1, 1), last_start=datetime(2024, 1, 3), end=WINDOW[1])


def _write(path: Path, *records: str) -> None:
    path.write_text(HEADER + "\n" + "".join(f"{r}\n" for r in records))


def _records(path: Path) -> int:
    """The file's data records, counted by the csv module (not by the code under test)."""
    with path.open(newline="") as handle:
        return sum(1 for _ in csv.reader(handle)) - 1


def _load(
    conn: duckdb.DuckDBPyConnection, spec: DatasetSpec, allow_shrink: bool = False
) -> RawLoad | ShrinkRefusal:
    counts = {f: count_source(f, spec.source_format, spec.source.delimiter) for f in source_files(spec)}
    return load_raw_window(conn, spec, counts, WINDOW, BOUNDS, allow_shrink, "2024-01-01 .. 2024-01-03")


def test_window_column_is_the_placement_time_in_raw_and_quarantine_only() -> None:
    assert window_column(Stage.RAW, "ts") == PARTITION_TIME == "_partition_ts"
    assert window_column(Stage.QUARANTINE, "ts") == PARTITION_TIME
    assert window_column(Stage.CLEAN, "ts") == "ts"
    assert window_column(Stage.FEATURES, "ts") == "ts"


def test_with_spec_end_adds_an_explicit_end_only(tmp_path: Path) -> None:
    assert with_spec_end(toy_spec(tmp_path / "*.csv"), BOUNDS) == BOUNDS
    assert with_spec_end(toy_spec(tmp_path / "*.csv"), None) is None
    ended = toy_spec(tmp_path / "*.csv", partitions={"start": "2024-01-01", "end": "2024-01-04"})
    assert ended.partitions.end == date(2024, 1, 4)
    assert with_spec_end(ended, BOUNDS).spec_end == datetime(2024, 1, 4)  # type: ignore[union-attr]


def test_a_load_writes_every_source_record_and_accounts_for_each_file(tmp_path: Path) -> None:
    _write(tmp_path / "a.csv", "1,2024-01-01,a,1", "2,2024-01-02,a,2", "3,2024-01-02")  # one malformed
    _write(tmp_path / "b.csv", "4,2024-01-03,b,3", "5,2024-01-09,b,4")  # one after the last partition
    spec = toy_spec(tmp_path / "*.csv")
    conn = duckdb.connect()
    load = _load(conn, spec)
    assert isinstance(load, RawLoad)
    source = _records(tmp_path / "a.csv") + _records(tmp_path / "b.csv")
    assert source == 5
    assert load.rows + load.rows_pending_partition == source
    assert (load.rows, load.rows_pending_partition, load.malformed_lines) == (4, 1, 1)
    assert {Path(a.source_file).name: a.source_rows for a in load.accounts} == {"a.csv": 3, "b.csv": 2}
    assert all(a.read_in_full for a in load.accounts)
    assert [note for path, note in load.notes.items() if path.endswith("b.csv")] == [
        "1 rows wait for their partition (after 2024-01-03): loaded when it exists"
    ]
    assert conn.execute(f"SELECT count(*) FROM toy.raw WHERE {load.in_window}").fetchall() == [(4,)]
    tables = {r[0] for r in conn.execute("SELECT table_name FROM duckdb_tables()").fetchall()}
    assert "_staged" not in tables  # the staged rows are dropped after the load


def test_a_gone_file_is_refused_without_allow_shrink_and_nothing_changes(tmp_path: Path) -> None:
    _write(tmp_path / "a.csv", "1,2024-01-01,a,1", "2,2024-01-02,a,2")
    _write(tmp_path / "b.csv", "3,2024-01-03,b,3")
    spec = toy_spec(tmp_path / "*.csv")
    conn = duckdb.connect()
    assert isinstance(_load(conn, spec), RawLoad)
    (tmp_path / "a.csv").unlink()
    refusal = _load(conn, spec)
    assert isinstance(refusal, ShrinkRefusal)
    assert refusal.description == (
        "toy.raw for 2024-01-01 .. 2024-01-03: every row of a.csv would be erased (2 rows; the window would "
        "go from 3 to 1). Nothing was changed. If the source rows were removed on purpose, re-run with "
        "`mlplatform run --dataset toy --allow-shrink` (in the launchpad: run config "
        "`ops: {toy__raw: {config: {allow_shrink: true}}}`); otherwise restore the files."
    )
    assert refusal.metadata() == {"rows_before": 3, "rows_after": 1, "rows_outside_partitions": 0}
    assert conn.execute("SELECT count(*) FROM toy.raw").fetchall() == [(3,)]
    allowed = _load(conn, spec, allow_shrink=True)
    assert isinstance(allowed, RawLoad) and allowed.rows == 1
    assert conn.execute("SELECT count(*) FROM toy.raw").fetchall() == [(1,)]


def test_rows_of_partitions_that_no_longer_exist_are_named_and_removed_only_when_allowed(
    tmp_path: Path,
) -> None:
    _write(tmp_path / "a.csv", "1,2023-12-31,a,1", "2,2024-01-02,a,2")
    spec = toy_spec(tmp_path / "*.csv")
    conn = duckdb.connect()
    wider = PartitionBounds(datetime(2023, 12, 31), datetime(2024, 1, 3), WINDOW[1])
    counts = {f: count_source(f, "csv") for f in source_files(spec)}
    load_raw_window(conn, spec, counts, (datetime(2023, 12, 31), WINDOW[1]), wider, False, "all")
    _write(tmp_path / "a.csv", "2,2024-01-02,a,2")  # the source no longer reaches 2023-12-31
    refusal = _load(conn, spec)
    assert isinstance(refusal, ShrinkRefusal)
    assert (
        "1 rows of a.csv (1 rows) are in partitions that no longer exist (outside 2024-01-01 .. 2024-01-03"
        in (refusal.description)
    )
    allowed = _load(conn, spec, allow_shrink=True)
    assert isinstance(allowed, RawLoad)
    assert {Path(f).name: n for f, n in allowed.removed_outside.items()} == {"a.csv": 1}
    assert conn.execute("SELECT count(*) FROM toy.raw").fetchall() == [(1,)]


def test_outside_problem_names_five_files_and_counts_the_rest() -> None:
    outside = {f"/data/f{i}.csv": i for i in range(1, 8)}
    problem = outside_problem(outside, BOUNDS)
    assert problem == (
        "28 rows of f1.csv (1 rows), f2.csv (2 rows), f3.csv (3 rows), f4.csv (4 rows), f5.csv (5 rows) "
        "and 2 more file(s) are in partitions that no longer exist (outside 2024-01-01 .. 2024-01-03: the "
        "source no longer holds data that far), and would be erased"
    )
    assert outside_problem({}, BOUNDS) is None
    assert outside_problem(outside, None) is None


def _cleaned(tmp_path: Path) -> tuple[duckdb.DuckDBPyConnection, DatasetSpec]:
    _write(
        tmp_path / "a.csv", "1,2024-01-01,a,1", "2,2024-01-01,z,2", "3,2024-01-02,a,20", "4,2024-01-03,b,4"
    )
    spec = toy_spec(tmp_path / "*.csv")
    conn = duckdb.connect()
    assert isinstance(_load(conn, spec), RawLoad)
    result = clean_window(conn, spec, *WINDOW)
    assert (result.clean_rows, result.quarantined_rows) == (2, 2)
    return conn, spec


def test_quality_measures_on_a_cleaned_window(tmp_path: Path) -> None:
    conn, spec = _cleaned(tmp_path)
    rows = reconcile_rows(conn, spec)
    assert (rows.raw_rows, rows.clean_rows, rows.quarantined_rows, rows.mismatched) == (4, 2, 2, [])
    share = quarantine_share(conn, spec)
    assert share.share == 0.5
    assert sorted(share.top_failed_checks) == [("isin(['a', 'b'])", 1), ("less_than_or_equal_to(10.0)", 1)]
    assert duplicated_keys(conn, spec) == {"id": 0}
    conn.execute("INSERT INTO toy.clean SELECT * FROM toy.clean WHERE id = 1")  # a lost reconciliation
    assert duplicated_keys(conn, spec) == {"id": 1}
    assert reconcile_rows(conn, spec).mismatched == [("2024-01-01 00:00:00", 2, 2, 1)]
    failing = [a for a in read_accounts(conn, spec.name, spec.time_column) if not a.reconciles]
    assert accounting_failure("toy", failing) == (
        "a.csv: 4 rows placed in the window but 5 are in clean + quarantine. To reload every partition from "
        "the files as they are: `mlplatform run --dataset toy` (add --allow-shrink where files were removed "
        "on purpose)"
    )
    assert accounting_failure("toy", []) is None


def test_an_empty_quarantine_has_no_share_and_no_reasons(tmp_path: Path) -> None:
    _write(tmp_path / "a.csv", "1,2024-01-01,a,1")
    spec = toy_spec(tmp_path / "*.csv")
    conn = duckdb.connect()
    _load(conn, spec)
    result = clean_window(conn, spec, *WINDOW)
    assert quarantine_share(conn, spec).share == 0.0
    assert quarantine_share(conn, spec).top_failed_checks == []
    assert reason_counts_markdown(result.reason_counts) == "_none_"
    assert reason_counts_markdown({"kind: isin": 2, "value: parse": 1}) == (
        "- `kind: isin`: 2 rows\n- `value: parse`: 1 rows"
    )


def test_write_features_window_replaces_the_window_and_names_the_inputs(tmp_path: Path) -> None:
    conn, spec = _cleaned(tmp_path)
    written = write_features_window(conn, spec, *WINDOW)
    assert written.rows == 2  # the clean rows of the window
    columns = [r[0] for r in conn.execute("DESCRIBE toy.features").fetchall()]
    assert set(written.feature_columns) <= set(columns)
    assert write_features_window(conn, spec, *WINDOW).rows == 2  # replaced, not appended
    assert conn.execute("SELECT count(*) FROM toy.features").fetchall() == [(2,)]
