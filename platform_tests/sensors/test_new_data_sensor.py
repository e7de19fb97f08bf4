"""new_data_sensor and the daily backstop schedule with build_sensor_context on a synthetic landing folder."""

import os
from collections.abc import Callable, Iterator
from datetime import date
from pathlib import Path

import dagster as dg
import pytest
import yaml

from mlplatform.dagster_adapter import (
    ASSET_PARTITION_RANGE_END_TAG,
    ASSET_PARTITION_RANGE_START_TAG,
    UnresolvedAssetJobDefinition,
)
from mlplatform.datasets.synthetic import generate_to_folder
from mlplatform.jobs.dataset_jobs import build_ingest_job, ingest_job_name
from mlplatform.sensors.new_data import build_daily_schedule, build_new_data_sensor
from mlplatform.settings import load_settings
from mlplatform.specs.loader import BUNDLED_SPECS_DIR, parse_spec
from mlplatform.specs.model import DatasetSpec

NAME = "payments_test"


@pytest.fixture
def instance() -> Iterator[dg.DagsterInstance]:
    with dg.instance_for_test() as test_instance:
        yield test_instance


@pytest.fixture
def landing(tmp_path: Path) -> Path:
    return tmp_path / "landing"


@pytest.fixture
def spec(landing: Path, write_spec: Callable[..., Path]) -> DatasetSpec:
    raw = yaml.safe_load((BUNDLED_SPECS_DIR / "transactions.yaml").read_text())
    raw.update(name=NAME, source={"path": f"{landing}/*.parquet", "format": "parquet"})
    raw["partitions"] = {"start": "2024-01-01", "end": "2024-02-01"}
    landing.mkdir()
    return parse_spec(write_spec(raw))


@pytest.fixture
def partitions() -> dg.DailyPartitionsDefinition:
    return dg.DailyPartitionsDefinition(start_date="2024-01-01", end_date="2024-02-01")


def whole_graph_job() -> UnresolvedAssetJobDefinition:
    return dg.define_asset_job(f"{NAME}__all", selection=dg.AssetSelection.key_prefixes([NAME]))


def requested_range(request: dg.RunRequest) -> tuple[str, str]:
    return request.tags[ASSET_PARTITION_RANGE_START_TAG], request.tags[ASSET_PARTITION_RANGE_END_TAG]


def test_new_and_changed_files_request_the_partitions_they_cover(
    spec: DatasetSpec, partitions: dg.DailyPartitionsDefinition, landing: Path, instance: dg.DagsterInstance
) -> None:
    sensor = build_new_data_sensor(
        spec, partitions, build_ingest_job(spec), whole_graph_job(), load_settings()
    )
    cursor = None

    def tick() -> list[dg.RunRequest]:
        nonlocal cursor
        result = sensor(dg.build_sensor_context(instance=instance, cursor=cursor))
        cursor = result.cursor
        return list(result.run_requests or [])

    assert tick() == []  # empty landing folder
    generate_to_folder(landing, days=5, customers=20, seed=1, start=date(2024, 1, 1))
    first = tick()
    # No champion yet: the first data goes through the whole graph, which trains one.
    assert [(r.job_name, requested_range(r)) for r in first] == [
        (f"{NAME}__all", ("2024-01-01", "2024-01-05"))
    ]
    assert tick() == []  # nothing changed

    instance.report_runless_asset_event(dg.AssetMaterialization(dg.AssetKey([NAME, "reference_profile"])))
    generate_to_folder(landing, days=2, customers=20, seed=2, start=date(2024, 1, 6), clean=False)
    second = tick()
    assert [(r.job_name, requested_range(r)) for r in second] == [
        (ingest_job_name(spec), ("2024-01-06", "2024-01-07"))
    ]
    assert second[0].run_key != first[0].run_key

    changed = landing / "transactions_2024-01-03.parquet"
    generate_to_folder(landing / "redo", days=1, customers=30, seed=3, start=date(2024, 1, 3))
    os.replace(landing / "redo" / changed.name, changed)
    assert [requested_range(r) for r in tick()] == [("2024-01-03", "2024-01-03")]


def test_first_tick_skips_files_loaded_before(
    spec: DatasetSpec, partitions: dg.DailyPartitionsDefinition, landing: Path, instance: dg.DagsterInstance
) -> None:
    generate_to_folder(landing, days=3, customers=20, seed=1, start=date(2024, 1, 1))
    # e.g. `mlplatform run` loaded them before the daemon ever ran
    instance.report_runless_asset_event(
        dg.AssetMaterialization(dg.AssetKey([NAME, "raw"]), partition="2024-01-01")
    )
    sensor = build_new_data_sensor(
        spec, partitions, build_ingest_job(spec), whole_graph_job(), load_settings()
    )
    result = sensor(dg.build_sensor_context(instance=instance, cursor=None))
    assert not result.run_requests and result.cursor


def test_daily_schedule_requests_the_newest_partition_once_a_champion_exists(
    spec: DatasetSpec, partitions: dg.DailyPartitionsDefinition, landing: Path, instance: dg.DagsterInstance
) -> None:
    generate_to_folder(landing, days=3, customers=20, seed=1, start=date(2024, 1, 1))
    schedule = build_daily_schedule(spec, partitions, build_ingest_job(spec), load_settings())
    assert isinstance(schedule(dg.build_schedule_context(instance=instance)), dg.SkipReason)
    instance.report_runless_asset_event(dg.AssetMaterialization(dg.AssetKey([NAME, "reference_profile"])))
    request = schedule(dg.build_schedule_context(instance=instance))
    assert isinstance(request, dg.RunRequest) and requested_range(request) == ("2024-01-31", "2024-01-31")
    instance.report_runless_asset_event(
        dg.AssetMaterialization(dg.AssetKey([NAME, "drift_report"]), partition="2024-01-31")
    )
    assert isinstance(schedule(dg.build_schedule_context(instance=instance)), dg.SkipReason)


def test_automation_setting_picks_the_datasets() -> None:
    assert load_settings({}).is_automated("bike_sharing")
    assert not load_settings({"MLPLATFORM_AUTOMATION": "none"}).is_automated("bike_sharing")
    some = load_settings({"MLPLATFORM_AUTOMATION": "transactions, bike_sharing"})
    assert some.is_automated("bike_sharing") and not some.is_automated("other")
