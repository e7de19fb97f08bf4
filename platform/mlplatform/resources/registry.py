"""The registry side of champion/challenger: logging models, aliases, promotion history and rollback.

Plain functions over `MlflowResource`, so the Dagster assets and the `mlplatform rollback` command
move the `champion` alias the same way and keep the same history.

History: every change of the champion (promotion or `rollback --to`) appends the new version to a tag
of the registered model; a plain rollback drops the current champion from the end and returns to the
one before. So rollback undoes promotions one at a time, like an undo stack.
"""

from __future__ import annotations

import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from mlflow.models.model import ModelInfo

from mlplatform.core.training import TrainedModel, load_model, predict, save_model
from mlplatform.resources.mlflow import MlflowResource

CHAMPION = "champion"
CHALLENGER = "challenger"
MODEL_NAME_IN_RUN = "model"
MODEL_ARTIFACT_KEY = "lightgbm"  # the save_model folder inside an MLflow model's artifacts
# Logged as code, not imported here: importing it would register it as MLflow's "current" model.
PYFUNC_FILE = Path(__file__).with_name("lightgbm_pyfunc.py")
HISTORY_TAG = "mlplatform.champion_history"
_HISTORY_KEEP = 200  # MLflow tag values are limited in length; old history matters least
_TAG_VALUE_LIMIT = 5000


class RegistryError(ValueError):
    """The registry cannot do what was asked (no such model, version or earlier champion)."""


@dataclass(frozen=True)
class ChampionChange:
    model_name: str
    previous: int | None
    current: int


def tag_value(value: Any) -> str:
    return str(value)[:_TAG_VALUE_LIMIT]


def log_lightgbm_model(model: TrainedModel, input_example: pd.DataFrame, work_dir: Path) -> ModelInfo:
    """Log `model` to the active run as an MLflow pyfunc model holding the LightGBM text file.

    The signature and input example are in the raw feature columns the platform scores (categories as
    text, numbers as float), because the wrapper prepares features exactly like training.
    """
    import lightgbm
    import sklearn

    folder = save_model(model, work_dir / MODEL_ARTIFACT_KEY)
    signature = mlflow.models.infer_signature(input_example, predict(model, input_example))
    return mlflow.pyfunc.log_model(
        name=MODEL_NAME_IN_RUN,
        python_model=str(PYFUNC_FILE),
        artifacts={MODEL_ARTIFACT_KEY: str(folder)},
        signature=signature,
        input_example=input_example,
        # Explicit requirements: inferring them would load the model in a subprocess, which is slow.
        pip_requirements=[
            f"lightgbm=={lightgbm.__version__}",
            f"pandas=={pd.__version__}",
            f"scikit-learn=={sklearn.__version__}",
            f"mlflow=={mlflow.__version__}",
        ],
    )


def register_version(
    resource: MlflowResource, model_name: str, model_info: ModelInfo, run_id: str, tags: Mapping[str, Any]
) -> ModelVersion:
    """A new version of `model_name` from a logged model, pointed at by the `challenger` alias."""
    resource.ensure_registered_model(model_name)
    version = resource.client().create_model_version(
        name=model_name,
        source=model_info.model_uri,
        run_id=run_id,
        tags={key: tag_value(value) for key, value in tags.items()},
        model_id=model_info.model_id,
        description=(
            "LightGBM model in LightGBM's text format (artifacts/lightgbm/model.txt + model.json) behind a "
            "pyfunc wrapper. Inputs: the feature columns, numbers as float64 (MLflow's advice for integers "
            "that may be missing), categories as text."
        ),
    )
    resource.set_alias(model_name, CHALLENGER, version.version)
    return version


def load_version(resource: MlflowResource, model_name: str, version: str | int) -> TrainedModel:
    """Download a registered version and load its LightGBM text model (no pickle involved)."""
    resource.activate()
    with tempfile.TemporaryDirectory(prefix="mlplatform-model-") as tmp:
        root = Path(mlflow.artifacts.download_artifacts(f"models:/{model_name}/{version}", dst_path=tmp))
        folder = root / "artifacts" / MODEL_ARTIFACT_KEY
        if not folder.is_dir():
            raise RegistryError(
                f"version {version} of {model_name} has no LightGBM text model under artifacts/"
                f"{MODEL_ARTIFACT_KEY}; it was not logged by mlplatform"
            )
        return load_model(folder)  # reads the files into memory, so the download can go


def registered_versions(resource: MlflowResource, model_name: str) -> list[int]:
    found = resource.client().search_model_versions(f"name = '{model_name}'")
    return sorted(int(v.version) for v in found)


def champion_history(resource: MlflowResource, model_name: str) -> list[int]:
    tags = resource.client().get_registered_model(model_name).tags
    return [int(v) for v in tags.get(HISTORY_TAG, "").split(",") if v.strip()]


def _save_history(resource: MlflowResource, model_name: str, history: list[int]) -> None:
    text = ",".join(str(v) for v in history[-_HISTORY_KEEP:])
    resource.client().set_registered_model_tag(model_name, HISTORY_TAG, text)


def _alias_version(resource: MlflowResource, model_name: str, alias: str) -> int | None:
    found = resource.get_alias_version(model_name, alias)
    return None if found is None else int(found.version)


def promote(resource: MlflowResource, model_name: str, version: str | int) -> ChampionChange:
    """Move `champion` to `version` and record it in the champion history."""
    previous = _alias_version(resource, model_name, CHAMPION)
    history = champion_history(resource, model_name)
    if previous is not None and not history:
        history = [previous]  # alias set by hand before any history: keep it reachable for rollback
    resource.set_alias(model_name, CHAMPION, version)
    _save_history(resource, model_name, [*history, int(version)])
    client = resource.client()
    client.set_model_version_tag(model_name, str(version), "previous_champion", str(previous or "none"))
    client.set_model_version_tag(model_name, str(version), "promoted_at", datetime.now(UTC).isoformat())
    return ChampionChange(model_name, previous, int(version))


def rollback(resource: MlflowResource, model_name: str, to: int | None = None) -> ChampionChange:
    """Point `champion` back at the previous champion, or at version `to`."""
    client = resource.client()
    try:
        client.get_registered_model(model_name)
    except MlflowException:
        raise RegistryError(
            f"no registered model {model_name!r} in MLflow at {resource.effective_registry_uri}; "
            f"train it first (mlplatform run --dataset {model_name})"
        ) from None
    current = _alias_version(resource, model_name, CHAMPION)
    history = champion_history(resource, model_name)
    if to is None:
        remaining = list(history)
        while remaining and remaining[-1] == current:
            remaining.pop()
        if not remaining:
            raise RegistryError(
                f"{model_name} has no earlier champion to roll back to (champion: version {current}); "
                "name a version with --to"
            )
        target, new_history = remaining[-1], remaining
    else:
        versions = registered_versions(resource, model_name)
        if to not in versions:
            raise RegistryError(f"{model_name} has no version {to} (versions: {versions})")
        if to == current:
            raise RegistryError(f"version {to} is already the champion of {model_name}")
        target, new_history = to, [*history, to]
    resource.set_alias(model_name, CHAMPION, target)
    _save_history(resource, model_name, new_history)
    note = f"champion by rollback from version {current} at {datetime.now(UTC).isoformat()}"
    client.set_model_version_tag(model_name, str(target), "rollback", note)
    return ChampionChange(model_name, current, target)
