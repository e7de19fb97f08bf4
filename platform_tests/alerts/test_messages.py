"""The alert messages (mlplatform.core.alerts) and the `alerts:` spec section: pure, no server."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from mlplatform.core.alerts import (
    Alert,
    AlertKind,
    ChampionChange,
    CheckFacts,
    Pending,
    RunFacts,
    check_failure_alert,
    drift_retraining_alert,
    email_body,
    email_subject,
    keep_pending,
    promotion_alert,
    rollback_alert,
    run_failure_alert,
    webhook_payload,
)
from mlplatform.specs.alerts import ALERT_EVENTS, AlertsSpec
from platform_tests.core.toy_spec import toy_spec

UI = "http://dagster.example:3000/"
RUN = RunFacts("0123456789abcdef", "tiny__ingest", "FAILURE", "2024-02-01", "tiny__clean: boom <@here>")


def test_run_failure_names_dataset_partition_run_and_links_to_the_run() -> None:
    alert = run_failure_alert("tiny", RUN, UI)
    assert alert.kind is AlertKind.RUN_FAILURE and alert.key == "run_failure:0123456789abcdef"
    assert alert.link == "http://dagster.example:3000/runs/0123456789abcdef"
    text = alert.text()
    assert text.splitlines()[0] == "tiny: run 01234567 of tiny__ingest failed"
    for line in (
        "dataset: tiny",
        "partition: 2024-02-01",
        "run: 0123456789abcdef",
        "error: tiny__clean: boom",
    ):
        assert line in text
    assert text.endswith(alert.link)


def test_a_failed_non_blocking_check_says_its_run_succeeded_and_links_to_the_checks() -> None:
    run = RunFacts("feedbeef00000000", "__ASSET_JOB", "SUCCESS")
    check = CheckFacts(
        ("tiny", "evaluation"), "model_beats_baseline", None, False, "ERROR", "worse than naive"
    )
    alert = check_failure_alert("tiny", check, run, UI)
    assert (
        alert.title
        == "tiny: check model_beats_baseline on tiny/evaluation failed (non-blocking; run SUCCESS)"
    )
    assert alert.link == "http://dagster.example:3000/assets/tiny/evaluation?view=checks"
    assert ("result", "worse than naive") in alert.details
    assert ("run", "feedbeef00000000 (__ASSET_JOB, SUCCESS)") in alert.details
    blocking = check_failure_alert(
        "tiny", CheckFacts(("tiny", "clean"), "validity_rate", "2024-01-01", True, "ERROR"), run, UI
    )
    assert "(blocking;" in blocking.title and ("partition", "2024-01-01") in blocking.details
    assert blocking.key != alert.key


def test_drift_promotion_and_rollback_messages() -> None:
    run = RunFacts("aaaabbbbccccdddd", "tiny__retrain", "QUEUED")
    drift = drift_retraining_alert("tiny", run, "2024-03-01", "3 of 5 columns drifted", UI)
    assert drift.title == "tiny: drift triggered retraining (run aaaabbbb of tiny__retrain)"
    assert ("partition", "2024-03-01") in drift.details and drift.link.endswith("/runs/aaaabbbbccccdddd")
    retry = drift_retraining_alert("tiny", run, None, None, UI, retry_of="drift:tiny:7")
    assert "retrying failed retraining drift:tiny:7" in retry.title
    promoted = promotion_alert(
        "tiny", ChampionChange(2, 1, "better", "run-1", "rmse: challenger 1"), ("tiny", "model"), UI, 41
    )
    assert promoted.title == "tiny: model version 2 promoted to champion (before: version 1)"
    assert promoted.key == "promotion:41" and promoted.link.endswith("/runs/run-1")
    first = promotion_alert("tiny", ChampionChange(1, "none"), ("tiny", "model"), UI, 5)
    assert "(before: no champion)" in first.title
    rolled = rollback_alert("tiny", ChampionChange(1, 2, "by hand"), ("tiny", "model"), UI, 42)
    assert rolled.title == "tiny: champion rolled back from version 2 to version 1"
    assert rolled.link == "http://dagster.example:3000/assets/tiny/model"


def test_webhook_payload_is_slack_compatible_and_escaped() -> None:
    alert = run_failure_alert("tiny", RUN, UI)
    plain = webhook_payload(alert, blocks=False)
    assert plain == {"text": alert.text()}
    payload = webhook_payload(alert)
    assert payload["text"] == alert.text()
    header, fields, actions = payload["blocks"]
    assert header["text"]["text"] == f"*{alert.title}*"
    assert any("&lt;@here&gt;" in f["text"] for f in fields["fields"]), "a message cannot mention @here"
    assert all("<@here>" not in f["text"] for f in fields["fields"])
    assert actions["elements"][0]["url"] == alert.link
    many = Alert(AlertKind.RUN_FAILURE, "t", "k", "t", tuple((f"l{i}", "v") for i in range(15)), UI)
    assert len(webhook_payload(many)["blocks"][1]["fields"]) == 10


def test_email_subject_is_one_short_line_and_body_has_the_link() -> None:
    long_error = RunFacts("r" * 16, "job\nname", "FAILURE", error="x" * 5000)
    alert = run_failure_alert("tiny", long_error, UI)
    subject = email_subject(alert)
    assert subject.startswith("[mlplatform] tiny: run") and "\n" not in subject and len(subject) <= 200
    body = email_body(alert)
    assert alert.link in body and len(body) < 1500  # the error is cut to VALUE_LIMIT


def test_alert_survives_the_cursor_and_pending_alerts_are_bounded() -> None:
    alert = run_failure_alert("tiny", RUN, UI)
    assert Alert.from_json(alert.to_json()) == alert
    queue = [Pending(alert, ("webhook",), ticks=t) for t in (0, 0, 1, 2)]
    kept, dropped = keep_pending(queue, max_pending=2, max_ticks=3)
    assert [p.ticks for p in dropped] == [3, 1] and [p.ticks for p in kept] == [1, 2]
    assert Pending.from_json(kept[0].to_json()) == kept[0]


def test_alerts_section_of_a_spec(tmp_path: Path) -> None:
    section = {
        "webhook": {"url": {"env": "TEAM_WEBHOOK"}},
        "email": {"host": "smtp.example.com", "from": "ml@example.com", "to": ["oncall@example.com"]},
    }
    spec = toy_spec(tmp_path / "toy.csv", alerts=section)
    assert spec.alerts is not None and spec.alerts.events == list(ALERT_EVENTS)
    assert spec.alerts.webhook.url.env == "TEAM_WEBHOOK" and spec.alerts.webhook.blocks
    assert spec.alerts.email.sender == "ml@example.com" and spec.alerts.email.port == 587
    assert toy_spec(tmp_path / "toy.csv").alerts is None
    assert list(ALERT_EVENTS) == [kind.value for kind in AlertKind], "the spec's events are the alert kinds"


@pytest.mark.parametrize(
    ("section", "error"),
    [
        ({"events": ["run_failure"]}, "give a destination"),
        ({"webhook": {"url": "https://hooks.slack.com/services/SECRET"}}, "never written in a spec"),
        (
            {"email": {"host": "h", "from": "a@b", "to": ["c@d"], "user": "me", "password": "pw"}},
            "the SMTP login is read from that environment variable",
        ),
        ({"webhook": {"url": {"env": "HOOK"}}, "events": ["disk_full"]}, "events"),
        (
            {"email": {"host": "h", "from": "a@b", "to": ["c@d"], "user": {"env": "U"}}},
            "both `user` and `password`",
        ),
        ({"email": {"host": "h", "from": "not an address", "to": ["c@d"]}}, "not e-mail addresses"),
    ],
)
def test_bad_alerts_sections_are_refused(section: dict, error: str) -> None:
    with pytest.raises(ValidationError, match=error):
        AlertsSpec.model_validate(section)
