"""The tiny dataset (platform_tests/assets/tiny.py) with an `alerts:` section, and a sensor ticker."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import dagster as dg

from mlplatform.contracts import Stage
from mlplatform.factory import build_dataset
from mlplatform.settings import load_settings
from mlplatform.specs.model import DatasetSpec
from platform_tests.assets.tiny import TinyDataset, tiny_spec_dict, write_tiny_source

WEBHOOK_ENV = "TINY_ALERTS_WEBHOOK"
DAGSTER_URL = "http://dagster.test:3000"


def alerts_section(smtp_port: int | None, events: list[str] | None = None) -> dict[str, Any]:
    section: dict[str, Any] = {"webhook": {"url": {"env": WEBHOOK_ENV}}}
    if smtp_port is not None:
        section["email"] = {
            "host": "127.0.0.1",
            "port": smtp_port,
            "starttls": False,
            "from": "mlplatform@example.com",
            "to": ["oncall@example.com"],
        }
    return section | ({"events": events} if events else {})


def alerting_tiny(
    root: Path, instance: dg.DagsterInstance, smtp_port: int | None, events: list[str] | None = None
) -> TinyDataset:
    """The tiny dataset whose spec sends alerts to the webhook in $TINY_ALERTS_WEBHOOK and to SMTP on
    127.0.0.1:`smtp_port`; its Dagster instance is `instance`, its warehouse and MLflow under `root`."""
    root.mkdir(parents=True, exist_ok=True)
    source = write_tiny_source(root / "tiny.csv")
    spec = DatasetSpec.model_validate(
        tiny_spec_dict(source.path) | {"alerts": alerts_section(smtp_port, events)}
    )
    settings = load_settings({"MLPLATFORM_HOME": str(root / "home"), "MLPLATFORM_DAGSTER_URL": DAGSTER_URL})
    built = build_dataset(spec, settings=settings)
    return TinyDataset(spec, source, built, settings, root / "warehouse.duckdb", root / "mlflow", instance)


def alerts_sensor(tiny: TinyDataset) -> dg.SensorDefinition:
    """The sensor as the definitions register it."""
    return next(s for s in tiny.built.automation.sensors if s.name == f"{tiny.spec.name}__alerts")


def run(tiny: TinyDataset, selection: Any, partition_key: str | None = None) -> dg.ExecuteInProcessResult:
    """A real run of `selection` (asset keys or an AssetSelection), failed or not, in the instance."""
    return dg.materialize(
        [*tiny.assets, *tiny.built.checks],
        selection=selection,
        partition_key=partition_key,
        resources=tiny.resources(),
        instance=tiny.instance,
        raise_on_error=False,
    )


def failing_run(tiny: TinyDataset, partition: str = "2024-01-01") -> dg.ExecuteInProcessResult:
    """`clean` before `raw`: the step fails, so the run does."""
    result = run(tiny, [tiny.key(Stage.CLEAN), tiny.key(Stage.QUARANTINE)], partition)
    assert not result.success
    return result


def non_blocking_check_run(tiny: TinyDataset) -> dg.ExecuteInProcessResult:
    """The non-blocking `model_beats_baseline` check alone, before any evaluation: the check fails, the
    run succeeds."""
    check = dg.AssetCheckKey(tiny.key(Stage.EVALUATION), "model_beats_baseline")
    result = run(tiny, dg.AssetSelection.checks(check))
    evaluations = result.get_asset_check_evaluations()
    assert result.success and [(e.check_name, e.passed) for e in evaluations] == [
        ("model_beats_baseline", False)
    ]
    return result


class Ticker:
    """Evaluates a sensor like the daemon: each tick starts from the cursor the previous one left."""

    def __init__(
        self, sensor: dg.SensorDefinition, instance: dg.DagsterInstance, cursor: str | None = None
    ) -> None:
        self.sensor, self.instance, self.cursor = sensor, instance, cursor

    def tick(self) -> str:
        """The tick's skip reason (the sensor requests no runs)."""
        result = self.sensor(dg.build_sensor_context(instance=self.instance, cursor=self.cursor))
        assert isinstance(result, dg.SensorResult) and not result.run_requests
        self.cursor = result.cursor
        return result.skip_reason.skip_message if result.skip_reason else ""
