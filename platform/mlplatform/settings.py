"""Where the platform keeps its state. Every location comes from an environment variable.

All state lives under one folder, `$MLPLATFORM_HOME` (default `.mlplatform/` in the current
directory), so a user can wipe or move it in one step. Each piece can be pointed elsewhere on its own.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

HOME_ENV = "MLPLATFORM_HOME"
SPECS_ENV = "MLPLATFORM_SPECS"
WAREHOUSE_ENV = "MLPLATFORM_WAREHOUSE"
MLFLOW_TRACKING_ENV = "MLFLOW_TRACKING_URI"
MLFLOW_REGISTRY_ENV = "MLFLOW_REGISTRY_URI"
MLFLOW_ARTIFACTS_ENV = "MLPLATFORM_MLFLOW_ARTIFACTS"
REPORTS_ENV = "MLPLATFORM_REPORTS"


@dataclass(frozen=True)
class Settings:
    home: Path
    warehouse_path: str
    dagster_home: Path
    mlflow_tracking_uri: str
    mlflow_registry_uri: str | None
    mlflow_artifact_location: str
    reports_dir: Path
    extra_spec_dirs: tuple[Path, ...]


def load_settings(environ: os._Environ[str] | dict[str, str] | None = None) -> Settings:
    env = os.environ if environ is None else environ
    home = Path(env.get(HOME_ENV) or ".mlplatform").expanduser().resolve()
    dagster_home = Path(env.get("DAGSTER_HOME") or home / "dagster").expanduser().resolve()
    extra = tuple(Path(p).expanduser().resolve() for p in (env.get(SPECS_ENV) or "").split(os.pathsep) if p)
    return Settings(
        home=home,
        warehouse_path=env.get(WAREHOUSE_ENV) or str(home / "warehouse.duckdb"),
        dagster_home=dagster_home,
        mlflow_tracking_uri=env.get(MLFLOW_TRACKING_ENV) or f"sqlite:///{home / 'mlflow.db'}",
        mlflow_registry_uri=env.get(MLFLOW_REGISTRY_ENV) or None,
        mlflow_artifact_location=env.get(MLFLOW_ARTIFACTS_ENV) or (home / "mlartifacts").as_uri(),
        reports_dir=Path(env.get(REPORTS_ENV) or home / "reports").expanduser().resolve(),
        extra_spec_dirs=extra,
    )
