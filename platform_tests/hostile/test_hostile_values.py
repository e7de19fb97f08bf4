"""Hostile values (time zones, non-finite and overflowing numbers, Parquet types that do not match the
spec) through `stage_source` and `clean_window`: every record of the files (counted from the files)
is in exactly one of clean or quarantine, with the expected clean values and exact reasons."""

from __future__ import annotations

import csv
import math
import subprocess
import sys
from dataclasses import dataclass, field
from datetime import date, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import mlplatform
from mlplatform.core.cleaning import clean_window
from mlplatform.core.source import source_files, stage_source
from mlplatform.core.warehouse import replace_window
from mlplatform.specs.model import DatasetSpec

EVERYTHING = (datetime(2000, 1, 1), datetime(2100, 1, 1))
NOT_FINITE = " is not a finite number (allow_infinite: true keeps it)"


@dataclass(frozen=True)
class Case:
    files: dict[str, str | pa.Table]  # CSV text or a Parquet table, by file name
    columns: dict[str, dict[str, Any]]  # spec columns besides ts (timestamp) and y (float, the target)
    check: str  # the column whose clean values are compared
    clean: list[Any]  # its values, in file and row order
    reasons: dict[tuple[str, int], str] = field(default_factory=dict)  # (file, row) -> reason
    extra: dict[str, Any] = field(default_factory=dict)  # other spec keys


def _csv(*lines: str) -> str:
    return "\n".join(lines) + "\n"


def _table(**columns: pa.Array) -> pa.Table:
    rows = len(next(iter(columns.values())))
    times = pa.array([datetime(2024, 1, 1, i) for i in range(rows)], pa.timestamp("us"))
    return pa.table({"ts": times, "y": pa.array([1.0] * rows), **columns})


def _spec(case: Case, source: Path) -> DatasetSpec:
    return DatasetSpec.model_validate(
        {
            "name": "hostile",
            "source": {"path": str(source)},
            "time_column": "ts",
            "columns": {
                "ts": {"type": "timestamp", "nullable": False},
                "y": {"type": "float"},
                **case.columns,
            },
            "target": {"column": "y", "task": "regression"},
            **case.extra,
        }
    )


def _write(case: Case, folder: Path) -> tuple[Path, int]:
    """The case's files, and how many records they hold (counted from the files themselves)."""
    records = 0
    for name, content in case.files.items():
        path = folder / name
        if isinstance(content, pa.Table):
            pq.write_table(content, path)
            records += pq.ParquetFile(path).metadata.num_rows
        else:
            path.write_text(content)
            with path.open(newline="") as handle:
                records += sum(1 for _ in csv.reader(handle)) - 1  # minus the header
    suffix = Path(next(iter(case.files))).suffix
    return (folder / f"*{suffix}" if len(case.files) > 1 else folder / next(iter(case.files))), records


def _load(spec: DatasetSpec, conn: duckdb.DuckDBPyConnection) -> None:
    staged = stage_source(conn, spec, source_files(spec), datetime(2024, 1, 1))
    replace_window(conn, spec.name, "raw", f"SELECT * FROM {staged}", "_partition_ts", *EVERYTHING)
    clean_window(conn, spec, *EVERYTHING)


def _run(case: Case, folder: Path, conn: duckdb.DuckDBPyConnection | None = None) -> None:
    source, records = _write(case, folder)
    conn = conn or duckdb.connect()
    _load(_spec(case, source), conn)
    order = "ORDER BY _source_file, _source_row"
    clean = [row[0] for row in conn.sql(f'SELECT "{case.check}" FROM hostile.clean {order}').fetchall()]
    reasons = {
        (Path(file).name, row): reason
        for file, row, reason in conn.sql(
            f"SELECT _source_file, _source_row, _quarantine_reason FROM hostile.quarantine {order}"
        ).fetchall()
    }
    assert records == len(clean) + len(reasons), "a source record is missing or doubled"
    assert reasons == case.reasons
    assert clean == case.clean  # NaN is stored as NULL (None), never as NaN (which equals nothing)


