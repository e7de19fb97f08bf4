"""MLflow as a Dagster resource: one place that knows the tracking and registry URIs.

We do not use dagster-mlflow: its run handling ties an MLflow run to the whole Dagster job, while each
of our assets opens its own short run and must always close it, marked FAILED if the asset fails.

The resource sets no process-wide state for good: its client gets the URIs as arguments, and the fluent
API is pointed at the store only inside `fluent_api()` blocks. MLflow's HTTP timeouts, telemetry and
progress bars are environment-only settings: they are defaulted at each process's entry point
(settings.apply_mlflow_env_defaults), not here.
"""

from __future__ import annotations

import os
import re
import urllib.parse
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import mlflow
from dagster import ConfigurableResource, InitResourceContext
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import (
    INVALID_PARAMETER_VALUE,
    RESOURCE_ALREADY_EXISTS,
    RESOURCE_DOES_NOT_EXIST,
    ErrorCode,
)
from mlflow.tracking import MlflowClient

from mlplatform.mlflow_store import create_local_store
from mlplatform.recovery import mlflow_owner_tags, run_owner_tags
from mlplatform.settings import (
    DEFAULT_MLFLOW_PORT,
    MLFLOW_HTTP_DEFAULTS,
    MLFLOW_REGISTRY_ENV,
    MLFLOW_TRACKING_ENV,
    Settings,
)

_ALREADY_EXISTS = ErrorCode.Name(RESOURCE_ALREADY_EXISTS)
_DOES_NOT_EXIST = ErrorCode.Name(RESOURCE_DOES_NOT_EXIST)
_INVALID_PARAMETER = ErrorCode.Name(INVALID_PARAMETER_VALUE)


class MlflowUnavailable(Exception):
    """The tracking (or registry) store did not answer, or refused a request: names the URI."""


def short_error(error: Exception) -> str:
    """MLflow's HTTP errors repeat the URL three times; keep the root cause (e.g. "Connection refused")."""
    text = (str(error).strip().splitlines() or [type(error).__name__])[0]
    cause = re.search(r'Caused by (\w+)\(.*: (.+?)"?\)+$', text)
    return f"{cause.group(1)}: {cause.group(2)}" if cause else text[:300]


def name_run_owner(context: InitResourceContext) -> None:
    """Tag the Dagster run with this process as its owner (see mlplatform.recovery)."""
    run, instance = context.run, context.instance
    owner = run_owner_tags(run.run_id) if run is not None else {}
    if instance is not None and run is not None and owner:
        instance.add_run_tags(run.run_id, owner)  # an existing key gets the new value


