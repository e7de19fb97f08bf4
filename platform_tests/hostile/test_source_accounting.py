"""Hostile files: encodings, delimiters, quotes, line shapes, headers. Every record the test writes
ends in exactly one of clean or quarantine, with its reason, and the other file of the glob loads.

Each test says what happened before the source accounting work (`before:`).
"""

from __future__ import annotations

import codecs
from datetime import datetime
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from mlplatform.core.accounting import count_csv_records
from mlplatform.specs.loader import SpecError, check_source
from platform_tests.hostile.corpus import (
    GOOD_FILE,
    HEADER,
    assert_accounted,
    load,
    load_with_good_file,
    rows,
    spec_for,
)


def test_latin1_byte_quarantines_only_its_line(tmp_path: Path) -> None:
    # before: the same (DuckDB rejects the line), but nothing compared the file's records with what landed
    data = (HEADER + "\n1,2024-01-01,a,1\n2,2024-01-01,\xe9,1\n").encode("latin-1")
    outcome = load_with_good_file(tmp_path, "x.csv", data)
    assert_accounted(outcome, {"x.csv": 2, "good.csv": 1})
    assert outcome.reasons("x.csv") == {
        2: "line 3: invalid encoding (Invalid unicode (byte sequence mismatch) detected. "
        "This file is not utf-8 encoded.)"
    }


def test_utf8_bom_header_is_read(tmp_path: Path) -> None:
    outcome = load_with_good_file(tmp_path, "x.csv", codecs.BOM_UTF8 + rows("1,2024-01-01,a,1").encode())
    assert_accounted(outcome, {"x.csv": 1, "good.csv": 1})
    assert outcome.landed()["x.csv"] == (1, 0)


def test_utf16_file_is_read_as_utf16(tmp_path: Path) -> None:
    # before: read as UTF-8, columns named '\x00i\x00d...', its rows had no time and vanished
    data = rows("1,2024-01-01,a,1", "2,2024-01-01,b,2").encode("utf-16")
    outcome = load_with_good_file(tmp_path, "x.csv", data)
    assert_accounted(outcome, {"x.csv": 2, "good.csv": 1})
    assert outcome.landed()["x.csv"] == (2, 0)


def test_wrong_delimiter_quarantines_the_file_naming_its_header(tmp_path: Path) -> None:
    # before: one column 'id;day;kind;value', every spec column null, no time: its rows vanished
    outcome = load_with_good_file(tmp_path, "x.csv", "id;day;kind;value\n1;2024-01-01;a;1\n")
    assert_accounted(outcome, {"x.csv": 1, "good.csv": 1})
    reason = outcome.reasons("x.csv")[1]
    assert reason.startswith(
        "id: x.csv has no column 'id', 'day', 'value' (its header: 'id;day;kind;value'; delimiter ','); "
        "its rows are quarantined"
    )


def test_unterminated_quote_quarantines_its_line_only(tmp_path: Path) -> None:
    # before: "Error when sniffing file" at definitions load: the whole spec failed
    data = HEADER + '\n1,2024-01-01,"a,1\n2,2024-01-01,a,1\n3,2024-01-02,b,2\n'
    outcome = load_with_good_file(tmp_path, "x.csv", data)
    assert_accounted(outcome, {"x.csv": 3, "good.csv": 1})
    assert outcome.reasons("x.csv") == {
        1: "line 2: unbalanced quote (the file's quoting is broken: read line by line)"
    }


def test_quoted_newline_is_one_record(tmp_path: Path) -> None:
    # a string column holding a newline: two records on three physical lines
    (tmp_path / "x.csv").write_text(
        'id,day,kind,value,note\n1,2024-01-01,a,1,"two\nlines"\n2,2024-01-01,b,2,x\n'
    )
    (tmp_path / "good.csv").write_text("id,day,kind,value,note\n7,2024-01-02,a,1,y\n")
    outcome = load(spec_for(tmp_path, extra_columns={"note": {"type": "string"}}), tmp_path / "w2.duckdb")
    assert_accounted(outcome, {"x.csv": 2, "good.csv": 1})
    assert outcome.query("SELECT note FROM toy.clean WHERE id = 1") == [("two\nlines",)]


