"""The Dask engine as a Dagster resource: a client for the heavy work inside a step.

Steps still run in Dagster's process (the in-process executor); only the work inside a step goes to
Dask. With `scheduler` unset the first `get_client()` of a step process starts a LocalCluster, and the
resource closes it when the step's execution ends (`teardown_after_execution`), so no worker outlives a
run. With `scheduler` set it only connects to that cluster. With the local engine it is inert and
dask/distributed are never imported.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import dagster as dg
from pydantic import Field, PrivateAttr

from mlplatform.settings import DASK_SCHEDULER_ENV, ENGINE_ENV, OPENMP_ENV_DEFAULTS, Settings

if TYPE_CHECKING:
    import distributed

CONNECT_TIMEOUT_SECONDS = 10
LOCAL_HOST = "127.0.0.1"


class DaskEngineError(dg.Failure):
    """The Dask engine cannot be used: not enabled, or its scheduler cannot be reached or started."""


@contextlib.contextmanager
def _driver_environ_kept() -> Iterator[None]:
    """Undo what starting local workers writes into this process's environment: distributed's nannies
    apply their pre-spawn variables (OMP_NUM_THREADS=1, ...) to os.environ before spawning, which would
    make a later LightGBM in the driver single-threaded."""
    before = dict(os.environ)
    try:
        yield
    finally:
        for name in set(os.environ) - set(before):
            del os.environ[name]
        os.environ.update(before)


class DaskResource(dg.ConfigurableResource):
    """A dask.distributed client: a LocalCluster of this step process, or an existing cluster."""

    engine: str = Field(default="local", description='"local" (inert) or "dask".')
    scheduler: str | None = Field(
        default=None, description="tcp://host:8786 of an existing cluster; None: start a LocalCluster."
    )
    workers: int = Field(default=2, description="Workers of the LocalCluster.")
    threads_per_worker: int = Field(default=1, description="Threads per LocalCluster worker.")
    memory_limit: str = Field(default="auto", description='Per LocalCluster worker, e.g. "4GiB" or "auto".')
    connect_timeout_seconds: float = Field(
        default=CONNECT_TIMEOUT_SECONDS, description="How long to wait for `scheduler` before failing."
    )

    _client: Any = PrivateAttr(default=None)
    _cluster: Any = PrivateAttr(default=None)

    @classmethod
    def from_settings(cls, settings: Settings) -> DaskResource:
        return cls(
            engine=settings.engine,
            scheduler=settings.dask_scheduler,
            workers=settings.dask_workers,
            threads_per_worker=settings.dask_threads_per_worker,
            memory_limit=settings.dask_memory_limit,
        )

    @property
    def enabled(self) -> bool:
        return self.engine == "dask"

    def worker_env(self) -> dict[str, str]:
        """Environment of each LocalCluster worker: passive OpenMP waits like the driver's, and as many
        OpenMP threads as the worker has, so LightGBM on a worker does not oversubscribe the cores."""
        return {**OPENMP_ENV_DEFAULTS, "OMP_NUM_THREADS": str(self.threads_per_worker)}

    def get_client(self) -> distributed.Client:
        """The step's client, started or connected on first use. Raises DaskEngineError."""
        if not self.enabled:
            raise DaskEngineError(
                description=f"the Dask engine is not enabled (engine={self.engine!r}): set ${ENGINE_ENV}=dask"
            )
        if self._client is None:
            self._client = self._connect() if self.scheduler else self._start_local_cluster()
        return self._client

    def _connect(self) -> distributed.Client:
        from distributed import Client

        try:
            return Client(self.scheduler, timeout=self.connect_timeout_seconds)
        except (OSError, ValueError) as error:  # TimeoutError is an OSError; a bad address a ValueError
            raise DaskEngineError(
                description=(
                    f"cannot reach the Dask scheduler {self.scheduler} (${DASK_SCHEDULER_ENV}) within "
                    f"{self.connect_timeout_seconds:g} s: start it or fix the address, or unset "
                    f"${DASK_SCHEDULER_ENV} to run a LocalCluster. {type(error).__name__}: {error}"
                ),
                metadata={"dask_scheduler": self.scheduler},
            ) from error

    def _start_local_cluster(self) -> distributed.Client:
        from distributed import Client, LocalCluster

        with _driver_environ_kept():
            cluster = LocalCluster(
                n_workers=self.workers,
                threads_per_worker=self.threads_per_worker,
                memory_limit=self.memory_limit,
                processes=True,
                host=LOCAL_HOST,
                scheduler_port=0,
                dashboard_address=f"{LOCAL_HOST}:0",
                env=self.worker_env(),
            )
        try:
            client = Client(cluster)
        except Exception:
            cluster.close()
            raise
        self._cluster = cluster
        return client

    def dashboard_metadata(self) -> dict[str, dg.MetadataValue]:
        """{"dask_dashboard": link} to merge into a step's metadata once it has a client; {} before, and
        when the scheduler serves no dashboard (bokeh not installed)."""
        if self._client is None:
            return {}
        link = self._client.dashboard_link
        return {"dask_dashboard": dg.MetadataValue.url(link)} if link else {}

    def close(self) -> None:
        """Close the client and the LocalCluster this resource started (an external cluster stays)."""
        client, cluster = self._client, self._cluster
        self._client = self._cluster = None
        if client is not None:
            client.close()
        if cluster is not None:
            cluster.close()

    def teardown_after_execution(self, context: dg.InitResourceContext) -> None:
        self.close()
