"""A binary window's ROC AUC from its partitions, exactly, without sorting the window.

ROC AUC is the share of (positive, negative) pairs the scores order right, a tie counting one half
(what `core.metrics`' trapezoid over pooled thresholds computes). A window's pairs are the pairs
between its partitions, so its count is the sum of per-partition-pair counts: each is one
`searchsorted` of a partition's positive scores into another's sorted negative ones. A partition
pair recurs in every trailing window that holds both, so its count is computed once
(`PairCounts`). The counts are integers (halves for ties), so the sum is exact.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

ScoresByLabel = Mapping[Any, np.ndarray]  # label value -> its rows' scores, sorted


def scores_by_label(labels: pd.Series, scores: np.ndarray) -> dict[Any, np.ndarray]:
    """The sorted scores of the rows with a label, per label value (rows without one left out)."""
    known = labels.notna().to_numpy() & ~np.isnan(scores)
    codes, distinct = pd.factorize(labels[known], use_na_sentinel=True)
    kept = scores[known]
    return {value: np.sort(kept[codes == index]) for index, value in enumerate(distinct.tolist())}


def ordered_pairs(positives: np.ndarray, negatives: np.ndarray) -> float:
    """Pairs of a positive and a lower-scored negative, plus half the tied pairs (both sorted)."""
    if not len(positives) or not len(negatives):
        return 0.0
    below = np.searchsorted(negatives, positives, side="left")
    ties = np.searchsorted(negatives, positives, side="right") - below
    return float(below.sum()) + 0.5 * float(ties.sum())


class PairCounts:
    """Ordered pairs between partitions, remembered across the windows of a run."""

    def __init__(self) -> None:
        self._counts: dict[tuple[Hashable, Hashable, Any], float] = {}

    def roc_auc(self, parts: Sequence[tuple[Hashable, ScoresByLabel]]) -> float:
        """ROC AUC of the union of the partitions' rows (key, scores by label); the positive class
        is the larger of the two labels present, as `primary_error` takes it without known classes;
        NaN unless exactly two are present."""
        labels = sorted(set().union(*(scores.keys() for _, scores in parts)))
        if len(labels) != 2:
            return math.nan
        negative, positive = labels
        n_positive = sum(len(scores.get(positive, ())) for _, scores in parts)
        n_negative = sum(len(scores.get(negative, ())) for _, scores in parts)
        ordered = 0.0
        for key, scores in parts:
            for other_key, other in parts:
                pair = (key, other_key, positive)
                if pair not in self._counts:
                    empty = np.empty(0)
                    self._counts[pair] = ordered_pairs(
                        scores.get(positive, empty), other.get(negative, empty)
                    )
                ordered += self._counts[pair]
        return ordered / (n_positive * n_negative)
