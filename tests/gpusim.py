"""A test file's ``TestSimulated`` class run again in a subprocess under numba-cuda's CUDA
simulator (``NUMBA_ENABLE_CUDASIM`` must be set before numba is imported)."""

from __future__ import annotations

import os
import subprocess
import sys


def run_under_simulator(test_file: str) -> None:
    """Every ``gpusim`` test of ``test_file``'s ``TestSimulated`` passes there, none skipped."""
    env = os.environ | {"NUMBA_ENABLE_CUDASIM": "1"}
    run = subprocess.run(
        [sys.executable, "-m", "pytest", f"{test_file}::TestSimulated", "-m", "gpusim", "-q",
         "--tb=short", "--noconftest", "-p", "no:cacheprovider"],
        env=env, capture_output=True, text=True, timeout=240)
    assert run.returncode == 0, f"simulator run failed:\n{run.stdout[-6000:]}{run.stderr[-3000:]}"
    assert " passed" in run.stdout and "skipped" not in run.stdout, run.stdout[-3000:]
