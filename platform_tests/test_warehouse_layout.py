"""A warehouse file per dataset: the settings, the resource, the pools, the home's dagster.yaml, the
one-command migration of an older home's single file and `mlplatform sql`.

The migration is tested on a legacy home whose tables real stage runs wrote; the counts it must keep
are taken from the records the fixture wrote, never from the warehouse.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import dagster as dg
import duckdb
import pytest
import yaml

from mlplatform.cli import main
from mlplatform.contracts import Stage
from mlplatform.factory import build_dataset, location_resources
from mlplatform.home import DAGSTER_YAML, LEGACY_RUN_QUEUE_YAML, RUN_MONITORING_YAML, prepare_home
from mlplatform.resources.warehouse import WarehouseError, WarehouseResource
from mlplatform.settings import SHARED_WAREHOUSE_POOL, Settings, load_settings
from mlplatform.specs.model import DatasetSpec
from platform_tests.assets.tiny import MONTHS, TinyDataset, make_tiny_dataset

OTHER_ROWS = 1_000  # rows of the second dataset's table in the legacy file


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("MLPLATFORM_HOME", "MLPLATFORM_SPECS", "MLPLATFORM_WAREHOUSE", "DAGSTER_HOME"):
        monkeypatch.delenv(name, raising=False)


def settings_of(home: Path, **env: str) -> Settings:
    return load_settings({"MLPLATFORM_HOME": str(home), **env})


def test_a_new_home_has_a_file_and_a_pool_per_dataset(tmp_path: Path) -> None:
    settings = settings_of(tmp_path / "home")
    folder = tmp_path / "home" / "warehouse"
    assert settings.warehouse_path == str(folder / "{dataset}-warehouse.duckdb")
    assert settings.warehouse_per_dataset
    assert settings.warehouse_for("bike_sharing") == str(folder / "bike_sharing-warehouse.duckdb")
    assert settings.warehouse_pool("bike_sharing") == "mlplatform/bike_sharing"
    assert settings.warehouse_pool("transactions") == "mlplatform/transactions"
    # DuckDB names the file's catalog `bike_sharing-warehouse`, never like the dataset's schema.
    folder.mkdir(parents=True)
    with duckdb.connect(settings.warehouse_for("bike_sharing")) as conn:
        conn.execute("CREATE SCHEMA bike_sharing; CREATE TABLE bike_sharing.t AS SELECT 1 AS x")
        assert conn.execute("SELECT x FROM bike_sharing.t").fetchall() == [(1,)]


def test_an_older_home_keeps_its_single_file_until_migrated(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    duckdb.connect(str(home / "warehouse.duckdb")).close()
    settings = settings_of(home)
    assert settings.warehouse_path == str(home / "warehouse.duckdb") and not settings.warehouse_per_dataset
    assert settings.warehouse_for("a") == settings.warehouse_for("b") == str(home / "warehouse.duckdb")
    # One file, one writer: every dataset is in one pool, so the queue runs them one at a time.
    assert settings.warehouse_pool("a") == settings.warehouse_pool("b") == SHARED_WAREHOUSE_POOL
    (home / "warehouse").mkdir()  # a migrated home: the folder decides
    assert settings_of(home).warehouse_per_dataset


def test_the_warehouse_setting_is_a_template_or_one_file(tmp_path: Path) -> None:
    shared = settings_of(tmp_path, MLPLATFORM_WAREHOUSE=str(tmp_path / "all.duckdb"))
    assert shared.warehouse_for("a") == str(tmp_path / "all.duckdb")
    assert shared.warehouse_pool("a") == shared.warehouse_pool("b")
    nested = settings_of(tmp_path, MLPLATFORM_WAREHOUSE=str(tmp_path / "{dataset}" / "tables.duckdb"))
    assert nested.warehouse_for("a") == str(tmp_path / "a" / "tables.duckdb")
    assert nested.warehouse_pool("a") != nested.warehouse_pool("b")
    ambiguous = settings_of(tmp_path, MLPLATFORM_WAREHOUSE=str(tmp_path / "{dataset}.duckdb"))
    with pytest.raises(ValueError, match=r"catalog 'a', like the dataset's schema, so `a.<table>`"):
        ambiguous.warehouse_for("a")


def test_the_resource_opens_each_datasets_own_file(tmp_path: Path) -> None:
    resource = WarehouseResource(database=str(tmp_path / "wh" / "{dataset}-warehouse.duckdb"))
    for name, rows in (("alpha", 3), ("beta", 5)):
        with resource.get_connection(name) as conn:
            conn.execute(f"CREATE SCHEMA {name}; CREATE TABLE {name}.t AS SELECT * FROM range({rows})")
    for name, rows in (("alpha", 3), ("beta", 5)):
        with duckdb.connect(str(tmp_path / "wh" / f"{name}-warehouse.duckdb"), read_only=True) as conn:
            assert conn.execute(f"SELECT count(*) FROM {name}.t").fetchall() == [(rows,)]
            assert conn.execute("SELECT DISTINCT schema_name FROM duckdb_tables()").fetchall() == [(name,)]
    with pytest.raises(WarehouseError, match="one DuckDB file per dataset: get_connection"):
        resource.get_connection().__enter__()
    single = WarehouseResource(database=str(tmp_path / "one.duckdb"))  # the legacy layout still works
    with single.get_connection("alpha") as conn, single.get_connection() as other:
        conn.execute("CREATE TABLE t AS SELECT 1 AS x")
        assert other.execute("SELECT x FROM t").fetchall() == [(1,)]


def _spec(tmp_path: Path) -> DatasetSpec:
    source = tmp_path / "toy.csv"
    source.write_text("id,day,value\n1,2024-01-01,1.5\n2,2024-01-02,2.5\n")
    return DatasetSpec.model_validate(
        {
            "name": "toy",
            "source": {"path": str(source)},
            "derived": {"ts": "strptime(day, '%Y-%m-%d')"},
            "time_column": "ts",
            "columns": {"id": {"type": "int"}, "day": {"type": "string"}, "value": {"type": "float"}},
            "target": {"column": "value", "task": "regression"},
        }
    )


def test_every_asset_and_check_of_a_dataset_is_in_its_pool(tmp_path: Path) -> None:
    spec = _spec(tmp_path)
    for home, pool in ((tmp_path / "new", "mlplatform/toy"), (tmp_path / "old", SHARED_WAREHOUSE_POOL)):
        if pool == SHARED_WAREHOUSE_POOL:
            home.mkdir()
            duckdb.connect(str(home / "warehouse.duckdb")).close()
        built = build_dataset(spec, settings=settings_of(home))
        nodes = [*built.assets, *built.checks]
        assert len(built.checks) >= 8 and {node.op.pool for node in nodes} == {pool}


def test_a_new_home_runs_datasets_side_by_side_and_each_ones_runs_one_at_a_time(
    tmp_path: Path, clean_env: None
) -> None:
    settings = settings_of(tmp_path / "home")
    prepare_home(settings)
    config = yaml.safe_load((settings.dagster_home / "dagster.yaml").read_text())
    assert "run_queue" not in config
    assert config["concurrency"] == {
        "runs": {"max_concurrent_runs": 4},
        "pools": {"granularity": "run", "default_limit": 1},
    }
    pools = {"mlplatform/bike_sharing", "mlplatform/transactions"}  # the bundled datasets'
    with dg.DagsterInstance.from_config(str(settings.dagster_home)) as instance:
        assert instance.global_op_concurrency_default_limit == 1
        assert instance.get_concurrency_config().pool_config.pool_granularity.value == "run"
        assert instance.run_monitoring_enabled
        # Set up front: the queue would set a new pool's limit only after launching its first runs.
        limits = {pool.name: pool.limit for pool in instance.event_log_storage.get_pool_limits()}
        assert {name: limits.get(name) for name in pools} == dict.fromkeys(pools, 1)
        instance.event_log_storage.set_concurrency_slots("mlplatform/bike_sharing", 2)
    prepare_home(settings)
    with dg.DagsterInstance.from_config(str(settings.dagster_home)) as instance:
        limits = {pool.name: pool.limit for pool in instance.event_log_storage.get_pool_limits()}
        assert limits["mlplatform/bike_sharing"] == 2, "a limit the owner set is kept"


def test_an_older_homes_global_limit_of_one_run_becomes_the_pools(tmp_path: Path, clean_env: None) -> None:
    settings = settings_of(tmp_path / "home")
    config = settings.dagster_home / "dagster.yaml"
    config.parent.mkdir(parents=True)
    old = "telemetry:\n  enabled: false\n" + LEGACY_RUN_QUEUE_YAML + RUN_MONITORING_YAML + "# my own note\n"
    config.write_text(old)
    prepare_home(settings)
    text = config.read_text()
    assert "run_queue" not in yaml.safe_load(text) and text.endswith(RUN_MONITORING_YAML + "# my own note\n")
    assert yaml.safe_load(text)["concurrency"] == yaml.safe_load(DAGSTER_YAML)["concurrency"]
    with dg.DagsterInstance.from_config(str(settings.dagster_home)) as instance:
        assert instance.global_op_concurrency_default_limit == 1
    prepare_home(settings)
    assert config.read_text() == text, "upgraded once"
    # A run queue its owner configured stays theirs.
    own = "telemetry:\n  enabled: false\nrun_queue:\n  max_concurrent_runs: 2\n" + RUN_MONITORING_YAML
    config.write_text(own)
    prepare_home(settings)
    assert config.read_text() == own


def _materialize(tiny: TinyDataset, settings: Settings, stages: list[Stage], partition: str) -> None:
    result = dg.materialize(
        tiny.assets,
        selection=[tiny.key(stage) for stage in stages],
        partition_key=partition,
        resources=location_resources(settings),
        instance=dg.DagsterInstance.ephemeral(),
    )
    assert result.success


def _legacy_home(tmp_path: Path) -> tuple[Path, TinyDataset]:
    """An older home: one warehouse.duckdb, written by real raw and clean runs of the tiny dataset
    (January and February) and holding a second dataset's table."""
    home = tmp_path / "home"
    home.mkdir()
    duckdb.connect(str(home / "warehouse.duckdb")).close()
    settings = settings_of(home)
    assert not settings.warehouse_per_dataset
    tiny = make_tiny_dataset(tmp_path / "tiny")
    for month in MONTHS[:2]:
        _materialize(tiny, settings, [Stage.RAW, Stage.CLEAN, Stage.QUARANTINE], month)
    with duckdb.connect(settings.warehouse_path) as conn:
        conn.execute("CREATE SCHEMA other")
        conn.execute(
            f"CREATE TABLE other.numbers AS SELECT range AS i, range::VARCHAR AS s FROM range({OTHER_ROWS})"
        )
    return home, tiny


