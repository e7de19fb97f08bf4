"""The stage registry: every stage of a dataset's graph, one row each.

The factory builds the assets from it (and sets their group and kinds), the jobs take their
selections from it, `mlplatform run` its runnable stages, summary counts and MLflow probes, the CLI
its help text, and the tests their expectations. Adding a stage is its builder plus one row here.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING, Literal

from mlplatform.contracts import Stage

if TYPE_CHECKING:
    import dagster as dg

    from mlplatform.settings import Settings
    from mlplatform.specs.model import DatasetSpec


class Job(StrEnum):
    """The per-dataset jobs besides `<ds>__all` (every stage): see mlplatform.jobs.dataset_jobs."""

    INGEST = "ingest"  # new data through the graph, partitioned
    RETRAIN = "retrain"  # training_set -> model -> evaluation -> reference_profile


@dataclass(frozen=True)
class StageBuild:
    """What a stage's builder gets: the dataset, its partitions and where the platform keeps state."""

    spec: DatasetSpec
    partitions: dg.TimeWindowPartitionsDefinition
    settings: Settings

    @property
    def pool(self) -> str:
        """The Dagster pool of the dataset's assets and checks (Settings.warehouse_pool): runs that
        write one warehouse file wait for each other in the run queue."""
        return self.settings.warehouse_pool(self.spec.name)


Builder = Callable[[StageBuild], "dg.AssetsDefinition"]
MlflowUse = Literal["none", "read", "write"]


@dataclass(frozen=True)
class StageRow:
    name: str  # asset key `<dataset>/<name>`, table `<dataset>.<name>`
    group: str  # the Dagster UI group
    kinds: frozenset[str]  # the UI's kind badges
    partitioned: bool
    # None: the asset comes from another row's step (`written_by`), e.g. quarantine from clean.
    build: Builder | None
    jobs: frozenset[Job] = frozenset()
    runnable: bool = False  # `mlplatform run --stage <name>`
    counted: bool = False  # row count in the `mlplatform run` summary
    mlflow: MlflowUse = "none"  # `mlplatform run` checks the tracking server (and that it is writable)
    written_by: str | None = None

    def __post_init__(self) -> None:
        # Plain strings: Dagster refuses to serialize a StrEnum member (a `Stage`) inside an AssetKey.
        object.__setattr__(self, "name", str(self.name))
        if self.written_by is not None:
            object.__setattr__(self, "written_by", str(self.written_by))


def _builder(path: str) -> Builder:
    """`module:function`, imported when first called: the CLI reads this table without loading Dagster."""

    def build(stage: StageBuild) -> dg.AssetsDefinition:
        module, function = path.split(":")
        return getattr(importlib.import_module(f"mlplatform.assets.{module}"), function)(stage)

    build.__qualname__ = path
    return build


_INGEST, _RETRAIN = frozenset({Job.INGEST}), frozenset({Job.RETRAIN})
_DUCKDB, _MLFLOW = frozenset({"duckdb"}), frozenset({"mlflow"})
# build: `<module of mlplatform.assets>:<function>`, a function of StageBuild returning the asset.
STAGES: tuple[StageRow, ...] = (
    StageRow(Stage.RAW, "ingestion", _DUCKDB, partitioned=True,
             build=_builder("ingestion:build_raw_asset"),
             jobs=_INGEST, runnable=True, counted=True),
    StageRow(Stage.CLEAN, "cleaning", _DUCKDB | {"pandas", "pandera"}, partitioned=True,
             build=_builder("cleaning:build_clean_assets"), jobs=_INGEST, runnable=True, counted=True),
    StageRow(Stage.QUARANTINE, "cleaning", _DUCKDB | {"pandera"}, partitioned=True, build=None,
             jobs=_INGEST, counted=True, written_by=Stage.CLEAN),
    StageRow(Stage.FEATURES, "features", _DUCKDB, partitioned=True,
             build=_builder("features:build_features_asset"),
             jobs=_INGEST, runnable=True, counted=True),
    StageRow(Stage.TRAINING_SET, "training", _DUCKDB | {"pandas"}, partitioned=False,
             build=_builder("training:build_training_set_asset"), jobs=_RETRAIN, runnable=True, counted=True),
    StageRow(Stage.MODEL, "training", _MLFLOW | {"lightgbm"}, partitioned=False,
             build=_builder("training:build_model_asset"),
             jobs=_RETRAIN, runnable=True, mlflow="write"),
    StageRow(Stage.EVALUATION, "evaluation", _MLFLOW, partitioned=False,
             build=_builder("evaluation:build_evaluation_asset"),
             jobs=_RETRAIN, runnable=True, mlflow="write"),
    StageRow(Stage.PREDICTIONS, "scoring", _DUCKDB | {"lightgbm"}, partitioned=True,
             build=_builder("scoring:build_predictions_asset"), jobs=_INGEST, runnable=True, counted=True,
             mlflow="read"),
    StageRow(Stage.REFERENCE_PROFILE, "monitoring", _DUCKDB | _MLFLOW, partitioned=False,
             build=_builder("reference_profile:build_reference_profile_asset"), jobs=_RETRAIN, mlflow="read"),
    # Writes an MLflow run of drift plots, as an extra: its resource (`mlflow_plots`) does not fail the
    # run when MLflow is down, so the verdict the drift sensor reads is not lost with the plots.
    StageRow(Stage.DRIFT_REPORT, "monitoring", _DUCKDB | _MLFLOW, partitioned=True,
             build=_builder("drift_report:build_drift_report_asset"), jobs=_INGEST, mlflow="write"),
)  # fmt: skip


def stage_row(name: str, registry: Sequence[StageRow] = STAGES) -> StageRow:
    for row in registry:
        if row.name == name:
            return row
    raise KeyError(f"no stage {name!r} (stages: {', '.join(r.name for r in registry)})")


def runnable_stages(registry: Sequence[StageRow] = STAGES) -> list[str]:
    return [row.name for row in registry if row.runnable]


def counted_stages(registry: Sequence[StageRow] = STAGES) -> list[str]:
    return [row.name for row in registry if row.counted]


def job_stages(job: Job, registry: Sequence[StageRow] = STAGES) -> list[str]:
    return [row.name for row in registry if job in row.jobs]


def step_stages(name: str, registry: Sequence[StageRow] = STAGES) -> list[str]:
    """The stages one step of `name` materializes: itself and those it writes (clean -> quarantine)."""
    return [name, *(row.name for row in registry if row.written_by == name)]


def mlflow_stages(*uses: MlflowUse, registry: Sequence[StageRow] = STAGES) -> list[str]:
    return [row.name for row in registry if row.mlflow in uses]
