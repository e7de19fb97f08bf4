"""`mlplatform`: whole-graph commands. Per-asset work stays with Dagster's own CLIs."""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from mlplatform.errors import UserError
from mlplatform.home_config import HomeConfigError
from mlplatform.replay import POLICIES
from mlplatform.rescore_cli import add_rescore_command
from mlplatform.settings import HOME_ENV, Settings, apply_mlflow_env_defaults, load_settings
from mlplatform.specs_cli import add_specs_command
from mlplatform.stack import add_up_command
from mlplatform.stages import mlflow_stages, runnable_stages
from mlplatform.warehouse_cli import add_warehouse_command

if TYPE_CHECKING:
    import dagster as dg

# Heavy modules (Dagster, MLflow, pandas) are imported inside the commands: `mlplatform --help` stays quick.


def process_settings(home: str | None) -> Settings:
    """Set up this process and read its Settings: the only place the `mlplatform` command writes
    os.environ (the other entry points, mlplatform.definitions and the dg component, apply the same
    MLflow defaults for the processes Dagster starts).

    MLflow's environment-only defaults (HTTP timeouts, telemetry, progress bars) go into the environment,
    which the replay's worker processes inherit; `--home` wins over $MLPLATFORM_HOME without being
    exported. Every command gets the returned Settings as a parameter.
    """
    apply_mlflow_env_defaults()
    environ = dict(os.environ)
    if home:
        environ[HOME_ENV] = str(Path(home).expanduser().resolve())
    try:
        return load_settings(environ)
    except HomeConfigError as exc:  # the home's config.yaml is unreadable
        raise UserError(str(exc)) from None


def _prepare_home(settings: Settings) -> None:
    """The Dagster instance of the home exists; runs left STARTED by a killed process are failed."""
    from mlplatform.home import prepare_home
    from mlplatform.runner import quiet_store_setup_logs

    quiet_store_setup_logs()  # prepare_home may create the MLflow store: no schema chatter on stderr
    for line in prepare_home(settings):
        print(f"mlplatform: marked {line} as failed: its process is gone", file=sys.stderr)


def _check_mlflow(settings: Settings, write_probe_experiment: str | None) -> None:
    from mlplatform.resources.mlflow import MlflowResource, MlflowUnavailable

    try:
        MlflowResource.from_settings(settings).check_reachable(write_probe_experiment)
    except MlflowUnavailable as exc:
        raise UserError(f"{exc}; nothing was run") from None


def _end_dead_mlflow_runs(settings: Settings) -> None:
    """MLflow runs a killed process left RUNNING are ended as KILLED (the store answered just before)."""
    from mlplatform.recovery import existing_mlflow_client, kill_dead_mlflow_runs
    from mlplatform.resources.mlflow import MlflowResource

    client = existing_mlflow_client(MlflowResource.from_settings(settings))
    if client is None:
        return
    for line in kill_dead_mlflow_runs(client, "the `mlplatform` command"):
        print(f"mlplatform: ended {line} as KILLED: its process is gone", file=sys.stderr)


def _load_definitions(settings: Settings) -> dg.Definitions:
    from mlplatform.factory import build_definitions
    from mlplatform.specs.loader import SpecError

    try:
        return build_definitions(settings=settings)
    except SpecError as exc:
        raise UserError(str(exc)) from None


