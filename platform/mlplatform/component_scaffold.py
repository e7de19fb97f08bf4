"""What `dg scaffold defs mlplatform.DatasetComponent <folder>` writes: a defs.yaml and a sample CSV.

The sample is a small, deterministic set of loan applications (one CSV, 60 days) whose label follows
a known logistic function of its columns, so the scaffolded project loads, passes `dg check defs` and
trains a real model before the user points `source.path` at their own data.
"""

from __future__ import annotations

import csv
import math
import random
import re
from datetime import datetime, timedelta
from pathlib import Path

import dagster as dg

SAMPLE_START = datetime(2025, 1, 1)
SAMPLE_DAYS = 60
SAMPLE_ROWS_PER_DAY = 30
SAMPLE_SEED = 13
SAMPLE_COLUMNS = (
    "application_id",
    "applied_at",
    "income",
    "loan_amount",
    "term_months",
    "credit_score",
    "purpose",
    "defaulted",
)
PURPOSES = ("car", "home", "education", "business", "other")
TERMS = (12, 24, 36, 60)

DEFS_YAML = """\
# One dataset of the ML platform. `attributes` is a dataset spec: the keys of a platform spec file
# (mlplatform/specs/*.yaml), checked the same way. Relative paths start from this folder.
# The sample {csv_name} beside this file makes the chain load and train as it is: point source.path
# at your own data (a file or a glob such as landing/*.parquet) and describe its columns.
# Where the warehouse and MLflow store live: $MLPLATFORM_HOME (default .mlplatform in the project root).
type: {type_name}

attributes:
  name: {name}
  description: Sample loan applications written by dg scaffold; is a loan going to default?
  source:
    path: {csv_name}
  time_column: applied_at
  partition_grain: day
  columns:
    application_id: {{type: int, nullable: false, unique: true}}
    applied_at: {{type: timestamp, nullable: false}}
    income: {{type: float, nullable: false, min: 0}}
    loan_amount: {{type: float, nullable: false, min: 0}}
    term_months: {{type: int, nullable: false, allowed: [12, 24, 36, 60]}}
    credit_score: {{type: int, nullable: false, min: 300, max: 850}}
    purpose: {{type: category, nullable: false}}
    defaulted: {{type: int, nullable: false, allowed: [0, 1]}}
  target: {{column: defaulted, task: binary}}
  drop: [application_id]  # an id carries no signal
  features:
    calendar: [day_of_week, month]
  model:
    num_boost_round: 300
"""


def dataset_name_for(folder: Path) -> str:
    """A valid dataset name (it names a DuckDB schema and asset keys) from a folder name."""
    name = re.sub(r"[^a-z0-9_]", "_", folder.name.lower())
    return name if re.match(r"[a-z]", name) else f"dataset_{name}"


def _default_probability(amount: float, income: float, score: int, term: int, purpose: str) -> float:
    logit = -2.2 + 5.0 * (amount / income - 0.4) - (score - 680) / 35 + 0.02 * (term - 36)
    logit += 0.6 if purpose == "business" else 0.0
    return 1 / (1 + math.exp(-logit))


def sample_rows(seed: int = SAMPLE_SEED) -> list[tuple[object, ...]]:
    """SAMPLE_DAYS days of SAMPLE_ROWS_PER_DAY applications each, in time order (SAMPLE_COLUMNS)."""
    rng = random.Random(seed)
    rows: list[tuple[object, ...]] = []
    for day in range(SAMPLE_DAYS):
        seconds = sorted(rng.randrange(86_400) for _ in range(SAMPLE_ROWS_PER_DAY))
        for second in seconds:
            applied_at = SAMPLE_START + timedelta(days=day, seconds=second)
            income = round(rng.lognormvariate(10.8, 0.4), 2)
            amount = round(income * rng.uniform(0.05, 0.8), 2)
            term, purpose = rng.choice(TERMS), rng.choice(PURPOSES)
            score = int(min(850, max(300, rng.gauss(680, 60))))
            defaulted = int(rng.random() < _default_probability(amount, income, score, term, purpose))
            row_id, when = len(rows) + 1, applied_at.isoformat(sep=" ")
            rows.append((row_id, when, income, amount, term, score, purpose, defaulted))
    return rows


def write_sample_csv(path: Path) -> int:
    """Write the sample applications to `path`; returns the number of rows written."""
    rows = sample_rows()
    with path.open("w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(SAMPLE_COLUMNS)
        writer.writerows(rows)
    return len(rows)


class DatasetScaffolder(dg.Scaffolder):
    """Writes `<folder>/defs.yaml` (a working spec named after the folder) and `<folder>/<name>.csv`."""

    def scaffold(self, request: dg.ScaffoldRequest) -> None:
        if request.scaffold_format != "yaml" or request.append:
            raise ValueError(
                "mlplatform.DatasetComponent is scaffolded as its own defs.yaml (one dataset per folder): "
                "run `dg scaffold defs mlplatform.DatasetComponent <folder>` without --format python"
            )
        folder = request.target_path
        folder.mkdir(parents=True, exist_ok=True)
        name = dataset_name_for(folder)
        csv_path = folder / f"{name}.csv"
        if not csv_path.exists():
            write_sample_csv(csv_path)
        text = DEFS_YAML.format(type_name=request.type_name, name=name, csv_name=csv_path.name)
        (folder / "defs.yaml").write_text(text)
