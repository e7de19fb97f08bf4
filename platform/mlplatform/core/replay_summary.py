"""The replay's summary (mlplatform.replay): per policy, what its retraining bought against the static
model and the every_period ceiling, and how close the label-free estimate came to the realized metric.
Pure: replay.csv's rows in, replay_summary.csv's rows out.
"""

from __future__ import annotations

import math

import pandas as pd

from mlplatform.core.metrics import higher_is_better, improvement

CEILING, BASELINE = "every_period", "static"
SUMMARY_COLUMNS = (
    "policy", "metric", "direction", "retrains", "mean_metric", "gain_captured", "retrain_share",
    "train_seconds", "estimate_mae",
)  # fmt: skip


def summarise(replay: pd.DataFrame) -> pd.DataFrame:
    """One row per policy, columns SUMMARY_COLUMNS, from replay.csv's rows:

    * mean_metric: the mean of the period metric (periods where it is undefined are skipped);
    * gain_captured: (policy - static) / (every_period - static) of mean_metric, the share of the
      ceiling's gain over the static model that the policy captured. Both differences point the same
      way, so the share reads the same for higher- and lower-is-better metrics: 1 is the ceiling's
      gain, 0 none, above 1 more than the ceiling. NaN without both policies, or when every_period was
      no better than static (no gain to share);
    * retrain_share: retrains / every_period's retrains (NaN without it, or when it retrained nothing);
    * estimate_mae: the mean |estimated_error - realized_on_estimate_window| over the periods with a
      label-free estimate (NaN with none: regression, or drift reports without an estimate).
    """
    if replay.empty:
        return pd.DataFrame(columns=list(SUMMARY_COLUMNS))
    metric = str(replay["metric"].iloc[0])
    by_policy = replay.groupby("policy", sort=False)
    summary = by_policy.agg(
        retrains=("retrained", "sum"),
        mean_metric=("metric_value", "mean"),
        train_seconds=("train_seconds", "sum"),
    )
    estimate_errors = (replay["estimated_error"] - replay["realized_on_estimate_window"]).abs()
    summary["estimate_mae"] = estimate_errors.groupby(replay["policy"], sort=False).mean()
    means, retrains = summary["mean_metric"], summary["retrains"].astype(int)
    static, ceiling = means.get(BASELINE, math.nan), means.get(CEILING, math.nan)
    ceiling_gain = improvement(metric, ceiling, static)
    summary["gain_captured"] = [
        improvement(metric, mean, static) / ceiling_gain if ceiling_gain > 0 else math.nan for mean in means
    ]
    ceiling_retrains = int(retrains.get(CEILING, 0))
    summary["retrain_share"] = retrains / ceiling_retrains if ceiling_retrains > 0 else math.nan
    summary["retrains"] = retrains
    summary["train_seconds"] = summary["train_seconds"].round(1)
    summary["metric"] = metric
    summary["direction"] = "higher is better" if higher_is_better(metric) else "lower is better"
    return summary.reset_index()[list(SUMMARY_COLUMNS)]
