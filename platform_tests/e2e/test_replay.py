"""`mlplatform replay` on a small synthetic dataset: the three outputs, with the real jobs and sensor."""

import subprocess
from collections.abc import Callable
from datetime import date
from pathlib import Path

import pandas as pd
import pytest
import yaml

from mlplatform.datasets.synthetic import DriftInjection, generate_to_folder
from mlplatform.specs.loader import BUNDLED_SPECS_DIR
from platform_tests.conftest import subprocess_env

pytestmark = pytest.mark.e2e


def test_replay_writes_errors_summary_and_plot(
    platform_home: Path, tmp_path: Path, write_spec: Callable[..., Path]
) -> None:
    landing = tmp_path / "landing"
    drift = DriftInjection(covariate_from=date(2024, 1, 21), amount_scale=4.0, country_mix_shift=0.7)
    generate_to_folder(landing, days=32, customers=150, seed=5, start=date(2024, 1, 1), drift=drift)
    raw = yaml.safe_load((BUNDLED_SPECS_DIR / "transactions.yaml").read_text())
    raw.update(name="replay_payments", source={"path": f"{landing}/*.parquet", "format": "parquet"})
    raw["drift"] = {"cooldown": "1d"}
    spec_path = write_spec(raw, "replay_payments.yaml")
    output = tmp_path / "replay"
    command = [
        "mlplatform", "replay", "--dataset", "replay_payments", "--output", str(output),
        "--initial-fraction", "0.5", "--period-days", "4", "--retrain-every-days", "8",
    ]  # fmt: skip
    env = subprocess_env(platform_home, MLPLATFORM_SPECS=str(spec_path.parent))
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]

    replay = pd.read_csv(output / "replay.csv")
    assert list(replay.columns[:4]) == ["policy", "period", "error", "retrained"]
    assert replay.groupby("policy").size().to_dict() == {"drift": 4, "scheduled": 4, "static": 4}
    assert not replay.loc[replay["policy"] == "static", "retrained"].any()
    assert replay.loc[replay["policy"] == "scheduled", "retrained"].sum() == 2  # every 8 of the 16 days
    assert replay.loc[replay["policy"] == "drift", "retrained"].any()  # 4x amounts from day 21
    summary = pd.read_csv(output / "replay_summary.csv")
    assert list(summary.columns) == ["policy", "retrains", "mean_error", "train_seconds"]
    assert (output / "replay.png").read_bytes()[:4] == b"\x89PNG"
    assert not (output / "_homes").exists()
