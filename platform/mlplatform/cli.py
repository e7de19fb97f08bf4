"""`mlplatform`: whole-graph commands. Per-asset work stays with Dagster's own CLIs."""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import yaml

from mlplatform.settings import HOME_ENV, apply_mlflow_http_defaults, load_settings

RUN_MONITORING_YAML = """# Added by mlplatform: the daemon fails runs stuck starting or canceling (their worker is gone), so a
# dead run never holds the run slot. Runs of killed processes: see mlplatform.recovery.
run_monitoring:
  enabled: true
  start_timeout_seconds: 180
  cancel_timeout_seconds: 180
  poll_interval_seconds: 30
"""
DAGSTER_YAML = (
    """# Written by mlplatform on first use. The Dagster instance of this platform home.
telemetry:
  enabled: false
# One DuckDB file has one writer: runs the daemon launches (sensors, schedules) queue, one at a time.
run_queue:
  max_concurrent_runs: 1
"""
    + RUN_MONITORING_YAML
)
# Stages whose assets use MLflow: `mlplatform run` checks the tracking server before running them, and
# the ones that write to it (a read-only store fails before any data stage).
MLFLOW_STAGES = ("model", "evaluation", "predictions")
MLFLOW_WRITE_STAGES = ("model", "evaluation")


class UserError(Exception):
    """A mistake the user can fix: printed as one line, no traceback."""


def prepare_home(home: str | None) -> None:
    """Point MLPLATFORM_HOME and DAGSTER_HOME at the platform home and create the Dagster instance."""
    if home:
        os.environ[HOME_ENV] = str(Path(home).expanduser().resolve())
    # Like Dagster's (dagster.yaml below), MLflow's usage telemetry stays off unless the user sets it.
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    settings = load_settings()
    os.environ.setdefault("DAGSTER_HOME", str(settings.dagster_home))
    dagster_home = Path(os.environ["DAGSTER_HOME"])
    dagster_home.mkdir(parents=True, exist_ok=True)
    apply_mlflow_http_defaults()
    write_instance_config(dagster_home / "dagster.yaml")
    create_instance_storage()
    _fail_dead_runs()


def write_instance_config(config: Path) -> None:
    """Write dagster.yaml on first use; a home made by an older version gets run monitoring appended."""
    if not config.exists():
        config.write_text(DAGSTER_YAML)
        return
    text = config.read_text()
    if "run_monitoring" not in (yaml.safe_load(text) or {}):
        config.write_text(text.rstrip("\n") + "\n" + RUN_MONITORING_YAML)


def _fail_dead_runs() -> None:
    """Runs left STARTED by a killed process are marked failed before this command starts its own."""
    from dagster import DagsterInstance

    from mlplatform.recovery import fail_dead_runs

    with DagsterInstance.get() as instance:
        for line in fail_dead_runs(instance, "the `mlplatform` command"):
            print(f"mlplatform: marked {line} as failed: its process is gone", file=sys.stderr)


def _check_mlflow(write_probe_experiment: str | None) -> None:
    from mlplatform.factory import mlflow_resource
    from mlplatform.resources.mlflow import MlflowUnavailable

    try:
        mlflow_resource(load_settings()).check_reachable(write_probe_experiment)
    except MlflowUnavailable as exc:
        raise UserError(f"{exc}; nothing was run") from None


def _end_dead_mlflow_runs() -> None:
    """MLflow runs a killed process left RUNNING are ended as KILLED (the store answered just before)."""
    from mlplatform.recovery import existing_mlflow_client, kill_dead_mlflow_runs

    client = existing_mlflow_client()
    if client is None:
        return
    for line in kill_dead_mlflow_runs(client, "the `mlplatform` command"):
        print(f"mlplatform: ended {line} as KILLED: its process is gone", file=sys.stderr)


def create_instance_storage() -> None:
    """Create (or migrate) the storage of the instance at $DAGSTER_HOME, once, in this process.

    A `dagster-daemon` and a `dagster-webserver` started side by side on a fresh SQLite home both
    create its tables and one of them dies on the race (a duplicate `alembic_version` row), so the
    platform creates them first.
    """
    from dagster import DagsterInstance

    with DagsterInstance.get():
        pass


def _load_definitions():  # type: ignore[no-untyped-def]
    from mlplatform.specs.loader import SpecError

    try:
        from mlplatform.factory import build_definitions

        return build_definitions()
    except SpecError as exc:
        raise UserError(str(exc)) from None


