"""Feature SQL (DuckDB), point-in-time correct.

A row's features use only data at or before its own time; features of the target use only data at
or before (row time - lag or gap), because the label of the row itself is unknown when it is scored.
Lags are exact look-ups (the same entity at exactly `time - lag`); rolling windows aggregate the
half-open range (time - gap - window, time - gap].

Rows that share an entity and a time (ties) must give the same features whatever order the
database meets them in, or two builds from the same files differ in the last bits and train
different models. So a lag takes the smallest of tied values, and rolling windows run over one row
per (entity, time) holding partial aggregates of its ties (summed in value order), joined back to
the rows: a window over rows would add ties in the order DuckDB happens to sort them.

With an entity key the features are built per entity shard (`hash(entity) % ENTITY_SHARDS`), on both
engines: the local engine's query is the UNION ALL of the shards' queries, the Dask engine runs each
shard as a task. A rolling sum over floating-point values depends in its last bits on which other
entities share the window operator's input (its segment tree spans them), so the same shards on both
engines give the same features bit for bit, however many workers run them.

Calendar parts a spec column already carries (`hour` for `cal_hour`) are not derived again, and the
entity key is a model input when `features.entity_key_feature` says so (`entity_feature_used`).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

import duckdb

from mlplatform.contracts import Stage
from mlplatform.core.row_identity import refresh_actuals, row_id_columns
from mlplatform.core.sql import column_types, quote_ident, quote_literal
from mlplatform.core.warehouse import replace_window, require_table, table_name, window_column
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


# Spec column names (lower case) that already carry a calendar part.
CALENDAR_ALIASES = {
    "hour": {"hour", "hr", "hour_of_day"},
    "day_of_week": {"day_of_week", "weekday", "dow", "isodow"},
    "day_of_month": {"day_of_month"},
    "day_of_year": {"day_of_year", "doy"},
    "week_of_year": {"week_of_year", "weekofyear"},
    "month": {"month", "mnth"},
    "is_weekend": {"is_weekend", "weekend"},
}
_NUMERIC = ("int", "float", "bool")
# `features.entity_key_feature: auto` uses the entity as an input up to this many distinct values: a
# few stocks, stores or sensors, each with many rows. Customer or device ids (hundreds and more) would
# mostly let the model memorise ids, and a new id scores as "missing" anyway.
ENTITY_FEATURE_MAX_LEVELS = 100
# Entity shards of the feature query (module doc). Fixed, not per cluster: a different count would move
# floating-point rolling sums in their last bits. 16 keeps a shard's window input small and gives a
# cluster of up to 16 worker threads one shard each.
ENTITY_SHARDS = 16


def _interval(delta: timedelta) -> str:
    return f"INTERVAL {int(delta.total_seconds() * 1_000_000)} MICROSECOND"


def lag_name(column: str, lag: str) -> str:
    return f"{column}_lag_{lag}"


def rolling_name(column: str, agg: str, window: str, gap: str) -> str:
    suffix = f"_gap_{gap}" if parse_duration(gap) else ""
    return f"{column}_{agg}_{window}{suffix}"


def calendar_covered_by(spec: DatasetSpec) -> dict[str, str]:
    """Calendar part -> the kept numeric spec column that already carries it (`hour` for `cal_hour`).

    By name, not content: the features table must have the same columns in every partition, so
    whether a part is derived cannot depend on one partition's rows."""
    numeric = {c for c in spec.feature_columns if c not in spec.columns or spec.columns[c].type in _NUMERIC}
    covered = {}
    for part, names in CALENDAR_ALIASES.items():
        found = next((c for c in spec.feature_columns if c.lower() in names and c in numeric), None)
        if found is not None:
            covered[part] = found
    return covered


def calendar_parts(spec: DatasetSpec, time_type: str) -> list[str]:
    """Calendar parts to derive: those that make sense for the time column's type (no hour of a
    DATE) and that no spec column already carries."""
    covered = calendar_covered_by(spec)
    return [
        p
        for p in spec.features.calendar
        if not (p == "hour" and time_type.upper() == "DATE") and p not in covered
    ]


