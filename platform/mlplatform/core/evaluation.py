"""Evaluation: the challenger, the champion and a naive baseline scored on one test window, and the
promotion decision (`core.promotion`) on those scores. The baseline is the best naive one on the
validation window (`choose_baseline`), never picked on the test rows it is then scored on. The
caller loads the models and acts on the decision; nothing here reads or writes a registry.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import numpy as np
import pandas as pd

from mlplatform.core.metrics import (
    PRIMARY_METRIC,
    baseline_predictions,
    best_baseline,
    compute_metrics,
    describe_baseline,
    natural_seasons,
)
from mlplatform.core.promotion import PromotionDecision, decide_promotion
from mlplatform.core.splits import SPLIT_COLUMN
from mlplatform.core.training import TrainedModel, predict
from mlplatform.specs.loader import SpecError
from mlplatform.specs.model import DatasetSpec, parse_duration

TASK_METRICS = {
    "regression": ("mae", "rmse", "r2", "mape"),
    "binary": ("roc_auc", "pr_auc", "log_loss", "brier", "accuracy", "f1"),
    "multiclass": ("log_loss", "macro_f1", "accuracy"),
}


def promotion_metric(spec: DatasetSpec) -> str:
    """The metric promotion compares: spec `promotion.metric`, else the task's primary metric."""
    metric = spec.promotion.metric or PRIMARY_METRIC[spec.target.task]
    known = TASK_METRICS[spec.target.task]
    if metric not in known:
        raise SpecError(
            f"spec file {spec.spec_path}: key 'promotion.metric': {metric!r} is not a {spec.target.task} "
            f"metric (one of: {', '.join(known)})"
        )
    return metric


@dataclass(frozen=True)
class Challenger:
    """The model version under evaluation and the tracking run that trained it."""

    version: int
    run_id: str
    model: TrainedModel


@dataclass(frozen=True)
class Champion:
    """The version the champion alias points at; `model` None with `unusable` saying why it is not
    there (it could not be loaded). When it is the challenger's version, `model` is not needed."""

    version: int
    model: TrainedModel | None = None
    unusable: str | None = None


@dataclass
class Evaluation:
    metric: str
    challenger_version: int
    challenger_run_id: str
    challenger: dict[str, float]
    baseline_name: str
    baseline: dict[str, float]
    decision: PromotionDecision
    champion_version: int | None = None
    champion: dict[str, float] | None = None
    notes: list[str] = field(default_factory=list)
    # How the baseline was chosen: each candidate's `metric` on the rows it was chosen on.
    baseline_candidates: dict[str, float] = field(default_factory=dict)
    baseline_chosen_on: str = "validation"

    @property
    def baseline_choice(self) -> str:
        """One line for the report: which baseline, what it predicts, and what it was chosen from."""
        scores = ", ".join(f"{name} {value:.4g}" for name, value in self.baseline_candidates.items())
        return (
            f"{self.baseline_name} ({describe_baseline(self.baseline_name)}): best {self.metric} on the "
            f"{self.baseline_chosen_on} rows of {scores}"
        )

    @property
    def is_recheck(self) -> bool:
        """The challenger already is the champion (no new model since it was promoted)."""
        return self.champion_version == self.challenger_version


def split_rows(frame: pd.DataFrame, split: str) -> pd.DataFrame:
    """The rows of one split ("train", "validation" or "test") of a training set."""
    return frame[frame[SPLIT_COLUMN] == split]


def score(model: TrainedModel, test: pd.DataFrame, target: str) -> tuple[np.ndarray, dict[str, float]]:
    """The model's scores on `test` and the task's metrics of them."""
    scores = predict(model, test)
    return scores, compute_metrics(model.task, test[target], scores, model.classes)


