"""Fixtures of the asset tests: the tiny dataset (see tiny.py), its definitions built once per module."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import dagster as dg
import pytest

from platform_tests.assets.tiny import TinyDataset, make_tiny_dataset


@pytest.fixture(scope="module")
def tiny_definitions(tmp_path_factory: pytest.TempPathFactory) -> TinyDataset:
    """The source and definitions, built once per module (read-only: tests use `tiny`)."""
    return make_tiny_dataset(tmp_path_factory.mktemp("tiny"))


@pytest.fixture
def tiny(tiny_definitions: TinyDataset, tmp_path: Path) -> TinyDataset:
    """The tiny dataset with an empty warehouse, MLflow store and Dagster instance of its own."""
    return replace(
        tiny_definitions,
        warehouse_path=tmp_path / "warehouse.duckdb",
        mlflow_root=tmp_path / "mlflow",
        instance=dg.DagsterInstance.ephemeral(),
    )
