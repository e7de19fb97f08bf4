"""Deterministic synthetic payment transactions for binary fraud classification.

The label is drawn from a known logistic function of observable facts, so a model can learn it:

* history: how far the amount sits above the customer's own trailing 7-day mean, and how many
  transactions the customer already made today against their trailing daily rate;
* merchant risk groups and a handful of high-risk countries;
* young accounts (< 30 days) and online payments without the card present.

Compromised customer-days ("attacks") produce bursts of large, online, risky-merchant payments, so the
history ratios carry real signal. Randomness is consumed identically with or without drift, so a drifted
frame equals the undrifted one before the drift date. Run as a script to write one Parquet file per day:

    python -m mlplatform.datasets.synthetic --out DIR --days 60 --customers 400 --seed 7
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

FILE_PREFIX = "transactions_"

# fmt: off
COLUMNS = [
    "transaction_id", "customer_id", "ts", "amount", "balance", "account_age_days",
    "merchant", "country", "is_online", "card_present", "is_fraud",
]
COUNTRIES = (
    "US", "GB", "DE", "FR", "ES", "IT", "NL", "CA", "AU", "SE", "PL", "BE", "CH", "AT", "IE",
    "DK", "NO", "FI", "PT", "CZ", "JP", "KR", "SG", "HK", "NZ", "MX", "BR", "AR", "CL", "CO",
    "PE", "IN", "CN", "TW", "TH", "MY", "ID", "PH", "VN", "TR", "GR", "HU", "RO", "BG", "HR",
    "SK", "SI", "LT", "LV", "EE", "IL", "AE", "SA", "ZA", "EG", "NG", "KE", "MA", "IS", "LU",
)
# Share of a day's transactions per hour: quiet nights, busy lunch and evening.
_DIURNAL = np.array([
    0.4, 0.25, 0.2, 0.2, 0.25, 0.5, 1.0, 2.0, 3.0, 3.5, 3.8, 4.5,
    5.5, 5.0, 4.2, 4.0, 4.3, 5.0, 5.5, 5.2, 4.3, 3.2, 2.0, 1.0,
])
# fmt: on
_DIURNAL = _DIURNAL / _DIURNAL.sum()

N_MERCHANTS = 2000
# Merchant risk groups: 0 ordinary, 1 high-risk (attack targets), 2 sleeper (risky only under concept
# drift), 3 mildly risky. Logit weights per group, before and after a concept-drift swap of groups 1 and 2.
_MERCHANT_GROUP_SHARES = (0.86, 0.05, 0.05, 0.04)
_MERCHANT_WEIGHTS = np.array([0.0, 1.6, 0.0, 0.6])
_MERCHANT_WEIGHTS_SWAPPED = np.array([0.0, 0.0, 1.6, 0.6])

# Label model (logit scale). The intercept is tuned for a ~3% fraud rate at the default settings.
_INTERCEPT = -5.1
_W_AMOUNT_RATIO = 1.6  # per unit of log(amount / trailing mean), clipped to [0, 3]
_W_VELOCITY = 1.3  # per unit of log((today so far + 1) / (trailing daily rate + 1)), clipped to [0, 3]
_W_RISKY_COUNTRY = 1.2
_W_YOUNG_ACCOUNT = 1.0
_W_ONLINE_NO_CARD = 1.1
_YOUNG_ACCOUNT_DAYS = 30
_HISTORY_DAYS = 7

# Attacks: a compromised customer-day adds a burst of large, online, risky payments.
_ATTACK_PROBABILITY = 0.004
_ATTACK_MEAN_EXTRA_TX = 4.0
_BALANCE_NULL_SHARE = 0.01


@dataclass(frozen=True)
class DriftInjection:
    """Drift to inject from chosen dates; each kind applies to transactions on or after its date.

    Covariate shift (inputs change, the label function does not), from `covariate_from`:
        amount_scale: multiplies every amount (1.0 = no change). The history ratios see the jump for
            about a week, until the trailing means catch up, exactly as a real price shift would.
        country_mix_shift: share (0..1) of transactions whose country is redrawn uniformly from the
            30 least used countries (`TAIL_COUNTRIES`), so the country mix moves towards the tail.

    Concept drift (same inputs, new label function), from `concept_from`:
        swap_merchant_risk: the high-risk merchant group turns ordinary and the "sleeper" group
            (`SLEEPER_MERCHANTS`) becomes high-risk, while attacks keep targeting the old group.
        history_weight_scale: multiplies the weights of the two history signals (0 removes them,
            2 doubles them).

    Label-rate shift (prior shift), from `label_rate_from`:
        label_rate_multiplier: multiplies every row's fraud probability (capped at 1), hence the base rate.
    """

    covariate_from: date | None = None
    amount_scale: float = 1.0
    country_mix_shift: float = 0.0
    concept_from: date | None = None
    swap_merchant_risk: bool = True
    history_weight_scale: float = 1.0
    label_rate_from: date | None = None
    label_rate_multiplier: float = 1.0

    def __post_init__(self) -> None:
        if self.amount_scale <= 0 or self.label_rate_multiplier < 0 or self.history_weight_scale < 0:
            raise ValueError("amount_scale must be > 0; label_rate_multiplier, history_weight_scale >= 0")
        if not 0.0 <= self.country_mix_shift <= 1.0:
            raise ValueError("country_mix_shift must be within [0, 1]")


def _since(start: date | None, day: date) -> bool:
    return start is not None and day >= start


def _zipf_cdf(n: int, exponent: float, offset: float) -> np.ndarray:
    weights = 1.0 / (np.arange(n) + offset) ** exponent
    cdf = np.cumsum(weights / weights.sum())
    cdf[-1] = 1.0
    return cdf


# The "world" (merchants, countries, their risk) has its own fixed seed, so the fraud concept is the
# same whatever data seed is used.
_world_rng = np.random.default_rng(20240101)
_MERCHANT_NAMES = np.array([f"merchant_{i:04d}" for i in range(N_MERCHANTS)], dtype=object)
_MERCHANT_CDF = _zipf_cdf(N_MERCHANTS, exponent=1.05, offset=5.0)
_MERCHANT_GROUP = _world_rng.choice(len(_MERCHANT_GROUP_SHARES), size=N_MERCHANTS, p=_MERCHANT_GROUP_SHARES)
_HIGH_RISK_MERCHANT_IDS = np.flatnonzero(_MERCHANT_GROUP == 1)
_COUNTRY_NAMES = np.array(COUNTRIES, dtype=object)
_COUNTRY_CDF = _zipf_cdf(len(COUNTRIES), exponent=1.4, offset=1.0)
_RISKY_COUNTRY_IDS = np.sort(_world_rng.choice(np.arange(15, len(COUNTRIES)), size=6, replace=False))
_TAIL_COUNTRY_IDS = np.arange(30, len(COUNTRIES))

HIGH_RISK_MERCHANTS: frozenset[str] = frozenset(_MERCHANT_NAMES[_MERCHANT_GROUP == 1])
SLEEPER_MERCHANTS: frozenset[str] = frozenset(_MERCHANT_NAMES[_MERCHANT_GROUP == 2])
RISKY_COUNTRIES: frozenset[str] = frozenset(_COUNTRY_NAMES[_RISKY_COUNTRY_IDS])
TAIL_COUNTRIES: frozenset[str] = frozenset(_COUNTRY_NAMES[_TAIL_COUNTRY_IDS])


@dataclass(frozen=True)
class _Customers:
    log_amount_mean: np.ndarray
    log_amount_sd: np.ndarray
    daily_rate: np.ndarray
    age_at_start: np.ndarray  # negative: the account opens during the simulated period
    home_country: np.ndarray
    online_share: np.ndarray
    balance_scale: np.ndarray


def _draw_customers(rng: np.random.Generator, customers: int, days: int, tx_rate: float) -> _Customers:
    # ~10% of accounts open during the period, so young accounts keep appearing.
    opens_late = rng.random(customers) < 0.10
    established_age = np.floor(rng.exponential(700.0, customers)).astype(np.int64) + 1
    age = np.where(opens_late, -rng.integers(0, days, customers), established_age)
    return _Customers(
        log_amount_mean=rng.normal(np.log(35.0), 0.8, customers),
        log_amount_sd=rng.uniform(0.35, 0.8, customers),
        daily_rate=rng.gamma(2.0, tx_rate / 2.0, customers),
        age_at_start=age,
        home_country=np.searchsorted(_COUNTRY_CDF, rng.random(customers)),
        online_share=rng.beta(2.0, 3.0, customers),
        balance_scale=rng.lognormal(np.log(2500.0), 1.0, customers),
    )


def _within_day_rank(customer: np.ndarray, seconds: np.ndarray) -> np.ndarray:
    """How many of the same customer's transactions came earlier the same day."""
    order = np.lexsort((seconds, customer))
    sorted_customer = customer[order]
    is_start = np.r_[True, sorted_customer[1:] != sorted_customer[:-1]]
    starts = np.flatnonzero(is_start)
    rank_sorted = np.arange(len(order)) - starts[np.cumsum(is_start) - 1]
    rank = np.empty_like(rank_sorted)
    rank[order] = rank_sorted
    return rank


