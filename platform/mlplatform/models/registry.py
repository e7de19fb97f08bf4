"""The registry side of champion/challenger: logging models, aliases, promotion history and rollback.

Plain functions over `MlflowResource`, so the Dagster assets and the `mlplatform rollback` command
move the `champion` alias the same way and keep the same history.

History: every change of the champion (promotion or `rollback --to`) appends the new version to a tag
of the registered model; a plain rollback drops the current champion from the end and returns to the
one before. So rollback undoes promotions one at a time, like an undo stack.
"""

from __future__ import annotations

import tempfile
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd
from mlflow.data.dataset_source_registry import resolve_dataset_source
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from mlflow.models.model import ModelInfo

from mlplatform.contracts import CHALLENGER_ALIAS, CHAMPION_ALIAS, MODEL_ARTIFACT_KEY, MlflowTag
from mlplatform.core.training import TrainedModel, load_model, predict, save_model
from mlplatform.resources.mlflow import MlflowResource

# The aliases under the short names the runner and the CLI import from here.
CHAMPION, CHALLENGER = CHAMPION_ALIAS, CHALLENGER_ALIAS
MODEL_NAME_IN_RUN = "model"
# Logged as code, not imported here: importing it would register it as MLflow's "current" model.
PYFUNC_FILE = Path(__file__).with_name("lightgbm_pyfunc.py")
_HISTORY_TAG = MlflowTag.CHAMPION_HISTORY.value
_HISTORY_KEEP = 200  # MLflow tag values are limited in length; old history matters least
_TAG_VALUE_LIMIT = 5000
TRAINING_DATASET_SCHEMA_ROWS = 10_000


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


def log_training_dataset(frame: pd.DataFrame, name: str, digest: str, source: str, target: str) -> None:
    """Log `frame` (the training set) as the active run's dataset input, so MLflow shows it under
    "Datasets" with `digest` (the training set's data version, the digest Dagster records too).

    The schema comes from the first TRAINING_DATASET_SCHEMA_ROWS rows: MLflow infers it from every
    row otherwise, about 10 s a million rows."""
    if not digest.strip():
        raise ValueError(f"{name}: a training dataset needs the training set's digest (its data version)")
    with warnings.catch_warnings():
        # MLflow registers local paths twice (plain and file://) and warns it had to pick one.
        warnings.filterwarnings("ignore", message="The specified dataset source can be interpreted")
        resolved = resolve_dataset_source(source)
    dataset = mlflow.data.from_pandas(frame, source=resolved, targets=target, name=name, digest=digest)
    sample = frame.head(TRAINING_DATASET_SCHEMA_ROWS)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Hint: Inferred schema contains integer column")
        schema = mlflow.models.infer_signature(sample).inputs
    dataset.schema = schema  # type: ignore[misc]  # a cached_property: set once instead of computed
    mlflow.log_input(dataset, context="training")


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
    resource.set_alias(model_name, CHALLENGER_ALIAS, version.version)
    return version


def load_version(resource: MlflowResource, model_name: str, version: str | int) -> TrainedModel:
    """Download a registered version and load its LightGBM text model (no pickle involved)."""
    with resource.fluent_api(), tempfile.TemporaryDirectory(prefix="mlplatform-model-") as tmp:
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
    return [int(v) for v in tags.get(_HISTORY_TAG, "").split(",") if v.strip()]


def _save_history(resource: MlflowResource, model_name: str, history: list[int]) -> None:
    text = ",".join(str(v) for v in history[-_HISTORY_KEEP:])
    resource.client().set_registered_model_tag(model_name, _HISTORY_TAG, text)


def _alias_version(resource: MlflowResource, model_name: str, alias: str) -> int | None:
    found = resource.get_alias_version(model_name, alias)
    return None if found is None else int(found.version)


class PromotionError(RegistryError):
    """A promotion failed part-way; the champion alias and history were put back as they were."""


_UNCHECKED = object()  # promote() without a champion the decision was made against


