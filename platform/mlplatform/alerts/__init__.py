"""Delivery of alerts (messages are built in mlplatform.core.alerts; the sensor is
mlplatform.sensors.alerts): a Slack-compatible webhook (`webhook.py`) and e-mail over SMTP
(`email.py`), each attempt bounded in time and retried a few times with backoff (`delivery.py`)."""
