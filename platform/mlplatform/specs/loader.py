"""Finding and loading dataset spec files, with errors that name the file and the key at fault."""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb
import yaml
from pydantic import ValidationError

from mlplatform.core.database_source import probe_database
from mlplatform.core.source import SourceError, SourceProbe, probe_source
from mlplatform.specs.model import DatasetSpec, KafkaSourceSpec, PostgresSourceSpec
from mlplatform.specs.sources import SOURCE_KINDS

BUNDLED_SPECS_DIR = Path(__file__).parent


class SpecError(ValueError):
    """A spec file is wrong; the message names the file and the key."""


@dataclass(frozen=True)
class BrokenSpec:
    """A spec file that does not load (or whose dataset cannot be built), and why: it affects only itself."""

    name: str  # the dataset's name if the file gives a usable one, else one made from the file name
    path: Path
    error: str


def _error_key(loc: tuple[Any, ...]) -> str:
    """The YAML key of an error: without the source kind Pydantic puts in (source.postgres.table)."""
    parts = list(loc)
    if parts[:1] == ["source"] and len(parts) > 1 and parts[1] in SOURCE_KINDS:
        del parts[1]
    return ".".join(str(part) for part in parts)


def _describe_error(error: Any) -> str:
    key = _error_key(tuple(error["loc"]))
    kind = error["type"]
    if kind == "union_tag_invalid" and key == "source":
        return (
            f"key 'source.kind': unknown source kind {error['input'].get('kind')!r} (use "
            f"{', '.join(SOURCE_KINDS[:-1])} or {SOURCE_KINDS[-1]})"
        )
    if key == "source.dsn" and kind == "model_type":
        return (
            "key 'source.dsn': write `dsn: {env: VARIABLE}`: the DSN (a postgresql:// URI) is read from that "
            "environment variable, so no password is ever written in a spec"
        )
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
    return validate_spec(raw, path)


def validate_spec(raw: object, path: Path) -> DatasetSpec:
    """Validate the keys of one spec read from `path` (the file relative source paths start from)."""
    if not isinstance(raw, dict):
        raise SpecError(f"spec file {path}: expected a mapping of keys, got {type(raw).__name__}")
    try:
        spec = DatasetSpec.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(_describe_error(e) for e in exc.errors())
        raise SpecError(f"spec file {path}: {problems}") from None
    return spec.model_copy(update={"spec_path": path})


def check_source(spec: DatasetSpec, conn: duckdb.DuckDBPyConnection | None = None) -> SourceProbe:
    """Probe the spec's source; a missing file, table or unknown column becomes a SpecError."""
    if isinstance(spec.source, PostgresSourceSpec):
        try:
            probe = probe_database(spec)
        except SourceError as exc:
            key, _, message = str(exc).partition(": ")
            raise SpecError(f"spec file {spec.spec_path}: key '{key}': {message}") from None
        return _with_start(spec, probe, spec.source.described)
    if isinstance(spec.source, KafkaSourceSpec):
        # Loading definitions never reaches the broker: the partitions start where the spec says.
        probe = SourceProbe(files=(), columns=tuple(spec.source_columns), time_min=None, time_max=None)
        return _with_start(spec, probe, f"{spec.source.described} (definitions never read the broker)")
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
    return _with_start(spec, probe, str(pattern))


def _with_start(spec: DatasetSpec, probe: SourceProbe, where: str) -> SourceProbe:
    if probe.time_min is None and spec.partitions.start is None:
        raise SpecError(
            f"spec file {spec.spec_path}: key 'partitions.start': no data found in {where} "
            "to start the partitions from; set partitions.start"
        )
    return probe


def spec_files(directories: Iterable[Path]) -> list[Path]:
    files: list[Path] = []
    for directory in directories:
        if not Path(directory).is_dir():
            raise SpecError(
                f"spec folder {directory} does not exist (named in MLPLATFORM_SPECS, or stored in the "
                "home by `mlplatform specs add`: `mlplatform specs remove DIR` forgets it)"
            )
        files += sorted(p for p in Path(directory).iterdir() if p.suffix in (".yaml", ".yml"))
    return files


def one_line(text: str, limit: int = 2000) -> str:
    """An error on one line, cut at `limit` characters (a DuckDB error may quote a 3 MB field)."""
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


def broken_spec_name(path: Path) -> str:
    """The dataset name a broken spec file declares, if it is a valid one, else one from the file name."""
    try:
        raw = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError, UnicodeDecodeError):
        raw = None
    declared = raw.get("name") if isinstance(raw, dict) else None
    if isinstance(declared, str) and re.fullmatch(r"[a-z][a-z0-9_]*", declared):
        return declared
    stem = re.sub(r"[^a-z0-9_]", "_", Path(path).stem.lower())
    return stem if re.match(r"[a-z]", stem) else f"spec_{stem}"


def read_specs(extra_dirs: Iterable[Path] = ()) -> tuple[list[DatasetSpec], list[BrokenSpec]]:
    """Every spec that loads, and every one that does not with its error: one broken file breaks only itself.

    The first file to use a name keeps it (the bundled specs come first); a later one is broken.
    """
    specs: list[DatasetSpec] = []
    broken: list[BrokenSpec] = []
    seen: dict[str, Path] = {}
    for path in spec_files([BUNDLED_SPECS_DIR, *extra_dirs]):
        try:
            spec = parse_spec(path)
        except SpecError as exc:
            broken.append(BrokenSpec(broken_spec_name(path), Path(path).resolve(), one_line(str(exc))))
            continue
        if spec.name in seen:
            error = f"spec file {spec.spec_path}: key 'name': {spec.name!r} is already defined in "
            error += str(seen[spec.name])
            broken.append(BrokenSpec(spec.name, Path(path).resolve(), error))
            continue
        seen[spec.name] = Path(path).resolve()
        specs.append(spec)
    return specs, broken


def load_specs(extra_dirs: Iterable[Path] = ()) -> list[DatasetSpec]:
    """The bundled specs plus those in `extra_dirs`; raises the first broken one's SpecError."""
    specs, broken = read_specs(extra_dirs)
    if broken:
        raise SpecError(broken[0].error)
    return specs
