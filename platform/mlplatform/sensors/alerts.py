"""`<ds>__alerts`: one message per event of a dataset to the destinations of its spec's `alerts:`.

Each tick reads the events since the cursor's marks (mlplatform.sensors.alert_events), turns the kinds
the spec asks for into alerts (mlplatform.core.alerts) and delivers them (mlplatform.alerts.delivery:
bounded retries, a time budget per tick). The cursor holds the marks, so an event is read once, even
across restarts of the daemon or of the sensor; and the alerts a receiver did not take, which the next
ticks try again, at most `MAX_PENDING_TICKS` ticks and `MAX_PENDING` alerts: past either, an alert is
dropped and the tick's log says so (ERROR, with its title).

A sensor without a cursor (just added) starts from the newest events: it does not send the history.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field

import dagster as dg

from mlplatform.alerts.delivery import deliver, destinations
from mlplatform.core.alerts import Alert, Pending, keep_pending
from mlplatform.sensors.alert_events import collect_alerts, latest_marks
from mlplatform.sensors.common import sensor_interval, sensor_status
from mlplatform.settings import Settings
from mlplatform.specs.model import DatasetSpec

MAX_PENDING = 50
MAX_PENDING_TICKS = 30


@dataclass(frozen=True)
class AlertsState:
    marks: dict[str, int]
    pending: list[Pending] = field(default_factory=list)

    def to_cursor(self) -> str:
        return json.dumps(
            {"marks": self.marks, "pending": [p.to_json() for p in self.pending]}, sort_keys=True
        )

    @classmethod
    def from_cursor(cls, cursor: str | None) -> AlertsState | None:
        if not cursor:
            return None
        data = json.loads(cursor)
        return cls(dict(data["marks"]), [Pending.from_json(p) for p in data.get("pending", [])])


def alerts_sensor_name(spec: DatasetSpec) -> str:
    return f"{spec.name}__alerts"


def _queue(pending: list[Pending], new: list[Alert], targets: Mapping[str, object]) -> list[Pending]:
    """The pending alerts, then the new ones to every destination (an alert already queued once)."""
    queued = {p.alert.key for p in pending}
    fresh = [Pending(a, tuple(targets)) for a in new if a.key not in queued]
    return [*pending, *fresh]


def alerts_tick(
    context: dg.SensorEvaluationContext, spec: DatasetSpec, settings: Settings
) -> dg.SensorResult:
    """One tick: read the new events, deliver their alerts and the waiting ones, keep what is left."""
    assert spec.alerts is not None
    state = AlertsState.from_cursor(context.cursor)
    if state is None:
        start = AlertsState(latest_marks(context.instance, spec))
        message = "alerts start from the newest events; earlier ones are not sent"
        return dg.SensorResult(skip_reason=dg.SkipReason(message), cursor=start.to_cursor())
    found, marks, unreadable = collect_alerts(context.instance, spec, state.marks, settings.dagster_url)
    for error in unreadable:
        context.log.error(f"alerts: events not read this tick, tried again at the next: {error}")
    wanted = [alert for alert in found if alert.kind in spec.alerts.events]
    targets = destinations(spec.alerts)
    report = deliver(_queue(state.pending, wanted, targets), targets)
    kept, dropped = keep_pending(report.undelivered, MAX_PENDING, MAX_PENDING_TICKS)
    for key, name in report.sent:
        context.log.info(f"alert {key} sent to {name}")
    for name, error in report.failures.items():
        context.log.warning(f"alerts to {name} failed this tick: {error}")
    for item in dropped:
        context.log.error(
            f"alert dropped after {item.ticks} tick(s), not delivered to {', '.join(item.destinations)}: "
            f"{item.alert.title}"
        )
    summary = f"{len(report.sent)} alert message(s) sent, {len(kept)} waiting, {len(dropped)} dropped"
    if report.failures:
        summary += " (" + "; ".join(f"{name}: {error}" for name, error in report.failures.items()) + ")"
    if unreadable:
        summary += f"; events not read: {'; '.join(unreadable)}"
    return dg.SensorResult(skip_reason=dg.SkipReason(summary), cursor=AlertsState(marks, kept).to_cursor())


def build_alerts_sensor(spec: DatasetSpec, settings: Settings) -> dg.SensorDefinition:
    """The alerts sensor of a dataset whose spec has an `alerts:` section."""
    assert spec.alerts is not None, f"{spec.name} has no alerts section"
    destinations(spec.alerts)  # builds without reading the environment: secrets are read at each send
    where = " and ".join(name for name in ("webhook", "email") if getattr(spec.alerts, name) is not None)

    @dg.sensor(
        name=alerts_sensor_name(spec),
        minimum_interval_seconds=sensor_interval(settings),
        default_status=sensor_status(settings, spec.name),
        description=(
            f"Sends one message per event of {spec.name} ({', '.join(spec.alerts.events)}) to the {where} "
            "of its spec's `alerts:` section, with a link to the Dagster UI. Reads the event log only; "
            "a receiver that is down is retried at later ticks."
        ),
    )
    def alerts_sensor(context: dg.SensorEvaluationContext) -> dg.SensorResult:
        return alerts_tick(context, spec, settings)

    return alerts_sensor
