"""Removing source rows on purpose: the refusal printed by `mlplatform run` names a command, and that
command, run exactly as printed, removes them."""

from __future__ import annotations

import re
import shlex
import subprocess
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import duckdb
import pytest

from platform_tests.conftest import subprocess_env
from platform_tests.hostile.test_isolation import toy_spec_dict, write_hourly_csv

pytestmark = pytest.mark.e2e

NAME = "shrinky"


def _run(command: list[str], home: Path, specs: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        command,
        cwd=home.parent,
        env=subprocess_env(home, MLPLATFORM_SPECS=str(specs)),
        capture_output=True,
        text=True,
        timeout=600,
    )


def _raw_rows_per_file(home: Path) -> dict[str, int]:
    with duckdb.connect(str(home / "warehouse" / f"{NAME}-warehouse.duckdb"), read_only=True) as conn:
        rows = conn.execute(f"SELECT _source_file, count(*) FROM {NAME}.raw GROUP BY 1").fetchall()
    return {Path(f).name: int(n) for f, n in rows}


def test_the_printed_allow_shrink_command_removes_the_rows_of_a_deleted_file(
    tmp_path: Path, write_spec: Callable[..., Path]
) -> None:
    landing = tmp_path / "landing"
    landing.mkdir()
    write_hourly_csv(landing / "a.csv", days=4)
    write_hourly_csv(landing / "b.csv", days=2, start=datetime(2024, 1, 5))
    spec = toy_spec_dict(NAME, landing / "*.csv")
    # Fixed partitions: with partitions from the data, the deleted file's days would leave the range.
    spec["partitions"] = {"start": "2024-01-01", "end": "2024-01-07"}
    spec_file = write_spec(spec, "shrinky.yaml")
    home = tmp_path / "home"
    first = _run(
        ["mlplatform", "run", "--dataset", NAME, "--stage", "raw", "--stage", "clean"], home, spec_file.parent
    )
    assert first.returncode == 0, first.stdout + first.stderr
    assert _raw_rows_per_file(home) == {"a.csv": 96, "b.csv": 48}

    (landing / "b.csv").unlink()
    refused = _run(["mlplatform", "run", "--dataset", NAME, "--stage", "raw"], home, spec_file.parent)
    assert refused.returncode == 1
    assert "every row of b.csv would be erased (48 rows" in refused.stdout
    assert _raw_rows_per_file(home) == {"a.csv": 96, "b.csv": 48}  # nothing was changed

    printed = re.search(r"re-run with `([^`]+)`", refused.stdout)
    assert printed, refused.stdout
    assert printed.group(1) == f"mlplatform run --dataset {NAME} --allow-shrink"
    allowed = _run(shlex.split(printed.group(1)), home, spec_file.parent)
    assert "every row of b.csv would be erased" not in allowed.stdout
    assert f"[{NAME}] run" in allowed.stdout
    assert _raw_rows_per_file(home) == {"a.csv": 96}
    assert "96 records in 1 file(s), each one in clean or quarantine" in allowed.stdout

    # The printed Dagster UI command carries what the UI needs to show this dataset (MLPLATFORM_SPECS).
    ui_line = next(line for line in allowed.stdout.splitlines() if line.startswith("Dagster UI:"))
    words = shlex.split(ui_line.removeprefix("Dagster UI:"))
    settings = dict(word.split("=", 1) for word in words if "=" in word and not word.startswith("-"))
    assert words[len(settings) :] == ["dagster", "dev", "-m", "mlplatform.definitions"]
    env = {k: v for k, v in subprocess_env(home).items() if not k.startswith("MLPLATFORM_")} | settings
    listed = subprocess.run(
        ["dagster", "asset", "list", "-m", "mlplatform.definitions"],
        cwd=home.parent,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert f"{NAME}/raw" in listed.stdout, listed.stderr[-2000:]


def test_the_summary_says_which_rows_wait_for_their_partition(
    tmp_path: Path, write_spec: Callable[..., Path]
) -> None:
    """A row of today (open-ended daily partitions stop at yesterday) is read, not placed: the summary
    must not call it clean or quarantined."""
    today = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0, tzinfo=None)
    landing = tmp_path / "landing"
    landing.mkdir()
    write_hourly_csv(landing / "a.csv", days=2, start=today - timedelta(days=2))
    with (landing / "a.csv").open("a") as out:
        out.write(f"{today:%Y-%m-%d %H:%M:%S},0.5,1.5\n")
    spec = toy_spec_dict("pending", landing / "*.csv")
    spec["partitions"] = {"start": (today - timedelta(days=2)).date().isoformat(), "end": "open"}
    spec_file = write_spec(spec, "pending.yaml")
    home = tmp_path / "home"
    done = _run(
        ["mlplatform", "run", "--dataset", "pending", "--stage", "raw", "--stage", "clean"],
        home,
        spec_file.parent,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert (
        "source: 49 records in 1 file(s), 1 waiting for a partition that does not exist yet, "
        "the others in clean or quarantine"
    ) in done.stdout
