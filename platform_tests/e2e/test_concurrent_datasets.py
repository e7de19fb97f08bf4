"""Datasets run side by side through the real run queue; runs of one dataset wait for each other.

A real `dagster-daemon` on a SQLite home. Three whole-graph runs of two tiny datasets (each with its
own warehouse file and pool) are submitted with `dagster job launch` while the daemon is stopped, so
its first dequeue sees all of them at once: alpha's two runs and beta's one. Both datasets' first runs
must overlap in time, alpha's two runs must not, and every run succeeds.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import dagster as dg
import duckdb
import pytest

from mlplatform.home import prepare_home
from mlplatform.settings import load_settings
from platform_tests.assets.tiny import MONTHS, tiny_spec_dict, write_tiny_source
from platform_tests.conftest import REPO_ROOT, subprocess_env
from platform_tests.servers import failure_messages, running

pytestmark = pytest.mark.e2e

DATASETS = ("alpha", "beta")
RANGE_TAGS = {
    "dagster/asset_partition_range_start": MONTHS[0],
    "dagster/asset_partition_range_end": MONTHS[-1],
}


def _launch(job: str, env: dict[str, str]) -> subprocess.Popen[str]:
    """`dagster job launch`: the run goes to the instance's queue (the daemon launches it)."""
    command = ["dagster", "job", "launch", "-m", "mlplatform.definitions", "-j", job]
    command += ["--tags", json.dumps(RANGE_TAGS)]
    return subprocess.Popen(
        command, env=env, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


def _wait_for(what: str, condition: Callable[[], bool], timeout: float, log: Path) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(1)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}:\n{log.read_text()[-3000:]}")


def _overlap(a: dg.RunRecord, b: dg.RunRecord) -> float:
    """Seconds both runs were in progress at once (negative: the gap between them)."""
    assert a.start_time and a.end_time and b.start_time and b.end_time
    return min(a.end_time, b.end_time) - max(a.start_time, b.start_time)


def test_two_datasets_run_side_by_side_and_one_datasets_runs_wait(
    platform_home: Path, write_spec: Callable[..., Path], tmp_path: Path
) -> None:
    for name in DATASETS:
        source = write_tiny_source(tmp_path / f"{name}.csv", seed=len(name))
        spec_path = write_spec({**tiny_spec_dict(source.path), "name": name}, f"{name}.yaml")
    env = subprocess_env(platform_home, MLPLATFORM_SPECS=str(spec_path.parent), MLPLATFORM_AUTOMATION="none")
    settings = load_settings(env)
    prepare_home(settings)  # as `mlplatform up` does before it starts the daemon
    assert {settings.warehouse_pool(n) for n in DATASETS} == {"mlplatform/alpha", "mlplatform/beta"}

    launches = [_launch(f"{name}__all", env) for name in ("alpha", "beta", "alpha")]
    for launch in launches:
        output, _ = launch.communicate(timeout=180)
        assert launch.returncode == 0, output[-3000:]
    with dg.DagsterInstance.from_config(str(settings.dagster_home)) as instance:
        queued = instance.get_run_records(dg.RunsFilter(statuses=[dg.DagsterRunStatus.QUEUED]))
        assert len(queued) == 3, [r.dagster_run.status for r in queued]
        log = tmp_path / "daemon.log"
        daemon = ["dagster-daemon", "run", "-m", "mlplatform.definitions"]
        with running(daemon, env, REPO_ROOT, log):
            _wait_for(
                "the three runs to finish",
                lambda: all(r.dagster_run.is_finished for r in instance.get_run_records(dg.RunsFilter())),
                420,
                log,
            )
        records = sorted(instance.get_run_records(dg.RunsFilter()), key=lambda r: r.start_time or 0)
        failed = [
            r.dagster_run.run_id for r in records if r.dagster_run.status != dg.DagsterRunStatus.SUCCESS
        ]
        assert not failed, "\n".join(failure_messages(instance, run_id) for run_id in failed)
    alpha = [r for r in records if r.dagster_run.job_name == "alpha__all"]
    beta = next(r for r in records if r.dagster_run.job_name == "beta__all")
    side_by_side = _overlap(alpha[0], beta)
    assert side_by_side > 0, "alpha's and beta's runs did not overlap"
    assert _overlap(alpha[0], alpha[1]) < 0, "alpha's two runs overlapped"

    together = max(alpha[0].end_time, beta.end_time) - min(alpha[0].start_time, beta.start_time)  # type: ignore[type-var,operator]
    one_after_other = alpha[1].end_time - alpha[0].start_time  # type: ignore[operator]
    print(
        f"\nalpha+beta side by side: {together:.1f} s (overlap {side_by_side:.1f} s); "
        f"alpha twice, one after the other: {one_after_other:.1f} s"
    )
    for name in DATASETS:  # each dataset's tables are in its own file
        with duckdb.connect(settings.warehouse_for(name), read_only=True) as conn:
            schemas = {row[0] for row in conn.execute("SELECT schema_name FROM duckdb_tables()").fetchall()}
        assert schemas == {name}
