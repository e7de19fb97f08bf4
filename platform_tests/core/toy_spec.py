"""Small specs the core tests share: a CSV-backed one (source, validation, cleaning) and a per-customer
one (feature SQL)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mlplatform.specs.model import DatasetSpec


def toy_spec(
    path: Path, extra_columns: dict[str, dict[str, Any]] | None = None, **extra: object
) -> DatasetSpec:
    """Columns id (unique key), day (the time, as text), kind (a or b), value (0..10, the target)."""
    return DatasetSpec.model_validate(
        {
            "name": "toy",
            "source": {"path": str(path)},
            "derived": {"ts": "strptime(day, '%Y-%m-%d')"},
            "time_column": "ts",
            "columns": {
                "id": {"type": "int", "nullable": False, "unique": True},
                "day": {"type": "string", "nullable": False},
                "kind": {"type": "category", "allowed": ["a", "b"]},
                "value": {"type": "float", "nullable": False, "min": 0, "max": 10},
                **(extra_columns or {}),
            },
            "target": {"column": "value", "task": "regression"},
            **extra,
        }
    )


def customer_spec(features: dict[str, Any]) -> DatasetSpec:
    """Payments per customer (the entity): ts, customer, amount (float), label (binary target)."""
    return DatasetSpec.model_validate(
        {
            "name": "toy",
            "source": {"path": "unused.parquet"},
            "time_column": "ts",
            "entity_key": "customer",
            "columns": {
                "ts": {"type": "timestamp"},
                "customer": {"type": "string"},
                "amount": {"type": "float"},
                "label": {"type": "int"},
            },
            "target": {"column": "label", "task": "binary"},
            "features": {"calendar": [], **features},
        }
    )
