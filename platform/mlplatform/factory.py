"""From dataset specs to Dagster definitions: the same chain of assets, checks and jobs per spec.

Each dataset is built on its own: a spec that does not load, a source the probe cannot read or a date
that overflows the partitions makes only that dataset broken. The others load; the broken one shows
its error in `mlplatform specs`, in `broken_specs(defs)` (the run summary) and in the UI, as the
skip reason of its `<name>__spec_error` sensor.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import dagster as dg
import duckdb

from mlplatform.assets.common import partitions_def
from mlplatform.automation import Automation, build_automation
from mlplatform.checks.data_quality import build_quality_checks
from mlplatform.checks.model_checks import build_model_checks
from mlplatform.core.source import SourceProbe
from mlplatform.dagster_adapter import UnresolvedAssetJobDefinition
from mlplatform.jobs.dataset_jobs import build_whole_graph_job, job_name
from mlplatform.resources.dask import DaskResource
from mlplatform.resources.mlflow import MlflowPlotsResource, MlflowResource
from mlplatform.resources.warehouse import WarehouseResource
from mlplatform.sensors.common import sensor_interval
from mlplatform.sensors.recovery import build_recovery_sensor
from mlplatform.settings import DATASET_PLACEHOLDER, Settings, load_settings
from mlplatform.specs.loader import BrokenSpec, SpecError, check_source, one_line, read_specs
from mlplatform.specs.model import DatasetSpec
from mlplatform.stages import STAGES, StageBuild, StageRow, stage_row

__all__ = ["DatasetDefinitions", "broken_specs", "build_dataset", "build_definitions", "job_name"]


@dataclass(frozen=True)
class DatasetDefinitions:
    spec: DatasetSpec
    probe: SourceProbe
    partitions: dg.TimeWindowPartitionsDefinition
    assets: list[dg.AssetsDefinition]
    checks: list[dg.AssetChecksDefinition]
    job: UnresolvedAssetJobDefinition  # `<ds>__all`
    # Drift monitoring and automation (mlplatform.automation): the ingest and retrain jobs, sensors, schedule.
    automation: Automation

    @property
    def jobs(self) -> list[UnresolvedAssetJobDefinition]:
        return [self.job, *self.automation.jobs]


BROKEN_SPECS_METADATA = "mlplatform/broken_specs"
DASK_DRIVER_DUCKDB_MEMORY = "40%"  # of RAM, see location_resources


def location_resources(
    settings: Settings, specs: Sequence[DatasetSpec] = ()
) -> dict[str, dg.ConfigurableResource]:
    """The resources every dataset's assets use: the DuckDB warehouse (a file per dataset, or one shared
    file; with the Dask engine its stage tables are views over the lake), the MLflow store and the Dask
    engine (inert with the local engine). With the Dask engine the warehouse needs `specs`' partition
    grains (their lake partitions)."""
    folder = Path(settings.warehouse_path).parent
    local = "://" not in settings.warehouse_path and not settings.warehouse_path.startswith("md:")
    if local and DATASET_PLACEHOLDER not in str(folder):  # else each file's folder is made on first use
        folder.mkdir(parents=True, exist_ok=True)
    return {
        "warehouse": WarehouseResource(
            database=settings.warehouse_path,
            # The Dask engine's workers share the machine with the driver: its DuckDB spills past this
            # share of RAM instead of taking DuckDB's default 80% (a 100M-row run was killed that way).
            connection_config={"memory_limit": DASK_DRIVER_DUCKDB_MEMORY}
            if settings.engine == "dask"
            else {},
            lake=settings.lake if settings.engine == "dask" else None,
            lake_grains={spec.name: spec.partition_grain for spec in specs}
            if settings.engine == "dask"
            else {},
        ),
        "mlflow": MlflowResource.from_settings(settings),
        "mlflow_plots": MlflowPlotsResource.from_settings(settings),
        "dask": DaskResource.from_settings(settings),
    }


def build_stage_assets(stage: StageBuild, registry: Sequence[StageRow] = STAGES) -> list[dg.AssetsDefinition]:
    """Each row's asset, with the group and kinds its registry row gives it, partitioned as it says."""
    assets = []
    for row in registry:
        if row.build is None:
            continue
        with warnings.catch_warnings():
            # A range of partitions runs as one run (BackfillPolicy.single_run), which Dagster still
            # labels beta; we rely on it on purpose, so its warning would only be noise on every load.
            warnings.filterwarnings("ignore", message=".*backfill_policy.*", category=dg.BetaWarning)
            built = row.build(stage)
        if (built.partitions_def is not None) != row.partitioned:
            said = "partitioned" if row.partitioned else "unpartitioned"
            raise ValueError(f"stage {row.name}: the registry says {said}, its builder disagrees")
        assets.append(built.map_asset_specs(lambda asset: _with_row_attributes(asset, registry)))
    return assets


