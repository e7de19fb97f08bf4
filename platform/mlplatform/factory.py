"""From dataset specs to Dagster definitions: the same chain of assets, checks and jobs per spec.

Each dataset is built on its own: a spec that does not load, a source the probe cannot read or a date
that overflows the partitions makes only that dataset broken. The others load; the broken one shows
its error in `mlplatform specs`, in `broken_specs(defs)` (the run summary) and in the UI, as the
skip reason of its `<name>__spec_error` sensor.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import dagster as dg
import duckdb

from mlplatform.assets.cleaning import build_clean_assets
from mlplatform.assets.common import partitions_def
from mlplatform.assets.evaluation import build_evaluation_asset
from mlplatform.assets.features import build_features_asset
from mlplatform.assets.ingestion import build_raw_asset
from mlplatform.assets.scoring import build_predictions_asset
from mlplatform.assets.training import build_training_assets
from mlplatform.automation import Automation, build_automation
from mlplatform.checks.data_quality import build_quality_checks
from mlplatform.checks.model_checks import build_model_checks
from mlplatform.core.source import SourceProbe
from mlplatform.resources.mlflow import MlflowResource
from mlplatform.resources.warehouse import WarehouseResource
from mlplatform.sensors.common import sensor_interval
from mlplatform.sensors.recovery import build_recovery_sensor
from mlplatform.settings import Settings, load_settings
from mlplatform.specs.loader import BrokenSpec, SpecError, check_source, one_line, read_specs
from mlplatform.specs.model import DatasetSpec


@dataclass(frozen=True)
class DatasetDefinitions:
    spec: DatasetSpec
    probe: SourceProbe
    partitions: dg.TimeWindowPartitionsDefinition
    assets: list[dg.AssetsDefinition]
    checks: list[dg.AssetChecksDefinition]
    job: dg.UnresolvedAssetJobDefinition
    # Drift monitoring and automation (mlplatform.automation): monitoring assets, jobs, sensors, schedule.
    automation: Automation


BROKEN_SPECS_METADATA = "mlplatform/broken_specs"


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
    probe = check_source(spec, probe_conn)
    partitions = partitions_def(spec, probe)
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
    automation = build_automation(spec, partitions, job)
    return DatasetDefinitions(spec, probe, partitions, assets, checks, job, automation)


def build_datasets(
    specs: list[DatasetSpec], settings: Settings | None = None
) -> tuple[list[DatasetDefinitions], list[BrokenSpec]]:
    """Every dataset that builds, and every one that does not with its error; none breaks another."""
    settings = settings or load_settings()
    built: list[DatasetDefinitions] = []
    broken: list[BrokenSpec] = []
    for spec in specs:
        try:
            with duckdb.connect() as probe_conn:  # its own connection: a failed probe leaves nothing behind
                built.append(build_dataset(spec, probe_conn, settings))
        except Exception as exc:  # any failure of one dataset (e.g. OverflowError) must stay with it
            broken.append(BrokenSpec(spec.name, spec.spec_path or Path(), _build_error(spec, exc)))
    return built, broken


def _build_error(spec: DatasetSpec, exc: Exception) -> str:
    if isinstance(exc, SpecError):
        return one_line(str(exc))
    return one_line(f"spec file {spec.spec_path}: {spec.name} cannot be built: {type(exc).__name__}: {exc}")


def _spec_error_sensor(sensor_name: str, message: str) -> dg.SensorDefinition:
    @dg.sensor(
        name=sensor_name,
        minimum_interval_seconds=sensor_interval(),
        default_status=dg.DefaultSensorStatus.RUNNING,
        description=f"{message} (Fix the file: this sensor goes away once the dataset loads.)",
    )
    def spec_error(context: dg.SensorEvaluationContext) -> dg.SkipReason:
        return dg.SkipReason(message)

    return spec_error


def spec_error_sensors(broken: list[BrokenSpec]) -> list[dg.SensorDefinition]:
    """One always-running `<name>__spec_error` sensor per broken spec: each tick skips with its error."""
    sensors = []
    used: set[str] = set()
    for failure in broken:
        name = f"{failure.name}__spec_error"
        while name in used:  # two broken files may claim one dataset name
            name += "_"
        used.add(name)
        sensors.append(_spec_error_sensor(name, f"{failure.name} is not loaded: {failure.error}"))
    return sensors


def broken_specs(defs: dg.Definitions) -> list[BrokenSpec]:
    """The specs `build_definitions` could not load, with their errors (for the run summary)."""
    value = (defs.metadata or {}).get(BROKEN_SPECS_METADATA)
    rows = value.value if value is not None else []
    return [BrokenSpec(row["name"], Path(row["path"]), row["error"]) for row in rows or []]


def build_definitions(
    settings: Settings | None = None, specs: list[DatasetSpec] | None = None
) -> dg.Definitions:
    """Definitions of `specs` (default: the bundled and $MLPLATFORM_SPECS spec files)."""
    settings = settings or load_settings()
    if "://" not in settings.warehouse_path and not settings.warehouse_path.startswith("md:"):
        Path(settings.warehouse_path).parent.mkdir(parents=True, exist_ok=True)
    broken: list[BrokenSpec] = []
    if specs is None:
        specs, broken = read_specs(settings.extra_spec_dirs)
    datasets, failed = build_datasets(specs, settings)
    broken += failed
    automations = [d.automation for d in datasets]
    return dg.Definitions(
        assets=[a for d in datasets for a in d.assets] + [a for x in automations for a in x.assets],
        asset_checks=[c for d in datasets for c in d.checks],
        jobs=[d.job for d in datasets] + [j for x in automations for j in x.jobs],
        sensors=[s for x in automations for s in x.sensors]
        + spec_error_sensors(broken)
        + [build_recovery_sensor()],  # ends runs of killed processes (mlplatform.recovery)
        schedules=[s for x in automations for s in x.schedules],
        resources={
            "warehouse": WarehouseResource(database=settings.warehouse_path),
            "mlflow": mlflow_resource(settings),
        },
        executor=dg.in_process_executor,  # one DuckDB file has one writer: steps share the process
        metadata={
            BROKEN_SPECS_METADATA: dg.MetadataValue.json(
                [{"name": b.name, "path": str(b.path), "error": b.error} for b in broken]
            )
        },
    )
