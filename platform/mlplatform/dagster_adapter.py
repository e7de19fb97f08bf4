"""The only place that imports Dagster's private modules, and why.

Dagster 1.13 exposes no public name for these, yet the platform needs them:
* the run tags of a single-run partition range (how a ranged run is requested and read back) and
  of sensor runs (run key, sensor name), which Dagster documents as tag strings but exports only
  from `dagster._core.storage.tags`;
* the type of what `dg.define_asset_job` returns, for type hints.
When Dagster makes them public, change this module alone.
"""

from dagster._core.definitions.unresolved_asset_job_definition import UnresolvedAssetJobDefinition
from dagster._core.storage.tags import (
    ASSET_PARTITION_RANGE_END_TAG,
    ASSET_PARTITION_RANGE_START_TAG,
    RUN_KEY_TAG,
    SENSOR_NAME_TAG,
)

__all__ = [
    "ASSET_PARTITION_RANGE_END_TAG",
    "ASSET_PARTITION_RANGE_START_TAG",
    "RUN_KEY_TAG",
    "SENSOR_NAME_TAG",
    "UnresolvedAssetJobDefinition",
]
