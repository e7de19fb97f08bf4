"""Where the platform keeps its state. Every location comes from an environment variable; the spec
folders also from the home's config.yaml (`mlplatform specs add`).

All state lives under one folder, `$MLPLATFORM_HOME` (default `.mlplatform/` in the current
directory), so a user can wipe or move it in one step. Each piece can be pointed elsewhere on its own.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from mlplatform.home_config import combined_spec_folders, stored_spec_folders

HOME_ENV = "MLPLATFORM_HOME"
SPECS_ENV = "MLPLATFORM_SPECS"
WAREHOUSE_ENV = "MLPLATFORM_WAREHOUSE"
MLFLOW_TRACKING_ENV = "MLFLOW_TRACKING_URI"
MLFLOW_REGISTRY_ENV = "MLFLOW_REGISTRY_URI"
MLFLOW_ARTIFACTS_ENV = "MLPLATFORM_MLFLOW_ARTIFACTS"
# The stores of the MLflow server `mlplatform up` starts (default: the home's SQLite file and mlartifacts/).
MLFLOW_SERVER_BACKEND_ENV = "MLPLATFORM_MLFLOW_BACKEND_STORE_URI"
MLFLOW_SERVER_ARTIFACTS_ENV = "MLPLATFORM_MLFLOW_ARTIFACTS_DESTINATION"
REPORTS_ENV = "MLPLATFORM_REPORTS"
SENSOR_INTERVAL_ENV = "MLPLATFORM_SENSOR_INTERVAL"
AUTOMATION_ENV = "MLPLATFORM_AUTOMATION"
DEFAULT_SENSOR_INTERVAL = 60
# The Dagster UI's base URL, for the links in alerts (mlplatform.core.alerts).
DAGSTER_URL_ENV = "MLPLATFORM_DAGSTER_URL"
DEFAULT_DAGSTER_URL = "http://127.0.0.1:3000"
# Where a browser reaches the MLflow UI (links and inline plots in Dagster metadata): this URL, else
# an http(s) MLFLOW_TRACKING_URI, else the port of the server `mlplatform up` starts (MlflowResource).
MLFLOW_UI_URL_ENV = "MLPLATFORM_MLFLOW_UI_URL"
MLFLOW_PORT_ENV = "MLPLATFORM_MLFLOW_PORT"
DEFAULT_MLFLOW_PORT = 5000

# The engine of the heavy work in each stage: `local` (DuckDB in the step process, stage tables in the
# warehouse file) or `dask` (dask.distributed, stage tables as Parquet partitions in the lake folder).
ENGINE_ENV = "MLPLATFORM_ENGINE"
ENGINE_LOCAL, ENGINE_DASK = "local", "dask"
ENGINES = (ENGINE_LOCAL, ENGINE_DASK)
DASK_SCHEDULER_ENV = (
    "MLPLATFORM_DASK_SCHEDULER"  # tcp://host:8786 of a running cluster; unset: a LocalCluster
)
DASK_WORKERS_ENV = "MLPLATFORM_DASK_WORKERS"
DASK_THREADS_ENV = "MLPLATFORM_DASK_THREADS"  # threads per worker
DASK_MEMORY_LIMIT_ENV = "MLPLATFORM_DASK_MEMORY_LIMIT"  # per worker: "auto", "4GiB", ...
DEFAULT_DASK_WORKERS = 2
DEFAULT_DASK_THREADS = 1
LAKE_ENV = "MLPLATFORM_LAKE"  # a folder or an fsspec URL; default <home>/lake
LAKE_FOLDER = "lake"

# The warehouse: one DuckDB file per dataset (a path template holding DATASET_PLACEHOLDER), so runs of
# different datasets write side by side; or one file for all (a path without it: runs are serialized).
DATASET_PLACEHOLDER = "{dataset}"
WAREHOUSE_FOLDER = "warehouse"
# `-warehouse`: DuckDB names a file's catalog after its name up to the first dot, and a catalog named
# like the dataset's schema makes `<dataset>.<table>` ambiguous; a dataset name never holds a `-`.
WAREHOUSE_FILE_TEMPLATE = f"{DATASET_PLACEHOLDER}-warehouse.duckdb"
LEGACY_WAREHOUSE_FILE = "warehouse.duckdb"  # homes made before per-dataset files, until migrated
SHARED_WAREHOUSE_POOL = "mlplatform/warehouse"

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
# LightGBM's OpenMP threads wait for each other at every boosting step. By default they spin there,
# and when runs share the cores (datasets side by side, a replay's policies, a busy server) a spinning
# thread holds a core its descheduled peer needs: a 2-thread fit beside one busy process took 19 s
# instead of 4 s. Sleeping waits cost little when the cores are free. OpenMP reads it once, when
# LightGBM loads, so the entry points apply it before anything imports LightGBM.
OPENMP_ENV_DEFAULTS = {"OMP_WAIT_POLICY": "PASSIVE"}
ENV_DEFAULTS = {**MLFLOW_ENV_DEFAULTS, **OPENMP_ENV_DEFAULTS}


@dataclass(frozen=True)
class Settings:
    home: Path
    warehouse_path: str  # a template with {dataset} (a file per dataset) or one file: see warehouse_for
    dagster_home: Path
    mlflow_tracking_uri: str
    mlflow_registry_uri: str | None
    mlflow_artifact_location: str | None  # None: the tracking server's default (its served artifacts)
    reports_dir: Path
    extra_spec_dirs: tuple[Path, ...]
    # Seconds between sensor ticks (tests use a few seconds).
    sensor_interval_seconds: int = DEFAULT_SENSOR_INTERVAL
    # Datasets whose sensors and schedules start RUNNING: "all", "none" or comma-separated names.
    automation: str = "all"
    # Where alerts link to (MLPLATFORM_DAGSTER_URL).
    dagster_url: str = DEFAULT_DAGSTER_URL
    mlflow_server_backend_store_uri: str | None = None
    mlflow_server_artifacts_destination: str | None = None
    mlflow_ui_url: str | None = None  # MLPLATFORM_MLFLOW_UI_URL; None: derived (see MLFLOW_UI_URL_ENV)
    mlflow_port: int = DEFAULT_MLFLOW_PORT
    engine: str = "local"  # MLPLATFORM_ENGINE: one of ENGINES
    dask_scheduler: str | None = None  # None: the platform starts a LocalCluster per step
    dask_workers: int = DEFAULT_DASK_WORKERS
    dask_threads_per_worker: int = DEFAULT_DASK_THREADS
    dask_memory_limit: str = "auto"
    lake: str = ""  # where the Dask engine keeps the stage tables; load_settings: <home>/lake

    def is_automated(self, dataset: str) -> bool:
        setting = self.automation.strip().lower()
        if setting == "all":
            return True
        return dataset.lower() in {name.strip() for name in setting.split(",")}

    @property
    def warehouse_per_dataset(self) -> bool:
        """Each dataset has a warehouse file of its own (the path is a template)."""
        return is_warehouse_template(self.warehouse_path)

    def warehouse_for(self, dataset: str) -> str:
        """The DuckDB file holding `dataset`'s tables (its schema `<dataset>`)."""
        return warehouse_file(self.warehouse_path, dataset)

    def warehouse_pool(self, dataset: str) -> str:
        """The Dagster pool of every asset and check of `dataset`: one per warehouse file, so runs that
        write one file queue one after the other (the home's dagster.yaml limits each pool to 1 run)."""
        return f"mlplatform/{dataset}" if self.warehouse_per_dataset else SHARED_WAREHOUSE_POOL

    def in_home(self, home: Path) -> Settings:
        """These settings with every location under `home`, as `load_settings` places them by default
        (the spec folders, sensor interval and automation stay)."""
        return replace(self, **_locations(home.expanduser().resolve()))


