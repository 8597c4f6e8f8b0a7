"""``pimega bench`` runs end to end on small frames and prints one JSON figure a line."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow


def test_bench_prints_every_figure_as_json(tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "pimega.cli.main", "bench", "--json", "--chips", "2x2",
         "--chip-size", "16", "--frames", "30", "--repeats", "3", "--dir", str(tmp_path)],
        check=True, capture_output=True, text=True, timeout=300,
    ).stdout
    figures = {f["figure"]: f for f in map(json.loads, out.splitlines())}
    expected = {"pipeline_12bit_ms_per_frame", "pipeline_24bit_ms_per_frame",
                "tcp_ingest_24bit_gbps", "writer_none_GBps", "writer_bslz4_GBps",
                "writer_bslz4_compression", "end_to_end_12bit_fps", "end_to_end_12bit_dropped"}
    assert expected <= figures.keys()
    for figure in figures.values():
        assert set(figure) == {"figure", "value", "unit", "baseline", "ratio"}
        assert figure["value"] >= 0 and figure["baseline"] > 0
        assert figure["ratio"] == pytest.approx(figure["value"] / figure["baseline"], rel=1e-6)
    assert figures["end_to_end_12bit_dropped"]["value"] == 0
