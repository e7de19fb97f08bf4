"""The synthetic fraud generator: deterministic, well-typed, a real history signal, and each drift knob."""

from __future__ import annotations

import glob
from collections.abc import Callable
from datetime import date
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from mlplatform.datasets.synthetic import (
    COLUMNS,
    SLEEPER_MERCHANTS,
    TAIL_COUNTRIES,
    DriftInjection,
    generate_to_folder,
    generate_transactions,
    main,
    write_daily_parquet,
)
from mlplatform.specs.model import DatasetSpec

START = date(2024, 1, 1)
DRIFT_DAY = date(2024, 1, 31)
SPEC_PATH = Path(__file__).parents[2] / "platform" / "mlplatform" / "specs" / "transactions.yaml"


def _generate(seed: int = 3, drift: DriftInjection | None = None) -> pd.DataFrame:
    return generate_transactions(days=60, customers=400, start=START, seed=seed, drift=drift)


@pytest.fixture(scope="module")
def base() -> pd.DataFrame:
    return _generate()


def _before(df: pd.DataFrame) -> pd.DataFrame:
    return df[df["ts"] < pd.Timestamp(DRIFT_DAY)].reset_index(drop=True)


def _after(df: pd.DataFrame) -> pd.DataFrame:
    return df[df["ts"] >= pd.Timestamp(DRIFT_DAY)].reset_index(drop=True)


def test_same_seed_gives_the_same_frame_and_another_seed_does_not(base: pd.DataFrame) -> None:
    pd.testing.assert_frame_equal(base, _generate())
    other = _generate(seed=4)
    assert len(other) != len(base) or not other["amount"].equals(base["amount"])


def test_columns_types_and_value_ranges(base: pd.DataFrame) -> None:
    assert list(base.columns) == COLUMNS
    assert 15_000 < len(base) < 35_000  # ~1 payment per customer per day plus attack bursts
    kinds = {column: base[column].dtype.kind for column in base.columns}
    assert kinds == {
        "transaction_id": "i",
        "customer_id": "O",
        "ts": "M",
        "amount": "f",
        "balance": "f",
        "account_age_days": "i",
        "merchant": "O",
        "country": "O",
        "is_online": "b",
        "card_present": "b",
        "is_fraud": "i",
    }
    assert base["transaction_id"].is_unique
    assert base["ts"].is_monotonic_increasing
    assert base["ts"].min() >= pd.Timestamp(START) and base["ts"].max() < pd.Timestamp(2024, 3, 1)
    assert base["ts"].dt.hour.nunique() == 24  # spread within days, not stamped at midnight
    assert base["customer_id"].str.fullmatch(r"c\d{6}").all()
    assert (base["amount"] > 0).all()
    assert 0.003 < base["balance"].isna().mean() < 0.02
    assert (base["account_age_days"] >= 0).all()
    assert base["merchant"].nunique() > 1000
    assert 40 <= base["country"].nunique() <= 60
    assert base["country"].value_counts(normalize=True).iloc[0] > 0.3  # skewed towards a few countries
    assert set(base["is_fraud"].unique()) == {0, 1}


def test_fraud_rate_is_in_a_sane_band(base: pd.DataFrame) -> None:
    assert 0.02 <= base["is_fraud"].mean() <= 0.045


def test_amount_far_above_the_customers_trailing_mean_signals_fraud(base: pd.DataFrame) -> None:
    by_customer = base.sort_values(["customer_id", "ts"])
    trailing = by_customer.groupby("customer_id").rolling("7D", on="ts", closed="left")["amount"].mean()
    far_above = by_customer["amount"].to_numpy() > 3 * trailing.to_numpy()
    fraud = by_customer["is_fraud"].to_numpy()
    assert far_above.sum() > 200
    assert fraud[far_above].mean() > 4 * fraud[~far_above].mean()


def test_bursts_above_the_customers_usual_rate_signal_fraud(base: pd.DataFrame) -> None:
    by_customer = base.sort_values(["customer_id", "ts"])
    last_day = by_customer.groupby("customer_id").rolling("1D", on="ts", closed="left")["amount"].count()
    busy = last_day.to_numpy() >= 4
    fraud = by_customer["is_fraud"].to_numpy()
    assert fraud[busy].mean() > 2 * fraud[~busy].mean()


