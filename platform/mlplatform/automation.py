"""Drift monitoring and automation of one dataset: the jobs, sensors and schedule factory.py adds.

Who drives what (see the README):
* `<ds>__new_data_sensor`: new/changed source file -> `<ds>__ingest` (raw .. predictions -> drift_report)
  for the partitions the file covers; before the first champion, the whole-graph job instead.
  A Kafka source has `<ds>__kafka_sensor` instead: it lands the records that arrived as batch files,
  then requests the same (mlplatform.sensors.kafka).
* `<ds>__daily_ingest` schedule: backstop, newest complete partition once a day.
* `<ds>__drift_sensor`: drifted verdict -> `<ds>__retrain` (training_set -> model -> evaluation ->
  reference_profile), cursor + run keys + cool-down + bounded retries.
* `<ds>__rescore_sensor`: a change of champion (promotion or `mlplatform rollback`) -> `<ds>__rescore`
  (reference_profile -> predictions -> drift_report) for the partitions scored by another version.
* `<ds>__alerts` (specs with `alerts:`): a message per failed run or check, drift retraining, promotion
  or rollback (mlplatform.sensors.alerts).
* `<ds>__automation` evaluates the AutomationConditions the assets declare (e.g. eager() on
  `<ds>/reference_profile`: the reference follows every evaluation, even one materialized by hand).
"""

from collections.abc import Sequence
from dataclasses import dataclass

import dagster as dg

from mlplatform.dagster_adapter import UnresolvedAssetJobDefinition
from mlplatform.jobs.dataset_jobs import build_ingest_job, build_rescore_job, build_retrain_job
from mlplatform.sensors.alerts import build_alerts_sensor
from mlplatform.sensors.common import sensor_interval, sensor_status
from mlplatform.sensors.drift import build_drift_sensor
from mlplatform.sensors.kafka import build_kafka_sensor
from mlplatform.sensors.new_data import build_daily_schedule, build_new_data_sensor
from mlplatform.sensors.rescore import build_rescore_sensor
from mlplatform.settings import Settings
from mlplatform.specs.model import DatasetSpec, KafkaSourceSpec
from mlplatform.stages import STAGES, StageRow


@dataclass(frozen=True)
class Automation:
    jobs: list[UnresolvedAssetJobDefinition]
    sensors: list[dg.SensorDefinition]
    schedules: list[dg.ScheduleDefinition]


def conditioned_keys(assets: Sequence[dg.AssetsDefinition]) -> list[dg.AssetKey]:
    """The assets that declare an AutomationCondition: what the automation sensor evaluates."""
    return [spec.key for asset in assets for spec in asset.specs if spec.automation_condition is not None]


def build_automation(
    spec: DatasetSpec,
    partitions: dg.TimeWindowPartitionsDefinition,
    assets: Sequence[dg.AssetsDefinition],
    whole_graph_job: UnresolvedAssetJobDefinition,
    settings: Settings,
    registry: Sequence[StageRow] = STAGES,
) -> Automation:
    ingest, retrain = build_ingest_job(spec, registry), build_retrain_job(spec, registry)
    rescore = build_rescore_job(spec)
    new_data = build_kafka_sensor if isinstance(spec.source, KafkaSourceSpec) else build_new_data_sensor
    sensors = [
        new_data(spec, partitions, ingest, whole_graph_job, settings),
        build_drift_sensor(spec, retrain, settings),
        build_rescore_sensor(spec, partitions, rescore, settings),
    ]
    if spec.alerts is not None:  # `<ds>__alerts`: messages on failures, drift, champion changes
        sensors.append(build_alerts_sensor(spec, settings))
    conditioned = conditioned_keys(assets)
    if conditioned:
        sensors.append(
            dg.AutomationConditionSensorDefinition(
                f"{spec.name}__automation",
                target=dg.AssetSelection.assets(*conditioned),
                default_status=sensor_status(settings, spec.name),
                minimum_interval_seconds=sensor_interval(settings),
                description=f"Evaluates the AutomationConditions of {spec.name}'s assets.",
            )
        )
    schedules = [build_daily_schedule(spec, partitions, ingest, settings)]
    return Automation([ingest, retrain, rescore], sensors, schedules)
