"""Hostile values through Dagster's raw and clean assets (with their checks), next to a good file."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

from platform_tests.hostile.corpus import assert_accounted, load_with_good_file

HOSTILE = (
    "id,day,kind,value,seen,ratio\n"
    "1,2024-01-01,a,1,2024-01-01 10:00+05:00,1\n"
    "2,2024-01-01,a,inf,2024-03-10 02:30,2\n"  # a non-finite target; a time in New York's DST gap
    "3,2024-01-01,a,-Infinity,2024-01-01 10:00 Mars/Olympus,1e309\n"
)


def test_zones_and_non_finite_values_are_quarantined_by_the_assets(tmp_path: Path) -> None:
    outcome = load_with_good_file(
        tmp_path / "landing",
        "hostile.csv",
        HOSTILE,
        extra_columns={"seen": {"type": "timestamp"}, "ratio": {"type": "float"}},
        timezone="America/New_York",
    )
    assert_accounted(outcome, {"hostile.csv": 3, "good.csv": 1})
    assert outcome.reasons("hostile.csv") == {
        2: "value: 'inf' is not a finite number (allow_infinite: true keeps it); "
        "seen: '2024-03-10 02:30' does not exist in America/New_York (a daylight saving gap)",
        3: "value: '-Infinity' is not a finite number (allow_infinite: true keeps it); "
        "seen: cannot parse '2024-01-01 10:00 Mars/Olympus' as timestamp; "
        "ratio: '1e309' is not a finite number (allow_infinite: true keeps it)",
    }
    clean = outcome.query("SELECT id, ts, seen FROM toy.clean ORDER BY id")
    # day 2024-01-01 is midnight in New York: 05:00 UTC; the offset of `seen` wins over the zone
    assert clean == [
        (1, datetime(2024, 1, 1, 5), datetime(2024, 1, 1, 5)),
        (7, datetime(2024, 1, 2, 5), None),
    ]
