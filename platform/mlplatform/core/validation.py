"""Validating raw rows against the spec: Pandera schema building and the clean/quarantine split.

Every raw row ends in exactly one of `clean` (typed) or `quarantine` (original values plus the
reasons), so that raw = clean + quarantine always holds.
"""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from collections.abc import Collection
from dataclasses import dataclass

import pandas as pd
import pandera.pandas as pa

from mlplatform.core.sql import (
    DST_GAP,
    NOT_FINITE,
    parse_error_expression,
    quote_ident,
    quote_literal,
    typed_column,
)
from mlplatform.specs.model import ColumnSpec, DatasetSpec

PANDAS_DTYPES = {
    "int": "Int64",
    "float": "float64",
    "bool": "boolean",
    "date": "datetime64[ns]",
    "timestamp": "datetime64[ns]",
}
ROW_ID = "_row_id"
REASON = "_quarantine_reason"
FAILED_CHECKS = "_failed_checks"
FAILED_COLUMNS = "_failed_columns"


def column_checks(column: ColumnSpec) -> list[pa.Check]:
    checks: list[pa.Check] = []
    if column.min is not None:
        checks.append(pa.Check.ge(column.min))
    if column.max is not None:
        checks.append(pa.Check.le(column.max))
    if column.allowed is not None:
        checks.append(pa.Check.isin(column.allowed))
    return checks


def build_schema(spec: DatasetSpec) -> pa.DataFrameSchema:
    """The Pandera schema of a clean partition, straight from the spec's `columns`."""
    columns = {
        name: pa.Column(
            PANDAS_DTYPES.get(col.type),  # text columns: no dtype check, their values are checked
            checks=column_checks(col),
            nullable=col.nullable and name != spec.time_column,
            unique=col.unique,
            report_duplicates="exclude_first",  # the first row with a key stays clean
            coerce=col.type in PANDAS_DTYPES,
            description=col.description,
            title=name,
        )
        for name, col in spec.columns.items()
    }
    if spec.time_column not in columns:
        columns[spec.time_column] = pa.Column("datetime64[ns]", nullable=False, coerce=True)
    return pa.DataFrameSchema(columns, name=spec.name, strict=False)


@dataclass(frozen=True)
class ValidationOutcome:
    clean: pd.DataFrame
    quarantine: pd.DataFrame  # ROW_ID plus reasons; joined back to the raw rows in SQL
    reason_counts: dict[str, int]  # "column: check" -> rows failing it, for the UI


def derived_null_reason(spec: DatasetSpec, name: str, raw_types: dict[str, str]) -> str:
    """SQL giving why the required derived column `name` is null: its expression did not parse the
    source values (the raw table holds TRY(expression)), naming the column, expression and values."""
    expression = spec.derived[name]
    sources = [
        column
        for column in raw_types
        if column not in spec.derived and re.search(rf"(?<![\w.]){re.escape(column)}(?!\w)", expression)
    ]
    quote = quote_literal("'")
    values = " || ', ' || ".join(
        f"{quote_literal(column + ' ')} || coalesce({quote} || CAST({quote_ident(column)} AS VARCHAR) || {quote}, 'null')"
        for column in sources
    )
    head = quote_literal(f"{name}: did not parse: derived {name} = {expression} gave no value")
    reason = f"{head} || ' for ' || {values}" if sources else head
    # A time that placement already explained (a file where no time parses) gets no second reason, and
    # neither does a row with no source value at all (an unreadable file's record): nothing failed to parse.
    explained = f"coalesce(starts_with(_parse_error, {quote_literal(name + ': ')}), false)"
    present = " OR ".join(f"{quote_ident(column)} IS NOT NULL" for column in sources) or "true"
    return f"CASE WHEN {quote_ident(name)} IS NULL AND ({present}) AND NOT {explained} THEN {reason} END"


