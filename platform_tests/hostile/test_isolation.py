"""A broken spec, file or value affects only its own dataset: the others load and run, and the broken one
shows its error in `mlplatform specs`, in `broken_specs(defs)` (the run summary) and in the UI."""

from __future__ import annotations

import os
import random
from collections.abc import Callable
from datetime import date, datetime, timedelta
from pathlib import Path

import dagster as dg
import pytest
import yaml

from mlplatform.datasets.synthetic import generate_to_folder
from mlplatform.factory import broken_specs, build_definitions
from mlplatform.jobs.dataset_jobs import build_ingest_job
from mlplatform.sensors.new_data import SKIPPED_FILES_TAG, build_new_data_sensor, read_cursor
from mlplatform.settings import load_settings
from mlplatform.specs.loader import BUNDLED_SPECS_DIR, parse_spec
from mlplatform.specs.model import DatasetSpec
from platform_tests.conftest import bike_spec_dict, mlplatform_cli
from platform_tests.sensors.test_new_data_sensor import requested_range

GOOD = "good_toy"


def write_hourly_csv(path: Path, days: int = 3, start: datetime = datetime(2024, 1, 1)) -> Path:
    """Hourly rows whose target the model learns from x and no time-based baseline can guess."""
    rng = random.Random(7)
    lines = ["stamp,x,y"]
    for hour in range(days * 24):
        moment = start + timedelta(hours=hour)
        x = rng.uniform(-1, 1)
        lines.append(f"{moment:%Y-%m-%d %H:%M:%S},{x:.6f},{3 * x + rng.gauss(0, 0.05):.6f}")
    path.write_text("\n".join(lines) + "\n")
    return path


def toy_spec_dict(name: str, source: Path) -> dict:
    return {
        "name": name,
        "source": {"path": str(source)},
        "derived": {"ts": "strptime(stamp, '%Y-%m-%d %H:%M:%S')"},
        "time_column": "ts",
        "columns": {"stamp": {"type": "string"}, "x": {"type": "float"}, "y": {"type": "float"}},
        "target": {"column": "y", "task": "regression"},
        "drop": ["stamp"],
    }


@pytest.fixture
def spec_folder(tmp_path: Path, write_spec: Callable[..., Path]) -> Path:
    """One good spec and one of each kind of broken spec; returns the folder."""
    good_csv = write_hourly_csv(tmp_path / "good.csv")
    write_spec(toy_spec_dict(GOOD, good_csv), "good.yaml")
    write_spec("name: [unclosed\n", "Bad YAML!.yaml")
    unknown = toy_spec_dict("unknown_key", good_csv)
    unknown["colour"] = "blue"
    write_spec(unknown, "unknown_key.yaml")
    write_spec(toy_spec_dict("moved", tmp_path / "gone.csv"), "moved.yaml")
    failing_probe = toy_spec_dict("failing_probe", good_csv)
    failing_probe["derived"]["ts"] = "strptime(no_such_column, '%Y')"
    write_spec(failing_probe, "failing_probe.yaml")
    inverted = toy_spec_dict("inverted", good_csv)
    inverted["partitions"] = {"start": "2024-02-01", "end": "2024-01-01"}
    write_spec(inverted, "inverted.yaml")
    write_spec(bike_spec_dict(), "bike_again.yaml")  # a second bike_sharing: the bundled one keeps the name
    return good_csv.parent / "specs"


# broken dataset name -> (spec file, what its error says)
EXPECTED_BROKEN = {
    "bad_yaml_": ("Bad YAML!.yaml", "not valid YAML"),
    "unknown_key": ("unknown_key.yaml", "key 'colour': unknown key"),
    "moved": ("moved.yaml", "key 'source.path': file"),
    "failing_probe": ("failing_probe.yaml", "key 'derived.ts': the expression"),
    "inverted": ("inverted.yaml", "start (2024-02-01) must be before end (2024-01-01)"),
    "bike_sharing": ("bike_again.yaml", "'bike_sharing' is already defined in"),
}


def test_broken_specs_break_only_themselves(
    spec_folder: Path, use_extra_specs: Callable[[Path], None], platform_home: Path
) -> None:
    use_extra_specs(spec_folder)
    defs = build_definitions()
    jobs = {job.name for job in defs.jobs or []}
    assert {"bike_sharing__all", "transactions__all", f"{GOOD}__all"} <= jobs
    broken = {b.name: b for b in broken_specs(defs)}
    assert set(broken) == set(EXPECTED_BROKEN)
    for name, (filename, says) in EXPECTED_BROKEN.items():
        assert broken[name].path == spec_folder / filename
        assert broken[name].error.startswith(f"spec file {spec_folder / filename}: "), broken[name].error
        assert says in broken[name].error and "\n" not in broken[name].error
        assert f"{name}__all" not in jobs or name == "bike_sharing"
    # the good ones resolve as a whole (no dangling job or sensor of a broken one)
    assert defs.resolve_job_def(f"{GOOD}__all").partitions_def is not None
    keys = defs.resolve_asset_graph().get_all_asset_keys()
    assert {key.path[0] for key in keys} == {"bike_sharing", "transactions", GOOD} and len(keys) == 3 * 10


