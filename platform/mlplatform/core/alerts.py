"""Alert messages: one `Alert` per event, as Slack-compatible JSON and as e-mail text, and the queue of
alerts still to deliver. Plain functions: nothing here knows Dagster, MLflow or the network.

An alert names its dataset and what happened (run, check, partition, model version) and links to the
Dagster UI (`dagster_url`, from MLPLATFORM_DAGSTER_URL). Its `key` is unique per event, so a message
queued twice is still sent once.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from enum import StrEnum
from typing import Any
from urllib.parse import quote

VALUE_LIMIT = 500  # characters of one detail (an error message can be pages long)
_SLACK_FIELDS_LIMIT = 10  # Slack refuses a section with more fields


class AlertKind(StrEnum):
    """The events an `alerts:` spec section can ask for (its `events` list)."""

    RUN_FAILURE = "run_failure"
    CHECK_FAILURE = "check_failure"
    DRIFT_RETRAINING = "drift_retraining"
    PROMOTION = "promotion"
    ROLLBACK = "rollback"


@dataclass(frozen=True)
class Alert:
    kind: AlertKind
    dataset: str
    key: str  # unique per event, e.g. `run_failure:<run id>`
    title: str  # one line
    details: tuple[tuple[str, str], ...]  # (label, value), in the order shown
    link: str  # the run or asset in the Dagster UI

    def text(self) -> str:
        """Plain text: the title, one `label: value` line per detail, then the link."""
        lines = [self.title, *(f"{label}: {value}" for label, value in self.details), self.link]
        return "\n".join(lines)

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": str(self.kind),
            "dataset": self.dataset,
            "key": self.key,
            "title": self.title,
            "details": [list(pair) for pair in self.details],
            "link": self.link,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Alert:
        details = tuple((str(label), str(value)) for label, value in data["details"])
        return cls(
            AlertKind(data["kind"]), data["dataset"], data["key"], data["title"], details, data["link"]
        )


def _short(value: object, limit: int = VALUE_LIMIT) -> str:
    text = " ".join(str(value).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _details(**pairs: object) -> tuple[tuple[str, str], ...]:
    """Labels from keyword names (`model_version` -> `model version`); None values are left out."""
    return tuple(
        (label.replace("_", " "), _short(value)) for label, value in pairs.items() if value is not None
    )


def run_url(dagster_url: str, run_id: str) -> str:
    return f"{dagster_url.rstrip('/')}/runs/{quote(run_id)}"


def asset_url(dagster_url: str, asset_path: Sequence[str], view: str | None = None) -> str:
    path = "/".join(quote(part, safe="") for part in asset_path)
    return f"{dagster_url.rstrip('/')}/assets/{path}" + (f"?view={view}" if view else "")


@dataclass(frozen=True)
class RunFacts:
    """What the alerts say about a Dagster run."""

    run_id: str
    job_name: str
    status: str  # e.g. FAILURE, SUCCESS
    partition: str | None = None  # one key, or `first..last` for a ranged run
    error: str | None = None


@dataclass(frozen=True)
class CheckFacts:
    asset_path: tuple[str, ...]
    check_name: str
    partition: str | None
    blocking: bool
    severity: str
    description: str | None = None


def run_failure_alert(dataset: str, run: RunFacts, dagster_url: str) -> Alert:
    title = f"{dataset}: run {run.run_id[:8]} of {run.job_name} failed"
    details = _details(
        dataset=dataset, partition=run.partition, job=run.job_name, run=run.run_id, error=run.error
    )
    return Alert(
        AlertKind.RUN_FAILURE,
        dataset,
        f"run_failure:{run.run_id}",
        title,
        details,
        run_url(dagster_url, run.run_id),
    )


def check_failure_alert(dataset: str, check: CheckFacts, run: RunFacts, dagster_url: str) -> Alert:
    """A failed asset check; `run.status` says whether its run still succeeded (a non-blocking check
    fails without failing the run, so only this alert tells anyone)."""
    asset = "/".join(check.asset_path)
    kind = "blocking" if check.blocking else "non-blocking"
    title = f"{dataset}: check {check.check_name} on {asset} failed ({kind}; run {run.status})"
    details = _details(
        dataset=dataset,
        partition=check.partition,
        check=f"{asset} {check.check_name}",
        severity=check.severity,
        result=check.description,
        run=f"{run.run_id} ({run.job_name}, {run.status})",
    )
    key = f"check_failure:{run.run_id}:{asset}:{check.check_name}:{check.partition or ''}"
    return Alert(
        AlertKind.CHECK_FAILURE,
        dataset,
        key,
        title,
        details,
        asset_url(dagster_url, check.asset_path, "checks"),
    )


def drift_retraining_alert(
    dataset: str,
    run: RunFacts,
    verdict_partition: str | None,
    reason: str | None,
    dagster_url: str,
    retry_of: str | None = None,
) -> Alert:
    what = f"retrying failed retraining {retry_of}" if retry_of else "drift triggered retraining"
    title = f"{dataset}: {what} (run {run.run_id[:8]} of {run.job_name})"
    details = _details(
        dataset=dataset, partition=verdict_partition, drift=reason, run=f"{run.run_id} ({run.status})"
    )
    key = f"drift_retraining:{run.run_id}"
    return Alert(AlertKind.DRIFT_RETRAINING, dataset, key, title, details, run_url(dagster_url, run.run_id))


@dataclass(frozen=True)
class ChampionChange:
    """A move of the `champion` alias, as the event log records it."""

    version: int | str
    previous: int | str | None
    reason: str | None = None
    run_id: str | None = None  # the evaluation's run (a rollback has none)
    scores: str | None = None  # e.g. `rmse: challenger 1.2, champion 1.4, baseline 3.1`


def promotion_alert(
    dataset: str, change: ChampionChange, model_path: Sequence[str], dagster_url: str, storage_id: int
) -> Alert:
    before = f"version {change.previous}" if change.previous not in (None, "none") else "no champion"
    title = f"{dataset}: model version {change.version} promoted to champion (before: {before})"
    details = _details(dataset=dataset, reason=change.reason, scores=change.scores, run=change.run_id)
    link = run_url(dagster_url, change.run_id) if change.run_id else asset_url(dagster_url, model_path)
    return Alert(AlertKind.PROMOTION, dataset, f"promotion:{storage_id}", title, details, link)


def rollback_alert(
    dataset: str, change: ChampionChange, model_path: Sequence[str], dagster_url: str, storage_id: int
) -> Alert:
    title = f"{dataset}: champion rolled back from version {change.previous} to version {change.version}"
    details = _details(dataset=dataset, reason=change.reason)
    return Alert(
        AlertKind.ROLLBACK,
        dataset,
        f"rollback:{storage_id}",
        title,
        details,
        asset_url(dagster_url, model_path),
    )


def _mrkdwn(text: str) -> str:
    """Slack's three control characters, escaped (a message cannot inject a mention or a link)."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def webhook_payload(alert: Alert, blocks: bool = True) -> dict[str, Any]:
    """Slack-compatible JSON: `text` (all any receiver needs), plus Block Kit blocks if asked."""
    payload: dict[str, Any] = {"text": alert.text()}
    if not blocks:
        return payload
    fields = [
        {"type": "mrkdwn", "text": f"*{_mrkdwn(label)}*\n{_mrkdwn(value)}"}
        for label, value in alert.details[:_SLACK_FIELDS_LIMIT]
    ]
    payload["blocks"] = [
        {"type": "section", "text": {"type": "mrkdwn", "text": f"*{_mrkdwn(alert.title)}*"}},
        *([{"type": "section", "fields": fields}] if fields else []),
        {
            "type": "actions",
            "elements": [
                {
                    "type": "button",
                    "text": {"type": "plain_text", "text": "Open in Dagster"},
                    "url": alert.link,
                }
            ],
        },
    ]
    return payload