TS = "ts,y"
CASES = {
    "offsets_and_z_are_utc_instants": Case(
        files={
            "t.csv": _csv(
                TS,
                "2024-01-01 10:00+05:00,1",
                "2024-01-01 10:00-08:00,1",
                "2024-01-01T10:00:00Z,1",
                "2024-01-01 10:00:00.250+0530,1",
                "2024-01-01 10:00,1",  # naive: read in the spec's timezone, UTC by default
            )
        },
        columns={},
        check="ts",
        clean=[
            datetime(2024, 1, 1, 5),
            datetime(2024, 1, 1, 18),
            datetime(2024, 1, 1, 10),
            datetime(2024, 1, 1, 4, 30, 0, 250000),
            datetime(2024, 1, 1, 10),
        ],
    ),
    "zone_names_and_unknown_zones": Case(
        files={
            "t.csv": _csv(
                TS,
                "2024-01-01 10:00 America/New_York,1",
                "2024-07-01 10:00 America/New_York,1",
                "2024-01-01 10:00 UTC,1",
                "2024-01-01 10:00 Mars/Olympus,1",
                "2024-01-01 10:00 PM,1",
                "2024-03-10 02:30 America/New_York,1",  # in that zone's spring-forward gap
            )
        },
        columns={},
        check="ts",
        clean=[datetime(2024, 1, 1, 15), datetime(2024, 7, 1, 14), datetime(2024, 1, 1, 10)],
        reasons={
            ("t.csv", 4): "ts: cannot parse '2024-01-01 10:00 Mars/Olympus' as timestamp",
            ("t.csv", 5): "ts: cannot parse '2024-01-01 10:00 PM' as timestamp",
            (
                "t.csv",
                6,
            ): "ts: '2024-03-10 02:30 America/New_York' does not exist in its zone (a daylight saving gap)",
        },
    ),
    "naive_times_in_the_spec_timezone_and_dst": Case(
        files={
            "t.csv": _csv(
                TS,
                "2024-01-01 10:00,1",
                "2024-07-01 10:00,1",
                "2024-01-01 10:00+01:00,1",  # an explicit offset wins over the spec's zone
                "2024-11-03 01:30,1",  # ambiguous: the second (standard time) occurrence
                "2024-03-10 02:30,1",  # in the spring-forward gap: does not exist
            )
        },
        columns={},
        extra={"timezone": "America/New_York"},
        check="ts",
        clean=[
            datetime(2024, 1, 1, 15),
            datetime(2024, 7, 1, 14),
            datetime(2024, 1, 1, 9),
            datetime(2024, 11, 3, 6, 30),
        ],
        reasons={
            ("t.csv", 5): "ts: '2024-03-10 02:30' does not exist in America/New_York (a daylight saving gap)"
        },
    ),
    "parquet_naive_timestamp_in_spec_timezone": Case(
        files={
            "t.parquet": pa.table(
                {"ts": pa.array([datetime(2024, 7, 1, 10)], pa.timestamp("ns")), "y": [1.0]}
            )
        },
        columns={},
        extra={"timezone": "Europe/Berlin"},
        check="ts",
        clean=[datetime(2024, 7, 1, 8)],
    ),
    "infinite_time": Case(
        files={"t.csv": _csv(TS, "2024-01-01 10:00,1", "infinity,1")},
        columns={},
        check="ts",
        clean=[datetime(2024, 1, 1, 10)],
        reasons={("t.csv", 2): "ts: cannot parse 'infinity' as timestamp"},
    ),
    "non_finite_spellings": Case(
        files={
            "t.csv": _csv(
                "ts,y,v",
                "2024-01-01 01:00,1,inf",
                "2024-01-01 02:00,1,-Infinity",
                "2024-01-01 03:00,1,1e309",
                "2024-01-01 04:00,1,+inf",
                "2024-01-01 05:00,1,NaN",  # NaN is null; v is nullable
                "2024-01-01 06:00,1,1.5",
                "2024-01-01 07:00,inf,1",  # the target too
            )
        },
        columns={"v": {"type": "float"}},
        check="v",
        clean=[None, 1.5],
        reasons={
            ("t.csv", 1): "v: 'inf'" + NOT_FINITE,
            ("t.csv", 2): "v: '-Infinity'" + NOT_FINITE,
            ("t.csv", 3): "v: '1e309'" + NOT_FINITE,
            ("t.csv", 4): "v: '+inf'" + NOT_FINITE,
            ("t.csv", 7): "y: 'inf'" + NOT_FINITE,
        },
    ),
    "nan_in_a_non_nullable_column": Case(
        files={"t.csv": _csv("ts,y,v", "2024-01-01 01:00,1,nan", "2024-01-01 02:00,1,2")},
        columns={"v": {"type": "float", "nullable": False}},
        check="v",
        clean=[2.0],
        reasons={("t.csv", 1): "v: null in a non-nullable column"},
    ),
    "allow_infinite_keeps_them": Case(
        files={
            "t.csv": _csv(
                "ts,y,v", "2024-01-01 01:00,1,inf", "2024-01-01 02:00,1,-1e999", "2024-01-01 03:00,1,NaN"
            )
        },
        columns={"v": {"type": "float", "allow_infinite": True}},
        check="v",
        clean=[math.inf, -math.inf, None],
    ),
    "parquet_non_finite_doubles": Case(
        files={"t.parquet": _table(v=pa.array([math.inf, math.nan, -math.inf, 2.0], pa.float64()))},
        columns={"v": {"type": "float"}},
        check="v",
        clean=[None, 2.0],
        reasons={("t.parquet", 1): "v: 'inf'" + NOT_FINITE, ("t.parquet", 3): "v: '-inf'" + NOT_FINITE},
    ),
    "overflowing_integers_in_text": Case(
        files={
            "t.csv": _csv(
                "ts,y,n",
                "2024-01-01 01:00,1,99999999999999999999",
                "2024-01-01 02:00,1,-9223372036854775809",
                "2024-01-01 03:00,1,9223372036854775807",
            )
        },
        columns={"n": {"type": "int"}},
        check="n",
        clean=[9223372036854775807],
        reasons={
            ("t.csv", 1): "n: cannot parse '99999999999999999999' as int",
            ("t.csv", 2): "n: cannot parse '-9223372036854775809' as int",
        },
    ),
    "parquet_overflowing_integers": Case(
        files={"t.parquet": _table(n=pa.array([2**64 - 1, 3], pa.uint64()), m=pa.array([1e20, 4.0]))},
        columns={"n": {"type": "int"}, "m": {"type": "int"}},
        check="n",
        clean=[3],
        reasons={
            ("t.parquet", 1): "n: cannot parse '18446744073709551615' as int; m: cannot parse '1e+20' as int"
        },
    ),
    "parquet_float_in_int_column": Case(
        files={"t.parquet": _table(n=pa.array([1.5, 2.0, -0.5]))},
        columns={"n": {"type": "int"}},
        check="n",
        clean=[2],
        reasons={
            ("t.parquet", 1): "n: cannot parse '1.5' as int",
            ("t.parquet", 3): "n: cannot parse '-0.5' as int",
        },
    ),
    "parquet_decimal_in_int_column": Case(
        files={"t.parquet": _table(n=pa.array([Decimal("1.50"), Decimal("2.00")], pa.decimal128(5, 2)))},
        columns={"n": {"type": "int"}},
        check="n",
        clean=[2],
        reasons={("t.parquet", 1): "n: cannot parse '1.50' as int"},
    ),
    "parquet_string_in_float_column": Case(
        files={"t.parquet": _table(v=pa.array(["abc", "2.5", " 3 ", "-inf"]))},
        columns={"v": {"type": "float"}},
        check="v",
        clean=[2.5, 3.0],
        reasons={
            ("t.parquet", 1): "v: cannot parse 'abc' as float",
            ("t.parquet", 4): "v: '-inf'" + NOT_FINITE,
        },
    ),
    "parquet_int64_in_bool_column": Case(
        files={"t.parquet": _table(flag=pa.array([0, 1, 2, -1], pa.int64()))},
        columns={"flag": {"type": "bool"}},
        check="flag",
        clean=[False, True],
        reasons={
            ("t.parquet", 3): "flag: cannot parse '2' as bool",
            ("t.parquet", 4): "flag: cannot parse '-1' as bool",
        },
    ),
    "parquet_string_in_bool_column": Case(
        files={"t.parquet": _table(flag=pa.array(["yes", "N", "maybe"]))},
        columns={"flag": {"type": "bool"}},
        check="flag",
        clean=[True, False],
        reasons={("t.parquet", 3): "flag: cannot parse 'maybe' as bool"},
    ),
    "parquet_timestamp_in_date_column": Case(
        files={
            "t.parquet": _table(
                d=pa.array([datetime(2024, 1, 1), datetime(2024, 1, 1, 10)], pa.timestamp("us"))
            )
        },
        columns={"d": {"type": "date"}},
        check="d",
        clean=[date(2024, 1, 1)],
        reasons={("t.parquet", 2): "d: cannot parse '2024-01-01 10:00:00' as date"},
    ),
    "text_time_of_day_in_date_column": Case(
        files={
            "t.csv": _csv("ts,y,d", "2024-01-01 01:00,1,2024-01-02", "2024-01-01 02:00,1,2024-01-02 10:00")
        },
        columns={"d": {"type": "date"}},
        check="d",
        clean=[date(2024, 1, 2)],
        reasons={("t.csv", 2): "d: cannot parse '2024-01-02 10:00' as date"},
    ),
    "parquet_int_then_float_across_files_of_a_glob": Case(
        files={
            "a.parquet": _table(n=pa.array([1, 2], pa.int64())),
            "b.parquet": _table(n=pa.array([3.0, 4.5], pa.float64())),
        },
        columns={"n": {"type": "int"}},
        check="n",
        clean=[1, 2, 3],
        reasons={("b.parquet", 2): "n: cannot parse '4.5' as int"},
    ),
    "parquet_number_then_text_across_files_of_a_glob": Case(
        files={
            "a.parquet": _table(v=pa.array([1.25], pa.float64())),
            "b.parquet": _table(v=pa.array(["x", "2"])),
        },
        columns={"v": {"type": "float"}},
        check="v",
        clean=[1.25, 2.0],
        reasons={("b.parquet", 1): "v: cannot parse 'x' as float"},
    ),
}


