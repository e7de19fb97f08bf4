"""Importance-weighted verdicts: drift in a feature the model ignores counts for nothing."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from mlplatform.core.drift import DriftThresholds, dataset_verdict, feature_drift
from mlplatform.core.drift_weights import importance_weights, weighted_drifted_share
from mlplatform.core.profile import build_profile


def test_inputs_share_the_importance_and_an_output_weighs_an_average_input() -> None:
    weights = importance_weights(
        {"a": 6.0, "b": 3.0, "c": 1.0, "unused": 5.0}, ["a", "b", "c", "d"], ["pred"]
    )
    # 4 inputs and 1 output: the inputs share 4/5 by gain, the output 1/5 = one average input.
    assert weights == pytest.approx({"a": 0.48, "b": 0.24, "c": 0.08, "d": 0.0, "pred": 0.2})
    assert sum(weights.values()) == pytest.approx(1.0)
    assert weights["pred"] == pytest.approx(np.mean([weights[name] for name in "abcd"]))


def test_without_usable_importance_every_column_weighs_the_same() -> None:
    equal = {"a": 1 / 3, "b": 1 / 3, "pred": 1 / 3}
    assert importance_weights({}, ["a", "b"], ["pred"]) == pytest.approx(equal)
    assert importance_weights({"a": 0.0, "b": 0.0}, ["a", "b"], ["pred"]) == pytest.approx(equal)
    assert importance_weights({"a": -1.0, "b": float("nan")}, ["a", "b"], ["pred"]) == pytest.approx(equal)
    assert importance_weights({"a": 2.0}, [], ["p1", "p2"]) == pytest.approx({"p1": 0.5, "p2": 0.5})
    assert importance_weights({"a": 2.0}, [], []) == {}
    # A negative or NaN value weighs 0 next to a usable one.
    assert importance_weights({"a": 1.0, "b": -3.0, "c": float("nan")}, ["a", "b", "c"], []) == {
        "a": 1.0,
        "b": 0.0,
        "c": 0.0,
    }
    with pytest.raises(ValueError, match="both model input and output"):
        importance_weights({"a": 1.0}, ["a"], ["a"])


def test_weighted_share_renormalises_over_the_judged_features() -> None:
    weights = {"a": 0.4, "b": 0.1, "pred": 0.2, "not_judged": 0.3}
    weighted = weighted_drifted_share(["a", "b", "pred"], [False, True, True], weights)
    assert weighted is not None
    share, by_feature = weighted
    assert share == pytest.approx(0.3 / 0.7)
    assert by_feature == pytest.approx({"a": 0.4 / 0.7, "b": 0.1 / 0.7, "pred": 0.2 / 0.7})
    assert weighted_drifted_share(["x", "y"], [True, False], weights) is None


def table(drifted: dict[str, bool]) -> pd.DataFrame:
    return pd.DataFrame({"feature": list(drifted), "drifted": list(drifted.values())})


def test_drift_in_ignored_features_does_not_drift_the_verdict() -> None:
    features = table({"noise_1": True, "noise_2": True, "signal": False, "prediction": False})
    weights = importance_weights({"signal": 10.0}, ["noise_1", "noise_2", "signal"], ["prediction"])
    assert dataset_verdict(features, 0.3).drifted  # counted alike: 2/4 = 50% >= 30%
    verdict = dataset_verdict(features, 0.3, weights=weights)
    assert not verdict.drifted and verdict.drifted_share == 0.0 and verdict.n_drifted == 2
    assert verdict.reason.startswith("stable: 2/4 features drifted, importance-weighted 0%")
    assert "noise_1 (weight 0.00)" in verdict.reason
    # Even a zero threshold is not met by drift that weighs nothing.
    assert not dataset_verdict(features, 0.0, weights=weights).drifted


def test_drift_in_the_feature_the_model_relies_on_drifts_the_verdict() -> None:
    features = table({"noise_1": False, "noise_2": False, "signal": True, "prediction": False})
    weights = importance_weights(
        {"signal": 9.0, "noise_1": 1.0}, ["noise_1", "noise_2", "signal"], ["prediction"]
    )
    assert not dataset_verdict(features, 0.3).drifted  # counted alike: 1/4 = 25% < 30%
    verdict = dataset_verdict(features, 0.3, weights=weights)
    assert verdict.drifted and verdict.drifted_share == pytest.approx(0.9 * 0.75)
    assert verdict.drifted_features == ("signal",)
    assert verdict.reason == "1/4 features drifted, importance-weighted 68% >= 30%: signal (weight 0.68)"


def test_weights_that_cover_no_judged_feature_fall_back_to_the_count_and_say_so() -> None:
    features = table({"a": True, "b": False})
    verdict = dataset_verdict(features, 0.5, weights={"other": 1.0})
    assert verdict.drifted and verdict.drifted_share == 0.5
    assert "no feature has an importance weight: counted unweighted" in verdict.reason


def test_the_reason_names_where_the_performance_drop_comes_from() -> None:
    features = table({"a": False, "b": False})
    estimated = {"metric": "roc_auc", "reference": 0.8, "current": 0.6, "source": "estimated"}
    verdict = dataset_verdict(features, 0.5, estimated, performance_drop_threshold=0.2)
    assert verdict.drifted and verdict.reason == "estimated performance dropped 66.7% >= 20%"
    realized = {**estimated, "source": "realized", "current": 0.78}
    stable = dataset_verdict(features, 0.5, realized, performance_drop_threshold=0.2)
    assert not stable.drifted and stable.reason.endswith(", realized performance drop 6.7%")
    unnamed = {"metric": "roc_auc", "reference": 0.8, "current": 0.6}
    assert dataset_verdict(features, 0.5, unnamed, 0.2).reason == "performance dropped 66.7% >= 20%"
    with pytest.raises(ValueError, match="source"):
        dataset_verdict(features, 0.5, {**estimated, "source": "guessed"}, 0.2)


def test_importance_weighting_keeps_each_features_effect_size_rule() -> None:
    rng = np.random.default_rng(5)
    reference = pd.DataFrame({"used": rng.normal(size=4000), "ignored": rng.normal(size=4000)})
    profile = build_profile(reference, ["used", "ignored"], [])
    current = pd.DataFrame({"used": rng.normal(size=4000), "ignored": rng.normal(2.0, 1.0, size=4000)})
    features = feature_drift(profile, current, DriftThresholds())
    assert features.set_index("feature")["drifted"].to_dict() == {"used": False, "ignored": True}
    weights = importance_weights({"used": 1.0, "ignored": 0.0}, ["used", "ignored"], [])
    assert dataset_verdict(features, 0.5).drifted
    assert not dataset_verdict(features, 0.5, weights=weights).drifted