def cmd_run(args: argparse.Namespace, settings: Settings) -> int:
    from mlplatform.factory import broken_specs
    from mlplatform.home import open_instance
    from mlplatform.runner import dataset_names, print_summary, quiet_store_setup_logs, run_datasets

    _prepare_home(settings)
    quiet_store_setup_logs()  # before the MLflow check, which may create the store
    # Stages that use MLflow are checked against the tracking server before running them, and the ones
    # that write to it for writing (a read-only store fails before any data stage).
    uses_mlflow = [stage for stage in mlflow_stages("read", "write") if stage in runnable_stages()]
    stages = args.stage or uses_mlflow
    checked = any(stage in uses_mlflow for stage in stages)
    if checked:
        _check_mlflow(settings, None)  # before loading definitions: an unreachable server fails in seconds
    defs = _load_definitions(settings)
    if any(stage in mlflow_stages("write") for stage in stages):
        known = dataset_names(defs)  # unknown names are refused by run_datasets, unprobed
        for name in [name for name in args.dataset or known if name in known]:
            _check_mlflow(settings, name)
    if checked:
        _end_dead_mlflow_runs(settings)
    with open_instance(settings) as instance:
        results = run_datasets(
            defs,
            args.dataset or None,
            instance=instance,
            progress=print,
            stages=args.stage or None,
            allow_shrink=args.allow_shrink,
            settings=settings,
        )
    print_summary(settings, defs, results)
    # A broken spec fails the command that was asked to run everything, after the good datasets ran.
    broken = [] if args.dataset else broken_specs(defs)
    for spec in broken:
        print(f"mlplatform: error: dataset {spec.name} was not run: {spec.error}", file=sys.stderr)
    return 0 if all(r.success for r in results) and not broken else 1


def cmd_rollback(args: argparse.Namespace, settings: Settings) -> int:
    from mlplatform.models.registry import RegistryError, rollback
    from mlplatform.resources.mlflow import MlflowResource

    _prepare_home(settings)
    resource = MlflowResource.from_settings(settings)
    try:
        change = rollback(resource, args.dataset, args.to)
    except RegistryError as exc:
        raise UserError(str(exc)) from None
    from mlplatform.home import open_instance
    from mlplatform.sensors.alert_events import record_rollback

    with open_instance(settings) as instance:  # the event-log record the alerts sensor and the UI read
        record_rollback(instance, args.dataset, change.previous, change.current)
    print(
        f"{args.dataset}: champion moved from version {change.previous} to version {change.current} "
        f"(MLflow registry {resource.effective_registry_uri})"
    )
    print(
        f"re-score with it: mlplatform rescore --dataset {args.dataset}"
        + (f" --home {args.home}" if args.home else "")
    )
    return 0


def cmd_replay(args: argparse.Namespace, settings: Settings) -> int:
    from mlplatform.replay import ReplayConfig, check_config, replay
    from mlplatform.specs.loader import read_specs

    config = ReplayConfig(
        dataset=args.dataset,
        output=Path(args.output).expanduser().resolve(),
        period_days=args.period_days,
        initial_fraction=args.initial_fraction,
        retrain_every_days=args.retrain_every_days,
        policies=tuple(args.policy or POLICIES),
        processes=args.processes,
        max_periods=args.max_periods,
        keep_homes=args.keep_homes,
        label_delay=args.label_delay,
    )
    try:
        check_config(config)
    except ValueError as exc:
        raise UserError(str(exc)) from None
    specs, broken = read_specs(settings.extra_spec_dirs)
    known = [s.name for s in specs]
    if config.dataset in {b.name for b in broken}:
        raise UserError(next(b.error for b in broken if b.name == config.dataset))
    if config.dataset not in known:
        raise UserError(f"unknown dataset {config.dataset} (known: {', '.join(known)})")
    replay(config, settings)
    print(f"wrote {config.output / 'replay.csv'}, replay_summary.csv and replay.png")
    return 0


def add_replay_command(sub: argparse._SubParsersAction) -> None:
    """The `replay` subcommand (its logic: mlplatform.replay)."""
    parser = sub.add_parser(
        "replay",
        help=(
            "replay a dataset's history under static, scheduled, drift-triggered and every-period "
            "retraining (the ceiling)"
        ),
        description=(
            "Replays the history of a dataset period by period through the real jobs and the real drift "
            "sensor, each policy in its own temporary platform home, and writes replay.csv, "
            "replay_summary.csv (per policy: retrains, mean metric, share of every_period's gain over "
            "static captured, training seconds, the label-free estimate's error) and replay.png to --output."
        ),
    )
    parser.add_argument("--dataset", required=True, metavar="NAME")
    parser.add_argument("--output", required=True, metavar="DIR")
    parser.add_argument("--period-days", type=int, default=7, help="days per replayed period (default 7)")
    parser.add_argument(
        "--initial-fraction", type=float, default=0.3, help="share of the history to bootstrap on (0.3)"
    )
    parser.add_argument(
        "--retrain-every-days", type=int, default=28, help="schedule of the scheduled policy (28)"
    )
    parser.add_argument(
        "--policy", action="append", choices=POLICIES, help="only these policies (repeatable)"
    )
    parser.add_argument("--processes", type=int, default=2, help="policies replayed in parallel (2)")
    parser.add_argument(
        "--label-delay",
        metavar="DURATION",
        help="simulate labels arriving this long after each row (e.g. 7d), instead of the spec's labels.delay",
    )
    parser.add_argument("--max-periods", type=int, help=argparse.SUPPRESS)
    parser.add_argument(
        "--keep-homes", action="store_true", help="keep each policy's platform home under DIR/_homes"
    )
    parser.set_defaults(func=cmd_replay)


