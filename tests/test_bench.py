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
    threads = {name.rsplit("_", 1)[1] for name in figures if name.startswith("pipeline_")}
    assert len(threads) == 1 and threads.pop().endswith("threads")  # says how many
    expected = {"tcp_ingest_24bit_gbps", "writer_none_GBps", "writer_bslz4_GBps",
                "writer_bslz4_compression", "end_to_end_12bit_fps", "end_to_end_12bit_dropped"}
    assert expected <= figures.keys()
    for figure in figures.values():
        assert set(figure) == {"figure", "value", "unit", "baseline", "ratio"}
        assert figure["value"] >= 0 and figure["baseline"] > 0
        assert figure["ratio"] == pytest.approx(figure["value"] / figure["baseline"], rel=1e-6)
    assert figures["end_to_end_12bit_dropped"]["value"] == 0
    assert {n.rsplit("_", 1)[0] for n in figures if n.startswith("pipeline_")} == {
        "pipeline_12bit_ms_per_frame", "pipeline_24bit_ms_per_frame"}


def test_sustained_search_reports_the_held_rate_against_each_stage(tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "pimega.cli.main", "bench", "--json", "--sustained", "--chips",
         "2x2", "--chip-size", "16", "--frames", "30", "--repeats", "2", "--seconds", "0.5",
         "--dir", str(tmp_path)],
        check=True, capture_output=True, text=True, timeout=600,
    ).stdout
    figures = {f["figure"]: f for f in map(json.loads, out.splitlines())}
    sustained = figures["sustained_zero_loss_12bit_none_fps"]
    slowest = min(figures[f"alone_{s}_12bit_none_fps"]["value"]
                  for s in ("ingest", "pipeline", "writer"))
    assert sustained["baseline"] == pytest.approx(slowest)
    tries = [f for name, f in figures.items() if name.endswith("_lost")]
    assert tries, "the search made no try"
    held = [f for name, f in figures.items() if name.endswith("_late_s")
            and f["ratio"] <= 1 and figures[name.replace("_late_s", "_lost")]["value"] == 0]
    assert sustained["value"] == max((float(f["figure"].split("_")[-3][:-2]) for f in held),
                                     default=0.0)


@pytest.mark.parametrize("option", ["--seconds nan", "--seconds -5", "--seconds inf", "--soak 0",
                                    "--preview-interval -1", "--preview-fps inf",
                                    "--seconds ten"])
def test_a_time_or_rate_that_is_not_a_finite_positive_number_is_refused(option):
    """Not a traceback, not a run that never ends: argparse's usage error naming the option."""
    out = subprocess.run([sys.executable, "-m", "pimega.cli.main", "bench", "--sustained",
                          *option.split()], capture_output=True, text=True, timeout=120)
    assert out.returncode == 2
    assert f"argument {option.split()[0]}" in out.stderr and "Traceback" not in out.stderr