def evaluate(
    spec: DatasetSpec, frame: pd.DataFrame, challenger: Challenger, champion: Champion | None
) -> tuple[Evaluation, np.ndarray]:
    """Score the challenger, the champion and the baseline on the test split of training set `frame`
    and decide the promotion (without acting on it). Returns the evaluation and the challenger's scores.
    """
    target, task = spec.target.column, spec.target.task
    metric = promotion_metric(spec)
    test = split_rows(frame, "test")
    challenger_scores, challenger_metrics = score(challenger.model, test, target)
    choice = choose_baseline(spec, frame, metric, challenger.model.classes)
    baselines = _baselines(spec, frame, test, choice.classes, choice.seasons)
    baseline_metrics = compute_metrics(task, test[target], baselines[choice.name], choice.classes)
    result = Evaluation(
        metric,
        challenger.version,
        challenger.run_id,
        challenger_metrics,
        choice.name,
        baseline_metrics,
        PromotionDecision(False, "not decided"),
        champion_version=None if champion is None else champion.version,
        baseline_candidates=choice.candidates,
        baseline_chosen_on=choice.rows,
    )
    if result.is_recheck:
        result.decision = PromotionDecision(False, f"version {challenger.version} is already the champion")
        result.champion = challenger_metrics
        return result, challenger_scores
    if champion is not None:
        result.champion = _champion_metrics(champion, test, target, result.notes)
    result.decision = _decide(spec, result)
    return result, challenger_scores


def label_delay(spec: DatasetSpec) -> timedelta | None:
    """How late the spec says labels are known: its shortest lag or rolling gap on the target. None
    when no feature reads past targets: then the baselines offer no `last_value`, while every natural
    seasonal lag (a day, a week) is still offered (see metrics.baseline_predictions)."""
    target = spec.target.column
    delays = [parse_duration(lag.lag) for lag in spec.features.lags if lag.column == target]
    delays += [parse_duration(r.gap) for r in spec.features.rolling if r.column == target]
    return min(delays, default=None)


@dataclass(frozen=True)
class BaselineChoice:
    name: str
    candidates: dict[str, float]  # each baseline's metric on the rows it was chosen on
    rows: str  # which rows: "validation", or "training" when the validation split is empty
    classes: list[Any] | None
    seasons: list[timedelta]  # of the seasonal-lag baselines (found once: it sorts every row)


def _baselines(
    spec: DatasetSpec,
    frame: pd.DataFrame,
    rows: pd.DataFrame,
    classes: list[Any] | None,
    seasons: list[timedelta],
) -> dict[str, np.ndarray]:
    train_target = frame.loc[frame[SPLIT_COLUMN] == "train", spec.target.column]
    return baseline_predictions(
        spec.target.task,
        train_target,
        rows,
        spec.time_column,
        spec.target.column,
        frame,
        spec.entity_key,
        classes,
        label_delay=label_delay(spec),
        seasons=seasons,
    )


def choose_baseline(
    spec: DatasetSpec, frame: pd.DataFrame, metric: str, classes: list[Any] | None
) -> BaselineChoice:
    """The naive baseline a model must beat: the best by `metric` on the validation rows (never the
    test rows the models are judged on), among those `baseline_predictions` offers for the data."""
    rows, chosen_on = split_rows(frame, "validation"), "validation"
    if rows.empty:
        rows, chosen_on = split_rows(frame, "train"), "training"
    entities = frame[spec.entity_key] if spec.entity_key else None
    seasons = natural_seasons(frame[spec.time_column], entities) if spec.target.task == "regression" else []
    baselines = _baselines(spec, frame, rows, classes, seasons)
    y = rows[spec.target.column]
    task = spec.target.task
    candidates = {
        name: compute_metrics(task, y, values, classes).get(metric, math.nan)
        for name, values in baselines.items()
    }
    name, _ = best_baseline(task, y, baselines, classes, metric)
    return BaselineChoice(name, candidates, chosen_on, classes, seasons)


def _champion_metrics(
    champion: Champion, test: pd.DataFrame, target: str, notes: list[str]
) -> dict[str, float] | None:
    """The champion's test metrics; None, with a note why, if it cannot score the test window."""
    problem = champion.unusable
    if champion.model is not None:
        try:
            return score(champion.model, test, target)[1]
        except (ValueError, TypeError) as error:
            problem = str(error)
    # The champion cannot read today's features (a spec change): it could not serve them either.
    notes.append(f"champion version {champion.version} cannot score the test window: {problem}")
    return None


def _decide(spec: DatasetSpec, result: Evaluation) -> PromotionDecision:
    metric = result.metric
    champion_value = None if result.champion is None else result.champion.get(metric, math.nan)
    decision = decide_promotion(
        metric,
        result.challenger.get(metric, math.nan),  # a metric undefined here (e.g. MAPE) never wins
        champion_value,
        result.baseline.get(metric, math.nan),
        spec.promotion.min_improvement,
    )
    if result.notes:
        return PromotionDecision(decision.promote, f"{result.notes[0]}; {decision.reason}")
    return decision
