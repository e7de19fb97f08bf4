"""POST an alert as JSON to a webhook (Slack's incoming webhooks, or any receiver of `{"text": ...}`)."""

from __future__ import annotations

import http.client
import json
import urllib.error
import urllib.request
from typing import Any

from mlplatform.alerts.errors import DeliveryError, NotConfiguredError


def post_json(url: str, payload: dict[str, Any], timeout: float) -> None:
    """One POST; any answer other than 2xx, or no answer within `timeout` seconds, is a DeliveryError
    (its message never holds the URL: a webhook URL is a secret)."""
    if not url.startswith(("http://", "https://")):
        raise DeliveryError("the webhook URL must start with http:// or https://")
    try:
        request = urllib.request.Request(
            url,
            data=json.dumps(payload).encode(),
            headers={"Content-Type": "application/json; charset=utf-8"},
            method="POST",
        )
        with urllib.request.urlopen(request, timeout=timeout) as response:
            response.read()
    except (http.client.InvalidURL, ValueError) as error:  # their message holds the URL: a secret
        raise NotConfiguredError(f"the webhook URL is not valid ({type(error).__name__})") from None
    except urllib.error.HTTPError as error:
        raise DeliveryError(f"the webhook answered HTTP {error.code} {error.reason}") from None
    except (urllib.error.URLError, OSError) as error:
        reason = getattr(error, "reason", error)
        raise DeliveryError(f"the webhook did not answer: {reason}") from None
