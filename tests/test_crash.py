"""kill -9 of the IOC in the middle of a capture: what is on disk afterwards."""

from __future__ import annotations

import hashlib
import os
import signal
import threading
import time
from pathlib import Path

import epics
import h5py
import numpy as np
import pytest

from pimega.core.geometry import ArrayLayout, ModuleGeometry
from pimega.sim.patterns import counter_array_image

from .conftest import start_ioc, stop_ioc

pytestmark = pytest.mark.slow
LAYOUT = ArrayLayout(ModuleGeometry(2, 2, 16))
ARGS = ("--sim", "--chips", "2x2", "--chip-size", "16")


def put(prefix: str, suffix: str, value) -> None:
    assert epics.caput(prefix + suffix, value, wait=True, timeout=10) == 1, suffix


def wait_for(pvname: str, predicate, timeout: float = 20.0) -> None:
    seen = threading.Event()
    monitor = epics.PV(pvname, auto_monitor=True,
                       callback=lambda value, **_: predicate(value) and seen.set())
    try:
        assert seen.wait(timeout), f"{pvname} never got there"
    finally:
        monitor.disconnect()


def capture_then_kill(prefix: str, directory, swmr: str) -> tuple[str, int]:
    """Stream frames into a file, then SIGKILL the IOC; returns (file, frames it reported)."""
    put(prefix, "HDF1:FilePath", f"{directory}/")
    put(prefix, "HDF1:FileName", "crash")
    put(prefix, "HDF1:FileWriteMode", "Stream")
    put(prefix, "HDF1:NumCapture", 0)
    put(prefix, "HDF1:SWMRMode", swmr)
    put(prefix, "cam1:ImageMode", "Continuous")
    put(prefix, "cam1:AcquirePeriod", 0.01)
    epics.PV(prefix + "HDF1:Capture").put(1)
    wait_for(prefix + "HDF1:Capture_RBV", lambda v: v == 1)
    epics.PV(prefix + "cam1:Acquire").put(1)
    wait_for(prefix + "HDF1:NumCaptured_RBV", lambda v: v >= 20)
    filename = epics.caget(prefix + "HDF1:FullFileName_RBV", as_string=True)
    reported = epics.caget(prefix + "HDF1:NumCaptured_RBV")
    return filename, reported


@pytest.fixture
def ioc_to_kill(request, tmp_path):
    # a prefix per IOC: this process's CA clients keep the channels of a killed one
    ioc = start_ioc(f"PMKILL{len(request.node.name) % 97}:", tmp_path / "ioc.log", *ARGS,
                    "--autosave-dir", str(tmp_path / "state"))
    yield ioc
    if ioc.process.poll() is None:
        stop_ioc(ioc)
    else:
        ioc.log_file.close()


def test_with_swmr_the_file_holds_every_frame_reported_after_kill_9(ioc_to_kill, tmp_path):
    filename, reported = capture_then_kill(ioc_to_kill.prefix, tmp_path, "On")
    os.kill(ioc_to_kill.process.pid, signal.SIGKILL)
    ioc_to_kill.process.wait(10)
    with h5py.File(filename, "r", swmr=True) as f:
        data = f["/entry/data/data"]
        assert data.shape[0] >= reported > 0
        for i in (0, reported - 1):
            np.testing.assert_array_equal(data[i], counter_array_image(LAYOUT, i, 12))


def test_sigterm_while_acquiring_closes_the_file_and_logs_no_error(ioc_to_kill, tmp_path):
    """docker stop in the middle of a capture: the file is closed whole, and the acquisition
    that ends after the server stopped is no error in the log (it was: "event listener
    failed", a coroutine never awaited)."""
    filename, reported = capture_then_kill(ioc_to_kill.prefix, tmp_path, "Off")
    stop_ioc(ioc_to_kill)
    assert ioc_to_kill.process.returncode == 0
    with h5py.File(filename, "r") as f:  # closed: no h5clear needed
        assert f["/entry/data/data"].shape[0] >= reported > 0
    logged = ioc_to_kill.log()
    assert "ERROR pimega" not in logged and "never awaited" not in logged, logged


