"""Spec folders stored with the home (`mlplatform specs add|remove|list`), read by every entry point."""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest
import yaml

from mlplatform.cli import main
from mlplatform.component import component_settings
from mlplatform.factory import build_definitions
from mlplatform.home_config import config_path
from mlplatform.runner import print_summary, up_command
from mlplatform.settings import load_settings
from platform_tests.assets.tiny import tiny_spec_dict, write_tiny_source


@pytest.fixture
def user_specs(tmp_path: Path) -> Path:
    """A folder of the user's own: one spec, `tiny`, over a CSV beside it."""
    folder = tmp_path / "my specs"
    folder.mkdir()
    source = write_tiny_source(folder / "tiny.csv")
    (folder / "tiny.yaml").write_text(yaml.safe_dump(tiny_spec_dict(source.path), sort_keys=False))
    return folder


def test_specs_add_stores_the_folder_in_the_home_and_every_entry_point_reads_it(
    tmp_path: Path, user_specs: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("MLPLATFORM_SPECS", raising=False)
    home = tmp_path / "home"
    assert main(["specs", "add", str(user_specs), "--home", str(home)]) == 0
    out = capsys.readouterr().out
    assert f"stored {user_specs} in {home / 'config.yaml'} (1 spec file(s): tiny.yaml)" in out
    assert yaml.safe_load(config_path(home).read_text()) == {"spec_folders": [str(user_specs)]}
    # Adding it again changes nothing.
    assert main(["specs", "--home", str(home), "add", str(user_specs)]) == 0
    assert "already stored" in capsys.readouterr().out
    assert yaml.safe_load(config_path(home).read_text()) == {"spec_folders": [str(user_specs)]}

    # The code location module (mlplatform.definitions) calls build_definitions() on the environment:
    # the home alone is enough for dagster dev, dagster-webserver and dagster-daemon to load `tiny`.
    settings = load_settings({"MLPLATFORM_HOME": str(home)})
    assert settings.extra_spec_dirs == (user_specs,)
    assert "tiny__all" in {job.name for job in build_definitions(settings).jobs or []}
    # The dg component of a project whose home is `.mlplatform` in it.
    assert component_settings(tmp_path, {"MLPLATFORM_HOME": str(home)}).extra_spec_dirs == (user_specs,)

    # The printed commands need no MLPLATFORM_SPECS for a stored folder: the home carries it.
    assert up_command(settings) == f"mlplatform up --home {home}"
    print_summary(settings, build_definitions(settings), [])
    printed = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("Dagster UI:"))
    words = shlex.split(printed.removeprefix("Dagster UI:"))
    environment = dict(word.split("=", 1) for word in words if "=" in word and not word.startswith("-"))
    assert words[len(environment) :] == ["dagster", "dev", "-m", "mlplatform.definitions"]
    assert load_settings(environment).extra_spec_dirs == (user_specs,)


def test_environment_folders_come_first_and_a_folder_in_both_counts_once(
    tmp_path: Path, user_specs: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    home, other = tmp_path / "home", tmp_path / "other"
    other.mkdir()
    assert main(["specs", "add", str(user_specs), "--home", str(home)]) == 0
    both = f"{other}:{user_specs}"
    settings = load_settings({"MLPLATFORM_HOME": str(home), "MLPLATFORM_SPECS": both})
    assert settings.extra_spec_dirs == (other, user_specs)
    # Only the folder the environment alone gives must be repeated in the printed command.
    assert up_command(settings) == f"MLPLATFORM_SPECS={other} mlplatform up --home {home}"


def test_specs_list_and_remove(
    tmp_path: Path, user_specs: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    home, env_folder = tmp_path / "home", tmp_path / "from-env"
    env_folder.mkdir()
    monkeypatch.setenv("MLPLATFORM_SPECS", str(env_folder))
    assert main(["specs", "add", str(user_specs), "--home", str(home)]) == 0
    capsys.readouterr()
    assert main(["specs", "list", "--home", str(home)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].endswith("mlplatform/specs (bundled)")
    assert lines[1:] == [
        f"{env_folder} ($MLPLATFORM_SPECS)",
        f"{user_specs} (stored in {home / 'config.yaml'})",
    ]

    assert main(["specs", "remove", str(tmp_path / "never-added"), "--home", str(home)]) == 2
    error = capsys.readouterr().err.strip()
    assert error == (
        f"mlplatform: error: spec folder {tmp_path / 'never-added'} is not stored in {home / 'config.yaml'} "
        f"(stored: {user_specs})"
    )
    assert main(["specs", "remove", str(user_specs), "--home", str(home)]) == 0
    assert capsys.readouterr().out.strip() == f"removed {user_specs} from {home / 'config.yaml'}"
    monkeypatch.delenv("MLPLATFORM_SPECS")
    assert load_settings({"MLPLATFORM_HOME": str(home)}).extra_spec_dirs == ()


def test_bad_input_is_one_line_naming_the_folder_or_the_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    home = tmp_path / "home"
    assert main(["specs", "add", str(tmp_path / "missing"), "--home", str(home)]) == 2
    assert capsys.readouterr().err.strip() == (
        f"mlplatform: error: spec folder {tmp_path / 'missing'} does not exist (or is not a folder); "
        "nothing was stored"
    )
    assert not config_path(home).exists()
    # A stored folder that was deleted later: every command says which folder and how to forget it.
    gone = tmp_path / "gone"
    gone.mkdir()
    assert main(["specs", "add", str(gone), "--home", str(home)]) == 0
    gone.rmdir()
    capsys.readouterr()
    assert main(["specs", "--home", str(home)]) == 2
    assert capsys.readouterr().err.strip().startswith(f"mlplatform: error: spec folder {gone} does not exist")
    # A config file broken by hand: one line naming it.
    config_path(home).write_text("spec_folders: [unclosed\n")
    assert main(["specs", "list", "--home", str(home)]) == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and error[0].startswith(f"mlplatform: error: home config {config_path(home)}:")
