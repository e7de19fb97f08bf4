"""What `mlplatform run` prints for a failed quality gate and for a partial run, on the tiny dataset."""

from __future__ import annotations

import csv
import shlex
from pathlib import Path

import dagster as dg
import duckdb
import pytest

from mlplatform.cli import main
from mlplatform.contracts import Stage
from mlplatform.factory import build_dataset, build_definitions
from mlplatform.jobs.dataset_jobs import WHOLE_GRAPH_SUFFIX
from mlplatform.runner import run_datasets, run_status_lines
from mlplatform.settings import load_settings
from mlplatform.specs.model import DatasetSpec
from platform_tests.assets.tiny import BAD_RECORDS, MONTHS, TinyDataset, tiny_spec_dict, write_tiny_source


def test_a_failed_gate_prints_one_block_with_share_threshold_reasons_and_a_runnable_query(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    source = write_tiny_source(tmp_path / "tiny.csv")
    spec_dict = tiny_spec_dict(source.path)
    spec_dict["quality"] = {"max_quarantine_share": 0.0001}  # the 3 planted bad records are 0.14 %
    spec = DatasetSpec.model_validate(spec_dict)
    settings = load_settings({"MLPLATFORM_HOME": str(tmp_path / "home")})
    defs = build_definitions(settings, specs=[spec])
    lines: list[str] = []
    with dg.DagsterInstance.ephemeral() as instance:
        (outcome,) = run_datasets(defs, None, instance=instance, progress=lines.append, settings=settings)
    assert not outcome.success
    terminal = capfd.readouterr()
    # Dagster's cascade (a traceback, one "Not executing" line per downstream step) is not printed.
    assert "Not executing" not in terminal.err and "DagsterAssetCheckFailedError" not in terminal.err
    assert "2184 raw = 2181 clean + 3 quarantined" in terminal.err  # the stages' own lines still are
    block = lines[1:]
    assert (
        block[0]
        == f"[tiny] run {outcome.run_id} FAILED: materialized 3/3 partitions of raw, clean, quarantine"
    )
    assert block[1] == "[tiny] quality gate failed: validity_rate on tiny/clean"
    assert block[2] == "  quarantined 0.14% of all rows so far, above quality.max_quarantine_share 0.01%"
    assert block[3:7] == [
        "  top reasons in this run's partitions (rows):",
        "    1  kind: isin(['a', 'b'])  e.g. kind: isin(['a', 'b']) failed for 'c'",
        "    1  value: less_than_or_equal_to(100.0)  e.g. value: less_than_or_equal_to(100.0) failed for 150",
        "    1  x: parse  e.g. x: cannot parse 'not-a-number' as float",
    ]
    printed = block[7].removeprefix("  the quarantined rows: ")
    assert printed == f"mlplatform sql --home {settings.home} 'SELECT * FROM tiny.quarantine LIMIT 10'"
    assert block[8].startswith("  not materialized (downstream of the gate): features, training_set, model,")
    assert len(block) == 9
    # The printed query, run as the shell would split it, shows the three quarantined rows.
    words = shlex.split(printed)
    assert words[0] == "mlplatform" and main(words[1:]) == 0
    shown = capfd.readouterr().out
    assert shown.strip().endswith("(3 rows)")
    assert {str(record_id) for record_id in BAD_RECORDS} <= set(shown.split())


def test_a_partial_run_says_what_it_materialized(tmp_path: Path) -> None:
    source = write_tiny_source(tmp_path / "tiny.csv")
    spec = DatasetSpec.model_validate(tiny_spec_dict(source.path))
    settings = load_settings({"MLPLATFORM_HOME": str(tmp_path / "home")})
    defs = build_definitions(settings, specs=[spec])
    lines: list[str] = []
    with dg.DagsterInstance.ephemeral() as instance:
        stages = ["raw", "clean", "features", "training_set"]
        (outcome,) = run_datasets(defs, None, instance=instance, progress=lines.append, stages=stages)
    assert outcome.success
    # training_set is not partitioned: a run of it alone (or of the model) is not "0/3 partitions".
    assert lines[-1] == (
        f"[tiny] run {outcome.run_id} succeeded: materialized 3/3 partitions of raw, clean, quarantine, "
        "features and training_set"
    )


def test_a_derived_time_that_does_not_parse_says_so_with_the_column_and_value(tmp_path: Path) -> None:
    source = write_tiny_source(tmp_path / "tiny.csv")
    records = [dict(record) for record in source.records]
    records[100]["stamp"] = "2024-13-45 99:00"
    records[200]["stamp"] = ""
    with source.path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(records[0]))
        writer.writeheader()
        writer.writerows(records)
    spec_dict = tiny_spec_dict(source.path)
    spec_dict["columns"]["stamp"]["nullable"] = True
    spec = DatasetSpec.model_validate(spec_dict)
    settings = load_settings({"MLPLATFORM_HOME": str(tmp_path / "home")})
    tiny = TinyDataset(
        spec, source, build_dataset(spec, settings=settings), settings, tmp_path / "w.duckdb", tmp_path
    )
    tiny.materialize([Stage.RAW, Stage.CLEAN, Stage.QUARANTINE], MONTHS[0])
    reasons = tiny.query(
        "SELECT id, _quarantine_reason, _failed_checks FROM tiny.quarantine WHERE _failed_columns = 'ts' ORDER BY 1"
    )
    expression = "strptime(stamp, '%Y-%m-%d %H:%M')"
    assert reasons == [
        (
            "101",
            f"ts: did not parse: derived ts = {expression} gave no value for stamp '2024-13-45 99:00'",
            "parse",
        ),
        ("201", "ts: null in a non-nullable column", "not_nullable"),  # nothing to parse: stamp is empty
    ]


