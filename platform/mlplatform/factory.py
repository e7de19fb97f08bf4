"""From dataset specs to Dagster definitions: the same chain of assets, checks and jobs per spec."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import dagster as dg
import duckdb
from dagster_duckdb import DuckDBResource

from mlplatform.assets.cleaning import build_clean_assets
from mlplatform.assets.common import partitions_def
from mlplatform.assets.features import build_features_asset
from mlplatform.assets.ingestion import build_raw_asset
from mlplatform.checks.data_quality import build_quality_checks
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


def build_dataset(
    spec: DatasetSpec, probe_conn: duckdb.DuckDBPyConnection | None = None
) -> DatasetDefinitions:
    partitions = partitions_def(spec, check_source(spec, probe_conn))
    assets = [
        build_raw_asset(spec, partitions),
        build_clean_assets(spec, partitions),
        build_features_asset(spec, partitions),
    ]
    job = dg.define_asset_job(
        job_name(spec),
        selection=dg.AssetSelection.key_prefixes([spec.name]),
        description=f"Materialize every asset of {spec.name} (a range of partitions runs as one run).",
    )
    return DatasetDefinitions(spec, partitions, assets, build_quality_checks(spec), job)


def build_definitions(settings: Settings | None = None) -> dg.Definitions:
    settings = settings or load_settings()
    if "://" not in settings.warehouse_path and not settings.warehouse_path.startswith("md:"):
        Path(settings.warehouse_path).parent.mkdir(parents=True, exist_ok=True)
    with duckdb.connect() as probe_conn:
        datasets = [build_dataset(spec, probe_conn) for spec in load_specs(settings.extra_spec_dirs)]
    return dg.Definitions(
        assets=[a for d in datasets for a in d.assets],
        asset_checks=[c for d in datasets for c in d.checks],
        jobs=[d.job for d in datasets],
        resources={"warehouse": DuckDBResource(database=settings.warehouse_path)},
        executor=dg.in_process_executor,  # one DuckDB file has one writer: steps share the process
    )
