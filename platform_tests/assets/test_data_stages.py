"""Unit tests of the data stages' assets (raw, clean + quarantine, features) through `dg.materialize`
on the tiny dataset, one monthly partition at a time, against a warehouse file in the test's temp dir."""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest

from mlplatform.contracts import Stage
from platform_tests.assets.tiny import BAD_RECORDS, MONTHS, TinyDataset, metadata_of

JANUARY, FEBRUARY = MONTHS[0], MONTHS[1]


def test_raw_holds_exactly_the_records_of_its_partition_as_text(tiny: TinyDataset) -> None:
    result = tiny.materialize([Stage.RAW], partition_key=JANUARY)

    january = tiny.source.records_in(JANUARY)
    metadata = metadata_of(result, tiny.key(Stage.RAW))
    assert metadata["dagster/row_count"] == len(january) == 31 * 24
    assert metadata["source_rows"] == len(tiny.source.records)  # the whole file, counted on its own
    assert metadata["malformed_lines"] == 0
    assert metadata["source_files"] == 1
    rows = tiny.query("SELECT id, stamp, kind, x, value FROM tiny.raw ORDER BY _source_row")
    # Loaded as they are: the planted bad texts too (cleaning judges them, not ingestion).
    assert rows == [(r["id"], r["stamp"], r["kind"], r["x"], r["value"]) for r in january]


def test_raw_replaces_its_partition_when_run_again(tiny: TinyDataset) -> None:
    tiny.materialize([Stage.RAW], partition_key=JANUARY)
    tiny.materialize([Stage.RAW], partition_key=FEBRUARY)
    again = tiny.materialize([Stage.RAW], partition_key=JANUARY)

    expected = len(tiny.source.records_in(JANUARY)) + len(tiny.source.records_in(FEBRUARY))
    assert metadata_of(again, tiny.key(Stage.RAW))["rows_in_table"] == expected
    assert tiny.query("SELECT count(*), count(DISTINCT _source_row) FROM tiny.raw") == [(expected, expected)]


@pytest.mark.parametrize("partition", [JANUARY, FEBRUARY])
def test_clean_and_quarantine_split_raw_with_a_reason_per_bad_record(
    tiny: TinyDataset, partition: str
) -> None:
    result = tiny.materialize([Stage.RAW, Stage.CLEAN, Stage.QUARANTINE], partition_key=partition)

    records, bad = tiny.source.records_in(partition), tiny.source.bad_ids_in(partition)
    clean = metadata_of(result, tiny.key(Stage.CLEAN))
    quarantine = metadata_of(result, tiny.key(Stage.QUARANTINE))
    assert clean["raw_rows"] == quarantine["raw_rows"] == len(records)
    assert clean["dagster/row_count"] == len(tiny.source.good_records_in(partition))
    assert quarantine["dagster/row_count"] == quarantine["quarantined_rows"] == len(bad) > 0
    in_clean = tiny.query("SELECT count(*) FROM tiny.clean WHERE id IN (SELECT unnest(?))", [sorted(bad)])
    assert in_clean == [(0,)]
    reasons = dict(tiny.query("SELECT id, _quarantine_reason FROM tiny.quarantine"))
    assert set(reasons) == {str(i) for i in bad}  # the original text, not a typed value
    for record_id in bad:
        column, text = BAD_RECORDS[record_id]
        assert reasons[str(record_id)].startswith(f"{column}: ")
        assert text in reasons[str(record_id)]
        assert f"`{column}" in quarantine["quarantine_reasons"]


def test_features_of_a_partition_read_the_history_of_the_one_before(tiny: TinyDataset) -> None:
    for partition in (JANUARY, FEBRUARY):
        tiny.materialize([Stage.RAW, Stage.CLEAN, Stage.QUARANTINE], partition_key=partition)
    result = tiny.materialize([Stage.FEATURES], partition_key=FEBRUARY)

    metadata = metadata_of(result, tiny.key(Stage.FEATURES))
    assert metadata["dagster/row_count"] == len(tiny.source.good_records_in(FEBRUARY))
    assert metadata["rows_in_table"] == metadata["dagster/row_count"]  # only February was built
    assert metadata["feature_columns"] == ["cal_hour", "cal_day_of_week", "kind", "x", "x_mean_1d"]
    columns = [c for c, *_ in tiny.query("DESCRIBE tiny.features")]
    # `id` (unique, dropped as an input) is kept to name each row in the predictions.
    assert columns == ["ts", "cal_hour", "cal_day_of_week", "kind", "x", "id", "x_mean_1d", "value"]

    # The first hour of February averages x over the 24 hours ending with it: 23 of them in January.
    first = datetime(2024, 2, 1)
    window = [
        float(r["x"])
        for r in tiny.source.records
        if first - timedelta(days=1) < datetime.strptime(r["stamp"], "%Y-%m-%d %H:%M") <= first
        and int(r["id"]) not in BAD_RECORDS
    ]
    assert len(window) == 24
    [(rolled,)] = tiny.query("SELECT x_mean_1d FROM tiny.features WHERE ts = ?", [first])
    assert rolled == pytest.approx(sum(window) / len(window), abs=1e-9)


@pytest.mark.parametrize(("stage", "missing"), [(Stage.CLEAN, Stage.RAW), (Stage.FEATURES, Stage.CLEAN)])
def test_a_stage_run_before_its_input_fails_naming_what_to_materialize(
    tiny: TinyDataset, stage: Stage, missing: Stage
) -> None:
    selection = [Stage.CLEAN, Stage.QUARANTINE] if stage == Stage.CLEAN else [stage]
    result = tiny.materialize(selection, partition_key=JANUARY, raise_on_error=False)

    assert not result.success
    failures = [e for e in result.all_events if e.is_step_failure]
    message = failures[0].step_failure_data.error.message  # type: ignore[union-attr]
    assert f"tiny.{missing} does not exist: materialize tiny/{missing} first" in message
