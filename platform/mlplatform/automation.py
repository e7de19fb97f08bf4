"""Drift monitoring and automation of one dataset: what factory.py adds to the Definitions per spec.

Who drives what (see the README):
* `<ds>__new_data_sensor`: new/changed source file -> `<ds>__ingest` (raw .. predictions -> drift_report)
  for the partitions the file covers; before the first champion, the whole-graph job instead.
* `<ds>__daily_ingest` schedule: backstop, newest complete partition once a day.
* `<ds>__drift_sensor`: drifted verdict -> `<ds>__retrain` (training_set -> model -> evaluation ->
  reference_profile), cursor + run keys + cool-down + bounded retries.
* AutomationCondition.eager() on `<ds>/reference_profile`, evaluated by `<ds>__automation`: the
  reference follows every evaluation (promotion) even when it was materialized by hand.
"""

from dataclasses import dataclass

import dagster as dg

from mlplatform.assets.drift_report import build_drift_report_asset
from mlplatform.assets.reference_profile import build_reference_profile_asset
from mlplatform.dagster_adapter import UnresolvedAssetJobDefinition
from mlplatform.jobs.dataset_jobs import build_ingest_job, build_retrain_job
from mlplatform.sensors.common import sensor_interval, sensor_status
from mlplatform.sensors.drift import build_drift_sensor
from mlplatform.sensors.new_data import build_daily_schedule, build_new_data_sensor
from mlplatform.specs.model import DatasetSpec


@dataclass(frozen=True)
class Automation:
    assets: list[dg.AssetsDefinition]
    jobs: list[UnresolvedAssetJobDefinition]
    sensors: list[dg.SensorDefinition]
    schedules: list[dg.ScheduleDefinition]


def build_automation(
    spec: DatasetSpec,
    partitions: dg.TimeWindowPartitionsDefinition,
    whole_graph_job: UnresolvedAssetJobDefinition,
) -> Automation:
    assets = [build_reference_profile_asset(spec), build_drift_report_asset(spec, partitions)]
    ingest, retrain = build_ingest_job(spec), build_retrain_job(spec)
    automation_sensor = dg.AutomationConditionSensorDefinition(
        f"{spec.name}__automation",
        target=dg.AssetSelection.assets(dg.AssetKey([spec.name, "reference_profile"])),
        default_status=sensor_status(spec.name),
        minimum_interval_seconds=sensor_interval(),
        description=f"Evaluates the AutomationConditions of {spec.name}'s monitoring assets.",
    )
    sensors = [
        build_new_data_sensor(spec, partitions, ingest, whole_graph_job),
        build_drift_sensor(spec, retrain),
        automation_sensor,
    ]
    return Automation(assets, [ingest, retrain], sensors, [build_daily_schedule(spec, partitions, ingest)])
