"""The code location Dagster loads (`dagster dev`, `dg dev`, the daemon): built from the spec files."""

from mlplatform.factory import build_definitions
from mlplatform.settings import apply_mlflow_env_defaults

# Every process Dagster starts loads this module (daemon, webserver, code server, run workers): the entry
# point where MLflow's environment-only defaults are set for them (as `mlplatform`'s main does for its own).
apply_mlflow_env_defaults()
defs = build_definitions()
