"""The champion's outputs on rows of `features`, named like the predictions table.

The reference profile needs the champion's outputs on its own training, validation and test rows.
The predictions table already holds them for every row the champion scored: `champion_outputs` takes
a row's stored scores when the table has a prediction of the same model version for the same row
key and the same inputs (`scoring.inputs_hash_sql`), and scores only the other rows. A stored score is
the float the model returned for those inputs, so the result equals scoring every row again.
"""

from __future__ import annotations

from dataclasses import dataclass

import duckdb
import numpy as np
import pandas as pd

from mlplatform.contracts import Stage
from mlplatform.core.row_identity import matching_keys
from mlplatform.core.scoring import (
    INPUTS_HASH_COLUMN,
    MODEL_VERSION_COLUMN,
    PREDICTION_COLUMN,
    labels_from_scores,
    probability_columns,
)
from mlplatform.core.sql import column_types, quote_ident
from mlplatform.core.training import TrainedModel, predict
from mlplatform.core.warehouse import table_exists, table_name
from mlplatform.specs.model import DatasetSpec

_PROBE_VIEW = "_champion_outputs_probe"
_ROW = "_row"


def score_columns(model: TrainedModel) -> list[str]:
    """The predictions table's columns that hold the model's raw scores."""
    return [PREDICTION_COLUMN] if model.task == "regression" else probability_columns(model)


def outputs_frame(model: TrainedModel, scores: np.ndarray, index: pd.Index) -> pd.DataFrame:
    """`prediction`, and for classification `probability` (binary) or `probability_<class>`
    (multiclass), from the model's scores on the rows of `index`."""
    if model.task == "regression":
        return pd.DataFrame({PREDICTION_COLUMN: scores}, index=index)
    matrix = scores.reshape(-1, 1) if model.task == "binary" else scores
    frame = pd.DataFrame(matrix, columns=probability_columns(model), index=index)
    frame.insert(0, PREDICTION_COLUMN, labels_from_scores(model.task, scores, model.classes))
    return frame


def model_outputs(model: TrainedModel, rows: pd.DataFrame) -> pd.DataFrame:
    """The model's outputs on `rows`, every row scored."""
    return outputs_frame(model, predict(model, rows), rows.index)


@dataclass(frozen=True)
class ChampionOutputs:
    frame: pd.DataFrame  # model_outputs' columns, on the rows' index
    reused: int  # rows whose scores came from the predictions table


def _stored_scores(
    conn: duckdb.DuckDBPyConnection, spec: DatasetSpec, model: TrainedModel, version: int, rows: pd.DataFrame
) -> tuple[np.ndarray, np.ndarray] | None:
    """(positions in `rows`, their scores as an n x k matrix) of the rows the predictions table has
    scored by `version` from the same inputs; None when the table cannot say (absent, or written
    before it kept the inputs' hash). Rows are matched on `row_identity.matching_keys` and the hash."""
    if INPUTS_HASH_COLUMN not in rows or not table_exists(conn, spec.name, Stage.PREDICTIONS):
        return None
    predictions = table_name(spec.name, Stage.PREDICTIONS)
    keys = [k for k in matching_keys(spec) if k in rows.columns]
    scores = score_columns(model)
    if not keys or not {INPUTS_HASH_COLUMN, MODEL_VERSION_COLUMN, *keys, *scores} <= set(
        column_types(conn, predictions)
    ):
        return None
    probe = rows[list(dict.fromkeys([spec.time_column, *keys, INPUTS_HASH_COLUMN]))].reset_index(drop=True)
    probe[_ROW] = np.arange(len(rows), dtype=np.int64)
    matched = [*keys, INPUTS_HASH_COLUMN]
    on = " AND ".join(f"r.{quote_ident(c)} = p.{quote_ident(c)}" for c in matched)
    # Rows of one key and inputs hold the same scores (one model, the same inputs): any of them.
    group = ", ".join(quote_ident(c) for c in matched)
    picked = ", ".join(f"any_value({quote_ident(c)}) AS {quote_ident(c)}" for c in scores)
    t = quote_ident(spec.time_column)
    conn.register(_PROBE_VIEW, probe)
    try:
        found = conn.execute(
            f"SELECT r.{_ROW}, {', '.join(f'p.{quote_ident(c)}' for c in scores)} FROM {_PROBE_VIEW} r "
            f"JOIN (SELECT {group}, {picked} FROM {predictions} WHERE {quote_ident(MODEL_VERSION_COLUMN)} = ? "
            f"AND {t} BETWEEN (SELECT min({t}) FROM {_PROBE_VIEW}) AND (SELECT max({t}) FROM {_PROBE_VIEW}) "
            f"GROUP BY {group}) p ON {on}",
            [version],
        ).fetchnumpy()
    finally:
        conn.unregister(_PROBE_VIEW)
    matrix = np.column_stack([np.asarray(found[c], dtype=np.float64) for c in scores])
    return np.asarray(found[_ROW], dtype=np.int64), matrix


def champion_outputs(
    conn: duckdb.DuckDBPyConnection, spec: DatasetSpec, model: TrainedModel, version: int, rows: pd.DataFrame
) -> ChampionOutputs:
    """`model_outputs(model, rows)`, its scores taken from the predictions table where it holds this
    version's scores of the same rows from the same inputs (`rows` read with
    `training_data.champion_split_rows(..., hashed_inputs=model.feature_names)`), the other rows
    scored here."""
    stored = _stored_scores(conn, spec, model, version, rows) if len(rows) else None
    if stored is None or not len(stored[0]):
        return ChampionOutputs(model_outputs(model, rows), 0)
    positions, found = stored
    matrix = np.empty((len(rows), found.shape[1]), dtype=np.float64)
    matrix[positions] = found
    missing = np.ones(len(rows), dtype=bool)
    missing[positions] = False
    if missing.any():
        scored = predict(model, rows.iloc[np.flatnonzero(missing)])
        matrix[missing] = scored.reshape(int(missing.sum()), -1)
    scores = matrix if model.task == "multiclass" else matrix[:, 0]
    return ChampionOutputs(outputs_frame(model, scores, rows.index), len(positions))