def typed_select_sql(spec: DatasetSpec, raw_relation: str, raw_types: dict[str, str]) -> str:
    """Raw rows with spec columns cast to their types and a parse-error list per row.

    A derived time column that is not among `columns` is typed too (as a timestamp), by the same
    rule that placed the row in its partition.
    """
    casts, errors = [], []
    for name in spec.columns:
        source_type = raw_types.get(name, "VARCHAR")
        casts.append(f"{typed_column(spec, name, source_type)} AS {quote_ident(name)}")
        errors.append(parse_error_expression(spec, name, source_type))  # derived values too: 3.5 as int
    for name in spec.derived:
        if name == spec.time_column and name not in spec.columns:
            casts.append(f"{typed_column(spec, name, raw_types.get(name, 'VARCHAR'))} AS {quote_ident(name)}")
        elif name not in spec.columns:
            casts.append(quote_ident(name))
        required = name == spec.time_column or (name in spec.columns and not spec.columns[name].nullable)
        if required:
            errors.append(derived_null_reason(spec, name, raw_types))
    parse_errors = (
        f"list_filter([_parse_error, {', '.join(errors)}], lambda x: x IS NOT NULL)" if errors else "[]"
    )
    lineage = "_source_file, _source_row, _loaded_at, _partition_ts"
    return (
        f"SELECT {ROW_ID}, {', '.join(casts)}, {lineage}, {parse_errors} AS _parse_errors FROM {raw_relation}"
    )


# pandas keeps times as datetime64[ns]: Pandera's coercion fails outside these bounds.
_PANDAS_TIME_RANGE = ("1677-09-22", "2262-04-11")


def _allowed_is_clearly_violated(ident: str, column: ColumnSpec) -> str:
    """SQL that is true where `allowed` may fail; conservative (any non-null) where types could mix."""
    values = column.allowed or []
    numbers = all(isinstance(v, int | float) and not isinstance(v, bool) for v in values)
    if column.type in ("int", "float") and numbers:
        return f"{ident} NOT IN ({', '.join(repr(float(v)) for v in values)})"
    if column.type in ("string", "category") and all(isinstance(v, str) for v in values):
        return f"{ident} NOT IN ({', '.join(quote_literal(v) for v in values)})"
    return f"{ident} IS NOT NULL"


def suspect_rows_predicate(spec: DatasetSpec, typed_relation: str) -> str:
    """A SQL condition over `typed_select_sql` rows that holds for every row Pandera could reject.

    It may hold for more rows (it is a screen, not the verdict): rows it leaves out pass every check
    of `build_schema` by construction (typed, non-null where required, in range, allowed, unique in
    the window), so only the rest need the pandas round trip and Pandera. On the usual mostly-clean
    partition that is a few rows instead of millions. Floats: typing turns NaN into NULL and
    infinities (unless allowed) into a parse reason; the NaN rules stay as a guard.
    """
    rules = ["len(_parse_errors) > 0", f"{quote_ident(spec.time_column)} IS NULL"]
    if spec.time_column not in spec.columns:
        low, high = _PANDAS_TIME_RANGE
        time = quote_ident(spec.time_column)
        rules.append(f"{time} < {quote_literal(low)}::TIMESTAMP OR {time} > {quote_literal(high)}::TIMESTAMP")
    for name, column in spec.columns.items():
        ident = quote_ident(name)
        nan = f" OR isnan({ident})" if column.type == "float" else ""
        if not column.nullable:
            rules.append(f"{ident} IS NULL{nan}")
        numeric = column.type in ("int", "float")
        if column.min is not None:
            rules.append(f"{ident} < {float(column.min)!r}{nan}" if numeric else f"{ident} IS NOT NULL")
        if column.max is not None:
            rules.append(f"{ident} > {float(column.max)!r}{nan}" if numeric else f"{ident} IS NOT NULL")
        if column.allowed is not None:
            rules.append(_allowed_is_clearly_violated(ident, column))
        if column.unique:
            rules.append(
                f"{ident} IN (SELECT {ident} FROM {typed_relation} GROUP BY ALL HAVING count(*) > 1)"
                + (
                    f" OR ({ident} IS NULL AND (SELECT count(*) FROM {typed_relation} WHERE {ident} IS NULL) > 1)"
                )
            )
        if column.type in ("date", "timestamp"):
            low, high = _PANDAS_TIME_RANGE
            rules.append(
                f"{ident} < {quote_literal(low)}::TIMESTAMP OR {ident} > {quote_literal(high)}::TIMESTAMP"
            )
    return " OR ".join(f"coalesce({rule}, false)" for rule in rules)


def _plain(value: object) -> object:
    """numpy scalars print as np.float64(7.0); users want 7."""
    value = value.item() if hasattr(value, "item") else value
    return int(value) if isinstance(value, float) and value.is_integer() else value


