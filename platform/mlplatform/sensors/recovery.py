"""`mlplatform__recovery`: on every daemon tick, end runs whose process is gone (see mlplatform.recovery).

One sensor per code location, not per dataset: it sweeps the whole instance and MLflow store. A run
left STARTED by a killed `mlplatform run` would hold the only run slot (`max_concurrent_runs: 1`) and
keep every sensor's run QUEUED; this sensor marks it FAILED within one tick, so the queue moves on, and
ends the MLflow runs the dead process left RUNNING as KILLED. It requests no runs and is on by default
whatever MLPLATFORM_AUTOMATION says: it only ever touches runs of processes that no longer exist.
"""

import time

import dagster as dg

from mlplatform.recovery import existing_mlflow_client, fail_dead_runs, kill_dead_mlflow_runs
from mlplatform.resources.mlflow import MlflowResource
from mlplatform.settings import Settings

RECOVERY_SENSOR = "mlplatform__recovery"
MARKED_BY = f"the {RECOVERY_SENSOR} sensor"
# An unreachable MLflow costs a whole HTTP timeout per call and sensors tick one after another: after a
# failure the MLflow sweep waits this long, the Dagster sweep goes on every tick.
MLFLOW_RETRY_SECONDS = 600


def _sweep_mlflow(resource: MlflowResource, cursor: str | None) -> tuple[list[str], str, str]:
    """MLflow runs ended, the next cursor (no MLflow call before that time) and a note for the tick."""
    now = time.time()
    if now < float(cursor or 0):
        return [], str(cursor), "; MLflow not checked: it was unreachable at the last check"
    try:
        client = existing_mlflow_client(resource)
        return (kill_dead_mlflow_runs(client, MARKED_BY) if client is not None else []), "0", ""
    except Exception as error:  # MLflow down must not turn every tick into an error: say it, go on
        return [], str(now + MLFLOW_RETRY_SECONDS), f"; MLflow not checked: {str(error).strip()[:300]}"


def build_recovery_sensor(settings: Settings) -> dg.SensorDefinition:
    resource = MlflowResource.from_settings(settings)

    @dg.sensor(
        name=RECOVERY_SENSOR,
        minimum_interval_seconds=settings.sensor_interval_seconds,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description=(
            "Marks runs whose process was killed FAILED (they would block the run queue) and ends the "
            "MLflow runs such a process left RUNNING as KILLED. Requests no runs."
        ),
    )
    def recovery_sensor(context: dg.SensorEvaluationContext) -> dg.SensorResult:
        ended = fail_dead_runs(context.instance, MARKED_BY)
        mlflow_ended, cursor, note = _sweep_mlflow(resource, context.cursor)
        for line in ended + mlflow_ended:
            context.log.warning(f"ended {line}: its process is gone")
        count = len(ended + mlflow_ended)
        summary = f"ended {count} run(s) of dead processes" if count else "no dead runs"
        return dg.SensorResult(skip_reason=dg.SkipReason(summary + note), cursor=cursor)

    return recovery_sensor