def _count(database: str, sql: str) -> int:
    with duckdb.connect(database, read_only=True) as conn:
        return int(conn.execute(sql).fetchall()[0][0])


def test_warehouse_migrate_splits_an_older_home_and_it_keeps_working(
    tmp_path: Path, clean_env: None, capsys: pytest.CaptureFixture[str]
) -> None:
    home, tiny = _legacy_home(tmp_path)
    records = sum(len(tiny.source.records_in(month)) for month in MONTHS[:2])
    assert main(["warehouse", "migrate", "--home", str(home)]) == 0
    out = capsys.readouterr().out
    assert not (home / "warehouse.duckdb").exists() and (home / "warehouse.duckdb.migrated").is_file()
    assert "renamed to" in out and "tiny: " in out and "other: 1 tables, 1,000 rows" in out
    settings = settings_of(home)
    assert settings.warehouse_per_dataset
    tiny_file, other_file = settings.warehouse_for("tiny"), settings.warehouse_for("other")
    assert _count(tiny_file, "SELECT count(*) FROM tiny.raw") == records
    kept = "SELECT (SELECT count(*) FROM tiny.clean) + (SELECT count(*) FROM tiny.quarantine)"
    assert _count(tiny_file, kept) == records
    assert _count(other_file, "SELECT count(*) FROM other.numbers") == OTHER_ROWS
    assert _count(tiny_file, "SELECT count(*) FROM duckdb_tables() WHERE schema_name <> 'tiny'") == 0

    assert main(["warehouse", "migrate", "--home", str(home)]) == 0, "idempotent"
    assert "already migrated; nothing to do" in capsys.readouterr().out
    # The home keeps working: March and the features are built on the migrated tables.
    _materialize(tiny, settings, [Stage.RAW, Stage.CLEAN, Stage.QUARANTINE], MONTHS[2])
    _materialize(tiny, settings, [Stage.FEATURES], MONTHS[1])
    assert _count(tiny_file, "SELECT count(*) FROM tiny.raw") == len(tiny.source.records)
    assert _count(tiny_file, "SELECT count(*) FROM tiny.features") > 0


