"""What `mlplatform run` prints about one run: what it materialized, and a failed quality gate as one block.

Dagster's console logs a failed blocking check as a traceback, then one "Not executing" line per
downstream step; the terminal gets one block instead: the check; for the quarantine gate the share
against the threshold, the top reasons of the run's partitions with their counts and the command that
shows the quarantined rows; for any other gate its own description and figures. Every event stays in
the run's log in the Dagster instance.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import dagster as dg
import duckdb

from mlplatform.contracts import VALIDITY_RATE_CHECK, Stage
from mlplatform.core.validation import FAILED_CHECKS, FAILED_COLUMNS, REASON
from mlplatform.core.warehouse import (
    PARTITION_TIME,
    table_exists,
    table_name,
    window_predicate,
)

TOP_REASONS = 3
_SKIPPED = re.compile(r"Dependencies for step (\S+) .*Not executing\.")
_CHECK_FAILED = "DagsterAssetCheckFailedError"


@dataclass
class ConsoleNoise:
    """The steps Dagster did not execute in the current run (collected from its "Not executing" lines)."""

    skipped: list[str] = field(default_factory=list)

    def filter(self, record: logging.LogRecord) -> bool:
        """False for the lines the gate block replaces: skipped steps and the failed check's traceback."""
        message = record.getMessage()
        skipped = _SKIPPED.search(message)
        if skipped:
            self.skipped.append(skipped.group(1))
            return False
        return _CHECK_FAILED not in message


def console_logger(noise: ConsoleNoise) -> dg.LoggerDefinition:
    """Dagster's console logger (same config, same format on stderr) without the lines `noise` drops."""

    @dg.logger(
        config_schema={
            "log_level": dg.Field(str, default_value="INFO"),
            "name": dg.Field(str, default_value="dagster"),
        },
        description="The console logger of `mlplatform run`: a failed gate is printed as one block.",
    )
    def quiet_console(init_context: dg.InitLoggerContext) -> logging.Logger:
        config = init_context.logger_config
        logger = logging.Logger(config["name"], level=config["log_level"].upper())
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(
            logging.Formatter("%(asctime)s - %(name)s - %(levelname)s - %(message)s", "%Y-%m-%d %H:%M:%S %z")
        )
        handler.addFilter(noise.filter)
        logger.addHandler(handler)
        return logger

    return quiet_console


def materialized_line(result: dg.ExecuteInProcessResult, partition_keys: list[str]) -> str:
    """What the run materialized, true for any selection: partitions of the partitioned assets (N of
    the dataset's M), and the unpartitioned assets by name (a model-only run has no partition)."""
    partitions: set[str] = set()
    partitioned: dict[str, None] = {}
    whole: dict[str, None] = {}
    for event in result.get_asset_materialization_events():
        name = event.asset_key.path[-1] if event.asset_key else "?"
        if event.partition:
            partitions.add(event.partition)
            partitioned[name] = None
        else:
            whole[name] = None
    parts = []
    if partitioned:
        parts.append(f"{len(partitions)}/{len(partition_keys)} partitions of {', '.join(partitioned)}")
    if whole:
        parts.append(", ".join(whole))
    return f"materialized {' and '.join(parts)}" if parts else "materialized nothing"


@dataclass(frozen=True)
class FailedCheck:
    asset: str  # "dataset/stage"
    name: str
    description: str | None
    metadata: dict[str, object]


def check_descriptions(defs: dg.Definitions) -> dict[dg.AssetCheckKey, str]:
    """The description each check was defined with (a failed evaluation usually has none of its own)."""
    definitions = [*(defs.assets or []), *(defs.asset_checks or [])]
    return {
        spec.key: spec.description
        for definition in definitions
        if isinstance(definition, dg.AssetsDefinition)
        for spec in definition.check_specs
        if spec.description
    }


