"""Deterministic synthetic hourly demand of a few stores, for regression with a sudden change of concept.

Units sold per store and hour are Poisson with a log-rate built from what the model can see:

    log rate = log(store level) + hour-of-day profile + weekend effect
               + price_elasticity * log(price / LIST_PRICE)
               + promo_lift * promo
               + temperature_slope * (temperature - 15 °C)

Prices are the list price less a discount drawn per store-day (most days none), promotions run on some
store-days, the temperature follows the seasons and the hour with day-to-day weather noise. On the date
`DemandChange.on` the response switches at once to `DemandChange.after` (say a competitor opens and
customers become much more price sensitive, promotions pull harder, warm weather stops helping): the
inputs keep their distributions, only what they mean for demand changes, so a model trained before the
change is wrong after it and the drift shows in its error, not in its features.

Randomness is consumed identically with or without a change (counts are drawn by inverting the Poisson
CDF at pre-drawn uniforms), so a changed frame equals the unchanged one before the change date; the same
arguments give the same rows.

Knobs (`generate_demand`): days, stores, start, seed; base_units_per_hour (the average store-hour at
list price); seasonal_amplitude (°C of seasonal swing: the inputs' own slow drift); `before`, the
DemandResponse until the change (price_elasticity, promo_lift, temperature_slope); `change`, a
DemandChange (its date and the response after it; None: a stationary stream). Run as a script to write
one Parquet file per day, and a spec beside them with `--spec NAME`:

    python -m mlplatform.datasets.demand --out DIR --days 224 --stores 4 --seed 11 --change-on 2024-05-20
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import yaml
from scipy.stats import poisson

from mlplatform.datasets import synthetic

FILE_PREFIX = "demand_"
COLUMNS = ["store_id", "ts", "price", "promo", "temperature", "units"]
LIST_PRICE = 4.0
REFERENCE_TEMPERATURE = 15.0
# Share of demand by hour of day (a morning and an evening peak), as log multipliers.
_HOURLY_SHARE = np.array(
    [1, 1, 1, 1, 1, 2, 4, 7, 9, 7, 6, 6, 7, 6, 5, 5, 6, 8, 10, 9, 7, 5, 3, 2], dtype=float
)
_LOG_HOURLY = np.log(_HOURLY_SHARE / _HOURLY_SHARE.mean())
_LOG_WEEKEND = 0.25
_DISCOUNT_DAY_SHARE = 0.3  # store-days with a discount, of 5% to 35%
_PROMO_DAY_SHARE = 0.15  # store-days with a promotion, independent of the discount


@dataclass(frozen=True)
class DemandResponse:
    """How demand responds to the inputs (terms of the log-rate, see the module docstring).

    price_elasticity: change of log demand per unit of log(price / list price); negative: a discount sells more.
    promo_lift: added to log demand on promotion days (0.35: about 42% more units).
    temperature_slope: added to log demand per degree above 15 °C.
    """

    price_elasticity: float = -1.5
    promo_lift: float = 0.35
    temperature_slope: float = 0.03


# A sudden, strong change of all three responses (discounts sell twice as well, promotions more than
# twice, warmth now costs sales): what the replay suite and the script inject by default.
STRONG_CHANGE = DemandResponse(price_elasticity=-3.0, promo_lift=0.8, temperature_slope=-0.02)


@dataclass(frozen=True)
class DemandChange:
    """From the start of `on` (00:00 of that day) demand responds as `after` says."""

    on: date
    after: DemandResponse = STRONG_CHANGE


def _store_days(rng: np.random.Generator, stores: int, days: int) -> dict[str, np.ndarray]:
    """Per store and day (arrays of shape (stores, days)): discount, promotion and weather noise."""
    discounted = rng.random((stores, days)) < _DISCOUNT_DAY_SHARE
    discount = np.where(discounted, rng.uniform(0.05, 0.35, (stores, days)), 0.0)
    promo = rng.random((stores, days)) < _PROMO_DAY_SHARE
    # Weather is shared by the stores (one town) and persists from day to day (AR(1), sd about 3 °C).
    shocks = rng.normal(0.0, 1.3, days)
    weather = np.zeros(days)
    for day in range(days):
        weather[day] = (0.8 * weather[day - 1] if day else 0.0) + shocks[day]
    return {"discount": discount, "promo": promo, "weather": np.broadcast_to(weather, (stores, days))}


def _temperature(start: date, days: int, weather: np.ndarray, seasonal_amplitude: float) -> np.ndarray:
    """Hourly temperature (stores, days, 24): seasons (coldest mid-January, `seasonal_amplitude` °C
    either side of 15 °C), the day's cycle (±4 °C) and the weather."""
    day_of_year = np.array([(start + timedelta(days=d)).timetuple().tm_yday for d in range(days)])
    seasonal = REFERENCE_TEMPERATURE - seasonal_amplitude * np.cos(2 * np.pi * (day_of_year - 15) / 365.25)
    daily = 4.0 * np.sin(2 * np.pi * (np.arange(24) - 9) / 24)
    return seasonal[None, :, None] + daily[None, None, :] + weather[:, :, None]


