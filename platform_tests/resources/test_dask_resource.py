"""DaskResource against a real LocalCluster (2 workers x 1 thread, processes), and the engine settings."""

from __future__ import annotations

import os
import socket
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import duckdb
import pytest

from mlplatform.factory import location_resources
from mlplatform.resources.dask import DaskEngineError, DaskResource
from mlplatform.settings import engine_environment, load_settings
from mlplatform.specs.model import DatasetSpec
from platform_tests.conftest import bike_spec_dict

_DRIVER_OMP_THREADS: dict[str, str | None] = {}


@pytest.fixture(scope="module")
def local_engine() -> Iterator[DaskResource]:
    resource = DaskResource(engine="dask", workers=2, threads_per_worker=1)
    _DRIVER_OMP_THREADS["before"] = os.environ.get("OMP_NUM_THREADS")
    try:
        resource.get_client()
        _DRIVER_OMP_THREADS["after"] = os.environ.get("OMP_NUM_THREADS")
        yield resource
    finally:
        resource.close()


def _worker_env(name: str) -> object:
    return os.environ.get(name)


def test_local_cluster_has_the_configured_workers_and_their_env(local_engine: DaskResource) -> None:
    client = local_engine.get_client()
    assert local_engine.get_client() is client  # one cluster per step process
    threads = client.nthreads()
    assert len(threads) == 2 and set(threads.values()) == {1}
    assert set(client.run(_worker_env, "OMP_NUM_THREADS").values()) == {"1"}
    assert set(client.run(_worker_env, "OMP_WAIT_POLICY").values()) == {"PASSIVE"}
    assert client.submit(sum, [1, 2, 3]).result() == 6
    # distributed's nannies put OMP_NUM_THREADS=1 into the starting process: it must not stay there.
    assert _DRIVER_OMP_THREADS["after"] == _DRIVER_OMP_THREADS["before"]


def test_dashboard_link_is_served_on_localhost(local_engine: DaskResource) -> None:
    local_engine.get_client()
    link = local_engine.dashboard_metadata()["dask_dashboard"]
    assert isinstance(link, dg.UrlMetadataValue)
    assert link.url.startswith("http://127.0.0.1:")
    health = link.url.rsplit("/", 1)[0] + "/health"
    with urllib.request.urlopen(health, timeout=5) as response:
        assert response.read() == b"ok"


def test_connects_to_an_existing_scheduler_and_leaves_it_running(local_engine: DaskResource) -> None:
    address = local_engine.get_client().scheduler.address
    remote = DaskResource(engine="dask", scheduler=address)
    assert remote.get_client().submit(len, "abc").result() == 3
    remote.close()
    assert local_engine.get_client().submit(len, "ab").result() == 2


def test_unreachable_scheduler_fails_naming_it() -> None:
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    resource = DaskResource(engine="dask", scheduler=f"tcp://127.0.0.1:{port}", connect_timeout_seconds=1)
    with pytest.raises(DaskEngineError, match=f"tcp://127.0.0.1:{port}"):
        resource.get_client()


def test_local_engine_is_inert() -> None:
    resource = DaskResource()
    assert not resource.enabled
    assert resource.dashboard_metadata() == {}
    with pytest.raises(DaskEngineError, match="MLPLATFORM_ENGINE=dask"):
        resource.get_client()


def test_cluster_started_in_a_step_is_closed_when_the_run_ends() -> None:
    seen: dict[str, object] = {}

    @dg.asset
    def uses_dask(dask: DaskResource) -> dg.MaterializeResult:
        client = dask.get_client()
        seen["scheduler"] = client.scheduler.address
        seen["client"] = client
        return dg.MaterializeResult(
            metadata={"answer": client.submit(max, [4, 2]).result(), **dask.dashboard_metadata()}
        )

    result = dg.materialize([uses_dask], resources={"dask": DaskResource(engine="dask", workers=1)})
    assert result.success
    metadata = result.asset_materializations_for_node("uses_dask")[0].metadata
    assert metadata["answer"].value == 4 and "dask_dashboard" in metadata
    assert seen["client"].status == "closed"
    with pytest.raises(DaskEngineError):  # the scheduler went with the run
        DaskResource(engine="dask", scheduler=str(seen["scheduler"]), connect_timeout_seconds=1).get_client()


