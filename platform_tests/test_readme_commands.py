"""Every shell command of the README's quick start, "What you get" (look at it) and "Command line"
sections, run exactly as printed in a fresh folder laid out like a clone (its own `.mlplatform`).

The commands come from the README itself (```bash blocks, and the first cell of the command table), so
a command added there is run here, or the first test fails naming it. In the table, `[...]` marks an
optional part: it is left out (its default applies), and the placeholders are filled (NAME, DIR,
VERSION). Servers (`mlplatform up`, `dagster dev`, `dg dev`) are started together, checked through their
UI's GraphQL API, and stopped; their ports come from the environment (free ports), not from the command.
One home serves every command, and the heavy one, `mlplatform run`, runs once.
"""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import time
import urllib.error
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import mlflow
import pytest
import yaml

from platform_tests.assets.tiny import tiny_spec_dict, write_tiny_source
from platform_tests.conftest import REPO_ROOT, subprocess_env
from platform_tests.servers import free_port, http_get, poll, running, wait_for_asset_keys

pytestmark = pytest.mark.e2e
README = REPO_ROOT / "README.md"
SECTIONS = ("## Quick start", "## What you get", "## Command line")
INSTALL = "python3 -m pip install -e . && "
CI_COMMAND = "bash .ci/run"  # what runs this test: it is checked, not run from inside itself
SERVERS = ("mlplatform up", "dagster dev", "dg dev")
DATASET = "transactions"  # NAME in the table: the smaller bundled dataset
STARTUP_SECONDS = 300
SERVED_ASSETS = {"bike_sharing/raw", f"{DATASET}/raw", "tiny/raw"}  # bundled, and the stored folder's


def readme_section(title: str) -> str:
    text = README.read_text()
    start = text.index(f"\n{title}\n")
    end = text.find("\n## ", start + len(title) + 2)
    return text[start : end if end != -1 else len(text)]


def bash_lines(section: str) -> list[str]:
    blocks = re.findall(r"```bash\n(.*?)```", section, flags=re.DOTALL)
    return [line for block in blocks for line in block.splitlines() if line.strip()]


def table_commands(section: str) -> list[str]:
    """The first cell of each row of the section's table, when it is one `command`."""
    return re.findall(r"^\| `([^`|]+)` \|", section, flags=re.MULTILINE)


def readme_commands() -> list[str]:
    commands = []
    for title in SECTIONS:
        section = readme_section(title)
        commands += [*bash_lines(section), *table_commands(section)]
    return commands


def instantiate(cell: str, values: dict[str, str]) -> str:
    """A table cell as a user types it: optional `[...]` parts left out, placeholders filled."""
    command = re.sub(r"\s*\[[^\]]*\]", "", cell)
    for placeholder, value in values.items():
        command = re.sub(rf"\b{placeholder}\b", value, command)
    return command