def _log_rate(
    level: np.ndarray, price: np.ndarray, promo: np.ndarray, temperature: np.ndarray, response: DemandResponse
) -> np.ndarray:
    return (
        np.log(level)
        + response.price_elasticity * np.log(price / LIST_PRICE)
        + response.promo_lift * promo
        + response.temperature_slope * (temperature - REFERENCE_TEMPERATURE)
    )


def generate_demand(
    days: int,
    stores: int,
    start: date,
    seed: int,
    base_units_per_hour: float = 12.0,
    change: DemandChange | None = None,
    before: DemandResponse | None = None,
    seasonal_amplitude: float = 4.0,
) -> pd.DataFrame:
    """Hourly demand of `stores` stores over `days` days from `start`, sorted by time then store.

    base_units_per_hour: mean units of an average store in an average hour at list price (store levels
    vary around it by about ±40%). `before`: the response until the change (default DemandResponse()).
    seasonal_amplitude: °C between the seasonal mean and its extremes; the default, a mild climate,
    keeps the inputs' own drift small, so the sudden change is the event to react to.
    """
    if days < 1 or stores < 1 or base_units_per_hour <= 0:
        raise ValueError("days and stores must be >= 1 and base_units_per_hour > 0")
    before = before or DemandResponse()
    rng = np.random.default_rng(seed)
    level = base_units_per_hour * rng.lognormal(0.0, 0.35, stores)
    store_days = _store_days(rng, stores, days)
    temperature = _temperature(start, days, store_days["weather"], seasonal_amplitude)
    uniforms = rng.random((stores, days, 24))  # one per row, drawn whatever the response

    shape = (stores, days, 24)
    day_dates = [start + timedelta(days=d) for d in range(days)]
    weekend = np.array([d.weekday() >= 5 for d in day_dates])
    seasonality = _LOG_HOURLY[None, None, :] + _LOG_WEEKEND * weekend[None, :, None]
    price = np.broadcast_to(np.round(LIST_PRICE * (1 - store_days["discount"]), 2)[:, :, None], shape)
    promo = np.broadcast_to(store_days["promo"][:, :, None], shape)
    level_grid = np.broadcast_to(level[:, None, None], shape)
    log_rate = seasonality + _log_rate(level_grid, price, promo, temperature, before)
    if change is not None:
        changed = np.array([d >= change.on for d in day_dates])[None, :, None]
        after = seasonality + _log_rate(level_grid, price, promo, temperature, change.after)
        log_rate = np.where(changed, after, log_rate)
    units = poisson.ppf(uniforms, np.exp(log_rate)).astype(np.int64)
    return _to_frame(start, stores, price, promo, temperature, units)


