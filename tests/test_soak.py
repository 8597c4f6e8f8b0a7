"""A bounded soak of a real IOC (small frames, ~12 s): files, stops, ten preview clients and a
control client at once. The figures come from ``pimega bench --soak``; here only what must
hold whatever the machine's speed: nothing lost, memory and threads bounded."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow

#: Bounds on the IOC during the soak: threads (one per preview circuit is caproto's, plus
#: the engine's own) and resident memory against the start.
MAX_EXTRA_THREADS = 30
MAX_RSS_GROWTH = 1.5


def test_soak_loses_nothing_and_stays_bounded(tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "pimega", "bench", "--json", "--soak", "12", "--chips", "2x2",
         "--chip-size", "16", "--dir", str(tmp_path)],
        check=True, capture_output=True, text=True, timeout=300).stdout
    figures = {f["figure"]: f for f in map(json.loads, out.splitlines())}
    assert figures["soak_files"]["value"] >= 3
    assert figures["soak_frames_lost"]["value"] == 0
    assert figures["soak_frames_lost"]["baseline"] > 100  # frames were captured and checked
    assert figures["soak_preview_slowest_client_hz"]["value"] > 0  # every client saw images
    threads = figures["soak_threads_max"]
    assert threads["value"] <= threads["baseline"] + MAX_EXTRA_THREADS
    assert figures["soak_rss_max_mb"]["ratio"] <= MAX_RSS_GROWTH
