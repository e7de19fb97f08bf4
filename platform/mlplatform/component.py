"""The platform as a Dagster Component, for a team's own dg project: one dataset spec per `defs.yaml`.

    dg scaffold defs mlplatform.DatasetComponent loans   # defs/loans/defs.yaml + a sample loans.csv
    dg list defs                                          # the chain, checks, jobs and sensors of loans
    dg check defs

`attributes:` is one dataset spec, validated like a spec file: an error names the defs.yaml and the
key. A relative `source.path` starts from the defs.yaml folder. `dg check defs` fails on a broken spec;
anywhere else (`dg dev`, the daemon) the broken dataset loads as its `<name>__spec_error` sensor,
which shows the error, and the project's other datasets load as usual.

Dagster merges the Definitions of all components of a code location and refuses two different
resources under one key, or two sensors of one name. The `warehouse` and `mlflow` resources are built
once per process and settings, so every DatasetComponent hands Dagster the same objects. Sensors are
copied per component (Dagster tags each with its component), so the one-per-location
`mlplatform__recovery` sensor comes only with the project's first DatasetComponent (by defs.yaml path).
Two DatasetComponents of one dataset name: the first keeps it, the other is broken (as spec files are).
"""

from __future__ import annotations

import functools
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import dagster as dg
from pydantic import BaseModel, ConfigDict

from mlplatform.component_scaffold import DatasetScaffolder, dataset_name_for
from mlplatform.factory import build_datasets, location_resources, spec_error_sensors
from mlplatform.sensors.recovery import build_recovery_sensor
from mlplatform.settings import HOME_ENV, Settings, apply_mlflow_env_defaults, load_settings
from mlplatform.specs.loader import BrokenSpec, SpecError, one_line, validate_spec
from mlplatform.specs.model import DatasetSpec

DEFS_FILE = "defs.yaml"
HOME_IN_PROJECT = ".mlplatform"
# Set to "1" by `dg check defs` and `dagster definitions validate` (see their --help).
VALIDATION_CLI_ENV = "DAGSTER_IS_DEFS_VALIDATION_CLI"


class DatasetAttributes(BaseModel):
    """Any mapping: Dagster passes it through, and DatasetSpec validates it with the platform's messages."""

    model_config = ConfigDict(extra="allow")


def component_settings(project_root: Path, environ: Mapping[str, str] | None = None) -> Settings:
    """load_settings(), except that an unset $MLPLATFORM_HOME means `.mlplatform` in the project root:
    `dg` commands and the code servers they start do not all run in the same folder."""
    env = dict(os.environ if environ is None else environ)
    if not env.get(HOME_ENV):
        env[HOME_ENV] = str(Path(project_root) / HOME_IN_PROJECT)
    return load_settings(env)


@functools.cache
def shared_resources(settings: Settings) -> Mapping[str, dg.ConfigurableResource]:
    """The `warehouse` and `mlflow` resources of a code location: the same objects for every component."""
    return location_resources(settings)


def _broken_definitions(
    broken: BrokenSpec, settings: Settings, location_wide: bool, earlier: Sequence[BrokenSpec] = ()
) -> dg.Definitions:
    """The `<name>__spec_error` sensor; `earlier`: broken specs of other components loaded before this
    one, so two broken components of one name get sensors of different names (`<name>__spec_error_`)."""
    if os.environ.get(VALIDATION_CLI_ENV) == "1":
        raise SpecError(broken.error)
    recovery = [build_recovery_sensor(settings)] if location_wide else []
    sensor = spec_error_sensors([*earlier, broken], settings)[-1]
    return dg.Definitions(sensors=[sensor, *recovery])


def dataset_definitions(
    spec: DatasetSpec | BrokenSpec,
    settings: Settings,
    location_wide: bool = True,
    earlier_broken: Sequence[BrokenSpec] = (),
) -> dg.Definitions:
    """One dataset's assets, checks, jobs, sensors and schedule, with the location's shared resources,
    and with `location_wide` the `mlplatform__recovery` sensor a code location has once.

    A spec that does not build (its source is missing, say) becomes a `<name>__spec_error` sensor, or,
    under `dg check defs`, a SpecError naming the file and the key.
    """
    if isinstance(spec, BrokenSpec):
        return _broken_definitions(spec, settings, location_wide, earlier_broken)
    built, broken = build_datasets([spec], settings)
    if broken:
        return _broken_definitions(broken[0], settings, location_wide, earlier_broken)
    dataset = built[0]
    recovery = [build_recovery_sensor(settings)] if location_wide else []
    return dg.Definitions(
        assets=dataset.assets,
        asset_checks=dataset.checks,
        jobs=dataset.jobs,
        sensors=[*dataset.automation.sensors, *recovery],
        schedules=dataset.automation.schedules,
        resources=dict(shared_resources(settings)),
        executor=dg.in_process_executor,  # one DuckDB file has one writer: steps share the process
    )


