"""LightGBM training on a Dask cluster (`lightgbm.dask`), giving the TrainedModel `train_lightgbm` gives.

The encoding is the local one: categorical levels and classes fixed from the train rows (found with
Dask, one pass over the data together with the finiteness checks), features prepared per partition
by `prepare_features`, labels mapped by `encode_labels`. Early stopping cannot run inside a
distributed training (see mlplatform.core.early_stopping), so the rounds are built in chunks of twice
`early_stopping_rounds`, each continuing the last (init_model), the validation curve is replayed on the
driver after each, and the booster is cut back at the iteration lgb.early_stopping would have picked.
Chunks continue the same trees only where training draws no random numbers: with bagging or
feature_fraction below 1 each chunk restarts LightGBM's generators from the seed.

Every task trains through `DaskLGBMRegressor`, the objective (binary, multiclass) set explicitly:
`DaskLGBMClassifier` label-encodes each worker's own labels, so a worker whose partitions miss a
class would train on different label codes (or another num_class) than its peers. The labels here are
already 0..k-1 for every worker.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import dask
import dask.dataframe as dd
import lightgbm as lgb
import numpy as np
import pandas as pd

from mlplatform.core.early_stopping import (
    early_stopping_iteration,
    is_dart,
    stop_within,
    truncated,
    validation_curve,
)
from mlplatform.core.metrics import infer_classes
from mlplatform.core.training import (
    CategoricalLevels,
    TrainedModel,
    _encode_target,
    _training_classes,
    check_finite,
    default_categoricals,
    prepare_features,
)
from mlplatform.core.training_lgb_params import (
    THREAD_PARAMS,
    check_same_config,
    resolved_config,
    sklearn_arguments,
)
from mlplatform.core.training_window import recency_weights

LABEL = "__mlplatform_label__"
WEIGHT = "__mlplatform_weight__"
# Rounds per chunk of a training that stops early, in early_stopping_rounds: each chunk rebuilds the
# workers' datasets, and 2 means at most that many rounds are built past the stop.
CHUNK_STOPPING_ROUNDS = 2


def worker_threads(client: Any) -> int:
    """Threads of the cluster's smallest worker: what lightgbm.dask gives LightGBM on each worker."""
    threads = client.nthreads()
    if not threads:
        raise ValueError("the Dask cluster has no workers")
    return int(min(threads.values()))


def dask_recency_weights(times: dd.Series, half_life: timedelta) -> dd.Series:
    """`recency_weights` of every row of `times`, the age counted back from its newest row (one pass
    to find it, then per partition)."""
    newest = pd.Timestamp(dd.to_datetime(times).max().compute())
    return times.map_partitions(
        lambda part: pd.Series(recency_weights(part, half_life, newest), index=part.index, dtype="float64"),
        meta=(WEIGHT, "float64"),
    )


def _distinct(series: pd.Series) -> pd.Series:
    """A partition's distinct non-null values in first-seen order (as objects: categories included)."""
    values = series.astype("object") if isinstance(series.dtype, pd.CategoricalDtype) else series
    return pd.Series(values.dropna().unique(), dtype="object")


def _nonfinite(series: pd.Series) -> pd.Series:
    return pd.Series([int((~np.isfinite(series.to_numpy(dtype=np.float64))).sum())])


def _infinite(series: pd.Series) -> pd.Series:
    return pd.Series([int(np.isinf(series.to_numpy(dtype=np.float64)).sum())])


@dataclass(frozen=True)
class _TrainFacts:
    """What one pass over the train rows tells: encodings, and whether they can be trained on."""

    levels: CategoricalLevels
    classes: list[Any] | None
    rows: int