@dataclass
class Clone:
    """A folder laid out like a clone of the repository: workspace files, platform/dg.toml and the package."""

    root: Path
    env: dict[str, str]
    user_specs: Path
    outputs: dict[str, subprocess.CompletedProcess[str]] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)  # printed at the end: what the module costs

    @property
    def home(self) -> Path:
        return self.root / ".mlplatform"

    def sh(self, command: str, timeout: float = 300, expect: int = 0) -> subprocess.CompletedProcess[str]:
        """`command` through bash, exactly as printed, from the clone's root."""
        started = time.monotonic()
        result = subprocess.run(
            ["bash", "-c", command],
            cwd=self.root,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        assert result.returncode == expect, f"{command}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
        self.outputs[command] = result
        self.seconds[command] = time.monotonic() - started
        return result

    def serve(self, command: str, log_name: str) -> None:
        """Start a server command on free ports of its own, wait until its Dagster UI lists the bundled
        datasets and the stored folder's one (and MLflow answers, for the commands that start it), stop it.

        The ports come from the environment (the command is run as printed): each server gets its own."""
        dagster_port, mlflow_port = free_port(), free_port()
        env = self.env | {
            "MLPLATFORM_DAGSTER_PORT": str(dagster_port),  # mlplatform up
            "MLPLATFORM_MLFLOW_PORT": str(mlflow_port),
            "DAGSTER_CLI_DEV_PORT": str(dagster_port),  # dagster dev --port (click's automatic variable)
            "DAGSTER_DG_DEV_PORT": str(dagster_port),  # dg dev --port
            "MLFLOW_PORT": str(mlflow_port),  # mlflow ui --port
        }
        is_mlflow_ui = command.startswith("mlflow ui")
        with_mlflow = is_mlflow_ui or command.startswith("mlplatform up")
        log = self.root / f"{log_name}.log"
        started = time.monotonic()
        with running(["bash", "-c", command], env, self.root, log) as process:
            if not is_mlflow_ui:
                keys = wait_for_asset_keys(dagster_port, process, log, timeout=STARTUP_SECONDS)
                assert set(keys) >= SERVED_ASSETS, f"{command}: missing {SERVED_ASSETS - set(keys)}"
            if with_mlflow:
                url = f"http://127.0.0.1:{mlflow_port}/api/2.0/mlflow/experiments/search?max_results=5"
                check = partial(_still_running, process, log)
                answer = poll(f"MLflow at {url}", partial(_answers, url), STARTUP_SECONDS, check)
                assert "bike_sharing" in answer, answer[:2000]  # the home's store, with its experiments
        self.seconds[command] = time.monotonic() - started


def _answers(url: str) -> str | None:
    try:
        return http_get(url)[1].decode()
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return None


def _still_running(process: subprocess.Popen, log: Path) -> None:
    if process.poll() is not None:
        raise AssertionError(f"server exited with {process.returncode}:\n{log.read_text()[-3000:]}")


def _clone_layout(root: Path) -> None:
    """What the commands read from a clone: workspace.yaml (dagster dev), pyproject.toml (the dg
    workspace), platform/dg.toml (the dg project) and the package the project names."""
    for name in ("workspace.yaml", "pyproject.toml"):
        shutil.copy(REPO_ROOT / name, root / name)
    (root / "platform").mkdir()
    shutil.copy(REPO_ROOT / "platform" / "dg.toml", root / "platform" / "dg.toml")
    (root / "platform" / "mlplatform").symlink_to(REPO_ROOT / "platform" / "mlplatform")


@pytest.fixture(scope="module")
def clone(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Clone]:
    root = tmp_path_factory.mktemp("clone")
    _clone_layout(root)
    user_specs = root / "my_specs"
    user_specs.mkdir()
    source = write_tiny_source(user_specs / "tiny.csv")
    (user_specs / "tiny.yaml").write_text(yaml.safe_dump(tiny_spec_dict(source.path), sort_keys=False))
    # The README's commands use the default home, ./.mlplatform: no MLPLATFORM_HOME nor DAGSTER_HOME.
    env = {
        k: v
        for k, v in subprocess_env(root / ".mlplatform").items()
        if k not in ("MLPLATFORM_HOME", "DAGSTER_HOME")
    }
    env["MLPLATFORM_AUTOMATION"] = "none"  # the servers' daemons start no run beside the next commands
    yield Clone(root, env, user_specs)


def test_the_sections_hold_only_commands_this_module_runs() -> None:
    commands = readme_commands()
    assert commands[0].startswith(INSTALL) and CI_COMMAND in commands
    # .ci/run is the command CI runs (it runs this module): it installs as the quick start does, then tests.
    ci = (REPO_ROOT / ".ci" / "run").read_text()
    assert "python3 -m pip install" in ci and '-e ".[test]"' in ci and "python3 -m pytest -m e2e" in ci
    handled = {"mlplatform", "DAGSTER_HOME=", "MLPLATFORM_HOME=", "cd platform && ", CI_COMMAND, INSTALL}
    unknown = [c for c in commands if not any(c.startswith(prefix) for prefix in handled)]
    assert not unknown, f"README commands this test does not know how to run: {unknown}"


def is_server(command: str) -> bool:
    words = shlex.split(command, comments=True)
    plain = [word for word in words if "=" not in word or word.startswith("-")]  # VAR=value prefixes left out
    return " ".join(plain).startswith(SERVERS)


def user_commands(clone: Clone) -> list[str]:
    """The sections' commands as a user types them (table cells filled in), each once, in README order."""
    values = {"NAME": DATASET, "DIR": shlex.quote(str(clone.user_specs)), "VERSION": "1"}
    commands: dict[tuple[str, ...], str] = {}
    for command in readme_commands():
        typed = instantiate(command, values).removeprefix(INSTALL)
        commands.setdefault(tuple(shlex.split(typed, comments=True)), typed)  # a comment changes nothing
    return [command for command in commands.values() if command != CI_COMMAND]


def test_quick_start_then_every_command(clone: Clone) -> None:
    """The quick start's `mlplatform run` once, then every other command that is not a server."""
    # The install half is what `.ci/run` did before this test: `mlplatform` runs this repository's code.
    probe = "import mlplatform; print(mlplatform.__file__)"
    imported = subprocess.run(
        ["python3", "-c", probe], cwd=clone.root, env=clone.env, capture_output=True, text=True, check=True
    ).stdout.strip()
    assert Path(imported).resolve().is_relative_to((REPO_ROOT / "platform").resolve()), imported
    main, *others = user_commands(clone)
    assert main == "mlplatform run"
    result = clone.sh(main, timeout=900)
    home = clone.home
    assert (home / "warehouse" / "bike_sharing-warehouse.duckdb").is_file()
    assert "bike_sharing: OK" in result.stdout and "transactions: OK" in result.stdout
    assert "raw 17,379, clean 17,379, quarantine 0, features 17,379" in result.stdout
    assert f"both UIs + sensors: mlplatform up --home {home}" in result.stdout
    # The table-inspection command the summary prints, exactly as printed: the quarantine's columns, no row.
    printed = next(line for line in result.stdout.splitlines() if line.startswith("query the tables:"))
    query = clone.sh(printed.removeprefix("query the tables:").strip())
    header, rule, *_, count = query.stdout.splitlines()
    assert "_quarantine_reason" in header.split() and set(rule) == {"-", " "} and count == "(0 rows)"
    for command in others:
        if not is_server(command):
            run_command(clone, command)
    assert not (clone.root / "platform" / ".mlplatform").exists(), "a command used another home"


def run_command(clone: Clone, command: str) -> None:
    """Run one command and check that it did what the README says."""
    if command.startswith("mlplatform rollback"):
        # The --allow-shrink run before it trained version 2: the previous champion exists, unless
        # version 2 was not promoted; then the table's `--to VERSION` form makes it champion.
        champion = _champion(clone)
        result = clone.sh(command if champion == 2 else f"{command} --to 2")
        assert f"{DATASET}: champion moved from version {champion} to version {3 - champion}" in result.stdout
        # The command it prints next is the README's `rescore` row, run next as the table has it.
        assert f"re-score with it: mlplatform rescore --dataset {DATASET}" in result.stdout.splitlines()
        return
    result = clone.sh(command, timeout=600)
    out = result.stdout
    if command == f"mlplatform run --dataset {DATASET} --allow-shrink":
        assert f"{DATASET}: OK" in out and "bike_sharing: OK" not in out
    elif command == "mlplatform run --stage predictions":
        assert "bike_sharing: OK" in out and f"{DATASET}: OK" in out
        assert "succeeded: materialized 106/106 partitions of predictions" in out
    elif command == f"mlplatform rescore --dataset {DATASET}":
        # After the rollback the predictions are by the previous champion: they are re-scored.
        assert re.search(
            rf"^{DATASET}: re-scored \S+ \.\. \S+ \({DATASET}__rescore run ", out, re.MULTILINE
        ), out
    elif command == "mlplatform specs":
        assert "bike_sharing:" in out and "2011-01-01 00:00:00 .. 2012-12-31 23:00:00" in out
    elif command.startswith("mlplatform specs add"):
        assert f"stored {clone.user_specs} in {clone.home / 'config.yaml'}" in out
        # That the stored folder's dataset loads is checked by every server (tiny/raw in SERVED_ASSETS).
    elif command.startswith("mlplatform specs remove"):
        assert out.strip() == f"removed {clone.user_specs} from {clone.home / 'config.yaml'}"
        clone.sh(f"mlplatform specs add {shlex.quote(str(clone.user_specs))}")  # kept for the servers
    elif command == "mlplatform specs list":
        assert out.splitlines()[-1] == f"{clone.user_specs} (stored in {clone.home / 'config.yaml'})"
    elif command.startswith('mlplatform sql "SELECT'):
        assert "_quarantine_reason" in out.splitlines()[0].split() and out.endswith("(0 rows)\n")
    elif command == "mlplatform sql":
        assert "bike_sharing.quarantine" in out and "transactions.predictions" in out
    elif command == "mlplatform warehouse migrate":
        assert "nothing to do" in out
    elif "dagster asset materialize" in command or "dg launch" in command:
        assert "RUN_SUCCESS" in out + result.stderr


def _champion(clone: Clone) -> int:
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{clone.home / 'mlflow.db'}")
    return int(client.get_model_version_by_alias(DATASET, "champion").version)


def test_servers_show_the_datasets_of_the_home(clone: Clone) -> None:
    """The servers of the look-at-it block and the table, and the run summary's `Dagster UI` command,
    each answer and show the bundled datasets and the one of the folder `mlplatform specs add` stored."""
    # The home comes from the quick-start test; without it this test fails rather than skip in silence.
    assert "mlplatform run" in clone.outputs, "the quick-start test did not make the home (see its failure)"
    summary = clone.outputs["mlplatform run"].stdout
    printed = next(line for line in summary.splitlines() if line.startswith("Dagster UI:"))
    mlflow_ui = next(line for line in summary.splitlines() if line.startswith("MLflow UI:"))
    servers = [c for c in user_commands(clone) if is_server(c)] + [
        printed.removeprefix("Dagster UI:").strip()
    ]
    # mlplatform up, dagster dev, dg dev, the summary's Dagster UI and MLflow UI commands
    servers.append(mlflow_ui.removeprefix("MLflow UI:").strip())
    assert len(servers) == 5, servers
    # They are independent (own ports, a home they only read): started together, not one after another.
    with ThreadPoolExecutor(max_workers=len(servers)) as pool:
        started = [pool.submit(clone.serve, command, f"server{i}") for i, command in enumerate(servers)]
        for future in started:
            future.result()  # the first failure, with its command and log
    assert not (clone.root / "platform" / ".mlplatform").exists(), "a server used another home"
    for command, seconds in clone.seconds.items():
        print(f"{seconds:6.1f} s  {command}")
