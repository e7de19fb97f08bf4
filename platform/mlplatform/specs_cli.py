"""`mlplatform specs`: check the spec files; `specs add|remove|list`: the spec folders stored with the home."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from mlplatform.errors import UserError
from mlplatform.home_config import HomeConfigError, config_path, stored_spec_folders, write_spec_folders
from mlplatform.settings import HOME_ENV, SPECS_ENV, Settings, spec_folders_from_env

HOME_HELP = f"platform home (default: ${HOME_ENV} or ./.mlplatform)"


def cmd_specs(args: argparse.Namespace, settings: Settings) -> int:
    """Each dataset's line, or its error on stderr: a broken spec hides no other (exit 2 if any is broken).

    Builds each dataset as the code location does (probe, partitions, assets), so what this accepts loads.
    """
    from mlplatform.factory import build_datasets
    from mlplatform.specs.loader import SpecError, read_specs

    try:
        specs, broken = read_specs(settings.extra_spec_dirs)
    except SpecError as exc:  # a spec folder that does not exist
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


def _stored(settings: Settings) -> tuple[Path, ...]:
    try:
        return stored_spec_folders(settings.home)
    except HomeConfigError as exc:
        raise UserError(str(exc)) from None


def cmd_specs_add(args: argparse.Namespace, settings: Settings) -> int:
    folder = Path(args.folder).expanduser().resolve()
    if not folder.is_dir():
        raise UserError(f"spec folder {folder} does not exist (or is not a folder); nothing was stored")
    stored = _stored(settings)
    path = config_path(settings.home)
    if folder in stored:
        print(f"{folder} is already stored in {path}")
        return 0
    write_spec_folders(settings.home, (*stored, folder))
    files = sorted(p.name for p in folder.iterdir() if p.suffix in (".yaml", ".yml"))
    print(f"stored {folder} in {path} ({len(files)} spec file(s): {', '.join(files) or 'none yet'})")
    print(f"check them: mlplatform specs --home {settings.home}")
    return 0


def cmd_specs_remove(args: argparse.Namespace, settings: Settings) -> int:
    folder = Path(args.folder).expanduser().resolve()
    stored = _stored(settings)
    path = config_path(settings.home)
    if folder not in stored:
        known = ", ".join(str(f) for f in stored) or "none"
        raise UserError(f"spec folder {folder} is not stored in {path} (stored: {known})")
    write_spec_folders(settings.home, tuple(f for f in stored if f != folder))
    print(f"removed {folder} from {path}")
    return 0


def cmd_specs_list(args: argparse.Namespace, settings: Settings) -> int:
    """Every spec folder in use, in load order, with where it comes from."""
    from mlplatform.specs.loader import BUNDLED_SPECS_DIR

    stored = _stored(settings)
    from_env = spec_folders_from_env(os.environ)
    print(f"{BUNDLED_SPECS_DIR} (bundled)")
    for folder in settings.extra_spec_dirs:
        origin = [f"${SPECS_ENV}"] if folder in from_env else []
        origin += [f"stored in {config_path(settings.home)}"] if folder in stored else []
        missing = "" if folder.is_dir() else ", DOES NOT EXIST"
        print(f"{folder} ({' and '.join(origin)}{missing})")
    return 0


def add_specs_command(sub: argparse._SubParsersAction) -> None:
    """`specs` (check the spec files) and its `add`, `remove` and `list` of stored spec folders."""
    specs = sub.add_parser(
        "specs",
        help="validate the spec files and list the datasets; `specs add DIR` stores a spec folder in the home",
        description=(
            "Without a subcommand: validate every spec file and list the datasets they define. The spec "
            f"folders are the bundled one, those named in ${SPECS_ENV} and those stored in the home's "
            "config.yaml by `specs add`; every entry point (this command, dagster dev, the daemon, "
            "mlplatform up) loads them all."
        ),
    )
    specs.add_argument("--home", help=HOME_HELP)
    specs.set_defaults(func=cmd_specs)
    actions = specs.add_subparsers(dest="specs_command", metavar="ACTION")
    for name, func, text in (
        ("add", cmd_specs_add, "store a spec folder in the home's config.yaml"),
        ("remove", cmd_specs_remove, "forget a spec folder stored in the home's config.yaml"),
        ("list", cmd_specs_list, "list the spec folders in use and where each comes from"),
    ):
        action = actions.add_parser(name, help=text, description=text)
        if name != "list":
            action.add_argument("folder", metavar="DIR")
        # SUPPRESS: a --home given before the action (`specs --home H add DIR`) is kept.
        action.add_argument("--home", default=argparse.SUPPRESS, help=HOME_HELP)
        action.set_defaults(func=func)
