"""Reads of the Dagster event log: which model version a materialization recorded.

Shared by the evaluation asset and the model checks (a check must not import an asset module).
"""

from __future__ import annotations

from dataclasses import dataclass

import dagster as dg

from mlplatform.contracts import MaterializationKey


@dataclass(frozen=True)
class MaterializedVersion:
    """A model version as recorded by a materialization, and which materialization that was."""

    version: int
    dagster_run_id: str
    same_run: bool  # materialized by the run asking, rather than the latest of another run

    @property
    def source(self) -> str:
        which = "this run" if self.same_run else f"the latest materialization (run {self.dagster_run_id})"
        return f"version {self.version}, from {which}"


def version_materialized(
    instance: dg.DagsterInstance,
    key: dg.AssetKey,
    run_id: str,
    metadata_key: str = MaterializationKey.MODEL_VERSION,
) -> MaterializedVersion | None:
    """The `metadata_key` version of `key`'s materialization in run `run_id`, else of its latest one.

    Two concurrent runs each register a version; reading "the newest version" or an alias would let
    one run evaluate (and promote) the other's model, so a run uses the version it materialized itself.
    """
    record = instance.get_run_record_by_id(run_id)
    started = record.start_time if record is not None else None
    if started is not None:
        found = instance.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=key, after_timestamp=started - 1), limit=1000
        ).records
        for own in found:
            if own.run_id == run_id and own.asset_materialization is not None:
                value = own.asset_materialization.metadata.get(metadata_key)
                if value is not None:
                    return MaterializedVersion(int(value.value), run_id, same_run=True)
    latest = instance.get_latest_materialization_event(key)
    materialization = latest.asset_materialization if latest is not None else None
    value = materialization.metadata.get(metadata_key) if materialization is not None else None
    if latest is None or value is None:
        return None
    return MaterializedVersion(int(value.value), latest.run_id, same_run=latest.run_id == run_id)