def _describe_failure(check: str, value: object) -> str:
    if check == "not_nullable":
        return "null in a non-nullable column"
    if check == "field_uniqueness":
        return f"duplicate key {_plain(value)!r}"
    return f"{check} failed for {_plain(value)!r}"


def _unrepresentable_times(frame: pd.DataFrame) -> list[tuple[int, str, object]]:
    """(row id, column, value) of times beyond datetime64[ns], set to NaT in `frame` (mlplatform.core.placement
    keeps a year-9999 row, quarantined, in the first partition)."""
    found = []
    for name in [c for c in frame.columns if pd.api.types.is_datetime64_any_dtype(frame[c])]:
        outside = frame[name].notna() & ((frame[name] < pd.Timestamp.min) | (frame[name] > pd.Timestamp.max))
        if outside.any():
            found += [
                (int(i), str(name), v)
                for i, v in zip(frame.loc[outside, ROW_ID], frame.loc[outside, name], strict=True)
            ]
            frame.loc[outside, name] = pd.NaT
    return found


def _parse_check(error: str) -> str:
    """The check a parse reason counts under in the reason counts."""
    if error.endswith(NOT_FINITE):
        return "not_finite"
    return "dst_gap" if error.endswith(DST_GAP) else "parse"


class _Failures:
    """Per row id: why the row is quarantined (reasons, checks and columns, in the order found)."""

    def __init__(self) -> None:
        self.reasons: dict[int, list[str]] = defaultdict(list)
        self.checks: dict[int, list[str]] = defaultdict(list)
        self.check_columns: dict[int, list[str]] = defaultdict(list)  # parallel to `checks`
        self.failed_columns: dict[int, set[str]] = defaultdict(set)
        self.parse_failed: dict[int, set[str]] = defaultdict(set)  # columns (or "_line") that did not parse

    def add(self, row_id: int, reason: str, check: str, column: str, parse: bool = False) -> None:
        self.reasons[row_id].append(reason)
        self.checks[row_id].append(check)
        self.check_columns[row_id].append(column)
        self.failed_columns[row_id].add(column)
        if parse:
            self.parse_failed[row_id].add(column)

    def explained_by_parsing(self, row_id: int, column: str) -> bool:
        """The column did not parse, or the whole line (or Kafka `_record`) is malformed: a schema failure
        adds nothing."""
        failed = self.parse_failed[row_id]
        return column in failed or "_line" in failed or "_record" in failed

    def outcome(self, frame: pd.DataFrame, context_rows: Collection[int] = ()) -> ValidationOutcome:
        """The split of `frame`'s rows but `context_rows`, which get no outcome of their own."""
        bad_ids = sorted(set(self.reasons) - set(context_rows))
        counts = Counter(
            f"{column}: {check}"
            for i in bad_ids
            for column, check in zip(self.check_columns[i], self.checks[i], strict=True)
        )
        quarantine = pd.DataFrame(
            {
                ROW_ID: pd.Series(bad_ids, dtype="int64"),
                REASON: ["; ".join(self.reasons[i]) for i in bad_ids],
                FAILED_CHECKS: ["; ".join(dict.fromkeys(self.checks[i])) for i in bad_ids],
                FAILED_COLUMNS: [", ".join(sorted(self.failed_columns[i])) for i in bad_ids],
            }
        )
        clean = frame[~frame[ROW_ID].isin([*bad_ids, *context_rows])]
        return ValidationOutcome(clean=clean, quarantine=quarantine, reason_counts=dict(counts.most_common()))


def _add_known_duplicates(failures: _Failures, known_duplicates: pd.DataFrame) -> None:
    for row_id, column, reason in known_duplicates[[ROW_ID, "column", "reason"]].itertuples(index=False):
        failures.add(int(row_id), str(reason), "field_uniqueness", str(column))


def _add_parse_errors(failures: _Failures, typed: pd.DataFrame) -> None:
    for row_id, errors in zip(typed[ROW_ID], typed["_parse_errors"], strict=True):
        for error in errors:
            unreadable = error.startswith("file unreadable")  # the row stands for a whole file
            column = error.split(":", 1)[0] if not error.startswith("line ") and not unreadable else "_line"
            whole_row = "file_unreadable" if unreadable else "line_shape"
            check = _parse_check(error) if column != "_line" else whole_row
            failures.add(row_id, error, check, column, parse=True)