def test_warehouse_migrate_never_overwrites_other_data_and_resumes(
    tmp_path: Path, clean_env: None, capsys: pytest.CaptureFixture[str]
) -> None:
    home = tmp_path / "home"
    home.mkdir()
    legacy = home / "warehouse.duckdb"
    with duckdb.connect(str(legacy)) as conn:
        conn.execute("CREATE SCHEMA a; CREATE TABLE a.t AS SELECT * FROM range(10)")
        conn.execute("CREATE SCHEMA b; CREATE TABLE b.t AS SELECT * FROM range(20)")
    (home / "warehouse").mkdir()
    target = home / "warehouse" / "b-warehouse.duckdb"
    with duckdb.connect(str(target)) as conn:
        conn.execute("CREATE SCHEMA b; CREATE TABLE b.t AS SELECT * FROM range(21)")
    assert main(["warehouse", "migrate", "--home", str(home)]) == 2
    error = capsys.readouterr().err
    assert (
        f"{target} already exists with other data than schema b" in error and "nothing was changed" in error
    )
    assert legacy.is_file() and not (home / "warehouse" / "a-warehouse.duckdb").exists()

    # The same data there (a migration that stopped before renaming the old file) is kept, not copied.
    target.unlink()
    with duckdb.connect(str(target)) as conn:
        conn.execute("CREATE SCHEMA b; CREATE TABLE b.t AS SELECT * FROM range(20)")
    assert main(["warehouse", "migrate", "--home", str(home)]) == 0
    out = capsys.readouterr().out
    assert "b: 1 tables, 20 rows" in out and "(already there, verified)" in out
    assert "a: 1 tables, 10 rows" in out and "(copied and verified)" in out
    assert _count(str(home / "warehouse" / "a-warehouse.duckdb"), "SELECT count(*) FROM a.t") == 10
    assert not (home / "warehouse.migrating").exists()


