"""What each column of a dataset's tables means, from its spec: the column schema a user reads in the UI."""

from __future__ import annotations

from dataclasses import dataclass, field

from mlplatform.contracts import Stage
from mlplatform.core.scoring import INPUTS_HASH_COLUMN, MODEL_VERSION_COLUMN, PREDICTION_COLUMN
from mlplatform.core.validation import FAILED_CHECKS, FAILED_COLUMNS, REASON
from mlplatform.core.warehouse import PARTITION_TIME
from mlplatform.specs.model import DatasetSpec

LINEAGE_DESCRIPTIONS = {
    "_source_file": "lineage: the file (or landed extract) the row was read from",
    "_source_row": "lineage: the row's 1-based data row in its file",
    "_loaded_at": "lineage: when the row was loaded into raw",
    PARTITION_TIME: "lineage: the time that placed the row in its partition",
    "_parse_error": "lineage: why the line could not be read or placed as it is (cleaning quarantines it)",
    "_kafka_topic": "lineage: the Kafka topic the record was consumed from",
    "_kafka_partition": "lineage: the record's topic partition",
    "_kafka_offset": "lineage: the record's offset in its partition",
    "_kafka_timestamp": "lineage: the record's Kafka timestamp (UTC)",
    REASON: "why the row is quarantined (every failure, in the order found)",
    FAILED_CHECKS: "the checks the row failed",
    FAILED_COLUMNS: "the columns that failed them",
    PREDICTION_COLUMN: "the champion's prediction of the target",
    MODEL_VERSION_COLUMN: "the model version that scored the row",
    INPUTS_HASH_COLUMN: "a 64-bit hash of the model inputs the row was scored from",
}


@dataclass(frozen=True)
class ColumnDoc:
    """A column as the spec describes it; the constraints are those cleaning enforces."""

    description: str
    spec_type: str | None = None  # None: not a spec column (lineage, features, outputs)
    nullable: bool = True
    unique: bool = False
    rules: list[str] = field(default_factory=list)  # min, max, allowed values


def _spec_column_doc(spec: DatasetSpec, name: str) -> ColumnDoc:
    column = spec.columns[name]
    parts = [column.description] if column.description else []
    if name in spec.derived:
        parts.append(f"derived: `{spec.derived[name]}`")
    if name == spec.target.column and not column.description:
        parts.append(f"the target ({spec.target.task})")
    if name == spec.time_column and not column.description:
        parts.append("the time column")
    rules = [f"min {column.min:g}"] if column.min is not None else []
    rules += [f"max {column.max:g}"] if column.max is not None else []
    rules += [f"one of {', '.join(map(str, column.allowed))}"] if column.allowed else []
    return ColumnDoc("; ".join(parts), column.type, column.nullable, column.unique, rules)


def column_docs(spec: DatasetSpec, stage: Stage) -> dict[str, ColumnDoc]:
    """Descriptions of the columns a stage's table may hold (columns it lacks are simply not asked)."""
    docs = {name: ColumnDoc(text) for name, text in LINEAGE_DESCRIPTIONS.items()}
    for name, expression in spec.derived.items():
        time = "; the time column" if name == spec.time_column else ""
        docs[name] = ColumnDoc(f"derived: `{expression}`{time}")
    docs.update({name: _spec_column_doc(spec, name) for name in spec.columns})
    if stage in (Stage.RAW, Stage.QUARANTINE):  # text as read: the spec's type and rules apply in clean
        docs = {
            name: ColumnDoc(
                "; ".join(p for p in (doc.description, f"as read; spec type {doc.spec_type}") if p)
            )
            if doc.spec_type
            else doc
            for name, doc in docs.items()
        }
    return docs