def cmd_run(args: argparse.Namespace) -> int:
    from mlplatform.factory import broken_specs
    from mlplatform.runner import dataset_names, print_summary, run_datasets

    prepare_home(args.home)
    for noisy in ("mlflow.store.db.utils", "alembic"):  # schema set-up chatter on a new MLflow store
        logging.getLogger(noisy).setLevel(logging.WARNING)
    stages = args.stage or list(MLFLOW_STAGES)
    checked = any(stage in MLFLOW_STAGES for stage in stages)
    if checked:
        _check_mlflow(None)  # before loading definitions: an unreachable server fails in seconds
    defs = _load_definitions()
    if any(stage in MLFLOW_WRITE_STAGES for stage in stages):
        known = dataset_names(defs)  # unknown names are refused by run_datasets, unprobed
        for name in [name for name in args.dataset or known if name in known]:
            _check_mlflow(name)
    if checked:
        _end_dead_mlflow_runs()
    results = run_datasets(
        defs, args.dataset or None, progress=print, stages=args.stage or None, allow_shrink=args.allow_shrink
    )
    print_summary(defs, results)
    # A broken spec fails the command that was asked to run everything, after the good datasets ran.
    broken = [] if args.dataset else broken_specs(defs)
    for spec in broken:
        print(f"mlplatform: error: dataset {spec.name} was not run: {spec.error}", file=sys.stderr)
    return 0 if all(r.success for r in results) and not broken else 1


def cmd_rollback(args: argparse.Namespace) -> int:
    from mlplatform.factory import mlflow_resource
    from mlplatform.models.registry import RegistryError, rollback

    prepare_home(args.home)
    resource = mlflow_resource(load_settings())
    try:
        change = rollback(resource, args.dataset, args.to)
    except RegistryError as exc:
        raise UserError(str(exc)) from None
    print(
        f"{args.dataset}: champion moved from version {change.previous} to version {change.current} "
        f"(MLflow registry {resource.effective_registry_uri})"
    )
    print(
        f"re-score with it: mlplatform run --dataset {args.dataset} --stage predictions"
        + (f" --home {args.home}" if args.home else "")
    )
    return 0


def cmd_specs(args: argparse.Namespace) -> int:
    """Each dataset's line, or its error on stderr: a broken spec hides no other (exit 2 if any is broken).

    Builds each dataset as the code location does (probe, partitions, assets), so what this accepts loads.
    """
    from mlplatform.factory import build_datasets
    from mlplatform.specs.loader import SpecError, read_specs

    settings = load_settings()
    try:
        specs, broken = read_specs(settings.extra_spec_dirs)
    except SpecError as exc:  # a folder named in $MLPLATFORM_SPECS does not exist
        raise UserError(str(exc)) from None
    datasets, failed = build_datasets(specs, settings)
    for dataset in datasets:
        spec, probe = dataset.spec, dataset.probe
        print(
            f"{spec.name}: {spec.spec_path} | {len(probe.files)} file(s) | "
            f"{probe.time_min} .. {probe.time_max} | {spec.target.task} on {spec.target.column}"
        )
    for failure in [*broken, *failed]:
        print(f"{failure.name}: {failure.path} | NOT LOADED (error below)")
        print(f"mlplatform: error: {failure.error}", file=sys.stderr)
    return 2 if broken or failed else 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mlplatform",
        description=(
            "Spec-driven data and ML platform on Dagster. State lives in $MLPLATFORM_HOME "
            "(default ./.mlplatform): warehouse.duckdb, the Dagster instance (dagster/), the MLflow store."
        ),
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

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
            "only this stage (repeatable): raw, clean, features, training_set, model, evaluation, "
            "predictions; e.g. --stage predictions re-scores with the current champion"
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

    rollback = sub.add_parser(
        "rollback",
        help="point a dataset's `champion` model alias back at the previous champion (or --to a version)",
        description=(
            "Move the `champion` alias of the dataset's registered MLflow model back to the champion before "
            "the current one (promotions are undone one at a time), or to the version given with --to. "
            "Predictions keep their old model_version until re-scored (`mlplatform run --stage predictions`)."
        ),
    )
    rollback.add_argument(
        "--dataset", required=True, metavar="NAME", help="dataset (= registered model) name"
    )
    rollback.add_argument("--to", type=int, metavar="VERSION", help="model version to make champion")
    rollback.add_argument("--home", help=f"platform home (default: ${HOME_ENV} or ./.mlplatform)")
    rollback.set_defaults(func=cmd_rollback)

    specs = sub.add_parser("specs", help="validate the spec files and list the datasets they define")
    specs.set_defaults(func=cmd_specs)

    from mlplatform.replay import add_replay_command  # `mlplatform replay` lives with its logic

    add_replay_command(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    started = time.monotonic()
    try:
        code = int(args.func(args))
    except UserError as exc:
        print(f"mlplatform: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("mlplatform: interrupted", file=sys.stderr)
        return 130
    if args.command == "run":
        print(f"done in {time.monotonic() - started:.1f} s")
    return code


if __name__ == "__main__":
    sys.exit(main())
