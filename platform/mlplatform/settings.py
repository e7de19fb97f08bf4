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

# MLflow's own defaults (120 s per request, 7 retries with backoff) hang a run for minutes on an
# unreachable tracking server; these end a call in about 35 s at most. The user's MLFLOW_HTTP_* win.
MLFLOW_HTTP_DEFAULTS = {
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "10",
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
}


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


def apply_mlflow_http_defaults(environ: os._Environ[str] | dict[str, str] | None = None) -> None:
    """Set MLFLOW_HTTP_DEFAULTS where the user has not set them.

    MLflow reads these only from the environment, at each request (no client argument), so they go
    there; setdefault never overrides the user's own values.
    """
    env = os.environ if environ is None else environ
    for name, value in MLFLOW_HTTP_DEFAULTS.items():
        env.setdefault(name, value)
