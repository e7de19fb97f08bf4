"""`mlplatform replay`: the summary's arithmetic and the replayed spec (unit tests), and one small replay
with the real jobs and sensor writing the three outputs, every_period retraining after every period (e2e)."""

import math
import subprocess
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pandas as pd
import pytest
import yaml
from benchmarks.replay_suite import DATASETS, targets

from mlplatform.core.replay_summary import SUMMARY_COLUMNS, summarise
from mlplatform.datasets.synthetic import DriftInjection, generate_to_folder
from mlplatform.replay import (
    ReplayConfig,
    _DataClock,
    _PolicyState,
    _retrain_request,
    check_config,
    replayed_spec,
)
from mlplatform.specs.loader import BUNDLED_SPECS_DIR, parse_spec
from platform_tests.conftest import subprocess_env

EXPECTED_COLUMNS = [
    "policy", "metric", "direction", "retrains", "mean_metric", "gain_captured", "retrain_share",
    "train_seconds", "estimate_mae",
]  # fmt: skip


def _periods(policy: str, values: list[float], retrained: list[bool], metric: str) -> list[dict]:
    return [
        {
            "policy": policy,
            "period": f"2024-01-0{i + 1}",
            "metric_value": value,
            "retrained": done,
            "metric": metric,
            "train_seconds": 2.0 if done else 0.0,
            "estimated_error": math.nan,
            "realized_on_estimate_window": math.nan,
        }
        for i, (value, done) in enumerate(zip(values, retrained, strict=True))
    ]


def test_summary_shares_the_ceilings_gain_the_same_way_whatever_the_metrics_direction() -> None:
    # RMSE: static 10, every_period 6 (gain 4), drift 7 (gain 3: 75% of the ceiling's).
    rows = (
        _periods("static", [10, 10], [False, False], "rmse")
        + _periods("drift", [8, 6], [True, False], "rmse")
        + _periods("every_period", [6, 6], [True, True], "rmse")
    )
    summary = summarise(pd.DataFrame(rows)).set_index("policy")
    assert list(summary.reset_index().columns) == EXPECTED_COLUMNS == list(SUMMARY_COLUMNS)
    assert summary.loc["drift", "gain_captured"] == pytest.approx(0.75)
    assert summary.loc["drift", "retrain_share"] == pytest.approx(0.5)
    assert summary.loc["every_period", ["gain_captured", "retrain_share"]].tolist() == [1.0, 1.0]
    assert summary.loc["static", ["gain_captured", "retrains", "train_seconds"]].tolist() == [0.0, 0, 0.0]
    assert summary["direction"].unique().tolist() == ["lower is better"]
    assert summary["estimate_mae"].isna().all()  # no estimate in any period
    # ROC AUC: static 0.70, every_period 0.80, drift 0.79: 90% of the gain.
    rows = (
        _periods("static", [0.70], [False], "roc_auc")
        + _periods("drift", [0.79], [True], "roc_auc")
        + _periods("every_period", [0.80], [True], "roc_auc")
    )
    summary = summarise(pd.DataFrame(rows)).set_index("policy")
    assert summary.loc["drift", "gain_captured"] == pytest.approx(0.9)
    assert summary["direction"].unique().tolist() == ["higher is better"]


def test_summary_has_no_gain_to_share_when_the_ceiling_is_no_better_than_static() -> None:
    rows = _periods("static", [5, 5], [False, False], "rmse") + _periods(
        "every_period", [6, 5], [True, True], "rmse"
    )
    assert summarise(pd.DataFrame(rows))["gain_captured"].isna().all()
    alone = summarise(pd.DataFrame(_periods("drift", [5], [True], "rmse")))
    assert alone["gain_captured"].isna().all() and alone["retrain_share"].isna().all()


def test_estimate_mae_is_the_mean_absolute_gap_over_periods_with_an_estimate() -> None:
    frame = pd.DataFrame(_periods("drift", [0.8, 0.7, 0.75], [False] * 3, "roc_auc"))
    frame["estimated_error"] = [0.78, 0.73, math.nan]
    frame["realized_on_estimate_window"] = [0.80, 0.70, 0.75]
    assert summarise(frame).loc[0, "estimate_mae"] == pytest.approx(0.025)


def testreplayed_spec_takes_the_label_delay_and_one_cpu_share_of_threads(tmp_path: Path) -> None:
    bike = parse_spec(BUNDLED_SPECS_DIR / "bike_sharing.yaml")
    config = ReplayConfig(dataset="bike_sharing", output=tmp_path, label_delay="3d", processes=64)
    replayed = replayed_spec(bike, config)
    assert replayed.labels.delay == "3d" and bike.labels.delay == "0h"
    assert replayed.model.params["num_threads"] == 1  # 4 policies at once, far fewer CPUs each
    own_threads = bike.model_copy(update={"model": bike.model.model_copy(update={"params": {"n_jobs": 3}})})
    assert replayed_spec(own_threads, ReplayConfig("bike_sharing", tmp_path)).model.params == {"n_jobs": 3}
    assert replayed_spec(bike, ReplayConfig("bike_sharing", tmp_path)).labels.delay == "0h"