def test_the_ui_shows_each_broken_spec_as_a_sensor_that_skips_with_its_error(
    spec_folder: Path, use_extra_specs: Callable[[Path], None], platform_home: Path
) -> None:
    use_extra_specs(spec_folder)
    defs = build_definitions()
    with dg.instance_for_test() as instance:
        for name, (filename, says) in EXPECTED_BROKEN.items():
            sensor = defs.resolve_sensor_def(f"{name}__spec_error")
            assert sensor.default_status == dg.DefaultSensorStatus.RUNNING
            assert says in (sensor.description or "") and str(spec_folder / filename) in sensor.description
            tick = sensor(dg.build_sensor_context(instance=instance))
            assert isinstance(tick, dg.SkipReason)
            assert tick.skip_message == f"{name} is not loaded: {broken_error(defs, name)}"
    assert not [s for s in defs.sensors or [] if s.name.startswith(GOOD) and s.name.endswith("__spec_error")]


def broken_error(defs: dg.Definitions, name: str) -> str:
    return next(b.error for b in broken_specs(defs) if b.name == name)


def test_a_good_folder_reports_nothing_broken(platform_home: Path) -> None:
    defs = build_definitions()
    assert broken_specs(defs) == []
    assert not [s.name for s in defs.sensors or [] if s.name.endswith("__spec_error")]


def _hostile_sources(folder: Path) -> dict[str, Path]:
    folder.mkdir()
    rows = write_hourly_csv(folder / "base.csv").read_text().splitlines()
    sources = {
        "unterminated_quote": [*rows[:5], f'{rows[5].rsplit(",", 1)[0]},"1.5', *rows[6:]],
        "huge_field": [*rows[:5], rows[5] + "x" * 3_000_000, *rows[6:]],
        "far_future": [*rows, "9999-12-31 00:00:00,0.5,1.5"],
        "year_one": [*rows, "0001-01-01 00:00:00,0.5,1.5"],
    }
    for name, lines in sources.items():
        (folder / f"{name}.csv").write_text("\n".join(lines) + "\n")
    return {name: folder / f"{name}.csv" for name in sources}


def test_a_hostile_source_affects_only_its_own_dataset(
    tmp_path: Path,
    write_spec: Callable[..., Path],
    use_extra_specs: Callable[[Path], None],
    platform_home: Path,
) -> None:
    """Each either loads or is reported broken with its own file's error; the good one always loads."""
    good = write_hourly_csv(tmp_path / "good.csv")
    write_spec(toy_spec_dict(GOOD, good), "good.yaml")
    hostile = _hostile_sources(tmp_path / "hostile")
    for name, source in hostile.items():
        write_spec(toy_spec_dict(name, source), f"{name}.yaml")
    use_extra_specs(tmp_path / "specs")
    defs = build_definitions()
    jobs = {job.name for job in defs.jobs or []}
    broken = {b.name: b.error for b in broken_specs(defs)}
    assert f"{GOOD}__all" in jobs and GOOD not in broken
    for name in hostile:
        assert (f"{name}__all" in jobs) != (name in broken), name
        if name in broken:
            assert broken[name].startswith(f"spec file {tmp_path / 'specs' / name}.yaml: "), broken[name]
            assert len(broken[name]) <= 2000  # a 3 MB field is not copied into the message
        else:  # loaded: its partitions were not stretched to the absurd dates
            keys = defs.resolve_job_def(f"{name}__all").partitions_def.get_partition_keys()
            assert len(keys) <= 10, (name, keys[:3], keys[-3:])


@pytest.mark.e2e  # starts `mlplatform specs`
def test_mlplatform_specs_lists_every_dataset_and_each_broken_ones_error(
    spec_folder: Path, tmp_path: Path
) -> None:
    result = mlplatform_cli("specs", home=tmp_path / "home", timeout=300, MLPLATFORM_SPECS=str(spec_folder))
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    for name in ("bike_sharing", "transactions", GOOD):
        assert f"\n{name}: " in f"\n{result.stdout}", result.stdout
    errors = result.stderr.strip().splitlines()
    assert len(errors) == len(EXPECTED_BROKEN), errors
    for filename, says in EXPECTED_BROKEN.values():
        line = next(e for e in errors if f"spec file {spec_folder / filename}: " in e)
        assert line.startswith("mlplatform: error: ") and says in line
        assert f"{spec_folder / filename} | NOT LOADED" in result.stdout
    home = tmp_path / "home"  # validation writes nothing there (subprocess_env wrote dagster.yaml)
    assert sorted(str(p.relative_to(home)) for p in home.rglob("*")) == ["dagster", "dagster/dagster.yaml"]