def _declared_name(raw: Mapping[str, Any], defs_file: Path) -> str:
    """The dataset name of a broken spec: its own if valid, else one from the defs.yaml folder."""
    declared = raw.get("name")
    if isinstance(declared, str) and re.fullmatch(r"[a-z][a-z0-9_]*", declared):
        return declared
    return dataset_name_for(defs_file.parent)


def _claim_name(component: DatasetComponent, project: list[DatasetComponent]) -> DatasetSpec | BrokenSpec:
    """The component's spec, or a BrokenSpec if an earlier DatasetComponent of the project already
    loads a dataset of that name (the first file to use a name keeps it, as with spec files)."""
    spec = component.spec
    if isinstance(spec, BrokenSpec):
        return spec
    earlier = sorted(
        other.order_key
        for other in project
        if isinstance(other.spec, DatasetSpec)
        and other.spec.name == spec.name
        and other.order_key < component.order_key
    )
    if not earlier:
        return spec
    error = f"spec file {spec.spec_path}: key 'name': {spec.name!r} is already defined in {earlier[0][0]}"
    return BrokenSpec(spec.name, spec.spec_path or Path(), error)


@dg.scaffold_with(DatasetScaffolder)
class DatasetComponent(dg.Component):
    """One dataset of the ML platform: `attributes` is its spec (the keys of a platform spec file).

    Yields the whole chain (raw, clean, features, training, model, evaluation, predictions, drift
    monitoring), its data-quality and model checks, its jobs, sensors and schedule.
    """

    def __init__(self, spec: DatasetSpec | BrokenSpec) -> None:
        self.spec = spec

    @classmethod
    def get_model_cls(cls) -> type[BaseModel]:
        return DatasetAttributes

    @classmethod
    def get_spec(cls) -> dg.ComponentTypeSpec:
        return dg.ComponentTypeSpec(
            description="A dataset of the ML platform, from a dataset spec",
            tags=["mlplatform", "ml", "duckdb", "lightgbm", "mlflow"],
            produces=["asset", "asset_check", "job", "sensor", "schedule", "resource"],
        )

    @classmethod
    def load(cls, attributes: BaseModel | None, context: dg.ComponentLoadContext) -> DatasetComponent:
        defs_file = context.component_path.file_path / DEFS_FILE
        raw: Any = attributes.model_dump() if attributes is not None else {}
        raw = context.resolution_context.at_path("attributes").resolve_value(raw)  # {{ env.X }} templates
        try:
            return cls(validate_spec(raw, defs_file))
        except SpecError as exc:
            return cls(BrokenSpec(_declared_name(raw, defs_file), defs_file, one_line(str(exc))))

    @property
    def order_key(self) -> tuple[str, str]:
        """Where the component is defined, then its dataset: orders the project's DatasetComponents."""
        path = self.spec.path if isinstance(self.spec, BrokenSpec) else self.spec.spec_path
        return (str(path or ""), self.spec.name)

    def build_defs(self, context: dg.ComponentLoadContext) -> dg.Definitions:
        # The team's code location is this process's entry point into the platform (as our own
        # mlplatform.definitions is): MLflow reads its HTTP timeouts etc. only from the environment.
        apply_mlflow_env_defaults()
        project = context.component_tree.get_all_components(of_type=DatasetComponent)
        first = min((component.order_key for component in project), default=self.order_key)
        settings = component_settings(context.project_root)
        spec = _claim_name(self, project)
        earlier = [
            claimed
            for other in project
            if other.order_key < self.order_key
            and isinstance(claimed := _claim_name(other, project), BrokenSpec)
            and claimed.name == spec.name
        ]
        return dataset_definitions(spec, settings, self.order_key == first, earlier)
