"""Asset-based data and ML platform on Dagster."""

import importlib
import os
from typing import Any

# LightGBM's OpenMP threads wait for each other at every boosting step. By default they spin there,
# and when runs share the cores (datasets side by side, a replay's policies, a busy server) a spinning
# thread holds a core its descheduled peer needs: a 2-thread training on a 2-core machine with one
# other busy process took 19 s instead of 4 s. Sleeping waits cost little when the cores are free.
# Set before LightGBM loads its OpenMP runtime, which reads it once; a user's own value wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

# `mlplatform.DatasetComponent`, the dg component (entry point dagster_dg_cli.registry_modules), is
# imported on first use: `import mlplatform.settings` need not load Dagster and the whole factory.
_LAZY_ATTRIBUTES = {"DatasetComponent": "mlplatform.component"}


def __getattr__(name: str) -> Any:
    if name in _LAZY_ATTRIBUTES:
        return getattr(importlib.import_module(_LAZY_ATTRIBUTES[name]), name)
    raise AttributeError(f"module 'mlplatform' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY_ATTRIBUTES])
