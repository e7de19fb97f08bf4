"""Spec loading: the bundled specs load, and every kind of mistake names the file and the key."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from mlplatform.specs.loader import SpecError, check_source, load_specs, parse_spec
from platform_tests.conftest import BIKE_CSV, bike_spec_dict

MINIMAL = f"""
name: minimal
source:
  path: {BIKE_CSV}
derived:
  ts: "strptime(dateday, '%d-%m-%Y') + to_hours(hour)"
time_column: ts
columns:
  temp: {{type: float, nullable: false, min: 0, max: 1}}
  weathersit: {{type: int, allowed: [1, 2, 3, 4]}}
  instant: {{type: int, unique: true}}
  count: {{type: int}}
  casual: {{type: int}}
  registered: {{type: int}}
target: {{column: count, task: regression}}
drop: [instant, casual, registered]
"""


def test_bundled_specs_load_and_probe() -> None:
    specs = {spec.name: spec for spec in load_specs()}
    assert "bike_sharing" in specs
    probe = check_source(specs["bike_sharing"])
    assert str(probe.time_min) == "2011-01-01 00:00:00"
    assert str(probe.time_max) == "2012-12-31 23:00:00"


def test_minimal_spec_with_only_the_contract_keys_works(write_spec: Callable[..., Path]) -> None:
    spec = parse_spec(write_spec(MINIMAL))
    assert spec.partition_grain == "day" and spec.source_format == "csv"
    assert spec.feature_columns == ["temp", "weathersit"]
    check_source(spec)


def _error_for(write_spec: Callable[..., Path], spec: dict | str) -> str:
    path = write_spec(spec)
    with pytest.raises(SpecError) as info:
        check_source(parse_spec(path))
    message = str(info.value)
    assert str(path) in message, message
    return message


def test_unknown_key_is_named(write_spec: Callable[..., Path]) -> None:
    spec = bike_spec_dict()
    spec["columns"]["temp"]["maximum"] = 1
    assert "key 'columns.temp.maximum': unknown key" in _error_for(write_spec, spec)


def test_bad_type_is_named(write_spec: Callable[..., Path]) -> None:
    spec = bike_spec_dict()
    spec["columns"]["temp"]["type"] = "decimal"
    assert "key 'columns.temp.type'" in _error_for(write_spec, spec)


def test_bad_task_is_named(write_spec: Callable[..., Path]) -> None:
    spec = bike_spec_dict()
    spec["target"]["task"] = "ranking"
    assert "key 'target.task'" in _error_for(write_spec, spec)


def test_unknown_column_in_target_is_named(write_spec: Callable[..., Path]) -> None:
    spec = bike_spec_dict()
    spec["target"]["column"] = "rentals"
    assert "target.column: unknown column 'rentals'" in _error_for(write_spec, spec)


def test_unknown_column_in_drop_is_named(write_spec: Callable[..., Path]) -> None:
    spec = bike_spec_dict()
    spec["drop"].append("nope")
    assert "drop[4]: unknown column 'nope'" in _error_for(write_spec, spec)


def test_column_missing_from_the_file_is_named(write_spec: Callable[..., Path]) -> None:
    spec = bike_spec_dict()
    spec["source"]["path"] = str(BIKE_CSV)
    spec["columns"]["pressure"] = {"type": "float"}
    assert "key 'columns': 'pressure' not found in the source files" in _error_for(write_spec, spec)


def test_missing_file_is_named(write_spec: Callable[..., Path], tmp_path: Path) -> None:
    spec = bike_spec_dict()
    spec["source"]["path"] = str(tmp_path / "nowhere.csv")
    assert f"key 'source.path': file {tmp_path / 'nowhere.csv'} does not exist" in _error_for(
        write_spec, spec
    )


def test_missing_glob_folder_is_named(write_spec: Callable[..., Path], tmp_path: Path) -> None:
    spec = bike_spec_dict()
    spec["source"]["path"] = str(tmp_path / "landing" / "*.csv")
    assert "key 'source.path': folder" in _error_for(write_spec, spec)


def test_empty_landing_folder_needs_a_partition_start(
    write_spec: Callable[..., Path], tmp_path: Path
) -> None:
    (tmp_path / "landing").mkdir()
    spec = bike_spec_dict()
    spec["source"]["path"] = str(tmp_path / "landing" / "*.csv")
    assert "key 'partitions.start'" in _error_for(write_spec, spec)
    spec["partitions"] = {"start": "2011-01-01", "end": "open"}
    check_source(parse_spec(write_spec(spec)))


def test_broken_derived_expression_is_named(write_spec: Callable[..., Path]) -> None:
    spec = bike_spec_dict()
    spec["source"]["path"] = str(BIKE_CSV)
    spec["derived"]["ts"] = "strptime(no_such_column, '%d')"
    assert "key 'derived.ts'" in _error_for(write_spec, spec)


def test_bad_name_is_named(write_spec: Callable[..., Path]) -> None:
    spec = bike_spec_dict()
    spec["name"] = "Bike-Sharing"
    assert "key 'name'" in _error_for(write_spec, spec)


def test_missing_required_key_is_named(write_spec: Callable[..., Path]) -> None:
    spec = bike_spec_dict()
    del spec["target"]
    assert "key 'target': required key is missing" in _error_for(write_spec, spec)


def test_target_features_that_would_leak_are_refused(write_spec: Callable[..., Path]) -> None:
    spec = bike_spec_dict()
    spec["features"]["rolling"] = [{"column": "count", "window": "24h", "gap": "0h"}]
    assert "features.rolling[0].gap" in _error_for(write_spec, spec)


def test_invalid_yaml_is_named(write_spec: Callable[..., Path]) -> None:
    assert "not valid YAML" in _error_for(write_spec, "name: [unclosed\n")


def test_duplicate_dataset_names_are_refused(write_spec: Callable[..., Path]) -> None:
    spec = bike_spec_dict()
    path = write_spec(spec, "copy.yaml")
    with pytest.raises(SpecError, match="'bike_sharing' is already defined"):
        load_specs([path.parent])


def test_owners_and_tags_dagster_would_refuse_are_named(write_spec: Callable[..., Path]) -> None:
    spec = bike_spec_dict()
    spec["owners"] = ["data platform team"]
    assert "key 'owners'" in _error_for(write_spec, spec)
    spec = bike_spec_dict()
    spec["tags"] = {"domain": "mobility & more"}
    assert "key 'tags'" in _error_for(write_spec, spec)