def test_settings_parse_the_engine_variables(tmp_path: Path) -> None:
    env = {"MLPLATFORM_HOME": str(tmp_path)}
    default = load_settings(env)
    assert (default.engine, default.dask_scheduler, default.dask_workers) == ("local", None, 2)
    assert (default.dask_threads_per_worker, default.dask_memory_limit) == (1, "auto")
    assert default.lake == str(tmp_path.resolve() / "lake")
    custom = load_settings(
        {
            **env,
            "MLPLATFORM_ENGINE": "Dask",
            "MLPLATFORM_DASK_SCHEDULER": "tcp://10.0.0.5:8786",
            "MLPLATFORM_DASK_WORKERS": "4",
            "MLPLATFORM_DASK_THREADS": "2",
            "MLPLATFORM_DASK_MEMORY_LIMIT": "3GiB",
            "MLPLATFORM_LAKE": "s3://bucket/lake",
        }
    )
    assert custom.engine == "dask" and custom.lake == "s3://bucket/lake"
    relative = load_settings({**env, "MLPLATFORM_LAKE": "some/lake"})
    assert relative.lake == str(Path("some/lake").resolve())  # views over it are read from any folder
    spec = DatasetSpec.model_validate(bike_spec_dict())
    warehouse = location_resources(custom, [spec])["warehouse"]
    assert warehouse.lake == "s3://bucket/lake" and warehouse.lake_grains == {spec.name: spec.partition_grain}
    assert location_resources(default, [spec])["warehouse"].lake is None
    resource = location_resources(custom)["dask"]
    assert isinstance(resource, DaskResource) and resource.enabled
    assert (resource.scheduler, resource.workers, resource.threads_per_worker, resource.memory_limit) == (
        "tcp://10.0.0.5:8786",
        4,
        2,
        "3GiB",
    )


@pytest.mark.parametrize(
    ("name", "value"),
    [("MLPLATFORM_ENGINE", "spark"), ("MLPLATFORM_DASK_WORKERS", "two"), ("MLPLATFORM_DASK_THREADS", "0")],
)
def test_bad_engine_settings_name_the_variable(tmp_path: Path, name: str, value: str) -> None:
    with pytest.raises(ValueError, match=name):
        load_settings({"MLPLATFORM_HOME": str(tmp_path), name: value})


def test_the_engine_environment_gives_another_process_the_same_engine(tmp_path: Path) -> None:
    env = {"MLPLATFORM_HOME": str(tmp_path)}
    assert engine_environment(load_settings(env)) == {}  # the local engine needs nothing
    assert engine_environment(load_settings({**env, "MLPLATFORM_ENGINE": "dask"})) == {
        "MLPLATFORM_ENGINE": "dask"
    }
    chosen = {
        "MLPLATFORM_ENGINE": "dask",
        "MLPLATFORM_LAKE": "s3://bucket/lake",
        "MLPLATFORM_DASK_SCHEDULER": "tcp://10.0.0.5:8786",
        "MLPLATFORM_DASK_WORKERS": "4",
        "MLPLATFORM_DASK_THREADS": "2",
        "MLPLATFORM_DASK_MEMORY_LIMIT": "3GiB",
    }
    settings = load_settings({**env, **chosen})
    assert engine_environment(settings) == chosen
    assert load_settings({**env, **engine_environment(settings)}) == settings  # round trip


def test_the_dask_engines_driver_duckdb_spills_before_it_takes_the_workers_memory(tmp_path: Path) -> None:
    env = {"MLPLATFORM_HOME": str(tmp_path)}
    local = location_resources(load_settings(env))["warehouse"]
    assert "memory_limit" not in local.connection_config  # the local engine keeps DuckDB's default
    warehouse = location_resources(load_settings({**env, "MLPLATFORM_ENGINE": "dask"}))["warehouse"]
    with warehouse.get_connection("tiny") as conn:
        limit = conn.sql("SELECT current_setting('memory_limit')").fetchall()[0][0]
    with duckdb.connect() as default:
        default_limit = default.sql("SELECT current_setting('memory_limit')").fetchall()[0][0]
    assert limit != default_limit and warehouse.connection_config == {"memory_limit": "40%"}