def test_a_gate_that_fails_before_clean_prints_its_own_block_without_quarantine_reasons(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    """An empty source window fails raw's not_empty gate on a fresh home: no quarantine table exists yet."""
    source = write_tiny_source(tmp_path / "tiny.csv")
    header = source.path.read_text().splitlines()[0]
    source.path.write_text(header + "\n")  # the columns, no record
    spec_dict = tiny_spec_dict(source.path) | {"partitions": {"start": "2024-01-01", "end": "2024-03-01"}}
    settings = load_settings({"MLPLATFORM_HOME": str(tmp_path / "home")})
    defs = build_definitions(settings, specs=[DatasetSpec.model_validate(spec_dict)])
    lines: list[str] = []
    with dg.DagsterInstance.ephemeral() as instance:
        (outcome,) = run_datasets(defs, None, instance=instance, progress=lines.append, settings=settings)
    assert not outcome.success
    terminal = capfd.readouterr()
    assert "Traceback" not in terminal.err + terminal.out and "does not exist" not in terminal.err
    assert lines[1:] == [
        f"[tiny] run {outcome.run_id} FAILED: materialized 2/2 partitions of raw",
        "[tiny] quality gate failed: not_empty on tiny/raw",
        "  `tiny.raw` has at least one row. (rows 0)",  # the check's own description and figures
        "  not materialized (downstream of the gate): clean, features, training_set, model, evaluation, "
        "predictions, reference_profile, drift_report",
    ]


def test_the_top_reasons_are_those_of_the_runs_partitions_not_of_an_earlier_run(tmp_path: Path) -> None:
    source = write_tiny_source(tmp_path / "tiny.csv")
    spec_dict = tiny_spec_dict(source.path)
    spec_dict["quality"] = {"max_quarantine_share": 0.0001}
    settings = load_settings({"MLPLATFORM_HOME": str(tmp_path / "home")})
    defs = build_definitions(settings, specs=[DatasetSpec.model_validate(spec_dict)])
    job = defs.resolve_job_def(f"tiny{WHOLE_GRAPH_SUFFIX}")
    selection = [dg.AssetKey(["tiny", str(stage)]) for stage in (Stage.RAW, Stage.CLEAN, Stage.QUARANTINE)]
    blocks = {}
    with dg.DagsterInstance.ephemeral() as instance:
        for month in MONTHS[:2]:  # January's run quarantines ids 5 and 30, February's id 800
            result = job.execute_in_process(
                instance=instance, partition_key=month, asset_selection=selection, raise_on_error=False
            )
            blocks[month] = run_status_lines(defs, "tiny", result, [month], [], settings)
    assert all(any("validity_rate" in line for line in block) for block in blocks.values())
    january, february = ([line for line in block if line.startswith("    ")] for block in blocks.values())
    assert [line.split("  e.g.")[0].strip() for line in january] == [
        "1  kind: isin(['a', 'b'])",
        "1  value: less_than_or_equal_to(100.0)",
    ]
    # January's rows are still in tiny.quarantine; February's block counts only its own.
    with duckdb.connect(settings.warehouse_for("tiny"), read_only=True) as conn:
        assert conn.execute("SELECT count(*) FROM tiny.quarantine").fetchone() == (3,)
    assert february == ["    1  x: parse  e.g. x: cannot parse 'not-a-number' as float"]
