"""Benchmarks of the platform against bare baselines and Evidently. Run by hand, never in CI.

From the repository root (see benchmarks/BENCHMARKS.md for the figures):

    python -m benchmarks.pipeline --rows 1000000
    python -m benchmarks.drift
    python -m benchmarks.sensor

They measure this checkout's code (platform/ goes first on sys.path, and on PYTHONPATH for the
child processes), even when the installed `mlplatform` points at another checkout.
"""

import sys
from pathlib import Path

_PLATFORM = str(Path(__file__).resolve().parents[1] / "platform")
if _PLATFORM not in sys.path:
    sys.path.insert(0, _PLATFORM)