def entity_feature_used(spec: DatasetSpec, distinct_entities: int | None) -> bool:
    """Whether `entity_key` is a model input: the spec's `features.entity_key_feature`, and for
    `auto` at most ENTITY_FEATURE_MAX_LEVELS distinct entities in the rows trained on (`None`: not
    known, then no)."""
    choice = spec.features.entity_key_feature
    if not spec.entity_key or choice is False:
        return False
    if choice is True:
        return True
    return distinct_entities is not None and 0 < distinct_entities <= ENTITY_FEATURE_MAX_LEVELS


def feature_names(spec: DatasetSpec, time_type: str = "TIMESTAMP", entity_feature: bool = False) -> list[str]:
    """Every model input the features table carries, in table order (`entity_feature`: the entity
    key is one, see `entity_feature_used`)."""
    names = [spec.entity_key] if entity_feature and spec.entity_key else []
    names += [f"cal_{p}" for p in calendar_parts(spec, time_type)]
    names += spec.feature_columns
    names += [lag_name(lag.column, lag.lag) for lag in spec.features.lags]
    names += [rolling_name(r.column, r.agg, r.window, r.gap) for r in spec.features.rolling]
    return names


def features_sql(
    spec: DatasetSpec,
    clean_table: str,
    start: datetime,
    end: datetime,
    time_type: str = "TIMESTAMP",
    shard: int | None = None,
) -> str:
    """SELECT of the features of rows in [start, end), reading history back to start - lookback.

    With an entity key: the UNION ALL of every entity shard's SELECT, or only shard `shard`'s."""
    if spec.entity_key and shard is None:
        return " UNION ALL ".join(
            f"({features_sql(spec, clean_table, start, end, time_type, k)})" for k in range(ENTITY_SHARDS)
        )
    t = quote_ident(spec.time_column)
    entity = quote_ident(spec.entity_key) if spec.entity_key else None
    history_start = start - spec.lookback
    base = (
        f"SELECT * FROM {clean_table} WHERE {t} >= {quote_literal(history_start.isoformat(sep=' '))}::TIMESTAMP "
        f"AND {t} < {quote_literal(end.isoformat(sep=' '))}::TIMESTAMP"
    )
    if entity and shard is not None:
        base += f" AND hash({entity}) % {ENTITY_SHARDS} = {shard}"
    select = [f"b.{t}"]
    if entity:
        select.append(f"b.{entity}")
    select += [f"{CALENDAR_SQL[p].format(t='b.' + t)} AS cal_{p}" for p in calendar_parts(spec, time_type)]
    select += [f"b.{quote_ident(c)}" for c in spec.feature_columns]
    select += [f"b.{quote_ident(c)}" for c in row_id_columns(spec) if c not in spec.feature_columns]

    keys = f"{t}, {entity}" if entity else t
    joins = []
    for i, lag in enumerate(spec.features.lags):
        alias = f"lag{i}"
        on = f"{alias}.{t} = b.{t} - {_interval(parse_duration(lag.lag))}"
        if entity:
            on += f" AND {alias}.{entity} = b.{entity}"
        # One value per (entity, time), the same every run: a duplicated time must not multiply rows.
        joins.append(
            f"LEFT JOIN (SELECT {keys}, min({quote_ident(lag.column)}) AS v FROM base GROUP BY ALL) {alias} ON {on}"
        )
        select.append(f"{alias}.v AS {quote_ident(lag_name(lag.column, lag.lag))}")

    ctes = [f"base AS ({base})"]
    if spec.features.rolling:
        ctes += _rolling_ctes(spec, t, entity, keys)
        on = f"r.{t} IS NOT DISTINCT FROM b.{t}"
        if entity:
            on += f" AND r.{entity} IS NOT DISTINCT FROM b.{entity}"
        joins.append(f"JOIN rolled r ON {on}")
        select += [
            f"r.{quote_ident(rolling_name(r.column, r.agg, r.window, r.gap))}" for r in spec.features.rolling
        ]
    select.append(f"b.{quote_ident(spec.target.column)}")

    return (
        f"WITH {', '.join(ctes)} "
        f"SELECT * FROM (SELECT {', '.join(select)} FROM base b {' '.join(joins)}) "
        f"WHERE {t} >= {quote_literal(start.isoformat(sep=' '))}::TIMESTAMP"
    )


