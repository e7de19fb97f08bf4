"""Where the platform keeps its state. Every location comes from an environment variable.

All state lives under one folder, `$MLPLATFORM_HOME` (default `.mlplatform/` in the current
directory), so a user can wipe or move it in one step. Each piece can be pointed elsewhere on its own.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

HOME_ENV = "MLPLATFORM_HOME"
SPECS_ENV = "MLPLATFORM_SPECS"
WAREHOUSE_ENV = "MLPLATFORM_WAREHOUSE"
MLFLOW_TRACKING_ENV = "MLFLOW_TRACKING_URI"
MLFLOW_REGISTRY_ENV = "MLFLOW_REGISTRY_URI"
MLFLOW_ARTIFACTS_ENV = "MLPLATFORM_MLFLOW_ARTIFACTS"
REPORTS_ENV = "MLPLATFORM_REPORTS"
SENSOR_INTERVAL_ENV = "MLPLATFORM_SENSOR_INTERVAL"
AUTOMATION_ENV = "MLPLATFORM_AUTOMATION"
DEFAULT_SENSOR_INTERVAL = 60

# MLflow's own defaults (120 s per request, 7 retries with backoff) hang a run for minutes on an
# unreachable tracking server; these end a call in about 35 s at most. The user's MLFLOW_HTTP_* win.
MLFLOW_HTTP_DEFAULTS = {
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "10",
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
}
MLFLOW_ENV_DEFAULTS = {
    **MLFLOW_HTTP_DEFAULTS,
    # Like the Dagster instance (telemetry: false), the platform sends no usage data unless asked.
    "MLFLOW_DISABLE_TELEMETRY": "true",
    # Progress bars of artifact downloads only clutter Dagster's run logs.
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
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
    # Seconds between sensor ticks (tests use a few seconds).
    sensor_interval_seconds: int = DEFAULT_SENSOR_INTERVAL
    # Datasets whose sensors and schedules start RUNNING: "all", "none" or comma-separated names.
    automation: str = "all"

    def is_automated(self, dataset: str) -> bool:
        setting = self.automation.strip().lower()
        if setting == "all":
            return True
        return dataset.lower() in {name.strip() for name in setting.split(",")}

    def in_home(self, home: Path) -> Settings:
        """These settings with every location under `home`, as `load_settings` places them by default
        (the spec folders, sensor interval and automation stay)."""
        return replace(self, **_locations(home.expanduser().resolve()))


def _locations(home: Path) -> dict[str, Any]:
    """Where each piece of state lives when only the home is given."""
    return {
        "home": home,
        "warehouse_path": str(home / "warehouse.duckdb"),
        "dagster_home": home / "dagster",
        "mlflow_tracking_uri": f"sqlite:///{home / 'mlflow.db'}",
        "mlflow_registry_uri": None,
        "mlflow_artifact_location": (home / "mlartifacts").as_uri(),
        "reports_dir": home / "reports",
    }


def load_settings(environ: os._Environ[str] | dict[str, str] | None = None) -> Settings:
    """Settings from the environment (default os.environ). Call it at an entry point and pass the
    result down: the CLI's main, the code location module, the Dagster component."""
    env = os.environ if environ is None else environ
    home = Path(env.get(HOME_ENV) or ".mlplatform").expanduser().resolve()
    default = _locations(home)
    extra = tuple(Path(p).expanduser().resolve() for p in (env.get(SPECS_ENV) or "").split(os.pathsep) if p)
    return Settings(
        home=home,
        warehouse_path=env.get(WAREHOUSE_ENV) or default["warehouse_path"],
        dagster_home=Path(env.get("DAGSTER_HOME") or default["dagster_home"]).expanduser().resolve(),
        mlflow_tracking_uri=env.get(MLFLOW_TRACKING_ENV) or default["mlflow_tracking_uri"],
        mlflow_registry_uri=env.get(MLFLOW_REGISTRY_ENV) or None,
        mlflow_artifact_location=env.get(MLFLOW_ARTIFACTS_ENV) or default["mlflow_artifact_location"],
        reports_dir=Path(env.get(REPORTS_ENV) or default["reports_dir"]).expanduser().resolve(),
        extra_spec_dirs=extra,
        sensor_interval_seconds=int(env.get(SENSOR_INTERVAL_ENV) or DEFAULT_SENSOR_INTERVAL),
        automation=env.get(AUTOMATION_ENV) or "all",
    )


def apply_mlflow_env_defaults(environ: os._Environ[str] | dict[str, str] | None = None) -> None:
    """Set MLFLOW_ENV_DEFAULTS (HTTP timeouts and retries, telemetry off, no progress bars) where the
    user has not set them; setdefault never overrides the user's own values.

    MLflow reads these only from the environment, at each request (no client argument), so they must
    be in it. Call this once per process, at its entry point and nowhere else: `mlplatform`'s main
    and the code location module (mlplatform.definitions), which every process Dagster starts loads
    (daemon, webserver, code server, run workers) although none of them goes through our CLI.
    """
    env = os.environ if environ is None else environ
    for name, value in MLFLOW_ENV_DEFAULTS.items():
        env.setdefault(name, value)