def _to_frame(
    start: date, stores: int, price: np.ndarray, promo: np.ndarray, temperature: np.ndarray, units: np.ndarray
) -> pd.DataFrame:
    """(stores, days, 24) arrays -> rows ordered by time, then store."""
    days = units.shape[1]
    hours = np.datetime64(start, "h") + np.arange(days * 24).astype("timedelta64[h]")
    width = max(2, len(str(stores)))
    names = np.array([f"s{i + 1:0{width}d}" for i in range(stores)], dtype=object)

    def by_time(values: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(values).reshape(stores, days * 24).T.reshape(-1)

    return pd.DataFrame(
        {
            "store_id": np.tile(names, days * 24),
            "ts": np.repeat(hours, stores).astype("datetime64[ns]"),
            "price": by_time(price),
            "promo": by_time(promo).astype(np.int64),
            "temperature": np.round(by_time(temperature), 1),
            "units": by_time(units),
        },
        columns=COLUMNS,
    )


def write_daily_parquet(df: pd.DataFrame, landing_dir: str | Path) -> list[Path]:
    """One `demand_YYYY-MM-DD.parquet` per calendar day of `ts`; returns the paths in day order."""
    return synthetic.write_daily_parquet(df, landing_dir, prefix=FILE_PREFIX)


def generate_to_folder(
    landing_dir: str | Path,
    days: int,
    stores: int,
    seed: int,
    start: date = date(2024, 1, 1),
    change: DemandChange | None = None,
    base_units_per_hour: float = 12.0,
    seasonal_amplitude: float = 4.0,
) -> list[Path]:
    """Generate (`generate_demand`) and write daily files, first removing the folder's old
    `demand_*.parquet` files so none are left over."""
    landing = Path(landing_dir)
    if landing.exists():
        for old in landing.glob(f"{FILE_PREFIX}*.parquet"):
            old.unlink()
    frame = generate_demand(
        days, stores, start, seed, base_units_per_hour, change, seasonal_amplitude=seasonal_amplitude
    )
    return write_daily_parquet(frame, landing)


def demand_spec(name: str, source_glob: str) -> dict[str, Any]:
    """A dataset spec (as YAML would load it) for files written by `generate_to_folder`."""
    return {
        "name": name,
        "description": "Synthetic hourly units sold per store (mlplatform.datasets.demand). Regression.",
        "tags": {"domain": "retail", "source": "synthetic"},
        "source": {"path": source_glob, "format": "parquet"},
        "time_column": "ts",
        "partition_grain": "week",  # 168 hours x stores a partition: enough rows for drift statistics
        "entity_key": "store_id",
        "columns": {
            "store_id": {"type": "string", "nullable": False, "description": "store, e.g. s01"},
            "ts": {"type": "timestamp", "nullable": False, "description": "start of the hour"},
            "price": {"type": "float", "nullable": False, "min": 0, "description": "shelf price"},
            "promo": {"type": "int", "nullable": False, "allowed": [0, 1], "description": "promotion day"},
            "temperature": {"type": "float", "nullable": False, "description": "degrees Celsius in the hour"},
            "units": {"type": "int", "nullable": False, "min": 0, "description": "units sold (target)"},
        },
        "target": {"column": "units", "task": "regression"},
        "features": {
            "calendar": ["hour", "day_of_week", "is_weekend"],
            "lags": [{"column": "units", "lag": "1d"}, {"column": "units", "lag": "7d"}],
        },
    }


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description="Write synthetic hourly store demand, one Parquet file per day."
    )
    parser.add_argument("--out", required=True, type=Path, help="landing folder")
    parser.add_argument("--days", type=int, default=224)
    parser.add_argument("--stores", type=int, default=4)
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--start", type=date.fromisoformat, default=date(2024, 1, 1), help="YYYY-MM-DD")
    parser.add_argument("--base-units", type=float, default=12.0, help="mean units per store-hour")
    parser.add_argument("--seasonal-amplitude", type=float, default=4.0, help="°C of seasonal swing")
    parser.add_argument(
        "--change-on", type=date.fromisoformat, help="date of the sudden change (none: stationary)"
    )
    parser.add_argument("--elasticity-after", type=float, default=STRONG_CHANGE.price_elasticity)
    parser.add_argument("--promo-lift-after", type=float, default=STRONG_CHANGE.promo_lift)
    parser.add_argument("--temperature-slope-after", type=float, default=STRONG_CHANGE.temperature_slope)
    parser.add_argument(
        "--spec", metavar="NAME", help="also write NAME.yaml, a spec for the files, beside them"
    )
    args = parser.parse_args(argv)
    after = DemandResponse(args.elasticity_after, args.promo_lift_after, args.temperature_slope_after)
    change = DemandChange(args.change_on, after) if args.change_on else None
    paths = generate_to_folder(
        args.out,
        args.days,
        args.stores,
        args.seed,
        args.start,
        change,
        args.base_units,
        args.seasonal_amplitude,
    )
    rows = sum(pq.ParquetFile(path).metadata.num_rows for path in paths)
    print(f"wrote {rows} store-hours in {len(paths)} daily files to {args.out}")
    if args.spec:
        spec_path = args.out / f"{args.spec}.yaml"
        spec = demand_spec(args.spec, str(args.out.resolve() / f"{FILE_PREFIX}*.parquet"))
        spec_path.write_text(yaml.safe_dump(spec, sort_keys=False, allow_unicode=True))
        print(f"wrote {spec_path}")


if __name__ == "__main__":
    main()