@pytest.mark.parametrize("name", list(CASES))
def test_hostile_value(tmp_path: Path, name: str) -> None:
    _run(CASES[name], tmp_path)


def _tz_aware_case() -> Case:
    """01:00 UTC, stored as 10:00 in Tokyo (TIMESTAMPTZ_NS)."""
    tokyo = pa.array([datetime(2024, 1, 1, 1)], pa.timestamp("ns", tz="UTC")).cast(
        pa.timestamp("ns", tz="Asia/Tokyo")
    )
    return Case({"t.parquet": pa.table({"ts": tokyo, "y": [1.0]})}, {}, "ts", [datetime(2024, 1, 1, 1)])


@pytest.mark.parametrize("session_zone", ["UTC", "Asia/Kolkata", "America/Los_Angeles"])
def test_parquet_timestamptz_is_utc_whatever_the_session_zone(tmp_path: Path, session_zone: str) -> None:
    """DuckDB casts TIMESTAMPTZ to TIMESTAMP in its TimeZone setting; the load must not depend on it."""
    conn = duckdb.connect()
    conn.execute(f"SET TimeZone = '{session_zone}'")
    _run(_tz_aware_case(), tmp_path, conn)


def test_parquet_timestamptz_is_utc_whatever_the_machine_zone(tmp_path: Path) -> None:
    """DuckDB's TimeZone setting defaults to the machine's (TZ): load in a process with TZ=Asia/Kolkata."""
    script = (
        "import sys, duckdb\n"
        "from pathlib import Path\n"
        "from platform_tests.hostile.test_hostile_values import _run, _tz_aware_case\n"
        "conn = duckdb.connect()\n"
        "assert conn.sql(\"SELECT current_setting('TimeZone')\").fetchall()[0][0] == 'Asia/Kolkata'\n"
        "_run(_tz_aware_case(), Path(sys.argv[1]), conn)\n"
    )
    root = Path(__file__).resolve().parents[2]
    package_root = Path(mlplatform.__file__).resolve().parents[1]  # the mlplatform this test imports
    done = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path)],
        env={"TZ": "Asia/Kolkata", "PATH": "/usr/bin:/bin", "PYTHONPATH": f"{package_root}:{root}"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
