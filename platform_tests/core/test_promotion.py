from __future__ import annotations

import math

import pytest

from mlplatform.core.promotion import decide_promotion


@pytest.mark.parametrize(
    ("metric", "challenger", "baseline", "promote"),
    [
        ("rmse", 9.0, 10.0, True),  # lower is better and lower than the baseline
        ("rmse", 10.0, 10.0, False),  # a tie with "predict the mean" is not good enough
        ("rmse", 11.0, 10.0, False),
        ("roc_auc", 0.8, 0.5, True),
        ("roc_auc", 0.5, 0.5, False),
        ("roc_auc", 0.4, 0.5, False),
    ],
)
def test_first_model_must_strictly_beat_the_baseline(
    metric: str, challenger: float, baseline: float, promote: bool
) -> None:
    decision = decide_promotion(metric, challenger, None, baseline, min_improvement=0.0)
    assert decision.promote is promote
    assert "no champion" in decision.reason
    assert metric in decision.reason
    assert f"{challenger:.6g}" in decision.reason and f"{baseline:.6g}" in decision.reason


@pytest.mark.parametrize(
    ("metric", "challenger", "champion", "promote"),
    [
        ("rmse", 9.0, 10.0, True),  # better
        ("rmse", 10.0, 10.0, True),  # equal: fresher model, same quality
        ("rmse", 10.0001, 10.0, False),  # worse, even by a hair
        ("roc_auc", 0.81, 0.80, True),
        ("roc_auc", 0.80, 0.80, True),
        ("roc_auc", 0.79, 0.80, False),
        ("log_loss", 0.1 + 0.2, 0.3, True),  # float noise counts as equal
    ],
)
def test_with_a_champion_and_no_minimum_equal_or_better_promotes(
    metric: str, challenger: float, champion: float, promote: bool
) -> None:
    decision = decide_promotion(metric, challenger, champion, baseline=100.0, min_improvement=0.0)
    assert decision.promote is promote
    assert metric in decision.reason
    assert f"{challenger:.6g}" in decision.reason and f"{champion:.6g}" in decision.reason
    if challenger == pytest.approx(champion, rel=1e-12):
        assert "equals the champion" in decision.reason


def test_worse_challenger_never_promotes_even_if_it_beats_the_baseline() -> None:
    decision = decide_promotion("rmse", 5.0, 4.0, baseline=50.0, min_improvement=0.0)
    assert not decision.promote
    assert "worse" in decision.reason


@pytest.mark.parametrize(
    ("metric", "challenger", "champion", "promote"),
    [
        ("rmse", 9.9, 10.0, True),  # exactly 1 % lower
        ("rmse", 9.95, 10.0, False),  # 0.5 %: better, but not enough
        ("rmse", 10.0, 10.0, False),  # equal does not meet a positive bar
        ("roc_auc", 0.808, 0.8, True),  # exactly 1 % higher
        ("roc_auc", 0.804, 0.8, False),
    ],
)
def test_min_improvement_is_relative_to_the_champion(
    metric: str, challenger: float, champion: float, promote: bool
) -> None:
    decision = decide_promotion(metric, challenger, champion, baseline=100.0, min_improvement=0.01)
    assert decision.promote is promote


def test_non_finite_scores_never_win() -> None:
    assert not decide_promotion("roc_auc", math.nan, None, 0.5, 0.0).promote
    assert not decide_promotion("roc_auc", math.nan, 0.7, 0.5, 0.0).promote
    assert not decide_promotion("roc_auc", 0.9, None, math.nan, 0.0).promote
    # An unusable champion score falls back to the baseline comparison.
    assert decide_promotion("roc_auc", 0.9, math.nan, 0.5, 0.0).promote


def test_zero_champion_score_uses_absolute_difference() -> None:
    assert decide_promotion("mae", 0.0, 0.0, 1.0, 0.0).promote
    assert not decide_promotion("mae", 0.001, 0.0, 1.0, 0.0).promote


def test_negative_min_improvement_is_rejected() -> None:
    with pytest.raises(ValueError, match="min_improvement"):
        decide_promotion("rmse", 1.0, 1.0, 2.0, -0.1)