def test_mixed_line_endings_are_read_by_python(tmp_path: Path) -> None:
    # before: DuckDB's sniffer fails on an LF header with CRLF rows: the whole spec failed at load
    data = HEADER + "\n1,2024-01-01,a,1\r\n2,2024-01-01,a,1\r\n"
    outcome = load_with_good_file(tmp_path, "x.csv", data)
    assert_accounted(outcome, {"x.csv": 2, "good.csv": 1})
    assert outcome.landed()["x.csv"] == (2, 0)
    assert "read by Python's csv module" in outcome.raw_metadata()["source_accounting"]


def test_ragged_lines_are_quarantined_with_their_shape(tmp_path: Path) -> None:
    outcome = load_with_good_file(
        tmp_path, "x.csv", rows("1,2024-01-01", "2,2024-01-01,a,1,9", "3,2024-01-01,a,1")
    )
    assert_accounted(outcome, {"x.csv": 3, "good.csv": 1})
    reasons = outcome.reasons("x.csv")
    assert reasons[1] == "line 2: missing columns (Expected Number of Columns: 4 Found: 2)"
    assert reasons[2] == "line 3: too many columns (Expected Number of Columns: 4 Found: 5)"


def test_three_megabyte_field_loads(tmp_path: Path) -> None:
    # before: "Maximum line size of 2097152 bytes exceeded" at definitions load: the whole spec failed
    big = "x" * 3_000_000
    (tmp_path / "x.csv").write_text(f"id,day,kind,value,note\n1,2024-01-01,a,1,{big}\n2,2024-01-01,b,2,s\n")
    (tmp_path / "good.csv").write_text("id,day,kind,value,note\n7,2024-01-02,a,1,y\n")
    outcome = load(spec_for(tmp_path, extra_columns={"note": {"type": "string"}}), tmp_path / "w.duckdb")
    assert_accounted(outcome, {"x.csv": 2, "good.csv": 1})
    assert outcome.query("SELECT length(note) FROM toy.clean WHERE id = 1") == [(3_000_000,)]


def test_empty_and_header_only_files_hold_no_records(tmp_path: Path) -> None:
    # before: an empty file made DuckDB report a column 'column0' (and, alone, "they have: column0")
    (tmp_path / "empty.csv").write_bytes(b"")
    (tmp_path / "header.csv").write_text(HEADER + "\n")
    outcome = load_with_good_file(tmp_path, "x.csv", rows("1,2024-01-01,a,1"))
    assert_accounted(outcome, {"x.csv": 1, "good.csv": 1, "empty.csv": 0, "header.csv": 0})
    table = outcome.raw_metadata()["source_accounting"]
    assert "empty file" in table and "header.csv" in table


def test_duplicate_header_quarantines_the_file_naming_the_column(tmp_path: Path) -> None:
    # before: DuckDB renamed the copy kind_1 without a word and the rows were clean
    outcome = load_with_good_file(tmp_path, "x.csv", "id,day,kind,value,kind\n1,2024-01-01,a,1,b\n")
    assert_accounted(outcome, {"x.csv": 1, "good.csv": 1})
    assert outcome.reasons("x.csv") == {
        1: "kind: the header of x.csv names this column 2 times (columns 3, 5); "
        "its rows are quarantined until the file names each column once"
    }


def test_file_missing_a_required_column_says_so(tmp_path: Path) -> None:
    # before: "value: null in a non-nullable column" on each row, nothing about the file
    outcome = load_with_good_file(tmp_path, "x.csv", "id,day,kind\n1,2024-01-01,a\n")
    assert_accounted(outcome, {"x.csv": 1, "good.csv": 1})
    assert outcome.reasons("x.csv") == {
        1: "value: x.csv has no column 'value' (its header: 'id', 'day', 'kind'; delimiter ','); "
        "its rows are quarantined"
    }


def test_blank_lines_are_not_records(tmp_path: Path) -> None:
    outcome = load_with_good_file(tmp_path, "x.csv", HEADER + "\n1,2024-01-01,a,1\n\n2,2024-01-01,b,2\n\n")
    assert_accounted(outcome, {"x.csv": 2, "good.csv": 1})


def _parquet(path: Path, **columns: list) -> None:
    pq.write_table(pa.table(columns), path)


