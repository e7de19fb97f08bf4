"""The demand generator: deterministic, well-typed, a learnable response, and a sudden change on its date."""

from __future__ import annotations

from datetime import date
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from mlplatform.datasets.demand import (
    COLUMNS,
    FILE_PREFIX,
    LIST_PRICE,
    DemandChange,
    DemandResponse,
    demand_spec,
    generate_demand,
    generate_to_folder,
    main,
)
from mlplatform.specs.loader import check_source, parse_spec

START = date(2024, 1, 1)
CHANGE_ON = date(2024, 3, 1)
DAYS, STORES = 120, 3
CHANGE = DemandChange(
    CHANGE_ON, DemandResponse(price_elasticity=-3.5, promo_lift=0.9, temperature_slope=0.03)
)


def _generate(seed: int = 5, change: DemandChange | None = None) -> pd.DataFrame:
    return generate_demand(DAYS, STORES, START, seed, change=change)


@pytest.fixture(scope="module")
def steady() -> pd.DataFrame:
    return _generate()


@pytest.fixture(scope="module")
def changed() -> pd.DataFrame:
    return _generate(change=CHANGE)


def _discount_lift(frame: pd.DataFrame) -> float:
    """Mean units on discounted store-hours over those at list price, promotions left out."""
    plain = frame[frame["promo"] == 0]
    return float(
        plain.loc[plain["price"] < LIST_PRICE, "units"].mean()
        / plain.loc[plain["price"] == LIST_PRICE, "units"].mean()
    )


def _promo_lift(frame: pd.DataFrame) -> float:
    at_list = frame[frame["price"] == LIST_PRICE]
    return float(
        at_list.loc[at_list["promo"] == 1, "units"].mean()
        / at_list.loc[at_list["promo"] == 0, "units"].mean()
    )