@pytest.mark.parametrize("delay", ["soon", "1mo"])
def test_a_label_delay_that_is_no_fixed_duration_is_refused(tmp_path: Path, delay: str) -> None:
    with pytest.raises(ValueError, match="--label-delay"):
        check_config(ReplayConfig(dataset="x", output=tmp_path, label_delay=delay))


def test_the_suite_checks_the_targets_that_apply_and_says_by_how_much_one_is_missed() -> None:
    def drift(**values: float) -> pd.DataFrame:
        return pd.DataFrame([{"policy": "drift", "metric": "roc_auc", "retrains": 3, **values}])

    concept = drift(gain_captured=0.8, retrain_share=0.2, estimate_mae=0.025)
    assert targets(DATASETS["payments_concept"], concept) == [
        "gain captured 0.8 >= 0.9: missed by 0.1",
        "retrain share 0.2 <= 0.25: met",
        "estimate MAE 0.025 <= 0.02: missed by 0.005",
    ]
    stationary = drift(gain_captured=math.nan, retrain_share=0.1, estimate_mae=0.01)
    assert targets(DATASETS["payments_stationary"], stationary) == [
        "drift retrains 3 <= 0: missed by 3",
        "estimate MAE 0.01 <= 0.02: met",
    ]
    bike = drift(gain_captured=math.nan, retrain_share=0.3, estimate_mae=math.nan).assign(metric="rmse")
    assert targets(DATASETS["bike_sharing"], bike) == [
        "gain captured: n/a",
        "retrain share 0.3 <= 0.25: missed by 0.05",
    ]


def test_policies_ask_for_a_retraining_by_their_own_rule(tmp_path: Path) -> None:
    config = ReplayConfig(dataset="x", output=tmp_path, retrain_every_days=8)
    trained = datetime(2024, 1, 10, tzinfo=UTC)
    state = _PolicyState(None, None, _DataClock(trained), trained)  # type: ignore[arg-type]
    assert _retrain_request("static", config, state, trained + timedelta(days=30)) == (None, "")
    assert _retrain_request("scheduled", config, state, trained + timedelta(days=7))[0] is None
    tags, note = _retrain_request("scheduled", config, state, trained + timedelta(days=8))
    assert tags == {"mlplatform/trigger": "schedule"} and note == "every 8 days"
    tags, _ = _retrain_request("every_period", config, state, trained + timedelta(days=1))
    assert tags == {"mlplatform/trigger": "every_period"}


@pytest.mark.e2e
def test_replay_writes_metrics_summary_and_plot_with_the_ceiling(
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
        "--initial-fraction", "0.5", "--period-days", "4", "--label-delay", "1d",
        # Three policies, not four, to keep CI's e2e time: the schedule's rule is unit-tested above.
        "--policy", "static", "--policy", "drift", "--policy", "every_period",
    ]  # fmt: skip
    env = subprocess_env(platform_home, MLPLATFORM_SPECS=str(spec_path.parent))
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]

    replay = pd.read_csv(output / "replay.csv")
    assert list(replay.columns[:4]) == ["policy", "period", "metric_value", "retrained"]
    assert replay["policy"].drop_duplicates().tolist() == ["static", "drift", "every_period"]
    assert replay.groupby("policy").size().unique().tolist() == [4]
    retrains = replay.groupby("policy")["retrained"].sum()
    assert retrains[["static", "every_period"]].tolist() == [0, 4]  # the ceiling: after each period
    assert retrains["drift"] >= 1  # 4x amounts from day 21
    summary = pd.read_csv(output / "replay_summary.csv").set_index("policy")
    assert list(summary.reset_index().columns) == EXPECTED_COLUMNS
    assert summary["metric"].unique().tolist() == ["roc_auc"]
    assert summary["direction"].unique().tolist() == ["higher is better"]
    assert summary.loc["every_period", "retrain_share"] == 1.0
    assert summary.loc["static", "retrain_share"] == 0.0
    assert summary.loc["every_period", "train_seconds"] > 0
    # The drift verdicts' label-free estimate of a binary champion, next to the realized ROC AUC.
    assert summary["estimate_mae"].between(0, 1).all()
    assert (output / "replay.png").read_bytes()[:4] == b"\x89PNG"
    assert not (output / "_homes").exists()
