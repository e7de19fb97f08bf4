"""Champion/challenger promotion: should the newly trained model replace the one in production?

Rules (all scores must come from the same test window, computed by the caller):

* No champion: promote if the challenger is strictly better than the naive baseline. A model that only
  ties "predict the average" is not worth serving.
* With a champion: promote if the challenger is better by at least `min_improvement`, measured
  relative to the champion's score (0.01 = 1 %). A challenger worse than the champion is never
  promoted. With the default `min_improvement = 0.0` an *equal* score promotes: same quality on the
  same data, but trained on fresher data.
* A score that is NaN or infinite (e.g. ROC AUC on a one-class test set) never wins.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from mlplatform.core.metrics import higher_is_better, improvement

# Scores this close (relative) are the same model quality; float noise must not block a rerun.
_EQUAL_TOLERANCE = 1e-12


@dataclass(frozen=True)
class PromotionDecision:
    promote: bool
    reason: str


def _is_equal(candidate: float, reference: float) -> bool:
    return math.isclose(candidate, reference, rel_tol=_EQUAL_TOLERANCE, abs_tol=_EQUAL_TOLERANCE)


def _fmt(value: float) -> str:
    return f"{value:.6g}"


def decide_promotion(
    metric: str, challenger: float, champion: float | None, baseline: float, min_improvement: float
) -> PromotionDecision:
    """Decide whether the challenger replaces the champion; see the module docstring for the rules."""
    if min_improvement < 0:
        raise ValueError(
            f"min_improvement must be >= 0 (got {min_improvement}); a model worse than the champion is "
            "never promoted"
        )
    direction = "higher" if higher_is_better(metric) else "lower"
    if not math.isfinite(challenger):
        return PromotionDecision(False, f"challenger {metric} is {challenger}; a non-finite score never wins")

    if champion is None or not math.isfinite(champion):
        prefix = "no champion" if champion is None else f"champion {metric} is {champion} (unusable)"
        if not math.isfinite(baseline):
            return PromotionDecision(
                False, f"{prefix} and baseline {metric} is {baseline}; cannot show the challenger is useful"
            )
        beats = improvement(metric, challenger, baseline) > 0 and not _is_equal(challenger, baseline)
        verdict = "beats" if beats else "does not beat"
        return PromotionDecision(
            beats,
            f"{prefix}; challenger {metric} {_fmt(challenger)} {verdict} baseline {_fmt(baseline)} "
            f"({direction} is better)",
        )

    gain = improvement(metric, challenger, champion)
    if _is_equal(challenger, champion):
        gain = 0.0
    # Relative to the champion's magnitude; with a zero champion fall back to the absolute difference.
    relative = gain / abs(champion) if champion != 0 else gain
    summary = (
        f"challenger {metric} {_fmt(challenger)} vs champion {_fmt(champion)} "
        f"(baseline {_fmt(baseline)}, {direction} is better; relative improvement {relative:+.4%}, "
        f"required {min_improvement:.4%})"
    )
    if gain < 0:
        return PromotionDecision(False, f"challenger is worse than the champion: {summary}")
    if gain == 0 and min_improvement == 0:
        return PromotionDecision(True, f"challenger equals the champion, fresher model wins: {summary}")
    if relative + _EQUAL_TOLERANCE >= min_improvement:  # exactly 1 % better meets a 1 % bar
        return PromotionDecision(True, f"challenger improves on the champion enough: {summary}")
    return PromotionDecision(False, f"challenger improvement is below the required minimum: {summary}")
