"""The soak: a real IOC for a while as a beamline runs it, measured from outside.

Continuous and counted acquisitions one after another, every one captured to a new file, a
stop in the middle of every other one, the preview at full rate to ``clients`` monitoring
viewers (each its own CA circuit), and a control client putting with callback all along.
Reported: control-put round trips (p50, p99), frames lost (each file read back: frame
numbers complete, as many as the IOC said it captured), the IOC's memory and thread count at
start and at their highest.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from .figures import Figure
from .loopback import loopback_environment

PREFIX = "SOAK:"


def process_figures(pid: int) -> tuple[float, int]:
    """(resident memory in MB, threads) of process ``pid``, from /proc."""
    fields = dict(line.split(":", 1) for line in
                  Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
    return int(fields["VmRSS"].split()[0]) / 1024, int(fields["Threads"])


def frames_lost(path: str, captured: int) -> int:
    """Frames missing from a file that should hold ``captured`` frames numbered from 0."""
    with h5py.File(path, "r") as f:
        column = f["/entry/instrument/detector/frame_number"]
        assert isinstance(column, h5py.Dataset)
        numbers = np.asarray(column[()])
    return captured - len(numbers) + int((np.diff(numbers) != 1).sum())


class _Control:
    """A client timing put-with-callback round trips on a harmless PV, until stopped."""

    def __init__(self, pv: Any) -> None:
        self._pv = pv
        self.round_trips: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> _Control:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(0.01):
            t0 = time.perf_counter()
            self._pv.write(1, wait=True, timeout=10)
            self.round_trips.append(time.perf_counter() - t0)


def bench_soak(seconds: float, directory: Path, chips: str = "6x6", chip_size: int = 256,
               frame_rate_hz: float = 100.0, clients: int = 10,
               cycle_s: float = 3.0) -> Iterator[Figure]:
    from caproto.threading.client import Context

    logging.getLogger("caproto").setLevel(logging.WARNING)
    env = os.environ | loopback_environment()
    os.environ.update(env)
    ioc = subprocess.Popen(
        [sys.executable, "-m", "pimega.cli.ioc", "--sim", "--prefix", PREFIX, "--chips", chips,
         "--chip-size", str(chip_size), "--data-root", str(directory), "--autosave-dir",
         str(directory / "autosave")], env=env, stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL)
    context = Context()
    try:
        names = ["Heartbeat_RBV", "cam1:ImageMode", "cam1:NumImages", "cam1:AcquirePeriod",
                 "cam1:Acquire", "cam1:Acquire_RBV", "cam1:NumExposures",
                 "image1:MinCallbackTime", "HDF1:FilePath", "HDF1:FileName", "HDF1:Capture",
                 "HDF1:Capture_RBV", "HDF1:NumCaptured_RBV", "HDF1:FullFileName_RBV",
                 "HDF1:FileWriteMode", "HDF1:NumCapture"]
        pv = dict(zip(names, context.get_pvs(*(PREFIX + n for n in names)), strict=True))
        _wait(lambda: pv["Heartbeat_RBV"].read(timeout=60).data[0] > 1, 120, "IOC start")
        pv["image1:MinCallbackTime"].write(0.0, wait=True)
        pv["cam1:AcquirePeriod"].write(1 / frame_rate_hz, wait=True)
        pv["HDF1:FilePath"].write(str(directory) + "/", wait=True)
        pv["HDF1:FileWriteMode"].write(2, wait=True)  # Stream
        pv["HDF1:NumCapture"].write(0, wait=True)
        viewers = subprocess.Popen(
            [sys.executable, "-m", "pimega.cli.preview_viewer", PREFIX + "image1:ArrayData",
             str(seconds), str(clients)], env=env, stdout=subprocess.PIPE, text=True)
        rss0, threads0 = process_figures(ioc.pid)
        rss_max, threads_max, lost, total, files = rss0, threads0, 0, 0, 0
        end = time.monotonic() + seconds
        with _Control(pv["cam1:NumExposures"]) as control:
            while time.monotonic() < end:
                counted = files % 2 == 0  # counted runs end by themselves; the rest are stopped
                pv["HDF1:FileName"].write(f"soak{files}", wait=True)
                pv["HDF1:Capture"].write(1, wait=False)
                _wait(lambda: pv["HDF1:Capture_RBV"].read().data[0] == 1, 10, "capture")
                pv["cam1:ImageMode"].write(1 if counted else 2, wait=True)
                pv["cam1:NumImages"].write(int(frame_rate_hz * cycle_s), wait=True)
                pv["cam1:Acquire"].write(1, wait=False)
                _wait(lambda: pv["cam1:Acquire_RBV"].read().data[0] == 1, 10, "acquire")
                if not counted:
                    time.sleep(cycle_s / 2)
                    pv["cam1:Acquire"].write(0, wait=True)
                _wait(lambda: pv["cam1:Acquire_RBV"].read().data[0] == 0, 60, "the end")
                pv["HDF1:Capture"].write(0, wait=True)
                _wait(lambda: pv["HDF1:Capture_RBV"].read().data[0] == 0, 30, "the file")
                captured = int(pv["HDF1:NumCaptured_RBV"].read().data[0])
                name = bytes(pv["HDF1:FullFileName_RBV"].read().data).rstrip(b"\0").decode()
                lost += frames_lost(name, captured)
                total += captured
                files += 1
                rss, threads = process_figures(ioc.pid)
                rss_max, threads_max = max(rss_max, rss), max(threads_max, threads)
        rate = float(viewers.communicate(timeout=60)[0])
    finally:
        context.disconnect()
        ioc.terminate()
        ioc.wait(timeout=30)
    p50, p99 = (1e3 * float(np.percentile(control.round_trips, q)) for q in (50, 99))
    yield Figure("soak_control_put_p50_ms", p50, "ms", 20.0, p50 / 20.0)
    yield Figure("soak_control_put_p99_ms", p99, "ms", 20.0, p99 / 20.0)
    yield Figure("soak_frames_lost", float(lost), "frames", float(max(total, 1)),
                 lost / max(total, 1))
    yield Figure("soak_files", float(files), "files", float(files), 1.0)
    yield Figure("soak_preview_slowest_client_hz", rate, "Hz", 1 / 0.02, rate * 0.02)
    yield Figure("soak_rss_max_mb", rss_max, "MB", rss0, rss_max / rss0)
    yield Figure("soak_threads_max", float(threads_max), "threads", float(threads0),
                 threads_max / threads0)


def _wait(condition: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"soak: waited {timeout} s for {what}")
        time.sleep(0.01)
