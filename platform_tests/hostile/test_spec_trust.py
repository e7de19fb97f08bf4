"""A spec is trusted with SQL expressions, never with statements: `derived` is parsed, not run, at
validation, and names LightGBM would refuse are caught when the spec loads."""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path

import lightgbm as lgb
import numpy as np
import pandas as pd
import pytest

from mlplatform.specs.expressions import check_expression
from mlplatform.specs.loader import SpecError, check_source, load_specs, parse_spec
from platform_tests.conftest import BIKE_CSV, REPO_ROOT, bike_spec_dict, subprocess_env

BIKE_TS = "strptime(dateday, '%d-%m-%Y') + to_hours(hour)"


def _spec_with_derived(expression: str) -> dict:
    spec = bike_spec_dict()
    spec["name"] = "sneaky"
    spec["source"]["path"] = str(BIKE_CSV)
    spec["derived"]["ts"] = expression
    return spec


# (expression with {out} for a file it would write or read, what the error must say)
HOSTILE = {
    "stacked COPY": (f"1; COPY (SELECT 42) TO '{{out}}'; SELECT {BIKE_TS}", "holds 3 SQL statements"),
    "stacked COPY, trailing": ("1; COPY (SELECT 42) TO '{out}'", 'the second: "COPY (SELECT 42) TO'),
    "COPY as the expression": ("COPY (SELECT 42) TO '{out}'", "is not a valid SQL expression"),
    "ATTACH": ("1; ATTACH '{out}' AS other", 'the second: "ATTACH'),
    "INSTALL": ("1; INSTALL httpfs", "the second: 'INSTALL httpfs'"),
    "LOAD": ("1; LOAD httpfs", "the second: 'LOAD httpfs'"),
    "PRAGMA": ("1; PRAGMA enable_profiling", "the second: 'PRAGMA"),
    "SET": ("1; SET enable_external_access = true", "the second: 'SET"),
    "read_text": ("read_text('{out}')", "calls read_text(), which is a table function"),
    "read_csv": ("read_csv('{out}')", "calls read_csv(), which is a table function"),
    "read_blob": ("read_blob('{out}')", "calls read_blob(), which is a table function"),
    "glob": ("glob('{out}')", "calls glob(), which is a table function"),
    "parquet_scan": ("parquet_scan('{out}')", "calls parquet_scan(), which is a table function"),
    "getenv": ("getenv('HOME')", "calls getenv(), which is not a built-in DuckDB scalar function"),
    "scalar subquery": ("(SELECT count(*) FROM read_csv('{out}'))", "holds a subquery"),
    "IN subquery": ("hour IN (SELECT 1)", "holds a subquery"),
    "FROM clause": ("content FROM read_text('{out}')", "holds a FROM clause"),
    "breaking out of TRY(...)": ("hour) AS x FROM read_text('{out}') --", "is not a valid SQL expression"),
    "trailing ';'": (f"{BIKE_TS};", "does not parse inside parentheses"),
    "UNION": ("1 UNION SELECT 2", "is a query"),
    "two expressions": ("hour, temp", "is 2 expressions"),
    "alias": ("hour AS h", "has an alias"),
    "aggregate": ("sum(temp)", "calls sum(), which is an aggregate"),
    "window": ("lag(temp) OVER (ORDER BY instant)", "holds a window function"),
    "clock": ("now()", "calls now(), which is not a function of the row alone"),
    "session": ("current_setting('threads')", "not a function of the row alone"),
    "side effect": ("setseed(0.5)", "not a function of the row alone"),
    "macro over the clock": ("ago(INTERVAL 1 DAY)", "calls ago(), which is not a function of the row alone"),
    "macro over the catalog": (
        "format_type(1, 1)",
        "calls format_type(), which is not a function of the row",
    ),
    "qualified function": ("main.lower(dateday)", "calls main.lower"),
    "extension type": ("dateday::GEOGRAPHY", "casts to GEOGRAPHY, which is not a built-in DuckDB type"),
    "extension function": ("st_area(dateday)", "is not a built-in DuckDB scalar function"),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_derived_expression_is_refused_without_side_effects(
    case: str, write_spec: Callable[..., Path], tmp_path: Path
) -> None:
    out = tmp_path / "written_by_the_spec.csv"
    expression, reason = HOSTILE[case]
    path = write_spec(_spec_with_derived(expression.format(out=out)))
    with pytest.raises(SpecError) as info:
        check_source(parse_spec(path))  # as `mlplatform specs` and the code location do: parse, then probe
    message = str(info.value)
    assert f"spec file {path}: key 'derived.ts': " in message and reason in message, message
    assert not out.exists()


@pytest.mark.e2e  # starts `mlplatform specs`
def test_mlplatform_specs_refuses_a_stacked_copy_and_writes_nothing(
    tmp_path: Path, write_spec: Callable[..., Path]
) -> None:
    """The reported attack: `mlplatform specs`, a validation command, ran a COPY ... TO."""
    out = tmp_path / "pwned.csv"
    spec = _spec_with_derived(f"1; COPY (SELECT 42 AS x) TO '{out}'; SELECT {BIKE_TS}")
    path = write_spec(spec, "sneaky.yaml")
    result = subprocess.run(
        ["mlplatform", "specs"],
        cwd=tmp_path,
        env=subprocess_env(tmp_path / "home", MLPLATFORM_SPECS=str(path.parent)),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().startswith(f"mlplatform: error: spec file {path}: key 'derived.ts': holds 3")
    assert "bike_sharing:" in result.stdout  # the good datasets are still listed
    assert not out.exists()


LEGITIMATE = [
    BIKE_TS,
    "strptime(day, '%Y-%m-%d')",
    "CASE WHEN temp > 0.5 THEN 'warm' ELSE 'cold' END",
    "coalesce(temp, 0) * 2.5 - abs(hum)",
    "TRY_CAST(dateday AS DATE) + INTERVAL 1 DAY",
    "date_trunc('week', strptime(dateday, '%d-%m-%Y'))",
    "hour BETWEEN 7 AND 9 AND NOT (weekday IN (0, 6))",
    "regexp_replace(dateday, '-', '/') || ';'",
    "'1; COPY x TO y'",  # a string literal holding SQL is only text
    "list_transform([temp, hum], v -> v * 2)[1]",
    "CAST(hour AS DECIMAL(4, 1))",
    "greatest(temp, atemp) -- the warmer of the two\n",
    '"we""ird;name" + 1',
    "nullif(hour, 0) + if(temp > 0.5, 1, 0)",  # macros over allowed functions stay allowed
    "split_part(dateday, '-', 1)",
]


@pytest.mark.parametrize("expression", LEGITIMATE)
def test_legitimate_expressions_pass(expression: str) -> None:
    assert check_expression(expression) == expression


def test_bundled_specs_derived_expressions_still_load_and_probe() -> None:
    specs = {spec.name: spec for spec in load_specs()}
    assert specs["bike_sharing"].derived == {"ts": BIKE_TS}
    assert str(check_source(specs["bike_sharing"]).time_max) == "2012-12-31 23:00:00"


def test_identifiers_with_quotes_and_semicolons_are_quoted(
    tmp_path: Path, write_spec: Callable[..., Path]
) -> None:
    """Column names are data, not SQL: a quote or ';' in a name reaches DuckDB only as a quoted identifier."""
    source = tmp_path / "odd.csv"
    source.write_text('day,"a;b","q""uote",y\n2024-01-01,1.5,2.5,3\n2024-01-02,1.0,4.0,5\n')
    spec = {
        "name": "odd",
        "source": {"path": str(source)},
        "derived": {"ts": "strptime(day, '%Y-%m-%d')", "q_safe": '"q""uote" * 2'},
        "time_column": "ts",
        "columns": {
            "day": {"type": "string"},
            "a;b": {"type": "float"},
            'q"uote': {"type": "float"},
            "y": {"type": "float"},
        },
        "target": {"column": "y", "task": "regression"},
        "drop": ["day", 'q"uote'],  # LightGBM would refuse the quote: renamed through derived
    }
    loaded = parse_spec(write_spec(spec))
    assert loaded.feature_columns == ["a;b", "q_safe"]
    probe = check_source(loaded)
    assert (str(probe.time_min), str(probe.time_max)) == ("2024-01-01 00:00:00", "2024-01-02 00:00:00")
    assert {"a;b", 'q"uote'} <= set(probe.columns)


LIGHTGBM_REFUSED = ['"', ",", ":", "[", "]", "{", "}"]


@pytest.mark.parametrize("char", [*LIGHTGBM_REFUSED, "\n"])
def test_feature_names_lightgbm_refuses_are_caught_when_the_spec_loads(
    char: str, write_spec: Callable[..., Path]
) -> None:
    spec = bike_spec_dict()
    name = f"temp{char}c"
    spec["columns"][name] = spec["columns"].pop("temp")
    with pytest.raises(SpecError) as info:
        parse_spec(write_spec(spec))
    shown = "a line break" if char == "\n" else repr(char)
    assert f"key 'columns.{name}': the name holds {shown}, which LightGBM refuses" in str(info.value)


def test_a_refused_name_is_fine_when_dropped_and_caught_in_derived_and_lags(
    write_spec: Callable[..., Path],
) -> None:
    spec = bike_spec_dict()
    spec["columns"]["temp[c]"] = spec["columns"].pop("temp")
    spec["derived"]["temp"] = '"temp[c]"'
    spec["drop"].append("temp[c]")
    parse_spec(write_spec(spec))  # the source name stays, the model sees `temp`
    spec["derived"]["feels:like"] = "atemp * 1"
    with pytest.raises(SpecError, match=r"key 'derived.feels:like': the name holds ':'"):
        parse_spec(write_spec(spec))
    del spec["derived"]["feels:like"]
    spec["features"]["lags"] = [{"column": "temp[c]", "lag": "24h"}]  # a lag feature carries the name
    with pytest.raises(SpecError, match=r"key 'columns.temp\[c\]': the name holds '\['"):
        parse_spec(write_spec(spec))


@pytest.mark.parametrize("char", LIGHTGBM_REFUSED)
def test_the_refused_characters_are_the_ones_lightgbm_refuses(char: str) -> None:
    """Ties the spec rule to the installed LightGBM: if its rule changes, this fails."""
    rng = np.random.default_rng(0)
    frame = pd.DataFrame({f"a{char}b": rng.normal(size=40), "ok;name é'": rng.normal(size=40)})
    with pytest.raises(lgb.basic.LightGBMError, match="special JSON characters"):
        lgb.train({"verbose": -1}, lgb.Dataset(frame, label=rng.normal(size=40)), num_boost_round=1)
    accepted = frame.drop(columns=[f"a{char}b"])
    lgb.train({"verbose": -1}, lgb.Dataset(accepted, label=rng.normal(size=40)), num_boost_round=1)


def test_servers_the_platform_documents_bind_127_0_0_1_unless_configured() -> None:
    """`dagster dev` / `dagster-webserver` and `mlflow ui` / `mlflow server`, as the README and the run
    summary print them (no host option), listen on 127.0.0.1: pinned here against an upgrade."""
    import click
    from dagster_webserver.cli import DEFAULT_WEBSERVER_HOST
    from mlflow.cli import cli

    assert DEFAULT_WEBSERVER_HOST == "127.0.0.1"
    for command in ("ui", "server"):  # `mlflow ui` is an alias of `mlflow server`
        resolved = cli.get_command(click.Context(cli), command)
        [host] = [p for p in resolved.params if p.name == "host"]
        assert host.default == "127.0.0.1", command
    for text in (REPO_ROOT / "README.md", REPO_ROOT / "platform" / "mlplatform" / "runner.py"):
        assert "0.0.0.0" not in text.read_text(), text


def test_a_derived_column_also_declared_in_columns_is_one_feature(write_spec: Callable[..., Path]) -> None:
    """Declaring a derived column in `columns` (to type and check it) must not make it two features:
    before, the features table got `x2` and `x2_1` and LightGBM refused the 2-D column."""
    spec = bike_spec_dict()
    spec["derived"]["warmth"] = "temp * 2"
    spec["columns"]["warmth"] = {"type": "float"}
    features = parse_spec(write_spec(spec)).feature_columns
    assert features.count("warmth") == 1
    assert len(features) == len(set(features))