class MlflowResource(ConfigurableResource):
    """Tracking, experiments and the model registry for the platform's assets."""

    tracking_uri: str
    registry_uri: str | None = None  # None: the registry lives in the tracking store
    artifact_location: str | None = None  # root for artifacts of experiments this resource creates
    # Where a browser reaches the MLflow UI, for links in Dagster metadata ($MLPLATFORM_MLFLOW_UI_URL);
    # None: the tracking server's URL, or for a local store `local_ui_url`, where `mlplatform up` serves.
    ui_url: str | None = None
    local_ui_url: str = f"http://127.0.0.1:{DEFAULT_MLFLOW_PORT}"

    @classmethod
    def from_settings(cls, settings: Settings) -> MlflowResource:
        return cls(
            tracking_uri=settings.mlflow_tracking_uri,
            registry_uri=settings.mlflow_registry_uri,
            artifact_location=settings.mlflow_artifact_location,
            ui_url=settings.mlflow_ui_url,
            local_ui_url=f"http://127.0.0.1:{settings.mlflow_port}",
        )

    @property
    def effective_registry_uri(self) -> str:
        return self.registry_uri or self.tracking_uri

    def client(self) -> MlflowClient:
        return MlflowClient(tracking_uri=self.tracking_uri, registry_uri=self.effective_registry_uri)

    def setup_for_execution(self, context: InitResourceContext) -> None:
        """At the start of every run that uses MLflow: name this process the run's owner (so a kill is
        detected, see mlplatform.recovery) and fail at once, before any step, if MLflow does not answer.

        Always written, over any owner tags the run has: a re-executed or retried run copies its parent's.
        """
        name_run_owner(context)
        self.check_reachable()

    def check_reachable(self, write_probe_experiment: str | None = None) -> None:
        """One read of the tracking (and registry) store; with `write_probe_experiment`, also one write
        (a tag on that experiment, created if missing), so a read-only store fails before any data stage.

        Bounded by MLflow's HTTP timeout and retries (MLFLOW_HTTP_DEFAULTS unless the user set them).
        """
        doing, uri = "reach", self.tracking_uri
        try:
            create_local_store(self.tracking_uri)  # runs starting together must not both create it
            client = self.client()
            client.search_experiments(max_results=1)
            if self.effective_registry_uri != self.tracking_uri:
                uri = self.effective_registry_uri
                client.search_registered_models(max_results=1)
            if write_probe_experiment:
                doing, uri = "write to", self.tracking_uri
                experiment = self.experiment_id(write_probe_experiment)
                client.set_experiment_tag(experiment, "mlplatform.write_check", "ok")
        except Exception as error:  # any failure of the store: connection, HTTP status, SQL, permissions
            detail = short_error(error)
            limits = ", ".join(
                f"{name}={os.environ.get(name, v)}" for name, v in MLFLOW_HTTP_DEFAULTS.items()
            )
            limits = f" ({limits})" if uri.startswith(("http://", "https://")) else ""
            raise MlflowUnavailable(f"cannot {doing} MLflow at {uri}: {detail}{limits}") from error

    @contextmanager
    def fluent_api(self) -> Iterator[None]:
        """Point MLflow's fluent API at this store for the block, then put back what was there before.

        The fluent API (mlflow.start_run, mlflow.log_*, mlflow.pyfunc.log_model,
        mlflow.artifacts.download_artifacts, mlflow.pyfunc.load_model) takes no client or URI argument:
        it reads process-wide URIs, so they are set for the block, explicitly, so that a stray MLFLOW_*
        variable cannot send runs elsewhere. MLflow's setters also export them as MLFLOW_TRACKING_URI /
        MLFLOW_REGISTRY_URI (for subprocesses): those variables are put back too. Blocks nest.
        """
        saved = {name: os.environ.get(name) for name in (MLFLOW_TRACKING_ENV, MLFLOW_REGISTRY_ENV)}
        mlflow.set_tracking_uri(self.tracking_uri)
        mlflow.set_registry_uri(self.effective_registry_uri)
        try:
            yield
        finally:
            # Back to "not set in code": the URIs come from the restored variables, as before the block.
            mlflow.set_tracking_uri(None)  # type: ignore[arg-type]
            mlflow.set_registry_uri(None)  # type: ignore[arg-type]
            for name, value in saved.items():
                if value is None:
                    os.environ.pop(name, None)
                else:
                    os.environ[name] = value

    @property
    def ui_is_served(self) -> bool:
        """A server is known to answer at `browser_url`: configured, or the tracking server itself. Else
        the URL is only where `mlplatform up` (or `mlflow ui`) would serve the local store."""
        return bool(self.ui_url) or self.tracking_uri.startswith(("http://", "https://"))

    @property
    def browser_url(self) -> str:
        """`ui_url`, else the tracking server (it serves its own UI), else `local_ui_url`."""
        if self.ui_url:
            return self.ui_url.rstrip("/")
        served = self.tracking_uri.startswith(("http://", "https://"))
        return (self.tracking_uri if served else self.local_ui_url).rstrip("/")

    def artifact_url(self, run_id: str, path: str) -> str:
        """The file `path` of run `run_id` as the MLflow server sends it (its UI's `get-artifact` route),
        loadable by a browser, e.g. as an <img> in Dagster's UI."""
        query = urllib.parse.urlencode({"path": path, "run_uuid": run_id})
        return f"{self.browser_url}/get-artifact?{query}"

    def run_url(self, experiment_id: str, run_id: str) -> str:
        return f"{self.browser_url}/#/experiments/{experiment_id}/runs/{run_id}"

    def model_version_url(self, model_name: str, version: str | int) -> str:
        return f"{self.browser_url}/#/models/{model_name}/versions/{version}"

    def experiment_id(self, name: str) -> str:
        """The id of experiment `name`, created (under `artifact_location`/name if set) when missing."""
        client = self.client()
        existing = client.get_experiment_by_name(name)
        if existing is not None:
            return existing.experiment_id
        location = f"{self.artifact_location.rstrip('/')}/{name}" if self.artifact_location else None
        try:
            return client.create_experiment(name, artifact_location=location)
        except MlflowException as error:
            # Another process created it between our lookup and create: use theirs.
            if error.error_code != _ALREADY_EXISTS:
                raise
            created = client.get_experiment_by_name(name)
            if created is None:
                raise
            return created.experiment_id

    @contextmanager
    def start_run(
        self, experiment_name: str, run_name: str | None = None, tags: Mapping[str, Any] | None = None
    ) -> Iterator[mlflow.ActiveRun]:
        """Open an MLflow run and always close it: FINISHED on success, FAILED on any exception.

        Inside the block the fluent API (mlflow.log_params, mlflow.log_artifact, ...) logs to this run
        (the block is a `fluent_api()` block).
        """
        with self.fluent_api():
            run = mlflow.start_run(
                experiment_id=self.experiment_id(experiment_name),
                run_name=run_name,
                # The owner tags let a later command end this run as KILLED if this process is killed.
                tags={**mlflow_owner_tags(), **{key: str(value) for key, value in (tags or {}).items()}},
            )
            run_id = run.info.run_id
            status = "FAILED"
            try:
                yield run
                status = "FINISHED"
            finally:
                self._end_run(run_id, status)

    def _end_run(self, run_id: str, status: str) -> None:
        # Close runs the block left open on top of ours (nested runs) so the fluent stack is clean,
        # then close ours; if it is no longer the active run, terminate it through the client.
        active = mlflow.active_run()
        while active is not None and active.info.run_id != run_id:
            mlflow.end_run(status=status)
            active = mlflow.active_run()
        if active is not None:
            mlflow.end_run(status=status)
        else:
            self.client().set_terminated(run_id, status=status)

    def ensure_registered_model(self, model_name: str) -> None:
        """Create the registered model if it does not exist yet (safe to call concurrently)."""
        try:
            self.client().create_registered_model(model_name)
        except MlflowException as error:
            if error.error_code != _ALREADY_EXISTS:
                raise

    def set_alias(self, model_name: str, alias: str, version: str | int) -> None:
        """Point `alias` (e.g. "champion") of `model_name` at `version`, moving it if already set."""
        self.client().set_registered_model_alias(model_name, alias, str(version))

    def get_alias_version(self, model_name: str, alias: str) -> ModelVersion | None:
        """The version `alias` points to, or None if the model or the alias does not exist."""
        try:
            return self.client().get_model_version_by_alias(model_name, alias)
        except MlflowException as error:
            missing_model = error.error_code == _DOES_NOT_EXIST
            # An unset alias is reported as an invalid parameter; other invalid parameters still raise.
            missing_alias = error.error_code == _INVALID_PARAMETER and "not found" in error.message
            if missing_model or missing_alias:
                return None
            raise


class MlflowPlotsResource(MlflowResource):
    """The MLflow store for writes that are extras beside a stage's own result (resource key
    `mlflow_plots`: drift plots beside the drift verdict the drift sensor reads). Its setup names the
    run's owner but does not check that MLflow answers: an outage costs the plots, not the verdict."""

    def setup_for_execution(self, context: InitResourceContext) -> None:
        name_run_owner(context)
