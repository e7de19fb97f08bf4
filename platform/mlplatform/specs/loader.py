"""Finding and loading dataset spec files, with errors that name the file and the key at fault."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import duckdb
import yaml
from pydantic import ValidationError

from mlplatform.core.source import SourceError, SourceProbe, probe_source
from mlplatform.specs.model import DatasetSpec

BUNDLED_SPECS_DIR = Path(__file__).parent


class SpecError(ValueError):
    """A spec file is wrong; the message names the file and the key."""


def _describe_error(error: Any) -> str:
    key = ".".join(str(part) for part in error["loc"])
    kind = error["type"]
    if kind == "extra_forbidden":
        return f"key '{key}': unknown key"
    if kind == "missing":
        return f"key '{key}': required key is missing"
    message = error["msg"].removeprefix("Value error, ")
    return f"key '{key}': {message}" if key else message


def parse_spec(path: Path) -> DatasetSpec:
    """Read and validate one spec file, without touching its source files."""
    path = Path(path).resolve()
    try:
        raw = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise SpecError(f"spec file {path}: cannot read it: {exc.strerror}") from exc
    except yaml.YAMLError as exc:
        raise SpecError(f"spec file {path}: not valid YAML: {exc}") from exc
    if not isinstance(raw, dict):
        raise SpecError(f"spec file {path}: expected a mapping of keys, got {type(raw).__name__}")
    try:
        spec = DatasetSpec.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(_describe_error(e) for e in exc.errors())
        raise SpecError(f"spec file {path}: {problems}") from None
    return spec.model_copy(update={"spec_path": path})


def check_source(spec: DatasetSpec, conn: duckdb.DuckDBPyConnection | None = None) -> SourceProbe:
    """Probe the spec's source files; a missing file or unknown column becomes a SpecError."""
    pattern = Path(spec.source_pattern)
    if spec.source.is_glob:
        base = next((p for p in pattern.parents if not any(ch in str(p) for ch in "*?[")), pattern.parent)
        if not base.is_dir():
            raise SpecError(f"spec file {spec.spec_path}: key 'source.path': folder {base} does not exist")
    elif not pattern.is_file():
        raise SpecError(f"spec file {spec.spec_path}: key 'source.path': file {pattern} does not exist")
    own = conn is None
    conn = conn or duckdb.connect()
    try:
        probe = probe_source(conn, spec)
    except SourceError as exc:
        key, _, message = str(exc).partition(": ")
        raise SpecError(f"spec file {spec.spec_path}: key '{key}': {message}") from None
    finally:
        if own:
            conn.close()
    if probe.time_min is None and spec.partitions.start is None:
        raise SpecError(
            f"spec file {spec.spec_path}: key 'partitions.start': no data found in {pattern} "
            "to start the partitions from; set partitions.start"
        )
    return probe


def spec_files(directories: Iterable[Path]) -> list[Path]:
    files: list[Path] = []
    for directory in directories:
        if not Path(directory).is_dir():
            raise SpecError(f"spec folder {directory} does not exist (from MLPLATFORM_SPECS)")
        files += sorted(p for p in Path(directory).iterdir() if p.suffix in (".yaml", ".yml"))
    return files


def load_specs(extra_dirs: Iterable[Path] = ()) -> list[DatasetSpec]:
    """The bundled specs plus those in `extra_dirs`; names must be unique."""
    specs: list[DatasetSpec] = []
    seen: dict[str, Path] = {}
    for path in spec_files([BUNDLED_SPECS_DIR, *extra_dirs]):
        spec = parse_spec(path)
        if spec.name in seen:
            raise SpecError(
                f"spec file {path}: key 'name': {spec.name!r} is already defined in {seen[spec.name]}"
            )
        seen[spec.name] = path
        specs.append(spec)
    return specs