def add_run_command(sub: argparse._SubParsersAction) -> None:
    """The `run` subcommand (its logic: mlplatform.runner)."""
    run = sub.add_parser(
        "run",
        help="materialize every asset of all (or the named) datasets through the Dagster instance",
        description=(
            "Materialize the whole asset graph of each dataset, all partitions as one run per dataset, "
            "recorded in the Dagster instance of the platform home (open `dagster dev` afterwards to see "
            "the runs). Exits non-zero if any run failed."
        ),
    )
    run.add_argument("--dataset", action="append", metavar="NAME", help="only this dataset (repeatable)")
    run.add_argument(
        "--stage",
        action="append",
        metavar="STAGE",
        help=(
            f"only this stage (repeatable): {', '.join(runnable_stages())}; "
            "e.g. --stage predictions re-scores with the current champion"
        ),
    )
    run.add_argument(
        "--allow-shrink",
        action="store_true",
        help=(
            "let the raw stage remove rows whose source files are gone or no longer hold them "
            "(without it such a run fails and changes nothing)"
        ),
    )
    run.add_argument("--home", help=f"platform home (default: ${HOME_ENV} or ./.mlplatform)")
    run.set_defaults(func=cmd_run)


def add_rollback_command(sub: argparse._SubParsersAction) -> None:
    """The `rollback` subcommand (its logic: mlplatform.models.registry)."""
    rollback = sub.add_parser(
        "rollback",
        help="point a dataset's `champion` model alias back at the previous champion (or --to a version)",
        description=(
            "Move the `champion` alias of the dataset's registered MLflow model back to the champion before "
            "the current one (promotions are undone one at a time), or to the version given with --to. "
            "Predictions keep their old model_version, and drift verdicts say insufficient_data, until "
            "re-scored: by the daemon's <dataset>__rescore_sensor, or by `mlplatform rescore`."
        ),
    )
    rollback.add_argument(
        "--dataset", required=True, metavar="NAME", help="dataset (= registered model) name"
    )
    rollback.add_argument("--to", type=int, metavar="VERSION", help="model version to make champion")
    rollback.add_argument("--home", help=f"platform home (default: ${HOME_ENV} or ./.mlplatform)")
    rollback.set_defaults(func=cmd_rollback)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mlplatform",
        description=(
            "Spec-driven data and ML platform on Dagster. State lives in $MLPLATFORM_HOME "
            "(default ./.mlplatform): the warehouse (warehouse/, a DuckDB file per dataset), the Dagster "
            "instance (dagster/), the MLflow store."
        ),
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    add_run_command(sub)
    add_rollback_command(sub)
    add_specs_command(sub)
    add_rescore_command(sub)
    add_replay_command(sub)
    add_up_command(sub)
    add_warehouse_command(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    started = time.monotonic()
    try:
        settings = process_settings(getattr(args, "home", None))
        code = int(args.func(args, settings))
    except UserError as exc:
        print(f"mlplatform: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("mlplatform: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `mlplatform sql | head`: the reader has what it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit
        return 0
    if args.command == "run":
        print(f"done in {time.monotonic() - started:.1f} s")
    return code


if __name__ == "__main__":
    sys.exit(main())