@pytest.mark.parametrize(
    ("drift", "statistic", "low", "high"),
    [
        pytest.param(
            DriftInjection(covariate_from=DRIFT_DAY, amount_scale=3.0),
            lambda df: df["amount"].median(),
            2.5,
            3.5,
            id="amount_scale",
        ),
        pytest.param(
            DriftInjection(covariate_from=DRIFT_DAY, country_mix_shift=0.5),
            lambda df: df["country"].isin(TAIL_COUNTRIES).mean(),
            5.0,
            np.inf,
            id="country_mix_shift",
        ),
        pytest.param(
            DriftInjection(concept_from=DRIFT_DAY),
            lambda df: df.loc[df["merchant"].isin(SLEEPER_MERCHANTS), "is_fraud"].mean(),
            1.8,
            np.inf,
            id="concept_swap_merchant_risk",
        ),
        pytest.param(
            DriftInjection(label_rate_from=DRIFT_DAY, label_rate_multiplier=3.0),
            lambda df: df["is_fraud"].mean(),
            2.0,
            3.2,  # capped at 1, so a little under 3
            id="label_rate_multiplier",
        ),
    ],
)
def test_each_drift_knob_moves_its_distribution_only_from_its_date(
    base: pd.DataFrame,
    drift: DriftInjection,
    statistic: Callable[[pd.DataFrame], float],
    low: float,
    high: float,
) -> None:
    drifted = _generate(drift=drift)
    pd.testing.assert_frame_equal(_before(drifted), _before(base))
    ratio = statistic(_after(drifted)) / statistic(_after(base))
    assert low < ratio < high


def test_concept_drift_can_remove_the_history_signal(base: pd.DataFrame) -> None:
    drifted = _generate(
        drift=DriftInjection(concept_from=DRIFT_DAY, swap_merchant_risk=False, history_weight_scale=0)
    )
    pd.testing.assert_frame_equal(_before(drifted), _before(base))
    # Attacks still happen, but their big amounts no longer raise the label rate.
    assert _after(drifted)["is_fraud"].mean() < 0.8 * _after(base)["is_fraud"].mean()


@pytest.mark.parametrize(
    "bad",
    [{"amount_scale": 0.0}, {"country_mix_shift": 1.5}, {"label_rate_multiplier": -1.0}],
)
def test_drift_rejects_impossible_knobs(bad: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        DriftInjection(**bad)


def test_parquet_writer_writes_one_file_per_day_with_every_row(base: pd.DataFrame, tmp_path: Path) -> None:
    paths = write_daily_parquet(base, tmp_path)
    assert [p.name for p in paths] == [
        f"transactions_{d}.parquet" for d in pd.date_range(START, periods=60).date
    ]
    back = pd.concat([pd.read_parquet(p) for p in paths], ignore_index=True)
    back["ts"] = back["ts"].astype("datetime64[ns]")
    pd.testing.assert_frame_equal(back, base)
    for path in paths:  # each file holds exactly its own day
        day = pd.read_parquet(path, columns=["ts"])["ts"].dt.date
        assert (day.astype(str) == path.stem.removeprefix("transactions_")).all()


def test_generate_to_folder_replaces_old_daily_files(tmp_path: Path) -> None:
    stale = tmp_path / "transactions_1999-01-01.parquet"
    stale.write_bytes(b"old")
    (tmp_path / "README.md").write_text("kept")
    paths = generate_to_folder(tmp_path, days=3, customers=20, seed=1)
    assert len(paths) == 3 and not stale.exists() and (tmp_path / "README.md").exists()


def test_command_line_writes_the_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    main(["--out", str(tmp_path), "--days", "4", "--customers", "30", "--seed", "2", "--start", "2024-05-01"])
    assert len(glob.glob(str(tmp_path / "transactions_2024-05-0*.parquet"))) == 4
    assert "daily files" in capsys.readouterr().out


def test_spec_validates_and_matches_the_bundled_files() -> None:
    spec = DatasetSpec.model_validate({**yaml.safe_load(SPEC_PATH.read_text()), "spec_path": SPEC_PATH})
    assert spec.target.column == "is_fraud" and spec.target.task == "binary"
    assert spec.entity_key == "customer_id" and spec.drop == ["transaction_id"]
    assert list(spec.columns) == COLUMNS
    files = sorted(glob.glob(spec.source_pattern))
    assert len(files) >= 30
    bundled = pd.concat([pd.read_parquet(f) for f in files], ignore_index=True)
    assert list(bundled.columns) == COLUMNS
    assert 15_000 <= len(bundled) <= 30_000
    assert bundled["transaction_id"].is_unique