def failed_blocking_checks(
    result: dg.ExecuteInProcessResult, descriptions: Mapping[dg.AssetCheckKey, str] | None = None
) -> list[FailedCheck]:
    """The run's failed checks of ERROR severity: the gates that stopped the assets downstream."""
    return [
        FailedCheck(
            evaluation.asset_key.to_user_string(),
            evaluation.check_name,
            evaluation.description or (descriptions or {}).get(evaluation.asset_check_key),
            {key: value.value for key, value in evaluation.metadata.items()},
        )
        for evaluation in result.get_asset_check_evaluations()
        if not evaluation.passed and evaluation.severity == dg.AssetCheckSeverity.ERROR
    ]


def top_quarantine_reasons(
    warehouse: str, dataset: str, window: tuple[datetime, datetime], limit: int = TOP_REASONS
) -> list[tuple[int, str, str]]:
    """(rows, what failed, an example reason) of the most frequent failures among the rows quarantined
    in the run's `window` (naive UTC [start, end) of its partitions, on the quarantine's windowing column,
    its partition time): none before the table exists."""
    if "://" not in warehouse and not Path(warehouse).exists():
        return []
    what = f"{FAILED_COLUMNS} || ': ' || {FAILED_CHECKS}"
    with duckdb.connect(warehouse, read_only=True) as conn:
        if not table_exists(conn, dataset, Stage.QUARANTINE):  # a gate upstream of clean failed first
            return []
        rows = conn.execute(
            f"SELECT count(*), {what}, min({REASON}) FROM {table_name(dataset, Stage.QUARANTINE)} "
            f"WHERE {window_predicate(PARTITION_TIME, *window)} GROUP BY 2 ORDER BY 1 DESC, 2 LIMIT {limit}"
        ).fetchall()
    return [(int(count), str(failed), str(example)) for count, failed, example in rows]


def _share_line(check: FailedCheck) -> str | None:
    share, limit = check.metadata.get("quarantine_share"), check.metadata.get("max_quarantine_share")
    if not isinstance(share, float | int) or not isinstance(limit, float | int):
        return None
    # The check judges the whole table (every partition so far), not only this run's partitions.
    return f"  quarantined {share:.2%} of all rows so far, above quality.max_quarantine_share {limit:.2%}"


def _explanation(check: FailedCheck) -> list[str]:
    """What a gate other than the quarantine's says about itself: its description and its figures."""
    figures = ", ".join(
        f"{key} {value}" for key, value in check.metadata.items() if isinstance(value, int | float)
    )
    said = " ".join(part for part in (check.description, f"({figures})" if figures else "") if part)
    return [f"  {said}"] if said else []


def _reason_lines(top: list[tuple[int, str, str]], sql_command: str | None) -> list[str]:
    if not top:
        return []
    lines = ["  top reasons in this run's partitions (rows):"]
    width = max(len(f"{count:,}") for count, _, _ in top)
    for count, failed, example in top:
        shown = example if len(example) <= 160 else example[:157] + "..."
        lines.append(f"    {count:>{width},}  {failed}  e.g. {shown}")
    return lines + ([f"  the quarantined rows: {sql_command}"] if sql_command else [])


def gate_block(
    dataset: str,
    checks: list[FailedCheck],
    skipped: list[str],
    reasons: Callable[[], list[tuple[int, str, str]]],
    sql_command: str | None,
) -> list[str]:
    """The lines a failed gate prints: each failed check; for the quarantine gate the share against the
    threshold, the top reasons with counts and the command that lists the quarantined rows, for any
    other its own description; then what was not run."""
    lines = []
    for check in checks:
        lines.append(f"[{dataset}] quality gate failed: {check.name} on {check.asset}")
        if check.name != VALIDITY_RATE_CHECK:
            lines += _explanation(check)
            continue
        share = _share_line(check)  # says what the gate's description says, with the figures
        lines += [share] if share else ([f"  {check.description}"] if check.description else [])
        lines += _reason_lines(reasons(), sql_command)
    stages = {str(stage) for stage in Stage}
    assets = [name for name in (step.removeprefix(f"{dataset}__") for step in skipped) if name in stages]
    if assets:  # the step keys of assets are `<dataset>__<stage>`; their checks' steps are left out
        lines.append(f"  not materialized (downstream of the gate): {', '.join(assets)}")
    return lines