def _simulate_day(
    day_index: int,
    day: date,
    seed: int,
    people: _Customers,
    history_sum: np.ndarray,
    history_count: np.ndarray,
    drift: DriftInjection,
) -> dict[str, np.ndarray]:
    rng = np.random.default_rng([seed, day_index])  # one stream per day: days are independent
    n_customers = len(people.daily_rate)
    age = people.age_at_start + day_index
    active = age >= 0
    weekend_boost = 1.15 if day.weekday() >= 5 else 1.0

    normal_counts = rng.poisson(people.daily_rate * weekend_boost) * active
    attacked = (rng.random(n_customers) < _ATTACK_PROBABILITY) & active
    attack_counts = (1 + rng.poisson(_ATTACK_MEAN_EXTRA_TX, n_customers)) * attacked
    customer = np.tile(np.arange(n_customers), 2).repeat(np.concatenate([normal_counts, attack_counts]))
    is_attack = np.repeat([False, True], [normal_counts.sum(), attack_counts.sum()])
    n = len(customer)

    # Draw everything for every row, then select: the random stream must not depend on drift.
    log_amount = people.log_amount_mean[customer] + people.log_amount_sd[customer] * rng.standard_normal(n)
    attack_uplift = rng.uniform(np.log(3.0), np.log(12.0), n)
    amount = np.exp(log_amount + np.where(is_attack, attack_uplift, 0.0))

    hour = np.where(is_attack, rng.integers(0, 24, n), rng.choice(24, size=n, p=_DIURNAL))
    seconds = hour * 3600 + rng.integers(0, 3600, n)

    merchant = np.searchsorted(_MERCHANT_CDF, rng.random(n))
    attack_merchant = _HIGH_RISK_MERCHANT_IDS[rng.integers(0, len(_HIGH_RISK_MERCHANT_IDS), n)]
    merchant = np.where(is_attack & (rng.random(n) < 0.6), attack_merchant, merchant)

    abroad_country = np.searchsorted(_COUNTRY_CDF, rng.random(n))
    country = np.where(rng.random(n) < 0.9, people.home_country[customer], abroad_country)
    risky_country = _RISKY_COUNTRY_IDS[rng.integers(0, len(_RISKY_COUNTRY_IDS), n)]
    country = np.where(is_attack & (rng.random(n) < 0.4), risky_country, country)
    tail_country = _TAIL_COUNTRY_IDS[rng.integers(0, len(_TAIL_COUNTRY_IDS), n)]
    moves_to_tail = rng.random(n)

    is_online = rng.random(n) < np.where(is_attack, 0.85, people.online_share[customer])
    card_present_share = np.where(is_attack, 0.08, np.where(is_online, 0.25, 0.96))
    card_present = rng.random(n) < card_present_share

    balance = people.balance_scale[customer] * rng.lognormal(0.0, 0.25, n)
    balance = np.where(rng.random(n) < _BALANCE_NULL_SHARE, np.nan, np.round(balance, 2))
    label_draw = rng.random(n)

    if _since(drift.covariate_from, day):
        amount = amount * drift.amount_scale
        country = np.where(moves_to_tail < drift.country_mix_shift, tail_country, country)
    amount = np.maximum(np.round(amount, 2), 0.01)

    # Label: logistic in observable facts, with history from the customer's previous 7 days.
    trailing_mean = np.divide(
        history_sum[customer], history_count[customer], out=np.zeros(n), where=history_count[customer] > 0
    )
    amount_ratio = np.divide(amount, trailing_mean, out=np.ones(n), where=trailing_mean > 0)
    amount_term = np.clip(np.log(amount_ratio), 0.0, 3.0)
    trailing_daily_rate = history_count[customer] / _HISTORY_DAYS
    earlier_today = _within_day_rank(customer, seconds)
    velocity_term = np.clip(np.log((earlier_today + 1) / (trailing_daily_rate + 1)), 0.0, 3.0)

    concept = _since(drift.concept_from, day)
    swapped = concept and drift.swap_merchant_risk
    merchant_weights = _MERCHANT_WEIGHTS_SWAPPED if swapped else _MERCHANT_WEIGHTS
    history_scale = drift.history_weight_scale if concept else 1.0
    logit = (
        _INTERCEPT
        + history_scale * (_W_AMOUNT_RATIO * amount_term + _W_VELOCITY * velocity_term)
        + merchant_weights[_MERCHANT_GROUP[merchant]]
        + _W_RISKY_COUNTRY * np.isin(country, _RISKY_COUNTRY_IDS)
        + _W_YOUNG_ACCOUNT * (age[customer] < _YOUNG_ACCOUNT_DAYS)
        + _W_ONLINE_NO_CARD * (is_online & ~card_present)
    )
    fraud_probability = 1.0 / (1.0 + np.exp(-logit))
    if _since(drift.label_rate_from, day):
        fraud_probability = np.minimum(fraud_probability * drift.label_rate_multiplier, 1.0)

    in_time_order = np.argsort(seconds, kind="stable")
    return {
        "customer": customer[in_time_order].astype(np.int32),
        "seconds": day_index * 86_400 + seconds[in_time_order],  # since the start of the period
        "amount": amount[in_time_order],
        "balance": balance[in_time_order],
        "account_age_days": age[customer][in_time_order].astype(np.int32),
        "merchant": merchant[in_time_order].astype(np.int16),
        "country": country[in_time_order].astype(np.int16),
        "is_online": is_online[in_time_order],
        "card_present": card_present[in_time_order],
        "is_fraud": (label_draw < fraud_probability)[in_time_order],
    }


