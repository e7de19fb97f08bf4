"""The code location Dagster loads (`dagster dev`, `dg dev`, the daemon): built from the spec files."""

from mlplatform.settings import apply_mlflow_env_defaults

# Every process Dagster starts loads this module (daemon, webserver, code server, run workers): the entry
# point where the environment-only defaults are set for them (as `mlplatform`'s main does for its own),
# before the factory imports LightGBM, whose OpenMP runtime reads OMP_WAIT_POLICY as it loads.
apply_mlflow_env_defaults()

from mlplatform.factory import build_definitions  # noqa: E402  (after the defaults, see above)

defs = build_definitions()
