"""Mergeable drift statistics: a small summary per partition, merged into any window's statistics.

A trailing window of 7 daily partitions used to be re-read and re-sorted for every partition it ends
with (each row seven times). Instead each partition is summarised once against the reference profile
(`partition_summary`, pure and picklable, so a Dask worker can run it), and a window's statistics come
from the sum of its partitions' summaries (`merge`, `feature_drift_from_summary`). What a summary
holds per profiled column:

* numeric: counts per cell of a grid built from the reference alone (`SummaryPlan`): its inner bin
  edges, its distinct quantile knots with `GRID_STEPS` equal sub-intervals between consecutive
  knots, and (few distinct values) its exact values; each grid point is a cell of its own and so is
  each open interval between two points. Plus the rows, and the min and max of the present values.
* categorical: counts per reference category, "__other__" and "__null__" (as core.drift pools them).

From those counts:
* PSI, chi-square, total variation and Jensen–Shannon are exact (the reference bin edges and
  categories are cells of the summary).
* KS D is exact for columns whose profile keeps exact values (the reference CDF is a step function
  that is constant inside each cell). Otherwise the reference CDF is linear between knots and the
  current ECDF is known at the grid points only: D from the grid is never above today's D and at most
  1 / ((n_quantiles - 1) · GRID_STEPS) below it (0.0005 for 101 quantiles): inside a cell the
  reference CDF rises by at most that. The p-value follows from D as before.
* Wasserstein reads the current quantiles off the cells, each value spread evenly inside its cell
  (the outer cells end at the min / max): every quantile is off by at most its cell's width.
  Reported, not decisive.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from mlplatform.core.drift import (
    DEFAULT_MIN_KS_STATISTIC,
    DEFAULT_MIN_TOTAL_VARIATION,
    ThresholdsLike,
    _aligned,
    _categorical_psi,
    _chi_square,
    _jensen_shannon,
    _judge,
    _total_variation,
    psi,
)
from mlplatform.core.profile import (
    NULL_KEY,
    OTHER_KEY,
    CategoricalProfile,
    NumericProfile,
    Profile,
    category_labels,
    numeric_values,
)
from mlplatform.core.quantile_tests import (
    DriftTestResult,
    ks_pvalue,
    piecewise_linear_cdf,
    wasserstein_from_quantiles,
)
from mlplatform.core.threads import map_in_threads

GRID_STEPS = 20  # sub-intervals per reference quantile interval: KS D within 0.01 / 20 of the exact one
TAIL_GROWTH, TAIL_REACH = 1.25, 2.0  # the outer cells (see _tail_points)
SUMMARY_FORMAT = 1  # stored with each summary; another format (another grid) is recomputed, not merged
_WINDOW_FEATURE = "__window__"
_SUMMARY_COLUMNS = ["feature", "key", "value"]


def ks_grid_bound(entry: NumericProfile) -> float:
    """How far below today's KS D the grid's D can be (0 when the profile keeps exact values)."""
    if entry.values or len(entry.quantiles) < 2:
        return 0.0
    return 1.0 / ((len(entry.quantiles) - 1) * GRID_STEPS)


@dataclass(frozen=True)
class NumericGrid:
    """The cells of a numeric column: points g_0 < ... < g_{m-1}; cell 2i is the open interval just
    below g_i, cell 2i+1 the point g_i itself, cell 2m everything above g_{m-1}."""

    points: np.ndarray
    cell_bins: np.ndarray  # the reference PSI bin each cell falls in

    @classmethod
    def of(cls, entry: NumericProfile) -> NumericGrid:
        knots = np.unique(np.asarray(entry.quantiles, dtype=float))
        parts = [np.asarray(entry.bin_edges[1:-1], dtype=float), np.asarray(entry.values, dtype=float), knots]
        if not entry.values and knots.size >= 2:
            steps = np.linspace(0.0, 1.0, GRID_STEPS + 1)[1:-1]
            parts.append((knots[:-1, None] + np.diff(knots)[:, None] * steps).ravel())
            parts.append(_tail_points(knots))
        points = np.unique(np.concatenate(parts))
        points = points[np.isfinite(points)]
        inner_edges = np.asarray(entry.bin_edges[1:-1], dtype=float)
        # An open cell below g_i holds values in (g_{i-1}, g_i); no edge lies strictly inside it.
        open_bins = np.append(np.searchsorted(inner_edges, points, side="left"), inner_edges.size)
        point_bins = np.searchsorted(inner_edges, points, side="right")
        cell_bins = np.empty(2 * points.size + 1, dtype=np.int64)
        cell_bins[0::2], cell_bins[1::2] = open_bins, point_bins
        return cls(points, cell_bins)

    @property
    def n_cells(self) -> int:
        return 2 * self.points.size + 1

    def cells(self, present: np.ndarray) -> np.ndarray:
        """The cell of each NaN-free value (one binary search per value, no sort)."""
        below = np.searchsorted(self.points, present, side="left")
        at_point = below < self.points.size
        at_point[at_point] = self.points[below[at_point]] == present[at_point]
        return 2 * below + at_point


def _tail_points(knots: np.ndarray) -> np.ndarray:
    """Cells growing by TAIL_GROWTH from each outer knot interval's inner end outwards, to
    TAIL_REACH times the knots' range beyond the reference min / max. The 1% and 99% quantiles the
    Wasserstein distance holds its ends at often lie in these intervals, which are wide for heavy
    tails (the largest amount is hundreds of times the 99th percentile), or beyond them after drift."""
    if knots.size < 3:
        return np.array([])
    span = (knots[-1] - knots[0]) * (1 + TAIL_REACH)
    sides = []
    for inner, outer, neighbour in ((knots[-2], knots[-1], knots[-3]), (knots[1], knots[0], knots[2])):
        first = abs(inner - neighbour) / GRID_STEPS or abs(outer - inner) / GRID_STEPS
        n = int(np.ceil(np.log1p(span / first * (TAIL_GROWTH - 1)) / np.log(TAIL_GROWTH)))
        offsets = first * np.cumsum(TAIL_GROWTH ** np.arange(min(n, 400)))
        sides.append(inner + np.sign(outer - inner) * offsets)
    return np.concatenate(sides)


@dataclass(frozen=True)
class SummaryPlan:
    """What to count for each profiled column: built once per reference, shipped to every worker."""

    profile: Profile
    grids: dict[str, NumericGrid] = field(default_factory=dict)
    keys: dict[str, list[str]] = field(default_factory=dict)  # categorical: aligned reference keys

    @classmethod
    def of(cls, profile: Profile) -> SummaryPlan:
        grids = {name: NumericGrid.of(entry) for name, entry in profile.numeric.items()}
        keys = {name: _aligned(entry.distribution())[0] for name, entry in profile.categorical.items()}
        return cls(profile, grids, keys)

    def n_cells(self, name: str) -> int:
        return self.grids[name].n_cells if name in self.grids else len(self.keys[name])


@dataclass(frozen=True)
class ColumnSummary:
    n_values: int  # rows, nulls included
    counts: np.ndarray  # numeric: per grid cell; categorical: per aligned reference key (nulls included)
    minimum: float = float("nan")  # numeric: of the present values
    maximum: float = float("nan")

    def merged(self, other: ColumnSummary) -> ColumnSummary:
        return ColumnSummary(
            self.n_values + other.n_values,
            self.counts + other.counts,
            float(np.fmin(self.minimum, other.minimum)),
            float(np.fmax(self.maximum, other.maximum)),
        )


@dataclass(frozen=True)
class PartitionSummary:
    """One partition (or a merged window): rows, rows per model version that scored them, columns."""

    n_rows: int
    versions: dict[int, int]
    columns: dict[str, ColumnSummary]


def partition_summary(
    plan: SummaryPlan, rows: pd.DataFrame, version_column: str | None = None
) -> PartitionSummary:
    """Summary of `rows` (outputs of other models already blanked) for each profiled column present."""
    return partition_summaries(plan, rows, np.zeros(len(rows), dtype=np.int64), 1, version_column)[0]


def partition_summaries(
    plan: SummaryPlan,
    rows: pd.DataFrame,
    part: np.ndarray,
    n_parts: int,
    version_column: str | None = None,
) -> list[PartitionSummary]:
    """The summaries of `n_parts` partitions at once, row i belonging to partition `part[i]`: one pass
    per column (cell of each value, then one count per partition and cell), no split of the rows."""
    n_rows = np.bincount(part, minlength=n_parts)
    versions: list[dict[int, int]] = [{} for _ in range(n_parts)]
    if version_column is not None and version_column in rows:
        scored = pd.to_numeric(rows[version_column], errors="coerce").to_numpy(dtype=float)
        known = ~np.isnan(scored)
        pairs = pd.Series(1, index=pd.MultiIndex.from_arrays([part[known], scored[known].astype(np.int64)]))
        for (index, version), n in pairs.groupby(level=[0, 1]).sum().items():
            versions[int(index)][int(version)] = int(n)
    columns: list[dict[str, ColumnSummary]] = [{} for _ in range(n_parts)]
    names = [n for n in plan.profile.features if n in rows]
    summarised = map_in_threads(
        lambda name: _column_summaries(plan, name, rows[name], part, n_parts, n_rows), names
    )
    for name, summaries in zip(names, summarised, strict=True):
        for index, summary in enumerate(summaries):
            columns[index][name] = summary
    return [PartitionSummary(int(n_rows[i]), versions[i], columns[i]) for i in range(n_parts)]


def _column_summaries(
    plan: SummaryPlan, name: str, values: pd.Series, part: np.ndarray, n_parts: int, n_rows: np.ndarray
) -> list[ColumnSummary]:
    n_cells = plan.n_cells(name)
    if name in plan.grids:
        numbers = numeric_values(values)
        present = ~np.isnan(numbers)
        where, kept = part[present], numbers[present]
        cells = plan.grids[name].cells(kept)
        extremes = pd.DataFrame({"part": where, "value": kept}).groupby("part")["value"].agg(["min", "max"])
        extremes = extremes.reindex(range(n_parts))
        lows, highs = extremes["min"].to_numpy(dtype=float), extremes["max"].to_numpy(dtype=float)
    else:
        cells, where = _category_cells(plan.keys[name], values), part
        lows = highs = np.full(n_parts, np.nan)
    counts = np.bincount(where * n_cells + cells, minlength=n_parts * n_cells).reshape(n_parts, n_cells)
    return [ColumnSummary(int(n_rows[i]), counts[i], float(lows[i]), float(highs[i])) for i in range(n_parts)]


def _category_cells(keys: list[str], values: pd.Series) -> np.ndarray:
    """The aligned key index of each value, pooled as core.drift pools them (labels of the distinct
    values only, as core.profile.category_counts makes them)."""
    codes, distinct = pd.factorize(values, use_na_sentinel=True)
    labels, _ = category_labels(pd.Series(distinct))
    position = {key: i for i, key in enumerate(keys) if key not in (OTHER_KEY, NULL_KEY)}
    other = keys.index(OTHER_KEY)
    null = keys.index(NULL_KEY) if NULL_KEY in keys else other
    of_distinct = np.array([position.get(label, other) for label in labels] + [null], dtype=np.int64)
    return of_distinct[codes]  # a null's code -1 picks the trailing null bucket


def merge(plan: SummaryPlan, summaries: Sequence[PartitionSummary]) -> PartitionSummary:
    """The summary of the union of the partitions' rows. A column some partitions lack counts as null
    there (as in a window read across a schema change)."""
    names = [n for n in plan.profile.features if any(n in s.columns for s in summaries)]
    versions: dict[int, int] = {}
    for summary in summaries:
        for version, n in summary.versions.items():
            versions[version] = versions.get(version, 0) + n
    columns = {}
    for name in names:
        total = ColumnSummary(0, np.zeros(plan.n_cells(name), dtype=np.int64))
        for summary in summaries:
            total = total.merged(summary.columns.get(name) or _all_null(plan, name, summary.n_rows))
        columns[name] = total
    return PartitionSummary(sum(s.n_rows for s in summaries), versions, columns)


def _all_null(plan: SummaryPlan, name: str, n_rows: int) -> ColumnSummary:
    counts = np.zeros(plan.n_cells(name), dtype=np.int64)
    if name in plan.keys:
        keys = plan.keys[name]
        counts[keys.index("__null__") if "__null__" in keys else keys.index("__other__")] = n_rows
    return ColumnSummary(n_rows, counts)


def feature_drift_from_summary(
    plan: SummaryPlan, name: str, summary: ColumnSummary, thresholds: ThresholdsLike
) -> tuple[Any, ...]:
    """The same values, in FEATURE_TABLE_COLUMNS order, as core.drift.feature_drift gives on the rows."""
    entry = plan.profile.features[name]
    if isinstance(entry, CategoricalProfile):
        _, expected = _aligned(entry.distribution())
        observed = summary.counts.astype(float)
        test_name, test = "chi2", _chi_square(expected, entry.n_rows, observed)
        psi_value, effect = _categorical_psi(expected, observed), _total_variation(expected, observed)
        floor = getattr(thresholds, "min_total_variation", DEFAULT_MIN_TOTAL_VARIATION)
        distances = (float("nan"), _jensen_shannon(expected, observed))
    else:
        grid, n_present = plan.grids[name], int(summary.counts.sum())
        psi_value = float("nan")
        if summary.n_values:
            bins = np.bincount(grid.cell_bins, weights=summary.counts, minlength=len(entry.bin_edges) - 1)
            actual = np.append(bins.astype(np.int64), summary.n_values - n_present)
            psi_value = psi(entry.distribution(), actual / summary.n_values)
        statistic = grid_ks_statistic(entry, grid, summary.counts)
        test_name, test = "ks", DriftTestResult(statistic, ks_pvalue(statistic, entry.count, n_present))
        effect = statistic
        floor = getattr(thresholds, "min_ks_statistic", DEFAULT_MIN_KS_STATISTIC)
        distances = (grid_wasserstein(entry, grid, summary), float("nan"))
    drifted, reason = _judge(psi_value, test_name, test, effect, floor, thresholds, summary.n_values)
    row = (name, entry.kind, summary.n_values, psi_value, test_name, *test, effect, *distances)
    return (*row, drifted, reason)


def grid_ks_statistic(entry: NumericProfile, grid: NumericGrid, counts: np.ndarray) -> float:
    """D between the reference CDF and the current ECDF as far as the cells tell (see module doc)."""
    n_present = int(counts.sum())
    knots = np.asarray(entry.quantiles, dtype=float)
    if n_present == 0 or (not entry.values and knots.size < 2):
        return float("nan")
    below = np.cumsum(counts) / n_present  # the ECDF at the end of each cell
    if entry.values:  # step CDF: constant inside every open cell, so the cell ends are the extremes
        values = np.asarray(entry.values)
        steps = np.concatenate([[0.0], np.cumsum(entry.value_shares)])
        at_points = steps[np.searchsorted(values, grid.points, "right")]
        reference = np.empty(grid.n_cells)
        reference[0], reference[1::2], reference[2::2] = 0.0, at_points, at_points
        return float(np.abs(reference - below).max())
    probabilities = np.linspace(0.0, 1.0, knots.size)
    left = piecewise_linear_cdf(grid.points, knots, probabilities, "left")
    right = piecewise_linear_cdf(grid.points, knots, probabilities, "right")
    return float(max(np.abs(left - below[0:-1:2]).max(), np.abs(right - below[1::2]).max()))


def grid_quantiles(
    grid: NumericGrid, counts: np.ndarray, low: float, high: float, probabilities: np.ndarray
) -> np.ndarray:
    """np.quantile (linear) of the current values, each cell's values spread evenly over the cell."""
    n_present = int(counts.sum())
    position = (n_present - 1) * probabilities
    lower = np.floor(position).astype(np.int64)
    upper = np.minimum(lower + 1, n_present - 1)
    ends = np.cumsum(counts)
    bounds = np.concatenate([[low], grid.points, [high]])

    def order_statistic(rank: np.ndarray) -> np.ndarray:
        cell = np.searchsorted(ends, rank, side="right")
        within = rank - (ends[cell] - counts[cell])
        start, stop = bounds[cell // 2], bounds[cell // 2 + 1]  # open cell 2i: (bounds[i], bounds[i+1])
        spread = start + (stop - start) * (within + 0.5) / np.maximum(counts[cell], 1)
        return np.where(cell % 2 == 1, stop, spread)  # point cell 2i+1 is g_i = bounds[i+1]

    low_value, high_value = order_statistic(lower), order_statistic(upper)
    return low_value + (position - lower) * (high_value - low_value)


def grid_wasserstein(entry: NumericProfile, grid: NumericGrid, summary: ColumnSummary) -> float:
    knots = np.asarray(entry.quantiles, dtype=float)
    if knots.size < 2 or not summary.counts.sum():
        return float("nan")
    probabilities = np.linspace(0.0, 1.0, knots.size)
    current = grid_quantiles(grid, summary.counts, summary.minimum, summary.maximum, probabilities)
    return wasserstein_from_quantiles(knots, current)


def summary_frame(summary: PartitionSummary, fingerprint: str | None = None) -> pd.DataFrame:
    """Long rows (feature, key, value) of one summary; zero cells are left out."""
    records: list[tuple[str, str, float]] = [
        (_WINDOW_FEATURE, "format", float(SUMMARY_FORMAT)),
        (_WINDOW_FEATURE, "n_rows", float(summary.n_rows)),
    ]
    records += [(_WINDOW_FEATURE, f"version:{v}", float(n)) for v, n in summary.versions.items()]
    if fingerprint is not None:
        records.append((_WINDOW_FEATURE, f"fingerprint:{fingerprint}", 0.0))
    frames = []
    for name, column in summary.columns.items():
        records += [(name, "n_values", float(column.n_values)), (name, "cells", float(column.counts.size))]
        records += [(name, "min", column.minimum), (name, "max", column.maximum)]
        nonzero = np.flatnonzero(column.counts)
        keys = np.char.add("cell:", nonzero.astype(str)).astype(object)
        frames.append(
            pd.DataFrame({"feature": name, "key": keys, "value": column.counts[nonzero].astype(float)})
        )
    return pd.concat([pd.DataFrame(records, columns=_SUMMARY_COLUMNS), *frames], ignore_index=True)


def read_summary(plan: SummaryPlan, frame: pd.DataFrame) -> tuple[PartitionSummary, str | None] | None:
    """Inverse of summary_frame, with its fingerprint; None when it was written in another format or
    for other cells than `plan` counts (then the partition is summarised again)."""
    by_feature = {str(name): part for name, part in frame.groupby("feature", sort=False)}
    window = by_feature.pop(_WINDOW_FEATURE, None)
    if window is None:
        return None
    scalars = dict(zip(window["key"], window["value"], strict=True))
    if scalars.get("format") != SUMMARY_FORMAT:
        return None
    versions = {int(k.split(":", 1)[1]): int(v) for k, v in scalars.items() if k.startswith("version:")}
    fingerprints = [k.split(":", 1)[1] for k in scalars if k.startswith("fingerprint:")]
    columns = {}
    for name, part in by_feature.items():
        values = dict(zip(part["key"], part["value"], strict=True))
        if name not in plan.profile.features or int(values["cells"]) != plan.n_cells(name):
            return None
        counts = np.zeros(plan.n_cells(name), dtype=np.int64)
        cells = {int(k.split(":", 1)[1]): int(v) for k, v in values.items() if k.startswith("cell:")}
        counts[list(cells)] = list(cells.values())
        columns[name] = ColumnSummary(int(values["n_values"]), counts, values["min"], values["max"])
    summary = PartitionSummary(int(scalars["n_rows"]), versions, columns)
    return summary, (fingerprints[0] if fingerprints else None)


def coverage_counts(summary: PartitionSummary, version: int | None) -> tuple[int, int, tuple[int, ...]]:
    """(rows scored, rows scored by `version`, the other versions, most rows first) of a summary."""
    others = sorted(((-n, v) for v, n in summary.versions.items() if v != version))
    by_reference = summary.versions.get(version, 0) if version is not None else 0
    return sum(summary.versions.values()), by_reference, tuple(v for _, v in others)
