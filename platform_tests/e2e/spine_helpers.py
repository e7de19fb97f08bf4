"""Materializing the data spine of one dataset in a test's own instance."""

from __future__ import annotations

import dagster as dg
from dagster._core.storage.tags import ASSET_PARTITION_RANGE_END_TAG, ASSET_PARTITION_RANGE_START_TAG

from mlplatform.settings import load_settings
from mlplatform.warehouse_cli import warehouse_session

SPINE = ("raw", "clean", "quarantine", "features")


def spine_definitions(defs: dg.Definitions, dataset: str) -> list[dg.AssetsDefinition]:
    """The spine's assets and their checks (checks are AssetsDefinitions too)."""
    keep = []
    for assets_def in [*(defs.assets or []), *(defs.asset_checks or [])]:
        keys = {*assets_def.keys, *(c.asset_key for c in assets_def.check_keys)}
        if keys and all(k.path[0] == dataset and k.path[-1] in SPINE for k in keys):
            keep.append(assets_def)
    return keep


def materialize_spine(
    defs: dg.Definitions, dataset: str, partition_key: str | None = None, raise_on_error: bool = True
) -> dg.ExecuteInProcessResult:
    assets = spine_definitions(defs, dataset)
    partitions = next(a.partitions_def for a in assets if a.partitions_def is not None)
    tags = {}
    if partition_key is None:
        keys = partitions.get_partition_keys()
        tags = {ASSET_PARTITION_RANGE_START_TAG: keys[0], ASSET_PARTITION_RANGE_END_TAG: keys[-1]}
    return dg.materialize(
        assets,
        instance=dg.DagsterInstance.get(),
        resources={"warehouse": defs.resources["warehouse"], "dask": defs.resources["dask"]},
        partition_key=partition_key,
        tags=tags,
        raise_on_error=raise_on_error,
    )


def query(sql: str) -> list[tuple]:
    with warehouse_session(load_settings()).conn as conn:  # every dataset's file, read-only
        return conn.execute(sql).fetchall()
