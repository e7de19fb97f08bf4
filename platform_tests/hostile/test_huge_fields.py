"""A field of millions of digits is data: it loads (quarantined with its reason) in seconds, and never
stalls the probe that loading definitions runs for every spec.

Each test says what happened before (`before:`).
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from mlplatform.specs.loader import check_source
from platform_tests.hostile.corpus import GOOD_FILE, HEADER, assert_accounted, load, rows, spec_for

DIGITS = "9" * 3_000_000
NOT_FINITE = " is not a finite number (allow_infinite: true keeps it)"
ANYTHING = {"quality": {"max_quarantine_share": 1.0}}


def _write(folder: Path, files: dict[str, str]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (folder / name).write_text(text)


def _probe_seconds(folder: Path) -> float:
    started = time.perf_counter()
    check_source(spec_for(folder, **ANYTHING))
    return time.perf_counter() - started


@pytest.mark.parametrize(
    "last_line",
    ["3,2024-01-02,b,2", '3,2024-01-02,"b,2'],  # the second: broken quoting as well
    ids=["plain", "broken-quote"],
)
def test_field_of_3m_digits_is_a_value(tmp_path: Path, last_line: str) -> None:
    # before: DuckDB's CSV sniffer spent minutes of CPU on the field (probe and staging alike), so
    # loading definitions hung for every dataset
    _write(tmp_path, {"x.csv": rows("1,2024-01-01,a,1", f"2,2024-01-02,a,{DIGITS}", last_line)})
    (tmp_path / "good.csv").write_text(GOOD_FILE)
    assert _probe_seconds(tmp_path) < 30
    outcome = load(spec_for(tmp_path, **ANYTHING), tmp_path / "warehouse.duckdb")
    assert_accounted(outcome, {"x.csv": 3, "good.csv": 1})
    reasons = outcome.reasons("x.csv")
    assert reasons[2] == f"value: '{DIGITS}'{NOT_FINITE}"
    assert set(reasons) == ({2} if last_line.endswith(",b,2") else {2, 3})


def test_huge_field_in_an_undeclared_column_of_the_first_file(tmp_path: Path) -> None:
    # before: the type sniff for undeclared columns read the first file of the glob and hung on it
    header = HEADER + ",note"
    _write(
        tmp_path,
        {
            "a.csv": f"{header}\n1,2024-01-01,a,1,{DIGITS}\n2,2024-01-02,b,2,7\n",
            "b.csv": f"{header}\n3,2024-01-02,a,3,8\n",
        },
    )
    assert _probe_seconds(tmp_path) < 30
    outcome = load(spec_for(tmp_path, **ANYTHING), tmp_path / "warehouse.duckdb")
    assert_accounted(outcome, {"a.csv": 2, "b.csv": 1})
    assert outcome.landed() == {"a.csv": (2, 0), "b.csv": (1, 0)}
    assert outcome.query("SELECT id, length(note) FROM toy.raw ORDER BY id") == [
        ("1", 3_000_000),
        ("2", 1),
        ("3", 1),
    ]
