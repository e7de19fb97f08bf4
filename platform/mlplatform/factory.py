"""From dataset specs to Dagster definitions: the same chain of assets, checks and jobs per spec."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import dagster as dg
import duckdb
from dagster_duckdb import DuckDBResource

from mlplatform.assets.cleaning import build_clean_assets
from mlplatform.assets.common import partitions_def
from mlplatform.assets.evaluation import build_evaluation_asset
from mlplatform.assets.features import build_features_asset
from mlplatform.assets.ingestion import build_raw_asset
from mlplatform.assets.scoring import build_predictions_asset
from mlplatform.assets.training import build_training_assets
from mlplatform.automation import build_automation
from mlplatform.checks.data_quality import build_quality_checks
from mlplatform.checks.model_checks import build_model_checks
from mlplatform.resources.mlflow import MlflowResource
from mlplatform.settings import Settings, load_settings
from mlplatform.specs.loader import check_source, load_specs
from mlplatform.specs.model import DatasetSpec


@dataclass(frozen=True)
class DatasetDefinitions:
    spec: DatasetSpec
    partitions: dg.TimeWindowPartitionsDefinition
    assets: list[dg.AssetsDefinition]
    checks: list[dg.AssetChecksDefinition]
    job: dg.UnresolvedAssetJobDefinition


def job_name(spec: DatasetSpec) -> str:
    return f"{spec.name}__all"


def mlflow_resource(settings: Settings) -> MlflowResource:
    return MlflowResource(
        tracking_uri=settings.mlflow_tracking_uri,
        registry_uri=settings.mlflow_registry_uri,
        artifact_location=settings.mlflow_artifact_location,
    )


def build_dataset(
    spec: DatasetSpec,
    probe_conn: duckdb.DuckDBPyConnection | None = None,
    settings: Settings | None = None,
) -> DatasetDefinitions:
    settings = settings or load_settings()
    partitions = partitions_def(spec, check_source(spec, probe_conn))
    assets = [
        build_raw_asset(spec, partitions),
        build_clean_assets(spec, partitions),
        build_features_asset(spec, partitions),
        *build_training_assets(spec, partitions),
        build_evaluation_asset(spec, settings.reports_dir),
        build_predictions_asset(spec, partitions),
    ]
    job = dg.define_asset_job(
        job_name(spec),
        selection=dg.AssetSelection.key_prefixes([spec.name]),
        description=f"Materialize every asset of {spec.name} (a range of partitions runs as one run).",
    )
    checks = [*build_quality_checks(spec), *build_model_checks(spec)]
    return DatasetDefinitions(spec, partitions, assets, checks, job)


def build_definitions(
    settings: Settings | None = None, specs: list[DatasetSpec] | None = None
) -> dg.Definitions:
    """Definitions of `specs` (default: the bundled and $MLPLATFORM_SPECS spec files)."""
    settings = settings or load_settings()
    if "://" not in settings.warehouse_path and not settings.warehouse_path.startswith("md:"):
        Path(settings.warehouse_path).parent.mkdir(parents=True, exist_ok=True)
    specs = specs if specs is not None else load_specs(settings.extra_spec_dirs)
    with duckdb.connect() as probe_conn:
        datasets = [build_dataset(spec, probe_conn, settings) for spec in specs]
    # Drift monitoring and automation (mlplatform.automation): monitoring assets, jobs, sensors, schedule.
    automations = [build_automation(d.spec, d.partitions, d.job) for d in datasets]
    return dg.Definitions(
        assets=[a for d in datasets for a in d.assets] + [a for x in automations for a in x.assets],
        asset_checks=[c for d in datasets for c in d.checks],
        jobs=[d.job for d in datasets] + [j for x in automations for j in x.jobs],
        sensors=[s for x in automations for s in x.sensors],
        schedules=[s for x in automations for s in x.schedules],
        resources={
            "warehouse": DuckDBResource(database=settings.warehouse_path),
            "mlflow": mlflow_resource(settings),
        },
        executor=dg.in_process_executor,  # one DuckDB file has one writer: steps share the process
    )