def is_warehouse_template(path: str) -> bool:
    return DATASET_PLACEHOLDER in path


def warehouse_file(path: str, dataset: str) -> str:
    """The file of `dataset` in the warehouse `path` (a template, or one file shared by all datasets)."""
    if not is_warehouse_template(path):
        return path
    file = path.replace(DATASET_PLACEHOLDER, dataset)
    catalog = Path(file).name.split(".")[0]
    if catalog.lower() == dataset.lower():
        raise ValueError(
            f"warehouse file {file}: DuckDB would name its catalog {catalog!r}, like the dataset's schema, "
            f"so `{dataset}.<table>` would be ambiguous; name the files differently up to the first dot "
            f"(${WAREHOUSE_ENV}=.../{WAREHOUSE_FILE_TEMPLATE}, the default)"
        )
    return file


def default_warehouse(home: Path) -> str:
    """A file per dataset under `home/warehouse/`, except in a home made before them: there the one
    `warehouse.duckdb` it has stays in use until `mlplatform warehouse migrate` splits it."""
    legacy = home / LEGACY_WAREHOUSE_FILE
    if legacy.exists() and not (home / WAREHOUSE_FOLDER).is_dir():
        return str(legacy)
    return str(home / WAREHOUSE_FOLDER / WAREHOUSE_FILE_TEMPLATE)


