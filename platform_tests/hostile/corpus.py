"""Running the ingestion and cleaning stages of a tiny spec over hostile files, as Dagster runs them.

Each case writes its files, then `load` materializes raw, clean and quarantine (with their checks)
over every partition in one run, against a warehouse in the test's temp dir. The tests count what
they wrote themselves: the expected records of a file are part of the case, never read back.
"""

from __future__ import annotations

import gc
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dagster as dg
import duckdb
from dagster._core.storage.tags import ASSET_PARTITION_RANGE_END_TAG, ASSET_PARTITION_RANGE_START_TAG

from mlplatform.assets.cleaning import build_clean_assets
from mlplatform.assets.common import partitions_def
from mlplatform.assets.ingestion import build_raw_asset
from mlplatform.checks.data_quality import build_quality_checks
from mlplatform.resources.dask import DaskResource
from mlplatform.resources.warehouse import WarehouseResource
from mlplatform.settings import load_settings
from mlplatform.specs.loader import check_source
from mlplatform.specs.model import DatasetSpec
from mlplatform.stages import StageBuild
from platform_tests.core.toy_spec import toy_spec

HEADER = "id,day,kind,value"


@dataclass
class Outcome:
    result: dg.ExecuteInProcessResult
    warehouse: Path
    partitions: dg.TimeWindowPartitionsDefinition
    _collected: bool = field(default=False, init=False, repr=False)

    def query(self, sql: str) -> list[tuple]:
        if not self._collected:  # once: a full collection costs ~0.2 s, and only the run left garbage
            gc.collect()  # a failed step's connection (dagster_duckdb closes it only on success) must be gone
            self._collected = True
        with duckdb.connect(str(self.warehouse), read_only=True) as conn:
            return conn.execute(sql).fetchall()

    def landed(self) -> dict[str, tuple[int, int]]:
        """File name -> (clean rows, quarantined rows)."""
        counts: dict[str, list[int]] = {}
        for index, table in enumerate(("clean", "quarantine")):
            for file, n in self.query(f"SELECT _source_file, count(*) FROM toy.{table} GROUP BY 1"):
                counts.setdefault(Path(file).name, [0, 0])[index] = n
        return {name: (c, q) for name, (c, q) in counts.items()}

    def reasons(self, file_name: str) -> dict[int, str]:
        """Source row -> quarantine reason, for one file."""
        rows = self.query("SELECT _source_file, _source_row, _quarantine_reason FROM toy.quarantine")
        return {int(row): reason for file, row, reason in rows if Path(file).name == file_name}

    def check(self, name: str) -> dg.AssetCheckEvaluation:
        return next(e for e in self.result.get_asset_check_evaluations() if e.check_name == name)

    def raw_metadata(self) -> dict[str, Any]:
        events = self.result.asset_materializations_for_node("toy__raw")
        return {k: v.value for k, v in events[-1].metadata.items()}


def spec_for(folder: Path, pattern: str = "*.csv", **extra: object) -> DatasetSpec:
    return toy_spec(folder / pattern, **extra)


def load(
    spec: DatasetSpec,
    warehouse: Path,
    partition_keys: tuple[str, str] | None = None,
    run_config: dict[str, Any] | None = None,
    raise_on_error: bool = True,
    instance: dg.DagsterInstance | None = None,
) -> Outcome:
    """Materialize raw + clean (and their data checks) over all partitions, or `partition_keys`."""
    partitions = partitions_def(spec, check_source(spec))
    stage = StageBuild(spec, partitions, load_settings())
    assets = [build_raw_asset(stage), build_clean_assets(stage)]
    checks = [
        c for c in build_quality_checks(spec) if all(k.asset_key.path[-1] != "features" for k in c.check_keys)
    ]
    keys = partitions.get_partition_keys()
    first, last = partition_keys or (keys[0], keys[-1])
    result = dg.materialize(
        [*assets, *checks],
        instance=instance or dg.DagsterInstance.ephemeral(),
        resources={"warehouse": WarehouseResource(database=str(warehouse)), "dask": DaskResource()},
        tags={ASSET_PARTITION_RANGE_START_TAG: first, ASSET_PARTITION_RANGE_END_TAG: last},
        run_config=run_config,
        raise_on_error=raise_on_error,
    )
    return Outcome(result, warehouse, partitions)


def rows(*records: str) -> str:
    return HEADER + "\n" + "".join(f"{r}\n" for r in records)


GOOD_FILE = rows("7,2024-01-02,a,1")  # the other file of every glob: it must always load


def assert_accounted(outcome: Outcome, written: dict[str, int]) -> None:
    """Every record the test wrote (counted by the test) is in exactly one of clean or quarantine, over
    all partitions (no (file, source row) twice), and the `source_accounting` check says so too."""
    twice = outcome.query(
        "SELECT _source_file, _source_row, count(*) FROM (SELECT _source_file, _source_row FROM toy.clean "
        "UNION ALL SELECT _source_file, _source_row FROM toy.quarantine) GROUP BY ALL HAVING count(*) > 1"
    )
    assert twice == []
    landed = outcome.landed()
    assert {name: sum(landed.get(name, (0, 0))) for name in written} == written
    assert sum(c + q for c, q in landed.values()) == sum(written.values())
    assert outcome.check("source_accounting").passed


def load_with_good_file(folder: Path, name: str, data: bytes | str, **extra: object) -> Outcome:
    """`name` holding `data` next to a good file, loaded with quarantine allowed (the cases expect it)."""
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / name
    target.write_bytes(data if isinstance(data, bytes) else data.encode())
    (folder / "good.csv").write_text(GOOD_FILE)
    extra.setdefault("quality", {"max_quarantine_share": 1.0})
    return load(spec_for(folder, **extra), folder / "warehouse.duckdb")