@pytest.mark.e2e
def test_run_of_a_good_dataset_works_while_another_spec_is_broken(
    tmp_path: Path, write_spec: Callable[..., Path]
) -> None:
    source = write_hourly_csv(tmp_path / "good.csv", days=28)
    write_spec(toy_spec_dict(GOOD, source), "good.yaml")
    write_spec(yaml.safe_dump({"name": "broken", "colour": "blue"}), "broken.yaml")
    result = mlplatform_cli(
        "run",
        "--dataset",
        GOOD,
        home=tmp_path / "home",
        timeout=900,
        MLPLATFORM_SPECS=str(tmp_path / "specs"),
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert f"{GOOD}: OK" in result.stdout
    assert f"raw {28 * 24:,}, clean {28 * 24:,}, quarantine 0" in result.stdout


def _payments_spec(landing: Path, write_spec: Callable[..., Path]) -> DatasetSpec:
    raw = yaml.safe_load((BUNDLED_SPECS_DIR / "transactions.yaml").read_text())
    raw.update(name="payments_test", source={"path": f"{landing}/*.parquet", "format": "parquet"})
    raw["partitions"] = {"start": "2024-01-01", "end": "2024-02-01"}
    return parse_spec(write_spec(raw))


def test_new_data_sensor_skips_a_bad_file_goes_on_with_the_good_ones_and_keeps_its_cursor_bounded(
    tmp_path: Path, write_spec: Callable[..., Path]
) -> None:
    landing = tmp_path / "landing"
    generate_to_folder(landing, days=3, customers=20, seed=1, start=date(2024, 1, 1))
    spec = _payments_spec(landing, write_spec)
    partitions = dg.DailyPartitionsDefinition(start_date="2024-01-01", end_date="2024-02-01")
    whole = dg.define_asset_job(
        "payments_test__all", selection=dg.AssetSelection.key_prefixes(["payments_test"])
    )
    sensor = build_new_data_sensor(spec, partitions, build_ingest_job(spec), whole, load_settings())
    later = generate_to_folder(tmp_path / "later", days=3, customers=20, seed=2, start=date(2024, 1, 4))
    corrupt = landing / later[0].name  # 2024-01-04: not Parquet at all
    corrupt.write_bytes(b"PAR1 this is not a parquet file")
    truncated = landing / later[1].name  # 2024-01-05: a real file cut in half
    truncated.write_bytes(later[1].read_bytes()[: later[1].stat().st_size // 2])
    cursor: str | None = None
    instance = dg.DagsterInstance.ephemeral()

    def tick() -> dg.SensorResult:
        nonlocal cursor
        result = sensor(dg.build_sensor_context(instance=instance, cursor=cursor))
        cursor = result.cursor
        files, bad = read_cursor(cursor)
        assert set(files) == {str(p) for p in landing.glob("*.parquet")}  # bounded by the folder
        assert set(bad) <= set(files)
        return result

    first = tick()
    [request] = first.run_requests
    assert requested_range(request) == ("2024-01-01", "2024-01-03")
    assert request.tags[SKIPPED_FILES_TAG] == f"{corrupt.name}, {truncated.name}"
    assert set(read_cursor(cursor)[1]) == {str(corrupt), str(truncated)}

    second = tick()  # nothing changed: the bad files are not read again, but still reported
    assert not second.run_requests
    assert "2 unreadable file(s) still waiting to change" in second.skip_reason.skip_message

    os.replace(later[2], landing / later[2].name)  # a good file lands after the bad ones
    [request] = tick().run_requests
    assert requested_range(request) == ("2024-01-06", "2024-01-06")
    assert SKIPPED_FILES_TAG not in request.tags

    os.replace(later[0], corrupt)  # the corrupt file is fixed: read again, requested
    [request] = tick().run_requests
    assert requested_range(request) == ("2024-01-04", "2024-01-04")
    assert set(read_cursor(cursor)[1]) == {str(truncated)}

    truncated.unlink()  # removed: it leaves the cursor
    last = tick()
    assert last.skip_reason.skip_message == "no new or changed files"
    assert read_cursor(cursor)[1] == {}


def test_new_data_sensor_names_the_bad_file_when_it_is_the_only_change(
    tmp_path: Path, write_spec: Callable[..., Path]
) -> None:
    landing = tmp_path / "landing"
    landing.mkdir()
    spec = _payments_spec(landing, write_spec)
    partitions = dg.DailyPartitionsDefinition(start_date="2024-01-01", end_date="2024-02-01")
    whole = dg.define_asset_job(
        "payments_test__all", selection=dg.AssetSelection.key_prefixes(["payments_test"])
    )
    sensor = build_new_data_sensor(spec, partitions, build_ingest_job(spec), whole, load_settings())
    (landing / "broken.parquet").write_bytes(b"\x00" * 100)
    with dg.instance_for_test() as instance:
        result = sensor(dg.build_sensor_context(instance=instance))
    assert not result.run_requests
    message = result.skip_reason.skip_message
    assert (
        message.startswith("no readable new or changed file (skipped broken.parquet: ")
        and "\n" not in message
    )
