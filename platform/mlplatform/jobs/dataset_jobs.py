"""The two jobs the automation requests per dataset.

* `<ds>__ingest` (partitioned like `features`): raw -> clean/quarantine -> features -> predictions ->
  drift_report for the partitions a new file covers (requested by `new_data_sensor` and the daily
  schedule). A partition range runs as one run (BackfillPolicy.single_run).
* `<ds>__retrain` (unpartitioned): training_set -> model -> evaluation (promotion) -> reference_profile,
  requested by `drift_sensor`.
"""

import dagster as dg

from mlplatform.dagster_adapter import UnresolvedAssetJobDefinition
from mlplatform.specs.model import DatasetSpec

INGEST_STAGES = ("raw", "clean", "quarantine", "features", "predictions", "drift_report")
RETRAIN_STAGES = ("training_set", "model", "evaluation", "reference_profile")


def ingest_job_name(spec: DatasetSpec) -> str:
    return f"{spec.name}__ingest"


def retrain_job_name(spec: DatasetSpec) -> str:
    return f"{spec.name}__retrain"


def stage_keys(spec: DatasetSpec, stages: tuple[str, ...]) -> list[dg.AssetKey]:
    return [dg.AssetKey([spec.name, stage]) for stage in stages]


def _stage_job(
    spec: DatasetSpec, name: str, stages: tuple[str, ...], purpose: str, description: str
) -> UnresolvedAssetJobDefinition:
    return dg.define_asset_job(
        name,
        selection=dg.AssetSelection.assets(*stage_keys(spec, stages)),
        description=description,
        tags={"mlplatform/dataset": spec.name, "mlplatform/purpose": purpose},
    )


def build_ingest_job(spec: DatasetSpec) -> UnresolvedAssetJobDefinition:
    return _stage_job(
        spec,
        ingest_job_name(spec),
        INGEST_STAGES,
        "ingest",
        f"New data of {spec.name} through the graph: raw -> clean/quarantine -> features -> predictions "
        "(by the champion) -> drift_report, for a range of partitions in one run.",
    )


def build_retrain_job(spec: DatasetSpec) -> UnresolvedAssetJobDefinition:
    return _stage_job(
        spec,
        retrain_job_name(spec),
        RETRAIN_STAGES,
        "retrain",
        f"Retrain {spec.name}: training_set -> model (challenger) -> evaluation (promotion of the champion) "
        "-> reference_profile of whichever model is champion afterwards.",
    )