def _registry_undo(resource: MlflowResource, model_name: str, version: str) -> list[Callable[[], None]]:
    """Callables that put back, in order, the champion alias, the history tag and the two version tags
    promote() writes, to their values before the promotion (deleting what did not exist)."""
    client = resource.client()
    model_tags = client.get_registered_model(model_name).tags
    version_tags = client.get_model_version(model_name, version).tags
    previous = _alias_version(resource, model_name, CHAMPION_ALIAS)

    def alias() -> None:
        if previous is None:
            client.delete_registered_model_alias(model_name, CHAMPION_ALIAS)
        else:
            client.set_registered_model_alias(model_name, CHAMPION_ALIAS, str(previous))

    def history() -> None:
        if _HISTORY_TAG in model_tags:
            client.set_registered_model_tag(model_name, _HISTORY_TAG, model_tags[_HISTORY_TAG])
        else:
            client.delete_registered_model_tag(model_name, _HISTORY_TAG)

    def version_tag(key: str) -> Callable[[], None]:
        def undo() -> None:
            if key in version_tags:
                client.set_model_version_tag(model_name, version, key, version_tags[key])
            else:
                client.delete_model_version_tag(model_name, version, key)

        return undo

    return [
        alias,
        history,
        version_tag(MlflowTag.PREVIOUS_CHAMPION.value),
        version_tag(MlflowTag.PROMOTED_AT.value),
    ]


def promote(
    resource: MlflowResource, model_name: str, version: str | int, expected_champion: Any = _UNCHECKED
) -> ChampionChange:
    """Move `champion` to `version` and record it in the champion history.

    `expected_champion` is the champion (a version or None) the promotion decision compared against; if
    another run moved the alias since, nothing changes and PromotionError says so. If any registry call
    fails, the alias and tags are put back as they were and PromotionError names the failed step.
    """
    previous = _alias_version(resource, model_name, CHAMPION_ALIAS)
    if expected_champion is not _UNCHECKED and previous != expected_champion:
        raise PromotionError(
            f"{model_name}: champion moved from version {expected_champion} to {previous} while version "
            f"{version} was evaluated against {expected_champion}; nothing changed. Re-run the evaluation "
            f"(mlplatform run --dataset {model_name} --stage evaluation) to compare with version {previous}."
        )
    history = champion_history(resource, model_name)
    if previous is not None and not history:
        history = [previous]  # alias set by hand before any history: keep it reachable for rollback
    client, version = resource.client(), str(version)
    steps: list[tuple[str, Callable[[], None]]] = [
        ("set the champion alias", lambda: resource.set_alias(model_name, CHAMPION_ALIAS, version)),
        ("save the champion history", lambda: _save_history(resource, model_name, [*history, int(version)])),
        (
            "tag previous_champion",
            lambda: client.set_model_version_tag(
                model_name, version, MlflowTag.PREVIOUS_CHAMPION.value, str(previous or "none")
            ),
        ),
        (
            "tag promoted_at",
            lambda: client.set_model_version_tag(
                model_name, version, MlflowTag.PROMOTED_AT.value, datetime.now(UTC).isoformat()
            ),
        ),
    ]
    undo = _registry_undo(resource, model_name, version)
    for done, (step, action) in enumerate(steps):
        try:
            action()
        except Exception as error:
            # The failed call may have been applied before the error reached us: undo it too.
            raise _rolled_back(model_name, version, previous, step, error, undo[: done + 1]) from error
    return ChampionChange(model_name, previous, int(version))


def _rolled_back(
    model_name: str,
    version: str,
    previous: int | None,
    step: str,
    error: Exception,
    undo: list[Callable[[], None]],
) -> PromotionError:
    failed_undo = []
    for revert in reversed(undo):
        try:
            revert()
        except Exception as undo_error:
            failed_undo.append(str(undo_error))
    before = f"version {previous}" if previous is not None else "no champion"
    if not failed_undo:
        outcome = f"champion restored ({before})"
    else:
        fix = f"`mlplatform rollback --dataset {model_name} --to {previous}`" if previous else "the MLflow UI"
        outcome = (
            f"restoring the champion ({before}) also failed ({'; '.join(failed_undo)}): fix it with {fix}"
        )
    return PromotionError(
        f"promotion of {model_name} version {version} failed at step '{step}': {error}; {outcome}"
    )


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
    current = _alias_version(resource, model_name, CHAMPION_ALIAS)
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
    resource.set_alias(model_name, CHAMPION_ALIAS, target)
    _save_history(resource, model_name, new_history)
    note = f"champion by rollback from version {current} at {datetime.now(UTC).isoformat()}"
    client.set_model_version_tag(model_name, str(target), MlflowTag.ROLLBACK.value, note)
    return ChampionChange(model_name, current, target)
