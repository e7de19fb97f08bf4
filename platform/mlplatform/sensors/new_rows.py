"""The new-data sensor's tick for a postgres source: it watches the table as the file branch watches files.

Each tick asks the database for (max of the incremental column, row count) and compares it with the
cursor; rows past the last value seen (or, on the first tick, past the landed watermark) request the
partitions their times cover, through the same ranged ingest run as new files. An unreachable database
is a skip with the reason (the cursor stays), never a failed tick.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from datetime import datetime
from pathlib import Path

import dagster as dg

from mlplatform.core.database_landing import landed_watermark
from mlplatform.core.database_source import new_rows_time_range, table_state
from mlplatform.core.source import SourceError
from mlplatform.specs.model import DatasetSpec, PostgresSourceSpec

KeysBetween = Callable[[dg.TimeWindowPartitionsDefinition, datetime, datetime], list[str]]
RequestFor = Callable[[Sequence[str], str], dg.RunRequest]


def read_table_cursor(text: str | None) -> dict[str, str | int | None] | None:
    """{"max": the incremental column's max as the database writes it, "rows": row count}, or None."""
    if not text:
        return None
    data = json.loads(text)
    return data if isinstance(data, dict) and "rows" in data else None


def database_tick(
    context: dg.SensorEvaluationContext,
    spec: DatasetSpec,
    partitions: dg.TimeWindowPartitionsDefinition,
    landing: Path,
    keys_between: KeysBetween,
    request_for: RequestFor,
) -> dg.SensorResult:
    """One tick; `keys_between(partitions, first, last)` and `request_for(keys, run_key)` are the file
    branch's own partition and request helpers (mlplatform.sensors.new_data)."""
    source = spec.source
    if not isinstance(source, PostgresSourceSpec):
        raise TypeError(f"{spec.name}: not a postgres source")
    seen = read_table_cursor(context.cursor)
    try:
        state = table_state(spec)
        current = {"max": state.max_value, "rows": state.rows}
        if seen == current:
            return dg.SensorResult(skip_reason=dg.SkipReason(f"no new rows in {source.described}"))
        baseline = seen["max"] if seen is not None else landed_watermark(landing)
        cursor = json.dumps(current)
        if state.max_value is None or state.max_value == baseline:
            note = f"{source.described}: {state.rows} rows, none with {source.incremental_column} past {baseline}"
            if seen is not None and seen["rows"] != state.rows:
                note += (
                    f" (the row count changed from {seen['rows']}: rows written behind it are not extracted)"
                )
            return dg.SensorResult(skip_reason=dg.SkipReason(note), cursor=cursor)
        first, last = new_rows_time_range(spec, None if baseline is None else str(baseline))
    except SourceError as exc:
        context.log.warning(f"{spec.name}: cannot read the source: {exc}")
        return dg.SensorResult(skip_reason=dg.SkipReason(f"cannot read the source: {exc}"))
    keys = keys_between(partitions, first, last) if first is not None and last is not None else []
    if not keys:
        message = f"the new rows of {source.described} hold no times inside the partitions"
        return dg.SensorResult(skip_reason=dg.SkipReason(message), cursor=cursor)
    digest = hashlib.sha256(cursor.encode()).hexdigest()[:16]
    request = request_for(keys, f"table:{digest}")
    context.log.info(
        f"rows of {source.described} with {source.incremental_column} past {baseline} -> "
        f"{request.job_name} {keys[0]} .. {keys[-1]}"
    )
    return dg.SensorResult(run_requests=[request], cursor=cursor)
