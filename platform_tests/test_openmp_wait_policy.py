"""LightGBM's OpenMP threads sleep, not spin, at their barriers in every platform process."""

import os
import subprocess
import sys

_PROBE = "import os, mlplatform; print(os.environ['OMP_WAIT_POLICY'])"


def _policy_after_import(env: dict[str, str]) -> str:
    result = subprocess.run(
        [sys.executable, "-c", _PROBE], env=env, capture_output=True, text=True, check=True
    )
    return result.stdout.strip()


def test_importing_the_platform_sets_passive_waits_unless_the_user_chose() -> None:
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    assert _policy_after_import(env) == "PASSIVE"
    assert _policy_after_import({**env, "OMP_WAIT_POLICY": "ACTIVE"}) == "ACTIVE"
