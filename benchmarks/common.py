"""What the benchmarks share: test data, the benchmark spec, child processes with peak RSS, reporting."""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import date
from importlib import metadata
from pathlib import Path
from typing import Any

import yaml

from mlplatform.datasets.synthetic import DriftInjection, generate_to_folder
from mlplatform.specs.loader import BUNDLED_SPECS_DIR

BENCH_DATASET = "transactions_bench"  # its own name: the bundled `transactions` spec stays loaded too
DEFAULT_DAYS = 60
START = date(2024, 1, 1)
# The generator makes ~1.01 payments per customer-day at rate 1.0 (attack bursts add the rest).
ROWS_PER_CUSTOMER_DAY = 1.01
VERSIONED_PACKAGES = (
    "dagster",
    "duckdb",
    "pandas",
    "pandera",
    "lightgbm",
    "mlflow",
    "numpy",
    "scipy",
    "pyarrow",
    "evidently",
)
REPO_ROOT = Path(__file__).resolve().parents[1]


def customers_for(rows: int, days: int) -> int:
    return max(1, round(rows / (days * ROWS_PER_CUSTOMER_DAY)))


def generate_landing(
    folder: Path, rows: int, days: int = DEFAULT_DAYS, seed: int = 7, drift: DriftInjection | None = None
) -> tuple[list[Path], float]:
    """About `rows` synthetic transactions as daily Parquet files in `folder`; returns (files, seconds)."""
    started = time.perf_counter()
    files = generate_to_folder(folder, days, customers_for(rows, days), seed, START, drift=drift)
    return files, time.perf_counter() - started


def parquet_rows(files: Iterable[Path]) -> int:
    import pyarrow.parquet as pq

    return sum(pq.ParquetFile(path).metadata.num_rows for path in files)


def write_bench_spec(spec_dir: Path, landing: Path, name: str = BENCH_DATASET) -> Path:
    """A copy of the bundled `transactions` spec named `name`, reading `landing/*.parquet`."""
    spec = yaml.safe_load((BUNDLED_SPECS_DIR / "transactions.yaml").read_text())
    spec["name"] = name
    spec["source"]["path"] = str(landing.resolve() / "*.parquet")
    spec_dir.mkdir(parents=True, exist_ok=True)
    path = spec_dir / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


@dataclass(frozen=True)
class ChildResult:
    payload: dict[str, Any]
    wall_seconds: float  # the whole child process: interpreter start, imports, work, exit
    peak_rss_bytes: int  # largest resident set of the child or any process it waited for


def run_child(
    module: str, args: Sequence[str], result_path: Path, log_path: Path, env: dict[str, str] | None = None
) -> ChildResult:
    """Run `python -m module args --result result_path` and read the JSON it writes.

    A separate process per measurement: a fresh interpreter (imports counted), no memory carried over
    between runs, and a peak RSS that belongs to this run alone (os.wait4 reports it for the child).
    """
    command = [sys.executable, "-m", module, *args, "--result", str(result_path)]
    # This checkout's code, whatever checkout the installed package points at.
    path = os.pathsep.join(p for p in (str(REPO_ROOT / "platform"), os.environ.get("PYTHONPATH")) if p)
    started = time.perf_counter()
    with log_path.open("w") as log:
        process = subprocess.Popen(
            command,
            cwd=REPO_ROOT,
            env={**os.environ, "PYTHONPATH": path, **(env or {})},
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        _, status, usage = os.wait4(process.pid, 0)
        process.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - started
    if process.returncode != 0:
        tail = "\n".join(log_path.read_text().splitlines()[-40:])
        raise RuntimeError(f"{module} failed with exit code {process.returncode}; log {log_path}:\n{tail}")
    return ChildResult(json.loads(result_path.read_text()), wall, usage.ru_maxrss * 1024)


class RssSampler:
    """Samples the resident set size of this process and all its descendants (summed: the Dask engine's
    workers are child processes) in a thread, to tell which stage holds the peak."""

    def __init__(self, interval: float = 0.25) -> None:
        import threading

        self.samples: list[tuple[float, int]] = []  # (time.time(), bytes)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(interval,), daemon=True)

    def _run(self, interval: float) -> None:
        while not self._stop.wait(interval):
            self.samples.append((time.time(), current_rss_bytes()))

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()

    def peak_between(self, start: float, end: float) -> int:
        return max((rss for moment, rss in self.samples if start <= moment <= end), default=0)


def current_rss_bytes() -> int:
    """RSS of this process plus every live descendant (a process that exits between listing and reading
    counts as 0)."""
    return sum(_rss_of(pid) for pid in ("self", *_descendants(os.getpid())))


def _rss_of(pid: str | int) -> int:
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def _descendants(root: int) -> list[int]:
    """Every process below `root`, from /proc's parent links (no psutil: the local engine lacks it)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as stat:
                parent = int(stat.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(parent, []).append(int(entry))
    found, queue = [], [root]
    while queue:
        for child in children.get(queue.pop(), []):
            found.append(child)
            queue.append(child)
    return found


def write_result(path: str | Path, payload: dict[str, Any]) -> None:
    Path(path).write_text(json.dumps(payload, indent=2, sort_keys=True, default=str))


def total_memory_bytes() -> int:
    with open("/proc/meminfo") as meminfo:
        for line in meminfo:
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024
    return 0


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine_info() -> dict[str, Any]:
    versions = {}
    for name in VERSIONED_PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return {
        "cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "memory_gib": round(total_memory_bytes() / 2**30, 1),
        "cpu": cpu_model(),
        "python": platform.python_version(),
        "os": f"{platform.system()} {platform.release()}",
        "openblas_coretype": os.environ.get("OPENBLAS_CORETYPE", "unset"),
        "versions": versions,
    }


def print_machine(info: dict[str, Any]) -> None:
    print(f"machine: {info['cores']} cores, {info['memory_gib']} GiB, {info['cpu']}, {info['os']}")
    print(
        "versions: "
        + ", ".join(f"{k} {v}" for k, v in info["versions"].items())
        + f", python {info['python']}"
    )


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values)) if values else float("nan")


def gib(n_bytes: float) -> str:
    return f"{n_bytes / 2**30:.2f} GiB"


def print_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    """A Markdown table, so the output pastes straight into BENCHMARKS.md."""
    print("| " + " | ".join(header) + " |")
    print("|" + "|".join(" --- " for _ in header) + "|")
    for row in rows:
        print("| " + " | ".join(str(cell) for cell in row) + " |")
