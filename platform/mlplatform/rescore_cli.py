"""`mlplatform rescore`: after a change of champion, re-score what it affects, in this process.

The partitions whose latest predictions are by another version than the `champion` get `<ds>__rescore`
(reference_profile -> predictions -> drift_report) as one run over the range from the first to the
last of them, recorded in the home's Dagster instance, so their drift verdicts judge the champion
again. With the daemon running, `<ds>__rescore_sensor` does the same by itself (mlplatform.sensors.rescore);
`mlplatform rollback` prints this command for homes without one.
"""

from __future__ import annotations

import argparse
import sys

from mlplatform.errors import UserError
from mlplatform.settings import HOME_ENV, Settings


def cmd_rescore(args: argparse.Namespace, settings: Settings) -> int:
    from mlplatform.contracts import CHAMPION_ALIAS
    from mlplatform.factory import build_definitions
    from mlplatform.home import open_instance, prepare_home
    from mlplatform.jobs.dataset_jobs import RESCORE_SUFFIX
    from mlplatform.resources.mlflow import MlflowResource
    from mlplatform.runner import QUIET_CONSOLE, dataset_names
    from mlplatform.sensors.rescore import rescore_bounds, rescore_tags
    from mlplatform.specs.loader import SpecError

    for line in prepare_home(settings):
        print(f"mlplatform: marked {line} as failed: its process is gone", file=sys.stderr)
    try:
        defs = build_definitions(settings=settings)
    except SpecError as exc:
        raise UserError(str(exc)) from None
    known = dataset_names(defs)
    if args.dataset not in known:
        raise UserError(f"unknown dataset {args.dataset} (known: {', '.join(known)})")
    found = MlflowResource.from_settings(settings).get_alias_version(args.dataset, CHAMPION_ALIAS)
    if found is None:
        raise UserError(f"{args.dataset} has no `{CHAMPION_ALIAS}` model version: nothing to re-score with")
    champion = int(found.version)
    job = defs.resolve_job_def(f"{args.dataset}{RESCORE_SUFFIX}")
    assert job.partitions_def is not None  # the job of partitioned stages
    with open_instance(settings) as instance:
        bounds = rescore_bounds(instance, args.dataset, job.partitions_def, champion)
        if bounds is None:
            print(f"{args.dataset}: every scored partition is by the champion, version {champion}")
            return 0
        print(f"{args.dataset}: re-scoring {bounds[0]} .. {bounds[1]} with the champion, version {champion}")
        result = job.execute_in_process(
            instance=instance,
            tags=rescore_tags(bounds, champion),
            run_config=QUIET_CONSOLE,
            raise_on_error=False,
        )
    if not result.success:
        failed = [e for e in result.all_events if e.is_step_failure and e.step_failure_data.error]
        why = "; ".join(f"{e.step_key}: {e.step_failure_data.error.message.strip()}" for e in failed)
        raise UserError(f"{job.name} run {result.run_id} failed: {why or 'see it in the Dagster UI'}")
    print(f"{args.dataset}: re-scored {bounds[0]} .. {bounds[1]} ({job.name} run {result.run_id})")
    return 0


def add_rescore_command(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "rescore",
        help="re-score the partitions whose predictions are not by the champion (after a rollback)",
        description=(
            "Runs <dataset>__rescore (reference_profile -> predictions -> drift_report) in this process for "
            "the partitions whose latest predictions are by another model version than the champion, so "
            "their drift verdicts judge the champion again. The daemon's <dataset>__rescore_sensor does the "
            "same by itself."
        ),
    )
    parser.add_argument("--dataset", required=True, metavar="NAME")
    parser.add_argument("--home", help=f"platform home (default: ${HOME_ENV} or ./.mlplatform)")
    parser.set_defaults(func=cmd_rescore)