def test_sql_reads_every_dataset_read_only_by_its_name(
    tmp_path: Path, clean_env: None, capsys: pytest.CaptureFixture[str]
) -> None:
    home, tiny = _legacy_home(tmp_path)
    records = sum(len(tiny.source.records_in(month)) for month in MONTHS[:2])
    both = "SELECT (SELECT count(*) FROM tiny.raw) AS tiny_rows, (SELECT count(*) FROM other.numbers) AS other_rows"
    for layout in ("one file", "a file per dataset"):
        if layout == "a file per dataset":
            assert main(["warehouse", "migrate", "--home", str(home)]) == 0
            capsys.readouterr()
        assert main(["sql", "--home", str(home), both]) == 0, layout
        header, rule, row, count = capsys.readouterr().out.splitlines()
        assert header.split() == ["tiny_rows", "other_rows"] and set(rule) == {"-", " "}
        assert row.split() == [str(records), str(OTHER_ROWS)] and count == "(1 rows)", layout

    assert main(["sql", "--home", str(home)]) == 0  # no query: the datasets and their tables
    listing = capsys.readouterr().out
    assert f"tiny  ({home / 'warehouse' / 'tiny-warehouse.duckdb'})" in listing
    assert f"  tiny.raw  {records:,} rows" in listing and f"  other.numbers  {OTHER_ROWS:,} rows" in listing
    assert main(["sql", "--home", str(home), "CREATE TABLE tiny.x AS SELECT 1"]) == 2
    assert "query failed" in (error := capsys.readouterr().err) and "read-only mode" in error
    assert main(["sql", "--home", str(home), "SELECT * FROM tiny.missing"]) == 2
    assert "Table with name missing does not exist" in capsys.readouterr().err


def test_sql_piped_into_a_reader_that_stops_early_exits_quietly(tmp_path: Path, clean_env: None) -> None:
    home, _ = _legacy_home(tmp_path)
    piped = f"mlplatform sql --home {home} 'SELECT * FROM range(200000)' | head -n 3"
    result = subprocess.run(
        ["bash", "-o", "pipefail", "-c", piped], capture_output=True, text=True, timeout=120
    )
    assert (result.returncode, result.stderr) == (0, ""), result.stderr[-2000:]
    assert len(result.stdout.splitlines()) == 3


def test_sql_without_any_warehouse_file_says_what_to_run(
    tmp_path: Path, clean_env: None, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["sql", "--home", str(tmp_path / "home"), "SELECT 1"]) == 2
    assert "run `mlplatform run` first" in capsys.readouterr().err


HOLD_SCRIPT = """
import sys, time, duckdb
conn = duckdb.connect(sys.argv[1])
print("holding", flush=True)
time.sleep(60)
"""


@pytest.mark.e2e  # starts a second process that holds a file
def test_a_file_held_by_another_process_stops_only_its_own_dataset(
    tmp_path: Path, clean_env: None, capsys: pytest.CaptureFixture[str]
) -> None:
    home = tmp_path / "home"
    settings = settings_of(home)
    resource = WarehouseResource(database=settings.warehouse_path, lock_timeout_seconds=0.5)
    for name in ("alpha", "beta"):
        with resource.get_connection(name) as conn:
            conn.execute(f"CREATE SCHEMA {name}; CREATE TABLE {name}.t AS SELECT * FROM range(7)")
    alpha_file = settings.warehouse_for("alpha")
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_SCRIPT, alpha_file], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "holding"
        with resource.get_connection("beta") as conn:  # another dataset's runs go on
            conn.execute("INSERT INTO beta.t VALUES (7)")
        with pytest.raises(WarehouseError, match=f"warehouse {alpha_file} is held by .*PID {holder.pid}"):
            resource.get_connection("alpha").__enter__()
        assert main(["sql", "--home", str(home), "--wait", "0.5", "SELECT count(*) AS n FROM beta.t"]) == 0
        captured = capsys.readouterr()
        assert captured.out.splitlines()[2].strip() == "8"
        assert f"{alpha_file} not attached: warehouse {alpha_file} is held by" in captured.err
    finally:
        holder.kill()
        holder.wait()
