"""Evaluation: the challenger, the champion and a naive baseline scored on one test window, and the
promotion decision (`core.promotion`) on those scores. The caller loads the models and acts on the
decision; nothing here reads or writes a registry.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from mlplatform.core.metrics import PRIMARY_METRIC, baseline_predictions, best_baseline, compute_metrics
from mlplatform.core.promotion import PromotionDecision, decide_promotion
from mlplatform.core.splits import SPLIT_COLUMN
from mlplatform.core.training import TrainedModel, predict
from mlplatform.specs.loader import SpecError
from mlplatform.specs.model import DatasetSpec

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
    # Only the training labels, not a copy of every training row (8M rows of 10M at scale).
    test, train_target = split_rows(frame, "test"), frame.loc[frame[SPLIT_COLUMN] == "train", target]
    challenger_scores, challenger_metrics = score(challenger.model, test, target)
    baselines = baseline_predictions(
        task, train_target, test, spec.time_column, target, frame, spec.entity_key, challenger.model.classes
    )
    baseline_name, baseline_metrics = best_baseline(task, test[target], baselines, challenger.model.classes)
    result = Evaluation(
        metric,
        challenger.version,
        challenger.run_id,
        challenger_metrics,
        baseline_name,
        baseline_metrics,
        PromotionDecision(False, "not decided"),
        champion_version=None if champion is None else champion.version,
    )
    if result.is_recheck:
        result.decision = PromotionDecision(False, f"version {challenger.version} is already the champion")
        result.champion = challenger_metrics
        return result, challenger_scores
    if champion is not None:
        result.champion = _champion_metrics(champion, test, target, result.notes)
    result.decision = _decide(spec, result)
    return result, challenger_scores


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