def _train_facts(frame: dd.DataFrame, task: str, categorical: Sequence[str], weighted: bool) -> _TrainFacts:
    """Levels, classes and row count, refusing (ValueError) what `train_lightgbm` refuses: infinite
    features, non-finite regression targets, bad weights."""
    numeric = [c for c in frame.columns if c not in categorical and c not in (LABEL, WEIGHT)]
    work: dict[str, Any] = {
        "rows": frame.map_partitions(len).sum(),
        "levels": {c: frame[c].map_partitions(_distinct, meta=(c, "object")) for c in categorical},
        "infinite": {c: frame[c].map_partitions(_infinite, meta=(c, "int64")).sum() for c in numeric},
    }
    if task == "regression":
        work["bad_labels"] = frame[LABEL].map_partitions(_nonfinite, meta=(LABEL, "int64")).sum()
    else:
        work["labels"] = frame[LABEL].map_partitions(_distinct, meta=(LABEL, "object"))
    if weighted:
        weight = frame[WEIGHT].astype("float64")
        work["weight_bad"] = (
            weight.map_partitions(_nonfinite, meta=(WEIGHT, "int64")).sum() + (weight < 0).sum()
        )
        work["weight_positive"] = (weight > 0).sum()
    (found,) = dask.compute(work)
    infinite = {column: int(count) for column, count in found["infinite"].items() if count}
    if infinite:
        column, count = next(iter(infinite.items()))
        raise ValueError(
            f"feature column {column!r} holds {count:,} infinite value(s) in the training rows; "
            "LightGBM cannot train on them: clean them in the source or the spec"
        )
    if found.get("bad_labels"):
        raise ValueError(
            f"the target holds {int(found['bad_labels']):,} missing or infinite value(s) in the training "
            "rows; LightGBM cannot train on them: clean them in the source or the spec"
        )
    if weighted and (found["weight_bad"] or not found["weight_positive"]):
        raise ValueError("sample weights must be finite and non-negative, and not all zero")
    levels = {column: infer_classes(found["levels"][column]) for column in categorical}
    classes = None if task == "regression" else _training_classes(task, found["labels"])
    return _TrainFacts(levels, classes, int(found["rows"]))


def _prepared_partition(
    part: pd.DataFrame, task: str, features: list[str], levels: CategoricalLevels, classes: list[Any] | None
) -> pd.DataFrame:
    """One partition as LightGBM trains on it: prepared features, the encoded label, the weight."""
    prepared = prepare_features(part, features, levels)
    prepared[LABEL] = np.asarray(_encode_target(task, part[LABEL], classes), dtype=np.float64)
    if WEIGHT in part.columns:
        prepared[WEIGHT] = part[WEIGHT].astype("float64")
    return prepared


def _empty_like(frame: dd.DataFrame) -> pd.DataFrame:
    """A zero-row pandas frame with `frame`'s columns and dtypes."""
    return pd.DataFrame({column: pd.Series(dtype=dtype) for column, dtype in frame.dtypes.items()})


def _nonempty(frame: dd.DataFrame) -> dd.DataFrame:
    """`frame` without its empty partitions (a LightGBM worker cannot build a dataset of no rows)."""
    lengths = frame.map_partitions(len).compute().tolist()
    keep = [index for index, length in enumerate(lengths) if length]
    if not keep:
        raise ValueError("cannot train on zero rows")
    return frame if len(keep) == len(lengths) else frame.partitions[keep]


def _training_frame(X: dd.DataFrame, y: dd.Series, weight: dd.Series | None) -> dd.DataFrame:
    """Features, label and weight in one frame, so partitions stay aligned through every step."""
    frame = X.assign(**{LABEL: y})
    return frame.assign(**{WEIGHT: weight}) if weight is not None else frame


def _fit_booster(
    client: Any,
    prepared: dd.DataFrame,
    features: list[str],
    params: Mapping[str, Any],
    rounds: int,
    categorical: list[str],
    init_model: lgb.Booster | None = None,
) -> lgb.Booster:
    """`rounds` more rounds of data-parallel training after `init_model`'s trees (lightgbm.dask hands it to
    every worker's LGBMRegressor.fit); the driver's copy of the booster, `init_model`'s trees included."""
    workers = len(client.nthreads())
    if prepared.npartitions < workers:  # every worker should hold rows to train on
        prepared = prepared.repartition(npartitions=workers)
    overrides = {key: value for key, value in params.items() if key not in THREAD_PARAMS}
    config = resolved_config(overrides, len(features))
    estimator = lgb.DaskLGBMRegressor(client=client, **sklearn_arguments(config, overrides, rounds))
    weight = prepared[WEIGHT] if WEIGHT in prepared.columns else None
    with warnings.catch_warnings():
        # lightgbm.dask sets each worker's num_threads itself and says so for sklearn's n_jobs=None.
        warnings.filterwarnings("ignore", message="Parameter n_jobs will be ignored")
        estimator.fit(
            prepared[features],
            prepared[LABEL],
            sample_weight=weight,
            categorical_feature=categorical,
            init_model=init_model,
        )
    booster = estimator.booster_
    check_same_config(booster, config)
    return booster