def _add_unrepresentable_times(failures: _Failures, frame: pd.DataFrame) -> None:
    """Times pandas cannot hold are set to NaT in `frame` (else coercion fails the whole partition)."""
    for row_id, column, value in _unrepresentable_times(frame):
        if column not in failures.parse_failed[row_id]:
            reason = f"{column}: time {value} is outside what pandas can hold (1677..2262)"
            failures.add(row_id, reason, "parse", column, parse=True)


_CORE_CHECK_RANK = {"not_nullable": 0, "field_uniqueness": 1}  # as Pandera runs them, before dtype and checks


def _in_schema_order(cases: pd.DataFrame, columns: list[str]) -> pd.DataFrame:
    """The failure cases by column (schema order), then check. Pandera orders them with an unstable
    sort, so a row's reasons would come in an order that depends on how many other rows failed (and so
    on which rows are validated together, e.g. per partition on the Dask engine)."""
    position = {name: i for i, name in enumerate(columns)}
    column_rank = [position.get(str(column), len(position)) for column in cases["column"]]
    check_rank = [
        _CORE_CHECK_RANK.get(str(check), 2 if pd.isna(number) else 3 + int(number))
        for check, number in zip(cases["check"], cases["check_number"], strict=True)
    ]
    ranked = cases.assign(_column_rank=column_rank, _check_rank=check_rank)
    return ranked.sort_values(["_column_rank", "_check_rank"], kind="stable")


def _add_schema_failures(failures: _Failures, spec: DatasetSpec, frame: pd.DataFrame) -> None:
    """Pandera's row-level failures; a failure of the whole partition (not of rows) is an error."""
    schema = build_schema(spec)
    try:
        schema.validate(frame, lazy=True)
    except pa.errors.SchemaErrors as exc:
        cases = _in_schema_order(exc.failure_cases, list(schema.columns))
        schema_level = cases[cases["index"].isna()]
        if not schema_level.empty:
            first = schema_level.iloc[0]
            raise ValueError(
                f"dataset {spec.name}: column {first['column']!r} fails {first['check']} for the whole partition"
            ) from exc
        for case in cases.itertuples(index=False):
            row_id = int(frame.at[int(case.index), ROW_ID])
            column = str(case.column)
            if failures.explained_by_parsing(row_id, column):
                continue
            reason = f"{column}: {_describe_failure(str(case.check), case.failure_case)}"
            failures.add(row_id, reason, str(case.check), column)


def validate_partition(
    spec: DatasetSpec,
    typed: pd.DataFrame,
    known_duplicates: pd.DataFrame | None = None,
    context_rows: Collection[int] = (),
) -> ValidationOutcome:
    """Split typed raw rows (from `typed_select_sql`) into clean rows and quarantine reasons.

    `known_duplicates` (ROW_ID, column, reason) lists rows whose unique key is already clean in
    another partition, which Pandera cannot see from one partition. `context_rows` are ROW_IDs of
    `typed` validated elsewhere (earlier occurrences of keys, held by another partition): they only
    take part in the unique checks, so a later row with their key fails as a duplicate, as it would
    if all rows were validated together; they are in neither part of the outcome.
    """
    failures = _Failures()
    if known_duplicates is not None:
        _add_known_duplicates(failures, known_duplicates)
    _add_parse_errors(failures, typed)
    frame = typed.drop(columns=["_parse_errors"])
    _add_unrepresentable_times(failures, frame)
    _add_schema_failures(failures, spec, frame)
    return failures.outcome(frame, context_rows)


def cross_partition_duplicates_sql(
    spec: DatasetSpec, typed_relation: str, other_clean_rows: str
) -> str | None:
    """Rows of `typed_relation` whose unique key is already in `other_clean_rows` (a SELECT)."""
    parts = [
        f"SELECT t.{ROW_ID}, {quote_literal(name)} AS column, "
        f"{quote_literal(name + ': duplicate key ')} || CAST(t.{quote_ident(name)} AS VARCHAR) "
        f"|| ' (already clean in another partition)' AS reason "
        f"FROM {typed_relation} t WHERE t.{quote_ident(name)} IN (SELECT {quote_ident(name)} FROM ({other_clean_rows}))"
        for name, col in spec.columns.items()
        if col.unique
    ]
    return " UNION ALL ".join(parts) if parts else None
