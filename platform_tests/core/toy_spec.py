"""The small CSV-backed spec the source, validation and cleaning tests share."""

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
