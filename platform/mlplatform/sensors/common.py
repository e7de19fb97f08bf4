"""Settings every sensor and schedule shares, from environment variables read when definitions load.

* MLPLATFORM_SENSOR_INTERVAL: seconds between sensor ticks (default 60; tests use a few seconds).
* MLPLATFORM_AUTOMATION: which datasets' sensors and schedules start RUNNING with the daemon:
  "all" (default), "none", or comma-separated dataset names. The others start STOPPED and can be
  switched on in the UI, so one can automate a single dataset without touching the others.
"""

import os

import dagster as dg

SENSOR_INTERVAL_ENV = "MLPLATFORM_SENSOR_INTERVAL"
AUTOMATION_ENV = "MLPLATFORM_AUTOMATION"
DEFAULT_SENSOR_INTERVAL = 60


def sensor_interval() -> int:
    return int(os.environ.get(SENSOR_INTERVAL_ENV) or DEFAULT_SENSOR_INTERVAL)


def is_automated(dataset: str) -> bool:
    setting = (os.environ.get(AUTOMATION_ENV) or "all").strip().lower()
    if setting == "all":
        return True
    return dataset.lower() in {name.strip() for name in setting.split(",")}


def sensor_status(dataset: str) -> dg.DefaultSensorStatus:
    return dg.DefaultSensorStatus.RUNNING if is_automated(dataset) else dg.DefaultSensorStatus.STOPPED


def schedule_status(dataset: str) -> dg.DefaultScheduleStatus:
    return dg.DefaultScheduleStatus.RUNNING if is_automated(dataset) else dg.DefaultScheduleStatus.STOPPED
