"""``pimega-ioc --listen``: frames from an external sender; Acquire arms the receiver."""

from __future__ import annotations

import threading
import time

import epics
import h5py
import numpy as np
import pytest

from pimega.cli.loopback import free_port
from pimega.core.geometry import ArrayLayout, ModuleGeometry
from pimega.sim.patterns import counter_array_image
from pimega.sim.sender import SimConfig, Simulator

from .conftest import start_ioc, stop_ioc

LAYOUT = ArrayLayout(ModuleGeometry(2, 2, 16))
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def listening_ioc(tmp_path_factory):
    port = free_port()
    ioc = start_ioc("PMLISTEN:", tmp_path_factory.mktemp("listen") / "ioc.log",
                    "--listen", f"127.0.0.1:{port}", "--chips", "2x2", "--chip-size", "16")
    yield ioc, port
    stop_ioc(ioc)


def pv(ioc, suffix: str) -> epics.PV:
    channel = epics.PV(ioc.prefix + suffix, auto_monitor=False)
    assert channel.wait_for_connection(timeout=10)
    return channel


def test_image_plugin_shows_its_geometry_before_any_frame(listening_ioc):
    """ophyd's ImagePlugin shapes ArrayData from these from the start."""
    ioc, _ = listening_ioc
    assert pv(ioc, "image1:ArraySize0_RBV").get() == LAYOUT.shape[1]
    assert pv(ioc, "image1:ArraySize1_RBV").get() == LAYOUT.shape[0]
    assert pv(ioc, "image1:NDimensions_RBV").get() == 2


def test_idle_frames_are_dropped_and_acquire_takes_num_images(listening_ioc, tmp_path):
    ioc, port = listening_ioc
    with Simulator("127.0.0.1", port, SimConfig(layout=LAYOUT, n_frames=5)) as sim:
        sim.connect()
        sim.acquire()  # nobody asked: the IOC counts these and drops them
        assert sim.wait(timeout=30)
        deadline = time.monotonic() + 10
        while pv(ioc, "cam1:M1:IdleFrameCount_RBV").get() < 5:
            assert time.monotonic() < deadline, "idle frames were not counted"
            time.sleep(0.05)

        pv(ioc, "HDF1:FilePath").put(f"{tmp_path}/", wait=True)
        pv(ioc, "HDF1:FileName").put("external", wait=True)
        pv(ioc, "HDF1:NumCapture").put(8, wait=True)
        pv(ioc, "HDF1:FileWriteMode").put("Capture", wait=True)
        capture = pv(ioc, "HDF1:Capture")
        capture.put(1, use_complete=True)
        pv(ioc, "cam1:ImageMode").put("Multiple", wait=True)
        pv(ioc, "cam1:NumImages").put(8, wait=True)
        acquire = pv(ioc, "cam1:Acquire")
        acquire.put(1, use_complete=True)
        while pv(ioc, "cam1:Acquire_RBV").get() != 1:
            time.sleep(0.01)
        sim.acquire(n_frames=8)
        deadline = time.monotonic() + 30
        while not (acquire.put_complete and capture.put_complete):
            assert time.monotonic() < deadline, "Acquire/Capture did not complete"
            time.sleep(0.02)
    filename = pv(ioc, "HDF1:FullFileName_RBV").get(as_string=True)
    with h5py.File(filename, "r") as f:
        data = f["/entry/data/data"]
        assert data.shape == (8, *LAYOUT.shape)
        for i in range(8):
            np.testing.assert_array_equal(data[i], counter_array_image(LAYOUT, i, 12))
    assert pv(ioc, "cam1:M1:RxFrameCount_RBV").get() == 8


def test_frames_come_as_the_sender_sends_them_in_any_trigger_mode(listening_ioc):
    """The sender's own trigger input decides: Gated is taken, there is nothing to pulse."""
    ioc, port = listening_ioc
    pv(ioc, "cam1:TriggerMode").put("Gated", wait=True)
    try:
        assert pv(ioc, "cam1:TriggerMode_RBV").get(as_string=True) == "Gated"
        pv(ioc, "cam1:ImageMode").put("Multiple", wait=True)
        pv(ioc, "cam1:NumImages").put(4, wait=True)
        done = threading.Event()
        pv(ioc, "cam1:Acquire").put(1, use_complete=True, callback=lambda **_: done.set())
        time.sleep(0.3)
        with Simulator("127.0.0.1", port, SimConfig(layout=LAYOUT, n_frames=4)) as sim:
            sim.acquire()
            assert sim.wait(timeout=30)
        assert done.wait(10)
        assert pv(ioc, "cam1:NumImagesCounter_RBV").get() == 4
        pv(ioc, "cam1:TriggerSoftware").put("Trigger", wait=True)
        assert "External trigger mode" in pv(ioc, "cam1:StatusMessage_RBV").get(as_string=True)
    finally:
        pv(ioc, "cam1:TriggerMode").put("Internal", wait=True)