def _rolling_ctes(spec: DatasetSpec, t: str, entity: str | None, keys: str) -> list[str]:
    """`partials`: one row per (entity, time) with its ties' count, sum, min, max (and shifted sums
    of squares for std); `rolled`: every rolling feature, a window over those rows."""
    partials: dict[str, str] = {}

    def partial(kind: str, column: str, expression: str) -> str:
        name = quote_ident(f"_{kind}_{column}")
        partials.setdefault(name, expression)
        return name

    partition = f"PARTITION BY {entity} " if entity else ""
    shifted: list[str] = []
    features = []
    for r in spec.features.rolling:
        value = quote_ident(r.column)
        gap, window = parse_duration(r.gap), parse_duration(r.window)
        # RANGE frames are inclusive; one microsecond less gives the half-open (t-gap-window, t-gap].
        over = (
            f"OVER ({partition}ORDER BY {t} RANGE BETWEEN {_interval(gap + window - timedelta(microseconds=1))} "
            f"PRECEDING AND {_interval(gap)} PRECEDING)"
        )
        n = f"sum({partial('n', r.column, f'count({value})')}) {over}"
        if r.agg == "count":
            expression = f"CAST(coalesce({n}, 0) AS BIGINT)"  # an empty frame (gap > 0) counts 0
        elif r.agg in ("min", "max"):
            expression = f"{r.agg}({partial(r.agg, r.column, f'{r.agg}({value})')}) {over}"
        elif r.agg == "std":
            # Sums of values shifted by the entity's median: the textbook formula without its
            # cancellation when values are large against their spread.
            if r.column not in shifted:
                shifted.append(r.column)
            x = f"({value} - {quote_ident(f'_shift_{r.column}')})"
            s1 = f"sum({partial('s1', r.column, f'sum({x} ORDER BY {x})')}) {over}"
            s2 = f"sum({partial('s2', r.column, f'sum({x} * {x} ORDER BY {x})')}) {over}"
            expression = (
                f"CASE WHEN {n} > 1 THEN sqrt(greatest(({s2} - {s1} * {s1} / {n}) / ({n} - 1), 0)) END"
            )
        else:
            total = f"sum({partial('s', r.column, f'sum({value} ORDER BY {value})')}) {over}"
            expression = total if r.agg == "sum" else f"{total} / nullif({n}, 0)"
        features.append(f"{expression} AS {quote_ident(rolling_name(r.column, r.agg, r.window, r.gap))}")

    source = "base"
    if shifted:
        medians = ", ".join(f"median({quote_ident(c)}) AS {quote_ident(f'_shift_{c}')}" for c in shifted)
        if entity:
            per_entity = f"SELECT {entity} AS _shift_entity, {medians} FROM base GROUP BY ALL"
            source = f"base LEFT JOIN ({per_entity}) ON _shift_entity IS NOT DISTINCT FROM {entity}"
        else:
            source = f"base, (SELECT {medians} FROM base)"
    columns = ", ".join(f"{expression} AS {name}" for name, expression in partials.items())
    return [
        f"partials AS (SELECT {keys}, {columns} FROM {source} GROUP BY ALL)",
        f"rolled AS (SELECT {keys}, {', '.join(features)} FROM partials)",
    ]


@dataclass(frozen=True)
class FeaturesWrite:
    rows: int  # rows written to the window
    feature_columns: list[str]  # the model inputs, in table order (without the entity key)
    actuals_refreshed: int = 0  # predictions of the window whose actual value changed (labels arrived)


def write_features_window(
    conn: duckdb.DuckDBPyConnection, spec: DatasetSpec, start: datetime, end: datetime
) -> FeaturesWrite:
    """Replace the features rows of [start, end) by those built from `clean` (which must hold the
    window and the `lookback` before it)."""
    require_table(conn, spec.name, Stage.CLEAN)
    clean = table_name(spec.name, Stage.CLEAN)
    time_type = column_types(conn, clean)[spec.time_column]
    sql = features_sql(spec, clean, start, end, time_type)
    window = window_column(Stage.FEATURES, spec.time_column)
    rows = replace_window(conn, spec.name, Stage.FEATURES, sql, window, start, end)
    refreshed = refresh_actuals(conn, spec, start, end)
    return FeaturesWrite(rows, feature_names(spec, time_type), refreshed)