def generate_transactions(
    days: int,
    customers: int,
    start: date,
    seed: int,
    tx_per_customer_per_day: float = 1.0,
    drift: DriftInjection | None = None,
) -> pd.DataFrame:
    """Synthetic transactions over `days` days from `start`, sorted by time; the same seed gives the same frame."""
    if days < 1 or customers < 1 or tx_per_customer_per_day <= 0:
        raise ValueError("days and customers must be >= 1 and tx_per_customer_per_day > 0")
    drift = drift or DriftInjection()
    people = _draw_customers(np.random.default_rng([seed, 2**31]), customers, days, tx_per_customer_per_day)
    # Ring buffers of per-customer daily amount sums and counts: the trailing history the label sees.
    daily_sums = np.zeros((_HISTORY_DAYS, customers))
    daily_counts = np.zeros((_HISTORY_DAYS, customers))
    parts: list[dict[str, np.ndarray]] = []
    for day_index in range(days):
        day = start + timedelta(days=day_index)
        part = _simulate_day(
            day_index, day, seed, people, daily_sums.sum(axis=0), daily_counts.sum(axis=0), drift
        )
        slot = day_index % _HISTORY_DAYS
        daily_sums[slot] = np.bincount(part["customer"], weights=part["amount"], minlength=customers)
        daily_counts[slot] = np.bincount(part["customer"], minlength=customers)
        parts.append(part)
    return _to_frame(parts, start, customers)