def _halves(frame: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    cut = frame["ts"] >= pd.Timestamp(CHANGE_ON)
    return frame[~cut], frame[cut]


def test_same_seed_gives_the_same_frame_and_another_seed_does_not(steady: pd.DataFrame) -> None:
    pd.testing.assert_frame_equal(steady, _generate())
    assert not _generate(seed=6)["units"].equals(steady["units"])


def test_one_row_per_store_and_hour_in_time_order_with_sane_values(steady: pd.DataFrame) -> None:
    assert list(steady.columns) == COLUMNS
    assert len(steady) == DAYS * 24 * STORES
    assert not steady.duplicated(["ts", "store_id"]).any()
    assert steady["ts"].is_monotonic_increasing
    assert sorted(steady["store_id"].unique()) == ["s01", "s02", "s03"]
    assert {steady[c].dtype.kind for c in ("units", "promo")} == {"i"}
    assert steady["price"].between(LIST_PRICE * 0.64, LIST_PRICE).all()
    assert (steady["units"] >= 0).all() and 5 < steady["units"].mean() < 40
    assert set(steady["promo"].unique()) == {0, 1}
    # Demand peaks in the day and is lowest at night; temperature has a daily cycle.
    by_hour = steady.groupby(steady["ts"].dt.hour)
    assert by_hour["units"].mean()[18] > 3 * by_hour["units"].mean()[3]
    assert by_hour["temperature"].mean()[15] > by_hour["temperature"].mean()[3] + 4


def test_prices_and_promotions_move_demand_as_the_response_says(steady: pd.DataFrame) -> None:
    # Elasticity -1.5 on discounts of 5-35%: about 1.3x; a promo lift of 0.35: about 1.4x.
    assert 1.15 < _discount_lift(steady) < 1.5
    assert 1.25 < _promo_lift(steady) < 1.6


def test_a_stationary_stream_responds_the_same_in_both_halves(steady: pd.DataFrame) -> None:
    first, second = _halves(steady)
    assert _discount_lift(second) == pytest.approx(_discount_lift(first), rel=0.1)
    assert _promo_lift(second) == pytest.approx(_promo_lift(first), rel=0.1)


def test_the_change_leaves_every_row_before_its_date_alone(
    steady: pd.DataFrame, changed: pd.DataFrame
) -> None:
    before_steady, after_steady = _halves(steady)
    before_changed, after_changed = _halves(changed)
    pd.testing.assert_frame_equal(before_changed, before_steady)
    # The inputs stay as they were after the date too: only the units they bring change.
    inputs = ["store_id", "ts", "price", "promo", "temperature"]
    pd.testing.assert_frame_equal(after_changed[inputs], after_steady[inputs])
    assert not after_changed["units"].equals(after_steady["units"])


def test_the_change_switches_the_response_at_once(changed: pd.DataFrame) -> None:
    before, after = _halves(changed)
    assert _discount_lift(after) > _discount_lift(before) * 1.3  # elasticity -1.5 -> -3.5
    assert _promo_lift(after) > _promo_lift(before) * 1.4  # lift 0.35 -> 0.9
    first_week_after = after[after["ts"] < pd.Timestamp("2024-03-08")]
    assert _discount_lift(first_week_after) > _discount_lift(before) * 1.3  # no ramp: from the first day


def test_impossible_sizes_are_refused() -> None:
    with pytest.raises(ValueError, match="days and stores"):
        generate_demand(0, 2, START, 1)
    with pytest.raises(ValueError, match="base_units_per_hour"):
        generate_demand(3, 2, START, 1, base_units_per_hour=0)


def test_daily_files_replace_old_ones_and_hold_every_row(tmp_path: Path) -> None:
    (tmp_path / f"{FILE_PREFIX}2023-01-01.parquet").write_bytes(b"stale")
    paths = generate_to_folder(tmp_path, days=5, stores=2, seed=3, start=START)
    assert [p.name for p in paths] == [f"{FILE_PREFIX}2024-01-0{d}.parquet" for d in range(1, 6)]
    assert sorted(tmp_path.glob(f"{FILE_PREFIX}*.parquet")) == paths
    frame = pd.concat([pd.read_parquet(p) for p in paths], ignore_index=True)
    pd.testing.assert_frame_equal(frame, generate_demand(5, 2, START, 3), check_dtype=False)


def test_command_line_writes_files_and_a_spec_that_reads_them(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    main(
        [
            "--out",
            str(tmp_path),
            "--days",
            "9",
            "--stores",
            "2",
            "--change-on",
            "2024-01-05",
            "--spec",
            "shop",
        ]
    )
    out = capsys.readouterr().out
    assert f"wrote {9 * 24 * 2} store-hours in 9 daily files" in out
    spec = parse_spec(tmp_path / "shop.yaml")
    assert spec.name == "shop" and spec.target.task == "regression" and spec.entity_key == "store_id"
    probe = check_source(spec)
    assert probe.time_max == pd.Timestamp("2024-01-09 23:00").to_pydatetime()
    assert yaml.safe_load((tmp_path / "shop.yaml").read_text()) == demand_spec(
        "shop", str(tmp_path.resolve() / f"{FILE_PREFIX}*.parquet")
    )


def test_units_follow_the_poisson_rate_so_noise_is_not_the_whole_signal(steady: pd.DataFrame) -> None:
    # Within one store, hour and price-promo cell the spread is about Poisson (variance ~ mean), and the
    # hourly profile moves demand by twice the Poisson noise at the mean: the profile is learnable.
    cells = steady.assign(hour=steady["ts"].dt.hour).groupby(["store_id", "hour", "price", "promo"])["units"]
    stats = cells.agg(["mean", "var", "size"])
    stats = stats[stats["size"] >= 20]
    assert np.median(stats["var"] / stats["mean"]) < 2.5
    assert steady.groupby(steady["ts"].dt.hour)["units"].mean().std() > 2 * np.sqrt(steady["units"].mean())
