"""Deliver alerts to the destinations of a spec's `alerts:` section, in bounded time.

Each send is tried `ATTEMPTS` times with a growing pause between tries, each try limited to
`TIMEOUT_SECONDS`. A destination that still fails is left alone for the rest of the tick (its other
alerts wait too, untried), so a receiver that is down costs one round of retries per tick, not one per
alert; and no send starts once the tick's `BUDGET_SECONDS` are spent. What was not delivered is
returned, per destination, for the caller to keep (mlplatform.sensors.alerts keeps it in its cursor).
Secrets (webhook URL, SMTP user and password) are read from the environment at each send.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace

from mlplatform.alerts.email import SmtpServer, send_email
from mlplatform.alerts.errors import DeliveryError, NotConfiguredError
from mlplatform.alerts.webhook import post_json
from mlplatform.core.alerts import Alert, Pending, email_body, email_subject, webhook_payload
from mlplatform.specs.alerts import AlertsSpec, EmailSpec
from mlplatform.specs.sources import EnvReference

ATTEMPTS = 3
BACKOFF_SECONDS = 0.5  # pause before the 2nd try; doubled before each next one
TIMEOUT_SECONDS = 3.0
BUDGET_SECONDS = 20.0
Environ = Mapping[str, str]


@dataclass(frozen=True)
class Destination:
    name: str  # `webhook` or `email`: what a pending alert remembers
    send: Callable[[Alert], None]


def _secret(reference: EnvReference, where: str, environ: Environ) -> str:
    value = environ.get(reference.env)
    if not value:
        raise NotConfiguredError(f"{where}: environment variable {reference.env} is not set")
    return value


def _smtp_server(email: EmailSpec, environ: Environ) -> SmtpServer:
    user = _secret(email.user, "alerts.email.user", environ) if email.user else None
    password = _secret(email.password, "alerts.email.password", environ) if email.password else None
    return SmtpServer(email.host, email.port, email.sender, tuple(email.to), email.starttls, user, password)


def destinations(
    spec: AlertsSpec, environ: Environ | None = None, timeout: float = TIMEOUT_SECONDS
) -> dict[str, Destination]:
    """The spec's destinations by name; `environ` (default os.environ) is read at each send."""
    env = os.environ if environ is None else environ
    found: dict[str, Destination] = {}
    if spec.webhook is not None:
        webhook = spec.webhook

        def post(alert: Alert) -> None:
            url = _secret(webhook.url, "alerts.webhook.url", env)
            post_json(url, webhook_payload(alert, webhook.blocks), timeout)

        found["webhook"] = Destination("webhook", post)
    if spec.email is not None:
        email = spec.email

        def mail(alert: Alert) -> None:
            send_email(_smtp_server(email, env), email_subject(alert), email_body(alert), timeout)

        found["email"] = Destination("email", mail)
    return found


def send_with_retries(
    destination: Destination,
    alert: Alert,
    attempts: int = ATTEMPTS,
    backoff: float = BACKOFF_SECONDS,
    sleep: Callable[[float], None] = time.sleep,
) -> str | None:
    """None once sent, else the last error (after `attempts` tries, or at once if not configured)."""
    error = ""
    for attempt in range(attempts):
        if attempt:
            sleep(backoff * 2 ** (attempt - 1))
        try:
            destination.send(alert)
            return None
        except NotConfiguredError as failure:
            return str(failure)
        except DeliveryError as failure:
            error = str(failure)
    return f"{error} ({attempts} attempts)"


@dataclass
class DeliveryReport:
    sent: list[tuple[str, str]] = field(default_factory=list)  # (alert key, destination name)
    undelivered: list[Pending] = field(default_factory=list)
    failures: dict[str, str] = field(default_factory=dict)  # destination name -> why it failed this tick


def deliver(
    queue: Sequence[Pending],
    targets: Mapping[str, Destination],
    budget: float = BUDGET_SECONDS,
    clock: Callable[[], float] = time.monotonic,
    **retry: float,
) -> DeliveryReport:
    """Send each queued alert to its destinations still missing it; a destination no longer in
    `targets` (removed from the spec) is forgotten."""
    report, deadline = DeliveryReport(), clock() + budget
    for item in queue:
        missing: list[str] = []
        for name in item.destinations:
            if name not in targets:
                continue
            if name in report.failures or clock() > deadline:
                missing.append(name)
                continue
            error = send_with_retries(targets[name], item.alert, **retry)  # type: ignore[arg-type]
            if error is None:
                report.sent.append((item.alert.key, name))
            else:
                report.failures[name] = error
                missing.append(name)
        if missing:
            report.undelivered.append(replace(item, destinations=tuple(missing)))
    if clock() > deadline:
        report.failures.setdefault("tick", f"time budget of {budget:.0f} s spent; the rest waits")
    return report
