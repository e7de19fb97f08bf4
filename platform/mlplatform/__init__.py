"""Asset-based data and ML platform on Dagster."""

import importlib
from typing import Any

# `mlplatform.DatasetComponent`, the dg component (entry point dagster_dg_cli.registry_modules), is
# imported on first use: `import mlplatform.settings` need not load Dagster and the whole factory.
_LAZY_ATTRIBUTES = {"DatasetComponent": "mlplatform.component"}


def __getattr__(name: str) -> Any:
    if name in _LAZY_ATTRIBUTES:
        return getattr(importlib.import_module(_LAZY_ATTRIBUTES[name]), name)
    raise AttributeError(f"module 'mlplatform' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY_ATTRIBUTES])