def _train_until_stopped(
    client: Any,
    prepared: dd.DataFrame,
    features: list[str],
    params: Mapping[str, Any],
    categorical: list[str],
    valid: tuple[pd.DataFrame, np.ndarray] | None,
    rounds: tuple[int, int],
) -> tuple[lgb.Booster, int]:
    """(booster, best_iteration) as train_lightgbm's early stopping would give them. lightgbm.dask cannot
    stop early, so the rounds are trained in chunks (CHUNK_STOPPING_ROUNDS x early_stopping_rounds, each
    continuing the last: init_model), and after each chunk the validation curve is replayed: once the rule
    fires, no chunk more. Without a validation window (or with dart) all `num_boost_round` rounds."""
    num_boost_round, early_stopping_rounds = rounds
    stops = valid is not None and not is_dart(params) and early_stopping_rounds > 0
    chunk = CHUNK_STOPPING_ROUNDS * early_stopping_rounds if stops else num_boost_round
    booster: lgb.Booster | None = None
    while True:
        trained = booster.current_iteration() if booster is not None else 0
        asked = min(chunk, num_boost_round - trained)
        booster = _fit_booster(client, prepared, features, params, asked, categorical, booster)
        if not stops:
            return booster, booster.current_iteration()
        assert valid is not None
        curve = validation_curve(booster, valid[0], valid[1], params)
        best = stop_within(curve, early_stopping_rounds)
        no_more_splits = booster.current_iteration() < trained + asked
        if best is not None or no_more_splits or booster.current_iteration() >= num_boost_round:
            return booster, best or early_stopping_iteration(curve, early_stopping_rounds, num_boost_round)


def train_lightgbm_dask(
    client: Any,
    task: str,
    X_train: dd.DataFrame,
    y_train: dd.Series,
    X_valid: pd.DataFrame | None,
    y_valid: pd.Series | np.ndarray | None,
    params: Mapping[str, Any],
    num_boost_round: int,
    early_stopping_rounds: int,
    categorical_features: Sequence[str] | None = None,
    weight: dd.Series | None = None,
) -> TrainedModel:
    """`train_lightgbm` with the train rows on a Dask cluster (same arguments, same result kind).

    `X_train`, `y_train` and `weight` must be partitioned alike (columns of one frame). The returned
    booster is the driver's copy cut at `best_iteration`; the trees built past it (up to a chunk,
    `_train_until_stopped`) are discarded.
    `training_seconds` covers the distributed fit and the early-stopping replay."""
    if categorical_features is None:
        categorical_features = default_categoricals(_empty_like(X_train))
    categorical = list(categorical_features)
    features = [str(column) for column in X_train.columns]
    frame = _nonempty(_training_frame(X_train, y_train, weight))
    facts = _train_facts(frame, task, categorical, weight is not None)
    train_params = dict(params)
    if task == "multiclass":
        assert facts.classes is not None
        train_params["num_class"] = len(facts.classes)
    meta = _prepared_partition(_empty_like(frame), task, features, facts.levels, facts.classes)
    prepared = frame.map_partitions(
        _prepared_partition, task, features, facts.levels, facts.classes, meta=meta
    )
    valid = None
    if X_valid is not None and y_valid is not None and len(X_valid) > 0:
        valid_features = prepare_features(X_valid, features, facts.levels)
        valid_label = _encode_target(task, y_valid, facts.classes)
        check_finite(valid_features, valid_label, "validation")
        valid = (valid_features, np.asarray(valid_label, dtype=np.float64))

    started = time.perf_counter()
    rounds = (num_boost_round, early_stopping_rounds)
    booster, best = _train_until_stopped(client, prepared, features, train_params, categorical, valid, rounds)
    seconds = time.perf_counter() - started
    return TrainedModel(
        task=task,
        booster=truncated(booster, best),
        best_iteration=int(best),
        feature_names=features,
        categorical_levels=facts.levels,
        classes=facts.classes,
        training_seconds=seconds,
    )
