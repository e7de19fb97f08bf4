"""Tiny runs of the benchmarks (benchmarks/, run by hand at 1M and 10M rows) so their code cannot rot.

Each runs its command in a subprocess, as a person would, on a few thousand rows, and checks the
report it prints. Only the Evidently comparison needs the `bench` extra; without it that one test is
skipped and the drift benchmark still runs the platform's side.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

from platform_tests.conftest import REPO_ROOT

pytestmark = pytest.mark.e2e
HAS_EVIDENTLY = importlib.util.find_spec("evidently") is not None


def run(module: str, *args: str, timeout: int = 300) -> str:
    completed = subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    return completed.stdout


def test_pipeline_benchmark_runs_both_engines_and_bare_on_the_same_files(tmp_path: Path) -> None:
    summary_path = tmp_path / "summary.json"
    out = run(
        "benchmarks.pipeline",
        *("--rows", "2000", "--days", "10", "--repeats", "1", "--json", str(summary_path)),
        *("--sides", "local,dask,bare"),
    )
    assert "ratio local / bare" in out and "ratio dask / local" in out and "| drift_report |" in out
    summary = json.loads(summary_path.read_text())
    assert all(summary[side]["seconds"] > 0 for side in ("local", "dask", "bare"))
    assert summary["local"]["rows"]["predictions"] == summary["rows"]
    assert summary["dask"]["rows"] == summary["local"]["rows"]
    # The Dask workers are the run's processes too: its peak is over all of them.
    assert summary["dask"]["peak_rss_bytes"] > summary["local"]["stage_rss"]["raw"]
    # Same data, same parameters: local and bare train the same model. Dask trains data-parallel: on
    # 1,861 rows each worker bins its own few hundred rows and grows other trees, so only a model that
    # learned is asserted here (the tolerance against the local engine: e2e/test_dask_engine.py).
    local, dask, bare = (summary[side]["metrics"] for side in ("local", "dask", "bare"))
    assert local["test_roc_auc"] == pytest.approx(bare["test_roc_auc"], abs=0.02)
    assert 0.55 < dask["test_roc_auc"] <= 1.0 and dask["best_iteration"] >= 1


def test_drift_benchmark_platform_side_runs_without_evidently() -> None:
    out = run("benchmarks.drift", "--rows", "20000", "--repeats", "1", "--partitions", "3", "--no-evidently")
    assert "platform: all partitions" in out


@pytest.mark.skipif(
    not HAS_EVIDENTLY, reason="Evidently comes with the bench extra: pip install -e '.[bench]'"
)
def test_drift_benchmark_compares_with_evidently() -> None:
    out = run("benchmarks.drift", "--rows", "20000", "--repeats", "1", "--partitions", "2", timeout=300)
    assert "Evidently / platform time" in out and "same test ks" in out and "same test wasserstein" in out


def test_sensor_benchmark_ticks_the_real_drift_sensor() -> None:
    out = run(
        "benchmarks.sensor",
        *("--features", "6", "--reference-rows", "3000", "--partitions", "4", "--rows-per-partition", "300"),
        *("--repeats", "2"),
    )
    assert "sensor tick, steady state" in out