def _locations(home: Path) -> dict[str, Any]:
    """Where each piece of state lives when only the home is given."""
    return {
        "home": home,
        "warehouse_path": default_warehouse(home),
        "dagster_home": home / "dagster",
        "mlflow_tracking_uri": f"sqlite:///{home / 'mlflow.db'}",
        "mlflow_registry_uri": None,
        "mlflow_artifact_location": (home / "mlartifacts").as_uri(),
        "reports_dir": home / "reports",
        "lake": str(home / LAKE_FOLDER),
    }


def engine_from_env(env: os._Environ[str] | dict[str, str]) -> str:
    """MLPLATFORM_ENGINE, checked: a typo must not silently fall back to another engine."""
    engine = (env.get(ENGINE_ENV) or "local").strip().lower()
    if engine not in ENGINES:
        raise ValueError(f"${ENGINE_ENV}={env.get(ENGINE_ENV)!r}: use one of {', '.join(ENGINES)}")
    return engine


def _lake_location(raw: str | None) -> str | None:
    """A local lake as an absolute path: the views over its files are read from any folder."""
    if not raw:
        return None
    if "://" in raw and not raw.startswith("file://"):
        return raw
    return str(Path(raw.removeprefix("file://")).expanduser().resolve())


def _positive_int(env: os._Environ[str] | dict[str, str], name: str, default: int) -> int:
    raw = env.get(name) or str(default)
    try:
        value = int(raw)
    except ValueError:
        raise ValueError(f"${name}={raw!r}: expected a whole number") from None
    if value < 1:
        raise ValueError(f"${name}={raw!r}: expected at least 1")
    return value


def _default_artifact_location(env: os._Environ[str] | dict[str, str], default: dict[str, Any]) -> str | None:
    """The home's folder for a local store; a tracking server (http) decides itself: with
    `--serve-artifacts` its artifacts are uploaded and downloaded through it, over HTTP."""
    tracking = env.get(MLFLOW_TRACKING_ENV) or ""
    return None if tracking.startswith(("http://", "https://")) else default["mlflow_artifact_location"]


def spec_folders_from_env(env: os._Environ[str] | dict[str, str]) -> tuple[Path, ...]:
    """The folders $MLPLATFORM_SPECS names (`os.pathsep`-separated)."""
    return tuple(Path(p).expanduser().resolve() for p in (env.get(SPECS_ENV) or "").split(os.pathsep) if p)


