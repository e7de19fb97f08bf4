"""`<ds>__alerts` on a real Dagster instance, with real runs of the tiny dataset and real receivers:
one message per event to the webhook and by e-mail (a failed non-blocking check in a SUCCESS run
included), none again across ticks and sensor restarts, and receivers that are down or answer 500
neither crash nor stall the tick, nor lose an alert silently."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import dagster as dg
import pytest

from mlplatform.sensors import alerts as alerts_module
from mlplatform.sensors.alerts import build_alerts_sensor
from mlplatform.specs.alerts import AlertsSpec
from platform_tests.alerts.receivers import smtp_receiver, webhook_receiver
from platform_tests.alerts.tiny_alerts import (
    DAGSTER_URL,
    WEBHOOK_ENV,
    Ticker,
    alerting_tiny,
    alerts_sensor,
    failing_run,
    non_blocking_check_run,
)
from platform_tests.assets.tiny import TinyDataset
from platform_tests.servers import free_port

SMTP_PORT = free_port()  # the module's spec names it; a test starts a receiver there, or none


@pytest.fixture(scope="module")
def tiny_module(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TinyDataset]:
    """Built once, with one MLflow store (its tables take seconds to create); tests use `tiny`."""
    with dg.instance_for_test() as module_instance:
        yield alerting_tiny(tmp_path_factory.mktemp("alerting_tiny"), module_instance, SMTP_PORT)


@pytest.fixture
def instance() -> Iterator[dg.DagsterInstance]:
    with dg.instance_for_test() as test_instance:
        yield test_instance


@pytest.fixture
def tiny(tiny_module: TinyDataset, instance: dg.DagsterInstance, tmp_path: Path) -> TinyDataset:
    """The module's dataset with a Dagster instance and warehouse of the test's own."""
    return replace(tiny_module, instance=instance, warehouse_path=tmp_path / "warehouse.duckdb")


def test_each_failure_is_sent_once_to_the_webhook_and_by_email(
    tiny: TinyDataset, instance: dg.DagsterInstance, monkeypatch: pytest.MonkeyPatch
) -> None:
    with webhook_receiver() as hook, smtp_receiver(SMTP_PORT) as smtp:
        monkeypatch.setenv(WEBHOOK_ENV, hook.url)
        sensor = alerts_sensor(tiny)
        assert sensor.default_status == dg.DefaultSensorStatus.RUNNING
        ticker = Ticker(sensor, instance)
        before = failing_run(tiny)  # before the sensor's first tick: history, not sent
        assert "start from the newest events" in ticker.tick()
        failed = failing_run(tiny, "2024-02-01")
        checked = non_blocking_check_run(tiny)
        assert ticker.tick().startswith("4 alert message(s) sent, 0 waiting, 0 dropped")

        run_text, check_text = hook.texts()
        assert run_text.splitlines()[0] == f"tiny: run {failed.run_id[:8]} of __ephemeral_asset_job__ failed"
        assert "partition: 2024-02-01" in run_text and f"run: {failed.run_id}" in run_text
        assert "error: tiny__clean:" in run_text and run_text.endswith(f"{DAGSTER_URL}/runs/{failed.run_id}")
        assert check_text.splitlines()[0] == (
            "tiny: check model_beats_baseline on tiny/evaluation failed (non-blocking; run SUCCESS)"
        )
        assert f"run: {checked.run_id} (__ephemeral_asset_job__, SUCCESS)" in check_text
        assert check_text.endswith(f"{DAGSTER_URL}/assets/tiny/evaluation?view=checks")
        assert before.run_id not in run_text + check_text
        assert smtp.bodies() == [text + "\n" for text in hook.texts()]
        assert [m["To"] for m in smtp.messages] == ["oncall@example.com"] * 2

        assert ticker.tick().startswith("0 alert message(s) sent")
        restarted = Ticker(build_alerts_sensor(tiny.spec, tiny.settings), instance, ticker.cursor)
        assert restarted.tick().startswith("0 alert message(s) sent")
        assert len(hook.payloads) == len(smtp.messages) == 2, "nothing is sent twice"

        again = failing_run(tiny, "2024-03-01")
        assert restarted.tick().startswith("2 alert message(s) sent")
        assert again.run_id in hook.texts()[-1] and len(smtp.messages) == 3


def test_receivers_that_are_down_keep_the_alert_waiting_without_stalling_the_tick(
    tiny: TinyDataset, instance: dg.DagsterInstance, monkeypatch: pytest.MonkeyPatch
) -> None:
    hook_port, smtp_port = free_port(), SMTP_PORT
    monkeypatch.setenv(WEBHOOK_ENV, f"http://127.0.0.1:{hook_port}/hook")
    ticker = Ticker(alerts_sensor(tiny), instance)
    ticker.tick()
    failed = failing_run(tiny)
    started = time.monotonic()
    reason = ticker.tick()
    elapsed = time.monotonic() - started
    assert elapsed < 5, f"a tick with both receivers down took {elapsed:.1f} s"
    assert reason.startswith(
        "0 alert message(s) sent, 1 waiting, 0 dropped (webhook: the webhook did not answer"
    )
    assert "email: SMTP 127.0.0.1" in reason
    (waiting,) = json.loads(ticker.cursor or "")["pending"]
    assert waiting["destinations"] == ["webhook", "email"] and failed.run_id in waiting["alert"]["key"]

    with webhook_receiver(hook_port) as hook, smtp_receiver(smtp_port) as smtp:
        assert ticker.tick().startswith("2 alert message(s) sent, 0 waiting")
        assert ticker.tick().startswith("0 alert message(s) sent, 0 waiting")
    assert len(hook.payloads) == len(smtp.messages) == 1 and failed.run_id in hook.texts()[0]


def only(tiny: TinyDataset, **section: object) -> dg.SensorDefinition:
    """The alerts sensor of the tiny spec with another `alerts:` section."""
    alerts = AlertsSpec.model_validate(section)
    return build_alerts_sensor(tiny.spec.model_copy(update={"alerts": alerts}), tiny.settings)


def test_a_webhook_answering_500_is_retried_boundedly_and_a_dropped_alert_is_said(
    tiny: TinyDataset,
    instance: dg.DagsterInstance,
    monkeypatch: pytest.MonkeyPatch,
    capfd: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setattr(alerts_module, "MAX_PENDING_TICKS", 2)
    with webhook_receiver(failures=-1) as hook:
        monkeypatch.setenv(WEBHOOK_ENV, hook.url)
        ticker = Ticker(only(tiny, webhook={"url": {"env": WEBHOOK_ENV}}), instance)
        ticker.tick()
        failing_run(tiny)
        failing_run(tiny, "2024-02-01")
        started = time.monotonic()
        first = ticker.tick()
        assert time.monotonic() - started < 4 and hook.requests == 3, "one round of 3 tries per tick"
        assert first.startswith(
            "0 alert message(s) sent, 2 waiting, 0 dropped (webhook: the webhook answered HTTP 500"
        )
        capfd.readouterr()
        second = ticker.tick()
        assert second.startswith("0 alert message(s) sent, 0 waiting, 2 dropped") and hook.requests == 6
        dropped = [line for line in capfd.readouterr().err.splitlines() if "alert dropped" in line]
        assert (
            len(dropped) == 2
            and " - ERROR - alert dropped after 2 tick(s), not delivered to webhook: tiny: run" in dropped[0]
        )
        assert ticker.tick().startswith("0 alert message(s) sent, 0 waiting") and hook.requests == 6


def test_only_the_events_the_spec_asks_for_are_sent(
    tiny: TinyDataset, instance: dg.DagsterInstance, monkeypatch: pytest.MonkeyPatch
) -> None:
    with webhook_receiver() as hook:
        monkeypatch.setenv(WEBHOOK_ENV, hook.url)
        section = {"webhook": {"url": {"env": WEBHOOK_ENV}}}
        checks_only = Ticker(only(tiny, events=["check_failure"], **section), instance)
        runs_only = Ticker(only(tiny, events=["run_failure"], **section), instance)
        checks_only.tick(), runs_only.tick()
        failed = failing_run(tiny)
        assert checks_only.tick().startswith("0 alert message(s) sent, 0 waiting")
        assert runs_only.tick().startswith("1 alert message(s) sent, 0 waiting")
    assert len(hook.texts()) == 1 and failed.run_id in hook.texts()[0]
