"""End to end: the data spine materialized with real Dagster, DuckDB and Pandera in a temp home."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import dagster as dg
import pytest

from mlplatform.factory import build_definitions
from platform_tests.conftest import BIKE_CSV, BIKE_ROWS, bike_spec_dict
from platform_tests.e2e.spine_helpers import materialize_spine, query

pytestmark = pytest.mark.e2e


def _counts(dataset: str) -> tuple[int, int, int, int]:
    return query(
        f"SELECT (SELECT count(*) FROM {dataset}.raw), (SELECT count(*) FROM {dataset}.clean), "
        f"(SELECT count(*) FROM {dataset}.quarantine), (SELECT count(*) FROM {dataset}.features)"
    )[0]


def test_bike_spine_reconciles_and_reruns_are_idempotent(platform_home: Path) -> None:
    defs = build_definitions()
    result = materialize_spine(defs, "bike_sharing")
    assert result.success
    assert _counts("bike_sharing") == (BIKE_ROWS, BIKE_ROWS, 0, BIKE_ROWS)

    checks = {e.check_name: e.passed for e in result.get_asset_check_evaluations()}
    assert checks == {
        "row_accounting": True,
        "source_accounting": True,
        "validity_rate": True,
        "unique_keys": True,
        "not_empty": True,
    }

    materialization = result.asset_materializations_for_node("bike_sharing__clean")[0]
    assert "dagster/column_schema" in materialization.metadata
    assert "preview" in materialization.metadata

    week = "ts >= '2011-06-12' AND ts < '2011-06-19'"  # the weekly partition 2011-06-12
    loaded_before = query("SELECT max(_loaded_at) FROM bike_sharing.raw WHERE ts < '2011-06-12'")[0][0]
    week_before = query(f"SELECT count(*), sum(count) FROM bike_sharing.features WHERE {week}")
    rerun = materialize_spine(defs, "bike_sharing", partition_key="2011-06-12")
    assert rerun.success
    assert _counts("bike_sharing") == (BIKE_ROWS, BIKE_ROWS, 0, BIKE_ROWS)
    assert query(f"SELECT count(*), sum(count) FROM bike_sharing.features WHERE {week}") == week_before
    # only that partition was reloaded
    assert (
        query("SELECT max(_loaded_at) FROM bike_sharing.raw WHERE ts < '2011-06-12'")[0][0] == loaded_before
    )
    assert query(f"SELECT min(_loaded_at) FROM bike_sharing.raw WHERE {week}")[0][0] > loaded_before

    instance = dg.DagsterInstance.get()
    materialized = instance.get_materialized_partitions(dg.AssetKey(["bike_sharing", "features"]))
    assert len(materialized) == 106  # weeks from 2010-12-26 to 2012-12-30


BAD_ROWS = {
    # data row number -> (column index, bad value, expected reason)
    101: (10, "abc", "temp: cannot parse 'abc' as float"),
    202: (11, "1.7", "feelingTemp: less_than_or_equal_to(1.0) failed for 1.7"),
    303: (9, "7", "weathersit: isin([1, 2, 3, 4]) failed for 7"),
    404: (12, "", "humidity: null in a non-nullable column"),
}
DUPLICATE_ROW, TRUNCATED_ROW = 505, 606
SUBSET_ROWS = 1_500  # about two months: enough for every kind of bad row, quick to materialize


def _bad_csv(folder: Path) -> Path:
    lines = BIKE_CSV.read_text().splitlines()[: SUBSET_ROWS + 1]
    for row, (column, value, _) in BAD_ROWS.items():
        fields = lines[row].split(",")
        fields[column] = value
        lines[row] = ",".join(fields)
    fields = lines[DUPLICATE_ROW].split(",")
    fields[0] = lines[DUPLICATE_ROW - 1].split(",")[0]
    lines[DUPLICATE_ROW] = ",".join(fields)
    lines[TRUNCATED_ROW] = ",".join(lines[TRUNCATED_ROW].split(",")[:9])
    path = folder / "bike_bad.csv"
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture
def bad_bike_spec(
    platform_home: Path, write_spec: Callable[..., Path], use_extra_specs: Callable[[Path], None]
) -> Callable[..., Path]:
    def make(**quality: float) -> Path:
        spec = bike_spec_dict()
        spec["name"] = "bike_bad"
        spec["source"]["path"] = str(_bad_csv(platform_home.parent))
        spec["quality"] = quality or spec["quality"]
        path = write_spec(spec, "bike_bad.yaml")
        use_extra_specs(path.parent)
        return path

    return make


def test_bad_rows_are_quarantined_with_reasons_and_none_is_lost(bad_bike_spec: Callable[..., Path]) -> None:
    bad_bike_spec()
    result = materialize_spine(build_definitions(), "bike_bad")
    assert result.success
    raw, clean, quarantined, features = _counts("bike_bad")
    assert (raw, clean, quarantined) == (SUBSET_ROWS, SUBSET_ROWS - 6, 6)
    assert features == clean
    reasons = dict(query("SELECT _source_row, _quarantine_reason FROM bike_bad.quarantine"))
    assert set(reasons) == {*BAD_ROWS, DUPLICATE_ROW, TRUNCATED_ROW}
    for row, (_, _, expected) in BAD_ROWS.items():
        assert reasons[row] == expected
    assert reasons[DUPLICATE_ROW] == f"instant: duplicate key {DUPLICATE_ROW - 1}"
    assert reasons[TRUNCATED_ROW].startswith(f"line {TRUNCATED_ROW + 1}: missing columns")
    checks = {e.check_name: e.passed for e in result.get_asset_check_evaluations()}
    assert checks["row_accounting"] and checks["validity_rate"] and checks["unique_keys"]


def test_too_many_quarantined_rows_fail_the_check_and_block_features(
    bad_bike_spec: Callable[..., Path],
) -> None:
    bad_bike_spec(max_quarantine_share=0.0001)
    result = materialize_spine(build_definitions(), "bike_bad", raise_on_error=False)
    assert not result.success
    checks = {e.check_name: e for e in result.get_asset_check_evaluations()}
    assert not checks["validity_rate"].passed
    assert checks["validity_rate"].metadata["quarantine_share"].value == pytest.approx(6 / SUBSET_ROWS)
    assert (
        query(
            "SELECT count(*) FROM information_schema.tables WHERE table_name = 'features' "
            "AND table_schema = 'bike_bad'"
        )[0][0]
        == 0
    )