def _to_frame(parts: list[dict[str, np.ndarray]], start: date, customers: int) -> pd.DataFrame:
    def take(name: str) -> np.ndarray:
        # Pop while concatenating so each column's daily pieces are freed as soon as it is built.
        return np.concatenate([part.pop(name) for part in parts])

    width = max(6, len(str(customers - 1)))
    customer_names = np.array([f"c{i:0{width}d}" for i in range(customers)], dtype=object)
    ts = np.datetime64(start, "ns") + take("seconds").astype("timedelta64[s]")
    columns = {
        "transaction_id": np.arange(1, len(ts) + 1, dtype=np.int64),
        "customer_id": customer_names[take("customer")],
        "ts": ts,
        "amount": take("amount"),
        "balance": take("balance"),
        "account_age_days": take("account_age_days").astype(np.int64),
        "merchant": _MERCHANT_NAMES[take("merchant")],
        "country": _COUNTRY_NAMES[take("country")],
        "is_online": take("is_online"),
        "card_present": take("card_present"),
        "is_fraud": take("is_fraud").astype(np.int64),
    }
    return pd.DataFrame(columns, columns=COLUMNS, copy=False)


def write_daily_parquet(df: pd.DataFrame, landing_dir: str | Path, prefix: str = FILE_PREFIX) -> list[Path]:
    """Write one `<prefix>YYYY-MM-DD.parquet` per calendar day of `ts`; returns the paths in day order."""
    landing = Path(landing_dir)
    landing.mkdir(parents=True, exist_ok=True)
    days = df["ts"].to_numpy().astype("datetime64[D]")
    order = np.argsort(days, kind="stable")
    unique_days, first_rows = np.unique(days[order], return_index=True)
    bounds = [*first_rows.tolist(), len(order)]
    paths: list[Path] = []
    for i, day in enumerate(unique_days):
        rows = df.iloc[order[bounds[i] : bounds[i + 1]]]
        path = landing / f"{prefix}{day}.parquet"
        # No pandas metadata and zstd keep small files small; microsecond timestamps are a plain
        # TIMESTAMP in DuckDB.
        table = pa.Table.from_pandas(rows, preserve_index=False).replace_schema_metadata(None)
        pq.write_table(table, path, compression="zstd", coerce_timestamps="us")
        paths.append(path)
    return paths


