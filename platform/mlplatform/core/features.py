"""Feature SQL (DuckDB), point-in-time correct.

A row's features use only data at or before its own time; features of the target use only data at
or before (row time - lag or gap), because the label of the row itself is unknown when it is scored.
Lags are exact look-ups (the same entity at exactly `time - lag`); rolling windows aggregate the
half-open range (time - gap - window, time - gap].
"""

from __future__ import annotations

from datetime import datetime, timedelta

from mlplatform.core.sql import quote_ident, quote_literal
from mlplatform.specs.model import DatasetSpec, parse_duration

CALENDAR_SQL = {
    "hour": "hour({t})",
    "day_of_week": "isodow({t})",
    "day_of_month": "day({t})",
    "day_of_year": "dayofyear({t})",
    "week_of_year": "weekofyear({t})",
    "month": "month({t})",
    "is_weekend": "CAST(isodow({t}) >= 6 AS INTEGER)",
}


def _interval(delta: timedelta) -> str:
    return f"INTERVAL {int(delta.total_seconds() * 1_000_000)} MICROSECOND"


def lag_name(column: str, lag: str) -> str:
    return f"{column}_lag_{lag}"


def rolling_name(column: str, agg: str, window: str, gap: str) -> str:
    suffix = f"_gap_{gap}" if parse_duration(gap) else ""
    return f"{column}_{agg}_{window}{suffix}"


def calendar_parts(spec: DatasetSpec, time_type: str) -> list[str]:
    """Calendar parts that make sense for the time column's type (no hour of a DATE)."""
    return [p for p in spec.features.calendar if not (p == "hour" and time_type.upper() == "DATE")]


def feature_names(spec: DatasetSpec, time_type: str = "TIMESTAMP") -> list[str]:
    """Every model input the features table carries, in table order."""
    names = [f"cal_{p}" for p in calendar_parts(spec, time_type)]
    names += spec.feature_columns
    names += [lag_name(lag.column, lag.lag) for lag in spec.features.lags]
    names += [rolling_name(r.column, r.agg, r.window, r.gap) for r in spec.features.rolling]
    return names


def features_sql(
    spec: DatasetSpec, clean_table: str, start: datetime, end: datetime, time_type: str = "TIMESTAMP"
) -> str:
    """SELECT of the features of rows in [start, end), reading history back to start - lookback."""
    t = quote_ident(spec.time_column)
    entity = quote_ident(spec.entity_key) if spec.entity_key else None
    history_start = start - spec.lookback
    base = (
        f"SELECT * FROM {clean_table} WHERE {t} >= {quote_literal(history_start.isoformat(sep=' '))}::TIMESTAMP "
        f"AND {t} < {quote_literal(end.isoformat(sep=' '))}::TIMESTAMP"
    )
    select = [f"b.{t}"]
    if entity:
        select.append(f"b.{entity}")
    select += [f"{CALENDAR_SQL[p].format(t='b.' + t)} AS cal_{p}" for p in calendar_parts(spec, time_type)]
    select += [f"b.{quote_ident(c)}" for c in spec.feature_columns]

    joins = []
    for i, lag in enumerate(spec.features.lags):
        alias = f"lag{i}"
        on = f"{alias}.{t} = b.{t} - {_interval(parse_duration(lag.lag))}"
        if entity:
            on += f" AND {alias}.{entity} = b.{entity}"
        # One value per (entity, time): a duplicated time must not multiply rows.
        keys = f"{t}, {entity}" if entity else t
        joins.append(
            f"LEFT JOIN (SELECT {keys}, any_value({quote_ident(lag.column)}) AS v FROM base GROUP BY ALL) {alias} ON {on}"
        )
        select.append(f"{alias}.v AS {quote_ident(lag_name(lag.column, lag.lag))}")

    partition = f"PARTITION BY b.{entity} " if entity else ""
    for r in spec.features.rolling:
        gap, window = parse_duration(r.gap), parse_duration(r.window)
        # RANGE frames are inclusive; one microsecond less gives the half-open (t-gap-window, t-gap].
        frame = (
            f"RANGE BETWEEN {_interval(gap + window - timedelta(microseconds=1))} PRECEDING "
            f"AND {_interval(gap)} PRECEDING"
        )
        agg = {"mean": "avg", "std": "stddev_samp"}.get(r.agg, r.agg)
        select.append(
            f"{agg}(b.{quote_ident(r.column)}) OVER ({partition}ORDER BY b.{t} {frame}) "
            f"AS {quote_ident(rolling_name(r.column, r.agg, r.window, r.gap))}"
        )
    select.append(f"b.{quote_ident(spec.target.column)}")

    return (
        f"WITH base AS ({base}) "
        f"SELECT * FROM (SELECT {', '.join(select)} FROM base b {' '.join(joins)}) "
        f"WHERE {t} >= {quote_literal(start.isoformat(sep=' '))}::TIMESTAMP"
    )
