"""How much each monitored column's drift counts in a data-set verdict: the champion's importance.

Drift in a feature the model ignores cannot hurt its predictions, so a verdict that counts every
feature alike retrains a model for nothing. `importance_weights` gives each model input its share of
the champion's importance (LightGBM gain), and each model output (the prediction) the weight of one
input of average weight: a shift of the predictions is direct evidence, but one column among many.
`weighted_drifted_share` is the share of that weight sitting on drifted columns.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence


def importance_weights(
    importance: Mapping[str, float], inputs: Sequence[str], outputs: Sequence[str]
) -> dict[str, float]:
    """Weights summing to 1 over `inputs` + `outputs` (empty when both are empty).

    Inputs share n_in / (n_in + n_out) in proportion to `importance` (an input absent from it, or with
    a negative or NaN value, weighs 0); each output weighs 1 / (n_in + n_out), what an input of
    average weight does. Fallback: when no input has a positive importance (none known, or all zero),
    every column weighs the same, 1 / (n_in + n_out): nothing says which features matter."""
    inputs, outputs = list(dict.fromkeys(inputs)), list(dict.fromkeys(outputs))
    if overlap := sorted(set(inputs) & set(outputs)):
        raise ValueError(f"columns both model input and output: {overlap}")
    n_columns = len(inputs) + len(outputs)
    if n_columns == 0:
        return {}
    raw = {name: _usable(importance.get(name, 0.0)) for name in inputs}
    total = sum(raw.values())
    if total <= 0:
        return {name: 1.0 / n_columns for name in [*inputs, *outputs]}
    input_share = len(inputs) / n_columns
    weights = {name: input_share * value / total for name, value in raw.items()}
    weights.update({name: 1.0 / n_columns for name in outputs})
    return weights


def weighted_drifted_share(
    features: Sequence[str], drifted: Sequence[bool], weights: Mapping[str, float]
) -> tuple[float, dict[str, float]] | None:
    """(share of the judged features' weight on drifted ones, weight of each feature renormalised
    over the judged ones). A feature without a weight weighs 0. None when no judged feature has a
    positive weight (the weights say nothing about these features)."""
    if len(features) != len(drifted):
        raise ValueError(f"{len(features)} features but {len(drifted)} drift flags")
    raw = {str(name): _usable(weights.get(str(name), 0.0)) for name in features}
    total = sum(raw.values())
    if total <= 0:
        return None
    renormalised = {name: value / total for name, value in raw.items()}
    share = sum(renormalised[str(name)] for name, flag in zip(features, drifted, strict=True) if flag)
    return min(share, 1.0), renormalised


def _usable(value: float) -> float:
    number = float(value)
    return number if math.isfinite(number) and number > 0 else 0.0
