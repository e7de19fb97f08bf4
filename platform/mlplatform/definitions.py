"""The code location Dagster loads (`dagster dev`, `dg dev`, the daemon): built from the spec files."""

from mlplatform.factory import build_definitions

defs = build_definitions()
