"""Each partition's materialization event carries that partition's own metadata, not the run's.

Ranged runs of the tiny dataset (one step, one event per partition): January .. February of the data
stages, then, with a champion trained on them, February .. March (shifted) of predictions and drift.
The values each event shows are checked against counts made independently from the records the
fixture wrote (or, for drift, against the partition's row in `drift_verdict`). The run's summary
(`run_*` keys) is on the newest partition's event only, the asset's latest.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import replace
from datetime import datetime
from typing import Any

import dagster as dg
import pytest

from mlplatform.contracts import DriftVerdictMetadata, Stage
from mlplatform.core.drift_windows import window_start
from mlplatform.factory import build_dataset
from mlplatform.sensors.drift import read_verdicts
from mlplatform.specs.model import DatasetSpec
from platform_tests.assets.tiny import (
    BAD_RECORDS,
    MONTHS,
    TinyDataset,
    make_tiny_dataset,
)

JANUARY, FEBRUARY, MARCH = MONTHS
LOADED = (JANUARY, FEBRUARY)  # by the data run; March arrives after training
DATA_STAGES = (Stage.RAW, Stage.CLEAN, Stage.QUARANTINE, Stage.FEATURES)
VALUE_DESCRIPTION = "rentals in the hour, the number to predict"


def partition_range(first: str, last: str) -> dict[str, str]:
    return {"dagster/asset_partition_range_start": first, "dagster/asset_partition_range_end": last}


def events_by_partition(result: dg.ExecuteInProcessResult, key: dg.AssetKey) -> dict[str, dict[str, Any]]:
    """The plain metadata of each partition's event of `key`, in the order the run recorded them."""
    found = {}
    for event in result.get_asset_materialization_events():
        materialization = event.step_materialization_data.materialization
        if materialization.asset_key == key:
            assert materialization.partition is not None
            found[materialization.partition] = {k: v.value for k, v in materialization.metadata.items()}
    return found


def materialize_range(
    tiny: TinyDataset, stages: Iterable[Stage], first: str, last: str
) -> dg.ExecuteInProcessResult:
    return dg.materialize(
        tiny.assets,
        selection=[tiny.key(stage) for stage in stages],
        resources=tiny.resources(),
        instance=tiny.instance,
        tags=partition_range(first, last),
    )


@pytest.fixture(scope="module")
def described(tmp_path_factory: pytest.TempPathFactory) -> TinyDataset:
    """The tiny dataset with a description on `value`."""
    tiny = make_tiny_dataset(tmp_path_factory.mktemp("partition_metadata"))
    raw_spec = tiny.spec.model_dump(mode="json", exclude_unset=True)
    raw_spec["columns"]["value"]["description"] = VALUE_DESCRIPTION
    spec = DatasetSpec.model_validate(raw_spec)
    return replace(tiny, spec=spec, built=build_dataset(spec, settings=tiny.settings))


@pytest.fixture(scope="module")
def data_run(described: TinyDataset) -> dg.ExecuteInProcessResult:
    return materialize_range(described, DATA_STAGES, JANUARY, FEBRUARY)


def test_raw_and_features_events_count_their_own_partition(
    described: TinyDataset, data_run: dg.ExecuteInProcessResult
) -> None:
    raw = events_by_partition(data_run, described.key(Stage.RAW))
    features = events_by_partition(data_run, described.key(Stage.FEATURES))
    assert list(raw) == list(features) == list(LOADED)  # the newest partition's event is the last
    for partition in LOADED:
        assert raw[partition]["dagster/row_count"] == len(described.source.records_in(partition))
        assert features[partition]["dagster/row_count"] == len(described.source.good_records_in(partition))
        assert raw[partition]["source_rows"] == len(described.source.records)  # the file's, named so
    assert raw[JANUARY]["dagster/row_count"] == 31 * 24 != raw[FEBRUARY]["dagster/row_count"] == 29 * 24
    # A preview of the partition's own rows: January's first record, not in February's preview.
    assert "2024-01-01 00:00" in raw[JANUARY]["preview"] and "2024-01-01" not in raw[FEBRUARY]["preview"]


def test_clean_and_quarantine_events_carry_their_partitions_split_and_reasons(
    described: TinyDataset, data_run: dg.ExecuteInProcessResult
) -> None:
    clean = events_by_partition(data_run, described.key(Stage.CLEAN))
    quarantine = events_by_partition(data_run, described.key(Stage.QUARANTINE))
    planted = {p: [BAD_RECORDS[i][0] for i in sorted(described.source.bad_ids_in(p))] for p in LOADED}
    assert planted == {JANUARY: ["value", "kind"], FEBRUARY: ["x"]}
    for partition in LOADED:
        records = described.source.records_in(partition)
        good = described.source.good_records_in(partition)
        for own in (clean[partition], quarantine[partition]):
            assert own["raw_rows"] == len(records)
            assert own["clean_rows"] == len(good)
            assert own["quarantined_rows"] == len(records) - len(good) == len(planted[partition])
            assert own["quarantine_share"] == pytest.approx((len(records) - len(good)) / len(records))
            for column in ("value", "kind", "x"):
                assert (f"`{column}:" in own["quarantine_reasons"]) == (column in planted[partition])
        assert clean[partition]["dagster/row_count"] == len(good)
        assert quarantine[partition]["dagster/row_count"] == len(planted[partition])


