"""What every sensor and schedule shares, from the Settings the definitions are built with.

* `Settings.sensor_interval_seconds` (MLPLATFORM_SENSOR_INTERVAL): seconds between sensor ticks.
* `Settings.automation` (MLPLATFORM_AUTOMATION): which datasets' sensors and schedules start RUNNING
  with the daemon: "all" (default), "none", or comma-separated dataset names. The others start
  STOPPED and can be switched on in the UI, so one can automate a single dataset without the others.
"""

import dagster as dg

from mlplatform.settings import Settings

# A run in one of these has not finished: sensors wait for it (or for its outcome) before requesting more.
IN_FLIGHT_RUN_STATUSES = (
    dg.DagsterRunStatus.QUEUED,
    dg.DagsterRunStatus.NOT_STARTED,
    dg.DagsterRunStatus.STARTING,
    dg.DagsterRunStatus.STARTED,
    dg.DagsterRunStatus.CANCELING,
    dg.DagsterRunStatus.MANAGED,
)
FAILED_RUN_STATUSES = (dg.DagsterRunStatus.FAILURE, dg.DagsterRunStatus.CANCELED)


def sensor_interval(settings: Settings) -> int:
    return settings.sensor_interval_seconds


def sensor_status(settings: Settings, dataset: str) -> dg.DefaultSensorStatus:
    running = settings.is_automated(dataset)
    return dg.DefaultSensorStatus.RUNNING if running else dg.DefaultSensorStatus.STOPPED


def schedule_status(settings: Settings, dataset: str) -> dg.DefaultScheduleStatus:
    running = settings.is_automated(dataset)
    return dg.DefaultScheduleStatus.RUNNING if running else dg.DefaultScheduleStatus.STOPPED