def test_parquet_type_mismatch_and_missing_column_across_files(tmp_path: Path) -> None:
    # before: the missing column gave "value: null in a non-nullable column"; counts were never checked
    _parquet(tmp_path / "a.parquet", id=[1, 2], day=["2024-01-01"] * 2, kind=["a", "b"], value=[1.0, 2.0])
    _parquet(
        tmp_path / "b.parquet", id=["3", "x"], day=["2024-01-02"] * 2, kind=["a", "b"], value=["1.5", "oops"]
    )
    _parquet(tmp_path / "c.parquet", id=[5], day=["2024-01-02"], kind=["a"])
    spec = spec_for(tmp_path, "*.parquet", quality={"max_quarantine_share": 1.0})
    outcome = load(spec, tmp_path / "w.duckdb")
    assert_accounted(outcome, {"a.parquet": 2, "b.parquet": 2, "c.parquet": 1})
    assert outcome.landed()["a.parquet"] == (2, 0)
    assert outcome.reasons("b.parquet") == {
        2: "id: cannot parse 'x' as int; value: cannot parse 'oops' as float"
    }
    assert outcome.reasons("c.parquet")[1].startswith("value: c.parquet has no column 'value'")


def test_counting_is_streaming_and_independent_of_duckdb(tmp_path: Path) -> None:
    path = tmp_path / "big.csv"
    with path.open("w") as handle:
        handle.write(HEADER + "\n")
        handle.writelines(f"{i},2024-01-01,a,1\n" for i in range(200_000))
        handle.write('200000,2024-01-01,"quoted\nnewline",1\n')
    count = count_csv_records(str(path))
    assert (count.rows, count.header, count.by_lines) == (200_001, tuple(HEADER.split(",")), False)


def test_truncated_parquet_file_is_quarantined_as_one_record(tmp_path: Path) -> None:
    # before: "ArrowInvalid: Parquet magic bytes not found" from counting: the whole raw step failed
    _parquet(tmp_path / "good.parquet", id=[1], day=["2024-01-01"], kind=["a"], value=[1.0])
    whole = (tmp_path / "good.parquet").read_bytes()
    (tmp_path / "x.parquet").write_bytes(whole[: len(whole) // 2])
    (tmp_path / "empty.parquet").write_bytes(b"")  # empty is not broken: no record
    spec = spec_for(tmp_path, "*.parquet", quality={"max_quarantine_share": 1.0})
    probe = check_source(spec)
    assert [Path(p).name for p, _ in probe.unreadable] == ["x.parquet"]
    outcome = load(spec, tmp_path / "w.duckdb")
    assert_accounted(outcome, {"x.parquet": 1, "good.parquet": 1, "empty.parquet": 0})  # x: one record
    assert outcome.reasons("x.parquet") == {
        0: "file unreadable: Parquet magic bytes not found in footer. Either the file is corrupted or this "
        "is not a parquet file."
    }
    assert outcome.query("SELECT _partition_ts FROM toy.quarantine") == [(datetime(2024, 1, 1),)]
    (tmp_path / "good.parquet").unlink()
    with pytest.raises(SpecError, match=r"cannot read .*x\.parquet: file unreadable: Parquet magic bytes"):
        check_source(spec)  # no file at all is readable: that is the dataset's error


def test_csv_path_that_cannot_be_opened_is_quarantined_as_one_record(tmp_path: Path) -> None:
    # before: IsADirectoryError from counting: the whole raw step failed
    (tmp_path / "folder.csv").mkdir()
    outcome = load_with_good_file(tmp_path, "x.csv", rows("1,2024-01-01,a,1"))
    assert_accounted(outcome, {"folder.csv": 1, "x.csv": 1, "good.csv": 1})
    assert outcome.reasons("folder.csv")[0].startswith("file unreadable: [Errno 21] Is a directory")


def test_one_broken_utf16_file_does_not_break_definitions(tmp_path: Path) -> None:
    # before: "source.path: cannot read ...: File is not utf-16 encoded" at definitions load: the
    # whole dataset was broken by one file
    (tmp_path / "good.csv").write_text(GOOD_FILE)
    (tmp_path / "x.csv").write_bytes(rows("1,2024-01-01,a,1").encode("utf-16") + b"\x00")  # odd length
    spec = spec_for(tmp_path, quality={"max_quarantine_share": 1.0})
    assert check_source(spec).time_min == datetime(2024, 1, 1)  # read by Python: its times count
    outcome = load(spec, tmp_path / "w.duckdb")
    assert_accounted(outcome, {"x.csv": count_csv_records(str(tmp_path / "x.csv")).rows, "good.csv": 1})
    assert outcome.landed()["x.csv"][0] == 1
