"""What the GPU test files share: their ``TestSimulated`` class run again in a subprocess
under numba-cuda's CUDA simulator (``NUMBA_ENABLE_CUDASIM`` must be set before numba is
imported), and the comparison of the device's statistics with the CPU's."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from dataclasses import fields

from pimega.pipeline.stats import Stats


def run_under_simulator(test_file: str) -> None:
    """Every ``gpusim`` test of ``test_file``'s ``TestSimulated`` passes there, none skipped."""
    env = os.environ | {"NUMBA_ENABLE_CUDASIM": "1"}
    run = subprocess.run(
        [sys.executable, "-m", "pytest", f"{test_file}::TestSimulated", "-m", "gpusim", "-q",
         "--tb=short", "--noconftest", "-p", "no:cacheprovider"],
        env=env, capture_output=True, text=True, timeout=240)
    assert run.returncode == 0, f"simulator run failed:\n{run.stdout[-6000:]}{run.stderr[-3000:]}"
    assert " passed" in run.stdout and "skipped" not in run.stdout, run.stdout[-3000:]


def assert_stats_match(gpu: Stats, cpu: Stats) -> None:
    """Positions and extremes exactly; sums to float64 rounding (the CPU's own order of
    addition follows its vector width)."""
    for f in fields(Stats):
        a, b = getattr(gpu, f.name), getattr(cpu, f.name)
        if isinstance(b, int) or f.name in ("min_value", "max_value"):
            assert a == b, f.name
        else:
            assert math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-9), (f.name, a, b)