def test_the_run_summary_is_on_the_newest_partitions_event_only(
    described: TinyDataset, data_run: dg.ExecuteInProcessResult
) -> None:
    clean = events_by_partition(data_run, described.key(Stage.CLEAN))
    assert not any(key.startswith("run_") for key in clean[JANUARY])
    newest = clean[FEBRUARY]
    run = (newest["run_partitions"], newest["run_first_partition"], newest["run_last_partition"])
    assert run == (2, JANUARY, FEBRUARY)
    assert newest["run_raw_rows"] == sum(len(described.source.records_in(p)) for p in LOADED)
    assert newest["run_quarantined_rows"] == len(BAD_RECORDS)
    # The run's reasons are counted per failing column and check, both months together.
    assert all(f"`{column}:" in newest["run_quarantine_reasons"] for column in ("value", "kind", "x"))


def test_column_schema_carries_the_spec_descriptions_types_and_rules(
    described: TinyDataset, data_run: dg.ExecuteInProcessResult
) -> None:
    def columns(stage: Stage) -> dict[str, dg.TableColumn]:
        schema = events_by_partition(data_run, described.key(stage))[FEBRUARY]["dagster/column_schema"]
        return {column.name: column for column in schema.columns}

    clean, raw, features = columns(Stage.CLEAN), columns(Stage.RAW), columns(Stage.FEATURES)
    value = clean["value"]
    assert value.type == "float" and VALUE_DESCRIPTION in (value.description or "")
    assert clean["kind"].description is None  # no description in the spec
    assert clean["x"].type == "float" and clean["_source_row"].description.startswith("lineage")
    assert not value.constraints.nullable and {"min 0", "max 100"} <= set(value.constraints.other)
    assert set(clean["kind"].constraints.other) == {"one of a, b"} and clean["id"].constraints.unique
    assert clean["ts"].description == "derived: `strptime(stamp, '%Y-%m-%d %H:%M')`; the time column"
    # Raw holds the text as read: the spec's type is named, its rules are not claimed.
    assert raw["value"].type == "string" and "as read; spec type float" in (raw["value"].description or "")
    assert raw["value"].constraints.other == [] and raw["_source_file"].description.startswith("lineage")
    assert VALUE_DESCRIPTION in (features["value"].description or "")


@pytest.fixture(scope="module")
def scored(
    described: TinyDataset, data_run: dg.ExecuteInProcessResult
) -> dict[str, dg.ExecuteInProcessResult]:
    """A champion trained on January .. February; March loaded; February .. March scored and judged
    in ranged runs."""
    for stage in (Stage.TRAINING_SET, Stage.MODEL, Stage.EVALUATION, Stage.REFERENCE_PROFILE):
        described.materialize([stage])
    described.materialize(DATA_STAGES, partition_key=MARCH)
    return {
        stage: materialize_range(described, [stage], FEBRUARY, MARCH)
        for stage in (Stage.PREDICTIONS, Stage.DRIFT_REPORT)
    }


def test_predictions_events_count_their_own_partition(
    described: TinyDataset, scored: dict[str, dg.ExecuteInProcessResult]
) -> None:
    own = events_by_partition(scored[Stage.PREDICTIONS], described.key(Stage.PREDICTIONS))
    assert list(own) == [FEBRUARY, MARCH]
    for partition in (FEBRUARY, MARCH):
        assert own[partition]["dagster/row_count"] == len(described.source.good_records_in(partition))
    assert own[FEBRUARY]["dagster/row_count"] != own[MARCH]["dagster/row_count"]
    assert own[MARCH]["run_rows"] == sum(own[p]["dagster/row_count"] for p in own)


def test_drift_events_carry_their_partitions_verdict_and_the_sensor_reads_each(
    described: TinyDataset, scored: dict[str, dg.ExecuteInProcessResult]
) -> None:
    key = described.key(Stage.DRIFT_REPORT)
    own = events_by_partition(scored[Stage.DRIFT_REPORT], key)
    stored = described.query(
        "SELECT strftime(partition_start, '%Y-%m-%d'), drifted, status, n_drifted, drifted_share, reason "
        "FROM tiny.drift_verdict ORDER BY 1"
    )
    assert [(p, *row) for p, *row in stored] == [
        (
            p,
            own[p]["drifted"],
            own[p]["status"],
            own[p]["n_drifted"],
            own[p]["drifted_share"],
            own[p]["reason"],
        )
        for p in (FEBRUARY, MARCH)
    ]
    assert (own[FEBRUARY]["drifted"], own[MARCH]["drifted"]) == (False, True)  # March is shifted
    ends = {FEBRUARY: datetime(2024, 3, 1), MARCH: datetime(2024, 4, 1)}
    for partition, end in ends.items():  # each judged on its own trailing drift.window
        start = window_start(described.spec, end)
        in_window = [
            r
            for r in described.source.records
            if start <= datetime.strptime(r["stamp"], "%Y-%m-%d %H:%M") < end
            and int(r["id"]) not in BAD_RECORDS
        ]
        assert own[partition]["n_rows"] == len(in_window) > 0
        assert own[partition]["window_start"] == f"{start:%Y-%m-%d %H:%M:%S}"
        assert own[partition]["verdict_partition"] == partition
    assert own[FEBRUARY]["n_rows"] != own[MARCH]["n_rows"]  # the default window: one month
    assert own[MARCH]["drifted_partitions_in_run"] == 1 and own[MARCH]["run_partitions"] == 2
    assert "drifted_partitions_in_run" not in own[FEBRUARY]
    verdicts = read_verdicts(described.instance, key, 0)
    assert [(v.partition, v.drifted) for v in verdicts] == [(FEBRUARY, False), (MARCH, True)]
    assert DriftVerdictMetadata.from_metadata(own[MARCH]) == DriftVerdictMetadata(
        True, MARCH, own[MARCH]["reason"][: DriftVerdictMetadata.REASON_LIMIT], own[MARCH]["status"]
    )
