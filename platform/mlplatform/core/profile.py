"""Reference profiles: a compact summary of a DataFrame that drift checks compare new data against.

A profile is built once from the reference (training) data and stored as a long table
(feature, kind, key, value), so a drift check reads a few hundred numbers per feature instead of
rescanning the raw reference rows.

* Numeric feature: bin edges at the deciles (data values, deduplicated, outer edges -inf/+inf; bins
  are left-closed ``[edge_i, edge_i+1)``) with the share of non-null values per bin (for PSI); row count,
  non-null count, null share, mean and sample std; and the quantiles at 0%, 1%, ..., 100%, which stand
  in for the reference sample in the KS test and the Wasserstein distance.
* Categorical feature: share of each of the ``max_categories`` most frequent values among the
  non-null values, the rest pooled into ``"__other__"``; row count, non-null count, null share.

Non-finite numbers (±inf) count as nulls. Category labels are strings; whole-number floats are written
like ints ("3", not "3.0") so a column that gained nulls (int -> float in pandas) keeps its labels.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import pandas as pd

from mlplatform.core.threads import map_in_threads

OTHER_KEY = "__other__"
NULL_KEY = "__null__"
MAX_CATEGORIES = 50
N_QUANTILES = 101
# Numeric columns with at most this many distinct values (counts, small integers) also keep each
# value's exact share: their CDF is a step function the 101 quantiles only approximate to ~1%, too
# coarse for a KS test on tens of thousands of rows.
MAX_EXACT_VALUES = 64
FRAME_COLUMNS = ["feature", "kind", "key", "value"]

_SCALAR_KEYS = ("n_rows", "count", "null_share")
_NUMERIC_SCALARS = (*_SCALAR_KEYS, "mean", "std")
_SERIES_KEYS = {
    "edge": "bin_edges",
    "prop": "bin_proportions",
    "quantile": "quantiles",
    "value": "values",
    "vshare": "value_shares",
}
_FREQ_PREFIX = "freq:"


@dataclass(frozen=True)
class NumericProfile:
    n_rows: int
    count: int  # non-null values
    null_share: float
    mean: float
    std: float
    bin_edges: tuple[float, ...]
    bin_proportions: tuple[float, ...]  # share of the non-null values per bin
    quantiles: tuple[float, ...]  # at probabilities np.linspace(0, 1, len(quantiles))
    # Only for columns with <= MAX_EXACT_VALUES distinct values: those values, ascending, and the
    # share of the non-null values each one has. Empty otherwise (and in profiles stored before).
    values: tuple[float, ...] = ()
    value_shares: tuple[float, ...] = ()
    kind: ClassVar[str] = "numeric"

    def distribution(self) -> np.ndarray:
        """Share of all rows per bin, plus a last bucket for nulls so PSI also sees null-share drift."""
        shares = np.asarray(self.bin_proportions, dtype=float) * (1.0 - self.null_share)
        return np.append(shares, self.null_share)

    def items(self) -> list[tuple[str, float]]:
        pairs = [(key, float(getattr(self, key))) for key in _NUMERIC_SCALARS]
        for prefix, attribute in _SERIES_KEYS.items():
            pairs += [(f"{prefix}:{i:03d}", float(v)) for i, v in enumerate(getattr(self, attribute))]
        return pairs

    @classmethod
    def from_items(cls, pairs: dict[str, float]) -> NumericProfile:
        series = {attribute: _indexed(pairs, prefix) for prefix, attribute in _SERIES_KEYS.items()}
        scalars = {key: pairs[key] for key in _NUMERIC_SCALARS}
        return cls(n_rows=int(scalars.pop("n_rows")), count=int(scalars.pop("count")), **scalars, **series)


@dataclass(frozen=True)
class CategoricalProfile:
    n_rows: int
    count: int  # non-null values
    null_share: float
    frequencies: dict[str, float] = field(default_factory=dict)  # share of the non-null values
    kind: ClassVar[str] = "categorical"

    def distribution(self) -> dict[str, float]:
        """Share of all rows per category; always has the "__other__" and "__null__" buckets, so any
        new value has a home and null-share drift shows up like any other category shift."""
        shares = {key: share * (1.0 - self.null_share) for key, share in self.frequencies.items()}
        shares.setdefault(OTHER_KEY, 0.0)
        shares[NULL_KEY] = self.null_share
        return shares

    def items(self) -> list[tuple[str, float]]:
        pairs = [(key, float(getattr(self, key))) for key in _SCALAR_KEYS]
        return pairs + [(_FREQ_PREFIX + key, float(share)) for key, share in self.frequencies.items()]

    @classmethod
    def from_items(cls, pairs: dict[str, float]) -> CategoricalProfile:
        frequencies = {
            k.removeprefix(_FREQ_PREFIX): v for k, v in pairs.items() if k.startswith(_FREQ_PREFIX)
        }
        # Most frequent first, as build_profile writes them; table storage does not keep row order.
        ordered = dict(sorted(frequencies.items(), key=lambda kv: (kv[0] == OTHER_KEY, -kv[1], kv[0])))
        return cls(
            n_rows=int(pairs["n_rows"]),
            count=int(pairs["count"]),
            null_share=pairs["null_share"],
            frequencies=ordered,
        )


FeatureProfile = NumericProfile | CategoricalProfile
_KINDS: dict[str, type[NumericProfile] | type[CategoricalProfile]] = {
    NumericProfile.kind: NumericProfile,
    CategoricalProfile.kind: CategoricalProfile,
}


@dataclass(frozen=True)
class Profile:
    features: dict[str, FeatureProfile]

    @property
    def numeric(self) -> dict[str, NumericProfile]:
        return {name: p for name, p in self.features.items() if isinstance(p, NumericProfile)}

    @property
    def categorical(self) -> dict[str, CategoricalProfile]:
        return {name: p for name, p in self.features.items() if isinstance(p, CategoricalProfile)}

    def to_frame(self) -> pd.DataFrame:
        """Long table (feature, kind, key, value) with one float per row, ready for a DuckDB table."""
        rows = [
            (name, entry.kind, key, value)
            for name, entry in self.features.items()
            for key, value in entry.items()
        ]
        frame = pd.DataFrame(rows, columns=FRAME_COLUMNS)
        return frame.astype({"feature": object, "kind": object, "key": object, "value": "float64"})

    @classmethod
    def from_frame(cls, frame: pd.DataFrame) -> Profile:
        """Inverse of to_frame; row order does not matter (indexed keys carry the order)."""
        features: dict[str, FeatureProfile] = {}
        for name in pd.unique(frame["feature"]):
            rows = frame[frame["feature"] == name]
            kinds = set(rows["kind"])
            if len(kinds) != 1 or (kind := kinds.pop()) not in _KINDS:
                raise ValueError(f"feature {name!r}: expected one kind out of {sorted(_KINDS)}, got {kinds}")
            pairs = dict(zip(rows["key"], rows["value"].astype(float), strict=True))
            features[str(name)] = _KINDS[kind].from_items(pairs)
        return cls(features=features)


def build_profile(
    df: pd.DataFrame,
    numeric_columns: Sequence[str],
    categorical_columns: Sequence[str],
    n_bins: int = 10,
    n_quantiles: int = N_QUANTILES,
    max_categories: int = MAX_CATEGORIES,
) -> Profile:
    """Summarise `df` as a Profile; numeric features keep `n_bins` quantile bins and `n_quantiles` quantiles."""
    if both := set(numeric_columns) & set(categorical_columns):
        raise ValueError(f"columns listed as both numeric and categorical: {sorted(both)}")
    if missing := [c for c in [*numeric_columns, *categorical_columns] if c not in df.columns]:
        raise KeyError(f"columns not in the DataFrame: {missing}")
    if n_bins < 1 or n_quantiles < 2:
        raise ValueError("n_bins must be >= 1 and n_quantiles >= 2")
    numeric = map_in_threads(lambda name: _numeric_profile(df[name], n_bins, n_quantiles), numeric_columns)
    features: dict[str, FeatureProfile] = dict(zip(numeric_columns, numeric, strict=True))
    for name in categorical_columns:
        features[name] = _categorical_profile(df[name], max_categories)
    return Profile(features=features)


def numeric_values(values: Iterable[Any]) -> np.ndarray:
    """Float array with NaN for nulls, unparsable values and ±inf."""
    if (
        isinstance(values, pd.Series | np.ndarray)
        and isinstance(values.dtype, np.dtype)
        and values.dtype.kind in "biuf"
    ):
        # Plain numpy numbers need no parsing: one copy instead of pandas' nullable round trip (10x faster).
        numbers = np.array(values, dtype=float, copy=True)
    else:
        parsed = pd.to_numeric(pd.Series(values, dtype=None), errors="coerce")
        # A copy, so blanking ±inf never writes into the caller's DataFrame.
        numbers = parsed.astype("Float64").to_numpy(dtype=float, na_value=np.nan, copy=True)
    numbers[~np.isfinite(numbers)] = np.nan
    return numbers


def category_labels(values: Iterable[Any]) -> tuple[np.ndarray, int]:
    """String labels of the non-null values, and the number of nulls."""
    series = pd.Series(values, dtype=None)
    present = series[series.notna()]
    is_number = pd.api.types.is_numeric_dtype(present.dtype) and not pd.api.types.is_bool_dtype(present.dtype)
    if is_number and len(present):
        floats = present.to_numpy(dtype=float)
        if np.all((np.mod(floats, 1.0) == 0.0) & (np.abs(floats) < 2.0**53)):
            present = present.astype("int64")
    return present.astype(str).to_numpy(dtype=object), int(len(series) - len(present))


def category_counts(values: Iterable[Any]) -> tuple[dict[str, int], int]:
    """Count per string label (as `category_labels` writes them) of the non-null values, and the nulls.

    Counts the raw values first and turns only the distinct ones into labels: a window of a million
    rows has a few thousand distinct merchants, so this is far cheaper than labelling every row.
    """
    series = pd.Series(values, dtype=None)
    raw_counts = series.value_counts(dropna=True)
    labels, _ = category_labels(raw_counts.index.to_series(index=None))
    counts: dict[str, int] = {}
    for label, n in zip(labels, raw_counts.to_numpy(), strict=True):
        counts[label] = counts.get(label, 0) + int(n)  # 1 and 1.0 are one label
    return counts, int(len(series) - raw_counts.sum())


def bin_counts(bin_edges: Sequence[float], values: np.ndarray) -> np.ndarray:
    """Counts per left-closed bin [edge_i, edge_i+1); `values` must be free of NaN."""
    inner_edges = np.asarray(bin_edges, dtype=float)[1:-1]
    positions = np.searchsorted(inner_edges, values, side="right")
    return np.bincount(positions, minlength=len(inner_edges) + 1)


def _numeric_profile(series: pd.Series, n_bins: int, n_quantiles: int) -> NumericProfile:
    numbers = numeric_values(series)
    present = numbers[~np.isnan(numbers)]
    n_rows, count = len(numbers), len(present)
    null_share = (n_rows - count) / n_rows if n_rows else 0.0
    if count == 0:
        # Nothing to bin: one catch-all bin keeps the PSI shape valid; no quantiles means no KS test.
        return NumericProfile(
            n_rows, 0, null_share, float("nan"), float("nan"), (-np.inf, np.inf), (1.0,), ()
        )
    # Edges on data values ("higher"), not interpolated between them, so discrete features get clean bins.
    inner_edges = np.unique(np.quantile(present, np.linspace(0.0, 1.0, n_bins + 1)[1:-1], method="higher"))
    edges = np.concatenate([[-np.inf], inner_edges, [np.inf]])
    proportions = bin_counts(edges, present) / count
    quantiles = np.quantile(present, np.linspace(0.0, 1.0, n_quantiles))
    values, value_shares = _exact_values(present, quantiles)
    return NumericProfile(
        n_rows=n_rows,
        count=count,
        null_share=null_share,
        mean=float(np.mean(present)),
        std=float(np.std(present, ddof=1)) if count > 1 else 0.0,
        bin_edges=tuple(float(e) for e in edges),
        bin_proportions=tuple(float(p) for p in proportions),
        quantiles=tuple(float(q) for q in quantiles),
        values=values,
        value_shares=value_shares,
    )


def _exact_values(present: np.ndarray, quantiles: np.ndarray) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Distinct values and their shares when there are few; the quantiles tell cheaply when to look
    (a continuous column has as many distinct quantiles as quantiles, and is not counted)."""
    if np.unique(quantiles).size > MAX_EXACT_VALUES:
        return (), ()
    counts = pd.Series(present).value_counts(sort=False)
    if len(counts) > MAX_EXACT_VALUES:
        return (), ()
    counts = counts.sort_index()
    shares = counts.to_numpy(dtype=float) / present.size
    return tuple(float(v) for v in counts.index), tuple(float(s) for s in shares)


def _categorical_profile(series: pd.Series, max_categories: int) -> CategoricalProfile:
    counts, n_null = category_counts(series)  # labels of the distinct values only, not of every row
    n_rows = len(series)
    count = n_rows - n_null
    # Ties broken by label so the same data always gives the same top-N.
    ranked = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    frequencies = {str(label): n / count for label, n in ranked[:max_categories]}
    if tail := sum(n for _, n in ranked[max_categories:]):
        frequencies[OTHER_KEY] = tail / count
    return CategoricalProfile(n_rows, count, n_null / n_rows if n_rows else 0.0, frequencies)


def _indexed(pairs: dict[str, float], prefix: str) -> tuple[float, ...]:
    found = {int(key.split(":", 1)[1]): value for key, value in pairs.items() if key.startswith(prefix + ":")}
    if sorted(found) != list(range(len(found))):
        raise ValueError(f"{prefix} keys are not a contiguous 0..n-1 sequence: {sorted(found)}")
    return tuple(float(found[i]) for i in range(len(found)))