def generate_to_folder(
    landing_dir: str | Path,
    days: int,
    customers: int,
    seed: int,
    start: date = date(2024, 1, 1),
    tx_per_customer_per_day: float = 1.0,
    drift: DriftInjection | None = None,
    clean: bool = True,
) -> list[Path]:
    """Generate and write daily files; `clean` first removes old daily files so none are left over."""
    landing = Path(landing_dir)
    if clean and landing.exists():
        for old in landing.glob(f"{FILE_PREFIX}*.parquet"):
            old.unlink()
    frame = generate_transactions(days, customers, start, seed, tx_per_customer_per_day, drift)
    return write_daily_parquet(frame, landing)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description="Write synthetic fraud transactions, one Parquet file per day."
    )
    parser.add_argument("--out", required=True, type=Path, help="landing folder")
    parser.add_argument("--days", type=int, default=60)
    parser.add_argument("--customers", type=int, default=300)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--start", type=date.fromisoformat, default=date(2024, 1, 1), help="YYYY-MM-DD")
    parser.add_argument("--tx-per-customer-per-day", dest="rate", type=float, default=1.0)
    parser.add_argument("--drift-from", type=date.fromisoformat, help="date every requested drift starts")
    parser.add_argument("--amount-scale", type=float, default=1.0, help="covariate drift")
    parser.add_argument("--country-mix-shift", type=float, default=0.0, help="covariate drift")
    parser.add_argument("--concept-drift", action="store_true", help="swap the risky merchant groups")
    parser.add_argument("--label-rate-multiplier", type=float, default=1.0, help="label-rate drift")
    parser.add_argument("--no-clean", dest="clean", action="store_false", help="keep old daily files")
    args = parser.parse_args(argv)
    # Knobs left at their neutral values change nothing, so every drift kind can share the one date.
    drift = DriftInjection(
        covariate_from=args.drift_from,
        amount_scale=args.amount_scale,
        country_mix_shift=args.country_mix_shift,
        concept_from=args.drift_from if args.concept_drift else None,
        label_rate_from=args.drift_from,
        label_rate_multiplier=args.label_rate_multiplier,
    )
    paths = generate_to_folder(
        args.out, args.days, args.customers, args.seed, args.start, args.rate, drift, clean=args.clean
    )
    rows = sum(pq.ParquetFile(path).metadata.num_rows for path in paths)
    print(f"wrote {rows} transactions in {len(paths)} daily files to {args.out}")


if __name__ == "__main__":
    main()
