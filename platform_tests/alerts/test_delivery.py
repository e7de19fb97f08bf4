"""Delivery to real receivers on 127.0.0.1: a webhook (http.server) and SMTP (aiosmtpd); bounded
retries when the receiver answers 500 or is not there; secrets read from the environment."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from mlplatform.alerts.delivery import deliver, destinations, send_with_retries
from mlplatform.core.alerts import Pending, RunFacts, run_failure_alert
from mlplatform.specs.alerts import AlertsSpec
from platform_tests.alerts.receivers import self_signed_tls, smtp_receiver, webhook_receiver
from platform_tests.servers import free_port

ALERT = run_failure_alert(
    "tiny", RunFacts("0123456789abcdef", "tiny__ingest", "FAILURE", "2024-02-01"), "http://ui"
)


def webhook_spec(blocks: bool = True) -> AlertsSpec:
    return AlertsSpec.model_validate({"webhook": {"url": {"env": "TEST_HOOK"}, "blocks": blocks}})


def email_spec(port: int, login: bool = False, starttls: bool = False) -> AlertsSpec:
    email = {
        "host": "127.0.0.1",
        "port": port,
        "starttls": starttls,
        "from": "ml@example.com",
        "to": ["a@x.org", "b@x.org"],
    }
    if login:
        email |= {"user": {"env": "TEST_SMTP_USER"}, "password": {"env": "TEST_SMTP_PASSWORD"}}
    return AlertsSpec.model_validate({"email": email})


def test_webhook_receives_the_slack_json() -> None:
    with webhook_receiver() as receiver:
        target = destinations(webhook_spec(), {"TEST_HOOK": receiver.url})["webhook"]
        assert send_with_retries(target, ALERT) is None
    assert receiver.texts() == [ALERT.text()]
    assert receiver.payloads[0]["blocks"][-1]["elements"][0]["url"] == "http://ui/runs/0123456789abcdef"


def test_webhook_500s_are_retried_three_times_with_backoff_then_reported() -> None:
    with webhook_receiver(failures=-1) as receiver:
        target = destinations(webhook_spec(), {"TEST_HOOK": receiver.url})["webhook"]
        started = time.monotonic()
        error = send_with_retries(target, ALERT)
        elapsed = time.monotonic() - started
    assert error == "the webhook answered HTTP 500 Internal Server Error (3 attempts)"
    assert receiver.requests == 3 and not receiver.payloads
    assert 1.4 <= elapsed < 4, elapsed  # pauses of 0.5 s and 1 s between the three tries


def test_a_receiver_that_recovers_gets_the_alert_once() -> None:
    with webhook_receiver(failures=2) as receiver:
        target = destinations(webhook_spec(blocks=False), {"TEST_HOOK": receiver.url})["webhook"]
        assert send_with_retries(target, ALERT) is None
    assert receiver.requests == 3 and receiver.payloads == [{"text": ALERT.text()}]


def test_a_closed_port_fails_fast_and_the_error_does_not_show_the_secret_url() -> None:
    url = f"http://127.0.0.1:{free_port()}/secret-token-xyz"
    target = destinations(webhook_spec(), {"TEST_HOOK": url})["webhook"]
    started = time.monotonic()
    error = send_with_retries(target, ALERT)
    assert time.monotonic() - started < 3
    assert error is not None and "did not answer" in error and "secret-token-xyz" not in error


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:1/services/secret-token-xyz x",
        "http://127.0.0.1:port/secret-token-xyz",
        "http://[::1/secret-token-xyz",
    ],
)
def test_an_invalid_webhook_url_is_reported_without_the_secret_and_not_retried(url: str) -> None:
    target = destinations(webhook_spec(), {"TEST_HOOK": url})["webhook"]
    error = send_with_retries(target, ALERT)
    assert error is not None and error.startswith("the webhook URL is not valid") and "xyz" not in error


def test_a_missing_environment_variable_is_reported_without_retrying() -> None:
    target = destinations(webhook_spec(), {})["webhook"]
    started = time.monotonic()
    assert send_with_retries(target, ALERT) == "alerts.webhook.url: environment variable TEST_HOOK is not set"
    assert time.monotonic() - started < 0.2


def test_email_reaches_the_smtp_server() -> None:
    with smtp_receiver() as receiver:
        target = destinations(email_spec(receiver.port), {})["email"]
        assert send_with_retries(target, ALERT) is None
    (message,) = receiver.messages
    assert message["Subject"] == "[mlplatform] tiny: run 01234567 of tiny__ingest failed"
    assert message["From"] == "ml@example.com" and message["To"] == "a@x.org, b@x.org"
    assert receiver.bodies() == [ALERT.text() + "\n"]


# Only a server on 127.0.0.1 in a test may take a login without TLS; aiosmtpd warns about it.
@pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS")
def test_email_logs_in_with_the_user_and_password_from_the_environment() -> None:
    with smtp_receiver(login=("alerts", "s3cret")) as receiver:
        spec = email_spec(receiver.port, login=True)
        good = destinations(spec, {"TEST_SMTP_USER": "alerts", "TEST_SMTP_PASSWORD": "s3cret"})["email"]
        assert send_with_retries(good, ALERT) is None
        bad = destinations(spec, {"TEST_SMTP_USER": "alerts", "TEST_SMTP_PASSWORD": "wrong"})["email"]
        started = time.monotonic()
        error = send_with_retries(bad, ALERT)
        elapsed = time.monotonic() - started
        assert receiver.logins == ["alerts"] and len(receiver.messages) == 1
        assert error == f"SMTP 127.0.0.1:{receiver.port} refused the login: 535"
        assert elapsed < 2, "a refused login is not retried"
        # smtplib cannot send a non-ASCII login: a configuration error, not a crash of the sensor
        accented = destinations(spec, {"TEST_SMTP_USER": "alerts", "TEST_SMTP_PASSWORD": "s3crét"})["email"]
        error = send_with_retries(accented, ALERT)
    assert error == f"SMTP 127.0.0.1:{receiver.port}: the user or password is not ASCII"


def test_a_destination_that_is_down_is_tried_once_per_tick_and_the_others_still_get_theirs() -> None:
    alerts = [
        run_failure_alert("tiny", RunFacts(f"run{i}", "tiny__ingest", "FAILURE"), "http://ui")
        for i in range(5)
    ]
    with webhook_receiver(failures=-1) as hook, smtp_receiver() as smtp:
        spec = AlertsSpec.model_validate(
            {
                "webhook": {"url": {"env": "TEST_HOOK"}},
                "email": email_spec(smtp.port).email.model_dump(by_alias=True),
            }
        )
        targets = destinations(spec, {"TEST_HOOK": hook.url})
        started = time.monotonic()
        report = deliver([Pending(a, ("webhook", "email")) for a in alerts], targets)
        elapsed = time.monotonic() - started
    assert hook.requests == 3, "one round of retries per tick, not one per alert"
    assert len(smtp.messages) == 5 and elapsed < 4
    assert [p.destinations for p in report.undelivered] == [("webhook",)] * 5
    assert set(report.failures) == {"webhook"}


def test_email_over_starttls_verifies_the_servers_certificate(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    context, certificate = self_signed_tls(tmp_path)
    with smtp_receiver(tls=context) as receiver:
        target = destinations(email_spec(receiver.port, starttls=True), {})["email"]
        untrusted = send_with_retries(target, ALERT, attempts=1)
        monkeypatch.setenv("SSL_CERT_FILE", str(certificate))  # what OpenSSL's default paths read
        trusted = send_with_retries(target, ALERT, attempts=1)
    assert untrusted is not None and "CERTIFICATE_VERIFY_FAILED" in untrusted
    assert trusted is None and receiver.bodies() == [ALERT.text() + "\n"]
