"""The `alerts` section of a dataset spec: which events send a message, to a webhook and/or by e-mail.

Secrets are never written in a spec: the webhook URL and the SMTP user and password are
`{env: VARIABLE}` references, read from the environment when an alert is sent.
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from mlplatform.specs.sources import EnvReference

AlertEvent = Literal["run_failure", "check_failure", "drift_retraining", "promotion", "rollback"]
ALERT_EVENTS: tuple[AlertEvent, ...] = (
    "run_failure",
    "check_failure",
    "drift_retraining",
    "promotion",
    "rollback",
)
_ADDRESS_RE = re.compile(r"^[^@\s]+@[^@\s]+$")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


def _not_written_here(value: Any, what: str) -> Any:
    """A secret written in the spec itself is refused with what to write instead."""
    if isinstance(value, str):
        raise ValueError(
            f"write `{{env: VARIABLE}}`: the {what} is read from that environment variable, never written in a spec"
        )
    return value


class WebhookSpec(_Strict):
    """A Slack-compatible incoming webhook: a JSON POST of `{"text": ...}` (and Slack blocks)."""

    url: EnvReference
    blocks: bool = True

    @field_validator("url", mode="before")
    @classmethod
    def _url_from_env(cls, value: Any) -> Any:
        return _not_written_here(value, "webhook URL (a secret)")


class EmailSpec(_Strict):
    """E-mail over SMTP; `user` and `password` (both or neither) come from the environment."""

    host: str = Field(min_length=1)
    port: int = Field(default=587, gt=0, lt=65536)
    starttls: bool = True
    sender: str = Field(alias="from")
    to: list[str] = Field(min_length=1)
    user: EnvReference | None = None
    password: EnvReference | None = None

    @field_validator("user", "password", mode="before")
    @classmethod
    def _login_from_env(cls, value: Any) -> Any:
        return _not_written_here(value, "SMTP login")

    @model_validator(mode="after")
    def _addresses_and_login(self) -> EmailSpec:
        bad = [a for a in [self.sender, *self.to] if not _ADDRESS_RE.match(a)]
        if bad:
            raise ValueError(f"{bad} are not e-mail addresses")
        if (self.user is None) != (self.password is None):
            raise ValueError("give both `user` and `password` (as {env: VARIABLE}) or neither")
        return self


class AlertsSpec(_Strict):
    # Default: every kind of event.
    events: list[AlertEvent] = Field(default_factory=lambda: list(ALERT_EVENTS), min_length=1)
    webhook: WebhookSpec | None = None
    email: EmailSpec | None = None

    @model_validator(mode="after")
    def _one_destination(self) -> AlertsSpec:
        if self.webhook is None and self.email is None:
            raise ValueError("give a destination: `webhook`, `email` or both")
        return self
