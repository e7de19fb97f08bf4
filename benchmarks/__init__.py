"""Benchmarks of the platform against bare baselines and Evidently. Run by hand, never in CI.

From the repository root (see benchmarks/BENCHMARKS.md for the figures):

    python -m benchmarks.pipeline --rows 1000000
    python -m benchmarks.drift
    python -m benchmarks.sensor
"""
