"""What the Dagster UI shows for every asset and check comes from the definitions: nothing left blank."""

from __future__ import annotations

import dagster as dg
import pytest

from mlplatform.factory import build_definitions
from mlplatform.specs.loader import load_specs
from mlplatform.stages import STAGES

STAGE_GROUPS = {row.name: row.group for row in STAGES}


@pytest.fixture(scope="module")
def graph() -> dg.AssetGraph:
    return build_definitions().resolve_asset_graph()


def test_every_asset_is_described_grouped_kinded_owned_and_versioned(graph: dg.AssetGraph) -> None:
    specs = {spec.name: spec for spec in load_specs()}
    keys = graph.get_all_asset_keys()
    assert {(k.path[0], k.path[1]) for k in keys} == {(d, s) for d in specs for s in STAGE_GROUPS}
    for key in keys:
        node = graph.get(key)
        dataset, stage = key.path
        assert node.description and len(node.description) > 40, key
        assert node.group_name == STAGE_GROUPS[stage], key
        assert node.kinds, key
        assert node.owners == specs[dataset].owners, key
        assert {k: v for k, v in node.tags.items() if not k.startswith("dagster/")} == specs[dataset].tags, (
            key
        )
        assert node.code_version, key
    assert {"duckdb", "pandas", "pandera"} <= graph.get(dg.AssetKey(["bike_sharing", "clean"])).kinds
    assert {"lightgbm", "mlflow"} <= graph.get(dg.AssetKey(["bike_sharing", "model"])).kinds


def test_every_check_says_what_it_checks(graph: dg.AssetGraph) -> None:
    checks = graph.asset_check_keys
    names = {(c.asset_key.to_user_string(), c.name) for c in checks}
    assert ("bike_sharing/clean", "row_accounting") in names
    assert ("bike_sharing/evaluation", "model_beats_baseline") in names
    for check in checks:
        assert graph.get_check_spec(check).description, check