def _with_row_attributes(asset: dg.AssetSpec, registry: Sequence[StageRow]) -> dg.AssetSpec:
    row = stage_row(asset.key.path[-1], registry)
    return asset.replace_attributes(group_name=row.group, kinds=set(row.kinds))


def build_dataset(
    spec: DatasetSpec,
    probe_conn: duckdb.DuckDBPyConnection | None = None,
    *,
    settings: Settings,
    registry: Sequence[StageRow] = STAGES,
) -> DatasetDefinitions:
    """One dataset's assets, checks, jobs, sensors and schedule, from the stage registry."""
    probe = check_source(spec, probe_conn)
    partitions = partitions_def(spec, probe)
    stage = StageBuild(spec, partitions, settings)
    assets = build_stage_assets(stage, registry)
    job = build_whole_graph_job(spec)
    checks = [*build_quality_checks(spec, stage.pool), *build_model_checks(spec, stage.pool)]
    automation = build_automation(spec, partitions, assets, job, settings, registry)
    return DatasetDefinitions(spec, probe, partitions, assets, checks, job, automation)


def build_datasets(
    specs: list[DatasetSpec], settings: Settings, registry: Sequence[StageRow] = STAGES
) -> tuple[list[DatasetDefinitions], list[BrokenSpec]]:
    """Every dataset that builds, and every one that does not with its error; none breaks another."""
    built: list[DatasetDefinitions] = []
    broken: list[BrokenSpec] = []
    for spec in specs:
        try:
            with duckdb.connect() as probe_conn:  # its own connection: a failed probe leaves nothing behind
                built.append(build_dataset(spec, probe_conn, settings=settings, registry=registry))
        except Exception as exc:  # any failure of one dataset (e.g. OverflowError) must stay with it
            broken.append(BrokenSpec(spec.name, spec.spec_path or Path(), _build_error(spec, exc)))
    return built, broken


def _build_error(spec: DatasetSpec, exc: Exception) -> str:
    if isinstance(exc, SpecError):
        return one_line(str(exc))
    return one_line(f"spec file {spec.spec_path}: {spec.name} cannot be built: {type(exc).__name__}: {exc}")


def _spec_error_sensor(sensor_name: str, message: str, settings: Settings) -> dg.SensorDefinition:
    @dg.sensor(
        name=sensor_name,
        minimum_interval_seconds=sensor_interval(settings),
        default_status=dg.DefaultSensorStatus.RUNNING,
        description=f"{message} (Fix the file: this sensor goes away once the dataset loads.)",
    )
    def spec_error(context: dg.SensorEvaluationContext) -> dg.SkipReason:
        return dg.SkipReason(message)

    return spec_error


def spec_error_sensors(broken: list[BrokenSpec], settings: Settings) -> list[dg.SensorDefinition]:
    """One always-running `<name>__spec_error` sensor per broken spec: each tick skips with its error."""
    sensors = []
    used: set[str] = set()
    for failure in broken:
        name = f"{failure.name}__spec_error"
        while name in used:  # two broken files may claim one dataset name
            name += "_"
        used.add(name)
        sensors.append(_spec_error_sensor(name, f"{failure.name} is not loaded: {failure.error}", settings))
    return sensors


def broken_specs(defs: dg.Definitions) -> list[BrokenSpec]:
    """The specs `build_definitions` could not load, with their errors (for the run summary)."""
    value = (defs.metadata or {}).get(BROKEN_SPECS_METADATA)
    rows = value.value if value is not None else []
    return [BrokenSpec(row["name"], Path(row["path"]), row["error"]) for row in rows or []]


def build_definitions(
    settings: Settings | None = None,
    specs: list[DatasetSpec] | None = None,
    registry: Sequence[StageRow] = STAGES,
) -> dg.Definitions:
    """Definitions of `specs` (default: the bundled and $MLPLATFORM_SPECS spec files).

    `settings` None: read from the environment (the code location's entry point).
    """
    settings = settings or load_settings()
    broken: list[BrokenSpec] = []
    if specs is None:
        specs, broken = read_specs(settings.extra_spec_dirs)
    resources = location_resources(settings, specs)
    datasets, failed = build_datasets(specs, settings, registry)
    broken += failed
    return dg.Definitions(
        assets=[a for d in datasets for a in d.assets],
        asset_checks=[c for d in datasets for c in d.checks],
        jobs=[j for d in datasets for j in d.jobs],
        sensors=[s for d in datasets for s in d.automation.sensors]
        + spec_error_sensors(broken, settings)
        + [build_recovery_sensor(settings)],  # ends runs of killed processes (mlplatform.recovery)
        schedules=[s for d in datasets for s in d.automation.schedules],
        resources=resources,
        executor=dg.in_process_executor,  # a DuckDB file has one writer: a run's steps share the process
        metadata={
            BROKEN_SPECS_METADATA: dg.MetadataValue.json(
                [{"name": b.name, "path": str(b.path), "error": b.error} for b in broken]
            )
        },
    )