#: A sitecustomize for the IOC: every fsync hangs (a disk stalled under writeback), after
#: leaving the marker file its environment names.
STALLED_FSYNC = """
import os, time
def fsync(fd):
    open(os.environ["PIMEGA_TEST_FSYNC_MARKER"], "w").close()
    time.sleep(3600)
os.fsync = fsync
"""


def test_a_settings_save_stuck_on_the_disk_does_not_keep_sigterm_from_closing_the_data_file(
        tmp_path):
    """docker stop while the settings' fsync hangs (met in a fresh-clone run: stopping took
    over 10 s, then SIGKILL): the data file is closed at once, the save left to finish."""
    stall = tmp_path / "stall"
    stall.mkdir()
    (stall / "sitecustomize.py").write_text(STALLED_FSYNC)
    marker = tmp_path / "fsync-entered"
    ioc = start_ioc("PMFSYNC:", tmp_path / "ioc.log", *ARGS, "--autosave-dir",
                    str(tmp_path / "state"),
                    env={"PYTHONPATH": str(stall), "PIMEGA_TEST_FSYNC_MARKER": str(marker)})
    try:
        filename, reported = capture_then_kill(ioc.prefix, tmp_path, "Off")
        deadline = time.monotonic() + 20
        while not marker.exists():  # a settings save is under way, stuck in its fsync
            assert time.monotonic() < deadline, "no settings save began"
            time.sleep(0.05)
        ioc.process.terminate()
        deadline = time.monotonic() + 20
        while True:
            try:
                with h5py.File(filename, "r") as f:
                    assert f["/entry/data/data"].shape[0] >= reported > 0
                break
            except OSError:  # still open for writing
                assert time.monotonic() < deadline, "the data file was not closed"
                time.sleep(0.1)
    finally:
        ioc.process.kill()
        ioc.process.wait()
        ioc.log_file.close()


def test_without_swmr_the_file_is_marked_and_the_next_start_does_not_overwrite_it(
        ioc_to_kill, tmp_path):
    filename, _ = capture_then_kill(ioc_to_kill.prefix, tmp_path, "Off")
    os.kill(ioc_to_kill.process.pid, signal.SIGKILL)
    ioc_to_kill.process.wait(10)
    try:  # HDF5 marks a file open for writing: readers refuse it until h5clear -s
        with h5py.File(filename, "r") as f:
            assert f["/entry/data/data"].shape[0] >= 0
    except OSError as exc:
        assert "open" in str(exc).lower() or "h5clear" in str(exc)
    before = hashlib.sha256(Path(filename).read_bytes()).hexdigest()

    again = start_ioc("PMKILLAGAIN:", tmp_path / "ioc2.log", *ARGS, "--autosave-dir",
                      str(tmp_path / "state"))
    try:
        prefix = again.prefix
        put(prefix, "HDF1:FilePath", f"{tmp_path}/")  # as the operator sets them again
        put(prefix, "HDF1:FileName", "crash")
        put(prefix, "HDF1:FileNumber", 1)  # the number of the file that is there
        put(prefix, "HDF1:AutoIncrement", "Yes")
        put(prefix, "cam1:ImageMode", "Single")
        epics.PV(prefix + "HDF1:Capture").put(1)
        try:
            wait_for(prefix + "HDF1:Capture_RBV", lambda v: v == 1)
        except AssertionError:
            raise AssertionError(epics.caget(prefix + "HDF1:WriteMessage", as_string=True)
                                 ) from None
        put(prefix, "cam1:Acquire", 1)
        put(prefix, "HDF1:Capture", 0)
        wait_for(prefix + "HDF1:Capture_RBV", lambda v: v == 0)
        second = epics.caget(prefix + "HDF1:FullFileName_RBV", as_string=True)
    finally:
        stop_ioc(again)
    assert second != filename
    assert hashlib.sha256(Path(filename).read_bytes()).hexdigest() == before