def engine_environment(settings: Settings) -> dict[str, str]:
    """The variables that give another process (a UI, a daemon) these settings' engine: nothing for the
    local engine; for the Dask engine the engine, and the lake and cluster where not the defaults."""
    if settings.engine != ENGINE_DASK:
        return {}
    chosen = {
        ENGINE_ENV: ENGINE_DASK,
        LAKE_ENV: settings.lake if settings.lake != _locations(settings.home)["lake"] else None,
        DASK_SCHEDULER_ENV: settings.dask_scheduler,
        DASK_WORKERS_ENV: str(settings.dask_workers)
        if settings.dask_workers != DEFAULT_DASK_WORKERS
        else None,
        DASK_THREADS_ENV: str(settings.dask_threads_per_worker)
        if settings.dask_threads_per_worker != DEFAULT_DASK_THREADS
        else None,
        DASK_MEMORY_LIMIT_ENV: settings.dask_memory_limit if settings.dask_memory_limit != "auto" else None,
    }
    return {name: value for name, value in chosen.items() if value is not None}


def load_settings(environ: os._Environ[str] | dict[str, str] | None = None) -> Settings:
    """Settings from the environment (default os.environ) and the home's config.yaml (its stored spec
    folders, mlplatform.home_config). Call it at an entry point and pass the result down: the CLI's
    main, the code location module, the Dagster component."""
    env = os.environ if environ is None else environ
    home = Path(env.get(HOME_ENV) or ".mlplatform").expanduser().resolve()
    default = _locations(home)
    extra = combined_spec_folders(spec_folders_from_env(env), stored_spec_folders(home))
    return Settings(
        home=home,
        warehouse_path=env.get(WAREHOUSE_ENV) or default["warehouse_path"],
        dagster_home=Path(env.get("DAGSTER_HOME") or default["dagster_home"]).expanduser().resolve(),
        mlflow_tracking_uri=env.get(MLFLOW_TRACKING_ENV) or default["mlflow_tracking_uri"],
        mlflow_registry_uri=env.get(MLFLOW_REGISTRY_ENV) or None,
        mlflow_artifact_location=env.get(MLFLOW_ARTIFACTS_ENV) or _default_artifact_location(env, default),
        reports_dir=Path(env.get(REPORTS_ENV) or default["reports_dir"]).expanduser().resolve(),
        extra_spec_dirs=extra,
        sensor_interval_seconds=int(env.get(SENSOR_INTERVAL_ENV) or DEFAULT_SENSOR_INTERVAL),
        automation=env.get(AUTOMATION_ENV) or "all",
        dagster_url=env.get(DAGSTER_URL_ENV) or DEFAULT_DAGSTER_URL,
        mlflow_server_backend_store_uri=env.get(MLFLOW_SERVER_BACKEND_ENV) or None,
        mlflow_server_artifacts_destination=env.get(MLFLOW_SERVER_ARTIFACTS_ENV) or None,
        mlflow_ui_url=env.get(MLFLOW_UI_URL_ENV) or None,
        mlflow_port=int(env.get(MLFLOW_PORT_ENV) or DEFAULT_MLFLOW_PORT),
        engine=engine_from_env(env),
        dask_scheduler=env.get(DASK_SCHEDULER_ENV) or None,
        dask_workers=_positive_int(env, DASK_WORKERS_ENV, DEFAULT_DASK_WORKERS),
        dask_threads_per_worker=_positive_int(env, DASK_THREADS_ENV, DEFAULT_DASK_THREADS),
        dask_memory_limit=env.get(DASK_MEMORY_LIMIT_ENV) or "auto",
        lake=_lake_location(env.get(LAKE_ENV)) or default["lake"],
    )


def apply_mlflow_env_defaults(environ: os._Environ[str] | dict[str, str] | None = None) -> None:
    """Set ENV_DEFAULTS (MLflow's HTTP timeouts and retries, telemetry off, no progress bars; OpenMP's
    passive waits) where the user has not set them; setdefault never overrides the user's own values.

    MLflow reads these only from the environment, at each request (no client argument), so they must
    be in it. Call this once per process, at its entry point and nowhere else: `mlplatform`'s main
    and the code location module (mlplatform.definitions), which every process Dagster starts loads
    (daemon, webserver, code server, run workers) although none of them goes through our CLI.
    """
    env = os.environ if environ is None else environ
    for name, value in ENV_DEFAULTS.items():
        env.setdefault(name, value)
