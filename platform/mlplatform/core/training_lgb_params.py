"""The same LightGBM parameters through lightgbm's scikit-learn wrapper (which lightgbm.dask uses).

The wrapper always passes its own constructor defaults (learning_rate=0.1, min_child_samples=20, ...)
beside the caller's parameters. LightGBM then resolves aliases by name, so a spec's `eta: 0.05`
loses to the wrapper's `learning_rate=0.1` and the cluster would train another model than lgb.train.
Here LightGBM itself resolves the parameters first (a booster over a tiny placeholder dataset, whose
model text lists the final configuration), the wrapper's arguments are set to those values, and
after training the booster's configuration is compared with it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import lightgbm as lgb
import numpy as np

# LightGBM's thread parameter and its aliases: lightgbm.dask sets it per worker (the worker's threads).
THREAD_PARAMS = {"num_threads", "num_thread", "nthread", "nthreads", "n_jobs"}

# The wrapper's constructor arguments that are LightGBM parameters: argument -> LightGBM's main name.
_SKLEARN_ARGUMENTS = {
    "boosting_type": "boosting",
    "num_leaves": "num_leaves",
    "max_depth": "max_depth",
    "learning_rate": "learning_rate",
    "subsample_for_bin": "bin_construct_sample_cnt",
    "min_split_gain": "min_gain_to_split",
    "min_child_weight": "min_sum_hessian_in_leaf",
    "min_child_samples": "min_data_in_leaf",
    "subsample": "bagging_fraction",
    "subsample_freq": "bagging_freq",
    "colsample_bytree": "feature_fraction",
    "reg_alpha": "lambda_l1",
    "reg_lambda": "lambda_l2",
}
# Set by the distributed training itself, or describing the data rather than the model.
_NOT_COMPARED = {
    "num_threads", "tree_learner", "num_machines", "machines", "local_listen_port", "time_out",
    "data", "valid", "categorical_feature", "num_iterations",
}  # fmt: skip
_PLACEHOLDER_ROWS = 8


def _model_config(booster: lgb.Booster) -> dict[str, str]:
    """The `parameters:` section of a booster's model text: LightGBM's final configuration."""
    text = booster.model_to_string(num_iteration=0)
    start, end = text.find("\nparameters:\n"), text.find("\nend of parameters")
    config: dict[str, str] = {}
    for line in text[start:end].splitlines():
        if line.startswith("[") and line.endswith("]") and ": " in line:
            key, _, value = line[1:-1].partition(": ")
            config[key] = value
    return config


def resolved_config(params: Mapping[str, Any], features: int) -> dict[str, str]:
    """The configuration LightGBM makes of `params` (aliases resolved, defaults filled in), found on
    a placeholder dataset of `features` columns (all labels 1: valid for every task's objective)."""
    placeholder = np.zeros((_PLACEHOLDER_ROWS, max(features, 1)), dtype=np.float64)
    dataset = lgb.Dataset(placeholder, label=np.ones(_PLACEHOLDER_ROWS), params={"verbosity": -1})
    booster = lgb.Booster(params={"verbosity": -1, **params}, train_set=dataset)
    try:
        return _model_config(booster)
    finally:
        booster.free_dataset()


def _parsed(value: str) -> Any:
    for kind in (int, float):
        try:
            return kind(value)
        except ValueError:
            continue
    return value


def sklearn_arguments(config: Mapping[str, str], params: Mapping[str, Any], rounds: int) -> dict[str, Any]:
    """Arguments of a lightgbm scikit-learn estimator that trains `rounds` rounds with `params`: the
    wrapper's own arguments set to LightGBM's resolution of `params` (`config`), the rest passed on."""
    arguments: dict[str, Any] = {arg: _parsed(config[main]) for arg, main in _SKLEARN_ARGUMENTS.items()}
    arguments["n_estimators"] = rounds
    passed_on = {key: value for key, value in params.items() if key not in arguments}
    return {**passed_on, **arguments}


def check_same_config(booster: lgb.Booster, expected: Mapping[str, str]) -> None:
    """Raise ValueError naming each parameter the trained `booster` used differently from `expected`
    (apart from those the distributed training sets itself)."""
    used = _model_config(booster)
    differing = {
        key: (value, used.get(key))
        for key, value in expected.items()
        if key not in _NOT_COMPARED and used.get(key) != value
    }
    if differing:
        shown = ", ".join(
            f"{key}: {want!r} expected, {got!r} used" for key, (want, got) in sorted(differing.items())
        )
        raise ValueError(f"the Dask training used other LightGBM parameters than the spec asks for: {shown}")