def email_subject(alert: Alert) -> str:
    return _short(f"[mlplatform] {alert.title}", 200)


def email_body(alert: Alert) -> str:
    return alert.text() + "\n"


@dataclass(frozen=True)
class Pending:
    """An alert some destinations have not received yet, and how many ticks have tried it."""

    alert: Alert
    destinations: tuple[str, ...]
    ticks: int = 0

    def to_json(self) -> dict[str, Any]:
        return {"alert": self.alert.to_json(), "destinations": list(self.destinations), "ticks": self.ticks}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Pending:
        return cls(Alert.from_json(data["alert"]), tuple(data["destinations"]), int(data["ticks"]))


def keep_pending(
    undelivered: Sequence[Pending], max_pending: int, max_ticks: int
) -> tuple[list[Pending], list[Pending]]:
    """(kept for the next tick, dropped): an alert tried `max_ticks` times is dropped, and so are the
    oldest beyond `max_pending`, so a receiver that stays down cannot grow the cursor without bound."""
    counted = [replace(p, ticks=p.ticks + 1) for p in undelivered]
    alive = [p for p in counted if p.ticks < max_ticks]
    dropped = [p for p in counted if p.ticks >= max_ticks]
    overflow = max(0, len(alive) - max_pending)
    return alive[overflow:], dropped + alive[:overflow]
