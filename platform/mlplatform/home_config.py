"""The home's own configuration file, `$MLPLATFORM_HOME/config.yaml`: what is stored with the home.

It holds the spec folders `mlplatform specs add` stored, so every entry point that reads the home
(the `mlplatform` command, `dagster dev` and the daemon through mlplatform.definitions, `mlplatform
up`) loads the same datasets without an environment variable. Plain YAML and paths: settings.py reads
it, so nothing heavy is imported here.
"""

from __future__ import annotations

from pathlib import Path

import yaml

CONFIG_FILE = "config.yaml"
SPEC_FOLDERS_KEY = "spec_folders"
CONFIG_HEADER = (
    "# Written by `mlplatform specs add` / `specs remove`: the spec folders of this platform home,\n"
    "# loaded by every entry point (the mlplatform command, dagster dev, the daemon, mlplatform up).\n"
)


class HomeConfigError(ValueError):
    """The home's config.yaml cannot be read; the message names the file."""


def config_path(home: Path) -> Path:
    return Path(home) / CONFIG_FILE


def read_home_config(home: Path) -> dict[str, object]:
    """The home's config as a mapping (empty when the file does not exist)."""
    path = config_path(home)
    if not path.is_file():
        return {}
    try:
        raw = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError, UnicodeDecodeError) as exc:
        flat = " ".join(str(exc).split())  # YAML errors span lines: one line names the file and the place
        raise HomeConfigError(f"home config {path}: cannot read it: {flat}") from None
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise HomeConfigError(f"home config {path}: expected a mapping of keys, got {type(raw).__name__}")
    return raw


def stored_spec_folders(home: Path) -> tuple[Path, ...]:
    """The spec folders stored in the home's config, in the order they were added."""
    path = config_path(home)
    folders = read_home_config(home).get(SPEC_FOLDERS_KEY) or []
    if not isinstance(folders, list) or not all(isinstance(folder, str) for folder in folders):
        raise HomeConfigError(
            f"home config {path}: key '{SPEC_FOLDERS_KEY}': expected a list of folder paths"
        )
    # Relative entries (written by hand) start from the home, as the file lives there.
    return tuple((Path(home) / Path(folder).expanduser()).resolve() for folder in folders)


def write_spec_folders(home: Path, folders: tuple[Path, ...]) -> Path:
    """Store `folders` as the home's spec folders, keeping the file's other keys; returns the file."""
    config = read_home_config(home)
    config[SPEC_FOLDERS_KEY] = [str(folder) for folder in folders]
    path = config_path(home)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = yaml.safe_dump(config, sort_keys=False)
    tmp = path.with_name(f".{CONFIG_FILE}.tmp")
    tmp.write_text(CONFIG_HEADER + text)
    tmp.replace(path)  # a reader never sees half a file
    return path


def combined_spec_folders(from_env: tuple[Path, ...], stored: tuple[Path, ...]) -> tuple[Path, ...]:
    """$MLPLATFORM_SPECS's folders first, then the stored ones; a folder named in both counts once.

    The first spec file to use a dataset name keeps it, so the environment wins a name both define.
    """
    return tuple(dict.fromkeys([*from_env, *stored]))
