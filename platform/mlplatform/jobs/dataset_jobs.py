"""The three jobs of each dataset, their selections read from the stage registry (mlplatform.stages).

* `<ds>__all`: every stage; `mlplatform run` and the first file's bootstrap run use it.
* `<ds>__ingest` (partitioned like `features`): the stages of `Job.INGEST`, raw -> clean/quarantine ->
  features -> predictions -> drift_report, for the partitions a new file covers (requested by
  `new_data_sensor` and the daily schedule). A partition range runs as one run (single-run backfill).
* `<ds>__retrain` (unpartitioned): the stages of `Job.RETRAIN`, training_set -> model -> evaluation
  (promotion) -> reference_profile, requested by `drift_sensor`.
* `<ds>__rescore` (partitioned): reference_profile -> predictions -> drift_report, requested by
  `rescore_sensor` after the champion changed (a promotion or `mlplatform rollback`) for the partitions
  whose predictions are by another version, so their drift verdicts judge the champion again.
"""

from collections.abc import Sequence

import dagster as dg

from mlplatform.contracts import Stage, asset_key
from mlplatform.dagster_adapter import UnresolvedAssetJobDefinition
from mlplatform.specs.model import DatasetSpec
from mlplatform.stages import STAGES, Job, StageRow, job_stages

WHOLE_GRAPH_SUFFIX = "__all"
RESCORE_SUFFIX = "__rescore"
# The reference follows the champion first (a rollback moves no evaluation), then the outputs.
RESCORE_STAGES = (Stage.REFERENCE_PROFILE, Stage.PREDICTIONS, Stage.DRIFT_REPORT)


def job_name(spec: DatasetSpec) -> str:
    """The whole-graph job of a dataset."""
    return f"{spec.name}{WHOLE_GRAPH_SUFFIX}"


def ingest_job_name(spec: DatasetSpec) -> str:
    return f"{spec.name}__{Job.INGEST}"


def retrain_job_name(spec: DatasetSpec) -> str:
    return f"{spec.name}__{Job.RETRAIN}"


def rescore_job_name(spec: DatasetSpec) -> str:
    return f"{spec.name}{RESCORE_SUFFIX}"


def stage_keys(spec: DatasetSpec, stages: Sequence[str]) -> list[dg.AssetKey]:
    return [asset_key(spec, stage) for stage in stages]


def build_whole_graph_job(spec: DatasetSpec) -> UnresolvedAssetJobDefinition:
    return dg.define_asset_job(
        job_name(spec),
        selection=dg.AssetSelection.key_prefixes([spec.name]),
        description=f"Materialize every asset of {spec.name} (a range of partitions runs as one run).",
    )


# What each job is for; `{name}` is the dataset, `{stages}` the job's stages from the registry.
_PURPOSES = {
    Job.INGEST: "New data of {name} through the graph ({stages}; predictions by the champion), for a range "
    "of partitions in one run.",
    Job.RETRAIN: "Retrain {name} ({stages}): a challenger, the promotion of the champion, and the reference "
    "profile of whichever model is champion afterwards.",
}


def build_stage_job(
    spec: DatasetSpec, job: Job, registry: Sequence[StageRow] = STAGES
) -> UnresolvedAssetJobDefinition:
    """`<ds>__<job>`: the registry's stages of `job`."""
    stages = job_stages(job, registry)
    return dg.define_asset_job(
        f"{spec.name}__{job}",
        selection=dg.AssetSelection.assets(*stage_keys(spec, stages)),
        description=_PURPOSES[job].format(name=spec.name, stages=" -> ".join(stages)),
        tags={"mlplatform/dataset": spec.name, "mlplatform/purpose": str(job)},
    )


def build_ingest_job(
    spec: DatasetSpec, registry: Sequence[StageRow] = STAGES
) -> UnresolvedAssetJobDefinition:
    return build_stage_job(spec, Job.INGEST, registry)


def build_retrain_job(
    spec: DatasetSpec, registry: Sequence[StageRow] = STAGES
) -> UnresolvedAssetJobDefinition:
    return build_stage_job(spec, Job.RETRAIN, registry)


def build_rescore_job(spec: DatasetSpec) -> UnresolvedAssetJobDefinition:
    """`<ds>__rescore`: the champion's reference, predictions and drift verdicts for a range of partitions."""
    return dg.define_asset_job(
        rescore_job_name(spec),
        selection=dg.AssetSelection.assets(*stage_keys(spec, RESCORE_STAGES)),
        description=(
            f"Re-score {spec.name} after a change of champion ({' -> '.join(RESCORE_STAGES)}): the reference "
            "profile of the champion, then the predictions and drift verdicts of a range of partitions."
        ),
        tags={"mlplatform/dataset": spec.name, "mlplatform/purpose": "rescore"},
    )
