"""A real ``pimega-ioc --sim --backend gpu`` on numba-cuda's simulator, driven over Channel Access.

The IOC subprocess gets ``NUMBA_ENABLE_CUDASIM=1``: its GPU backend runs the whole conveyor
on the simulated device (tiny 32×32 frames; the simulator is slow). It shows
``Pipe:Backend_RBV`` GPU, the ``Pipe:Gpu…`` figures and the statistics of the CPU path,
refuses a backend change while acquiring with the reason on ``Pipe:GpuMessage_RBV``, then
loses its device (``PIMEGA_GPUSIM_FAULT=lost@7``) in the middle of an acquisition, which
ends with Acquire done, DetectorState Error and the reason, and acquires again on the CPU.
(Choosing GPU where there is none, and Auto's fallback: test_gpu_engine.py.)
"""

from __future__ import annotations

import threading
import time

import pytest

pytest.importorskip("epics")  # the GPU machine's check runs without the CA client stack

import epics

from pimega.core.geometry import ArrayLayout, ModuleGeometry
from pimega.sim.patterns import counter_array_image

from .conftest import start_ioc, stop_ioc

LAYOUT = ArrayLayout(ModuleGeometry(2, 2, 16))
pytestmark = [pytest.mark.gpusim, pytest.mark.slow]
SMALL = ("--sim", "--chips", "2x2", "--chip-size", "16", "--no-autosave")


def simulator_ioc(tmp_path_factory: pytest.TempPathFactory, prefix: str, *extra: str,
                  fault: str = ""):
    env = {"NUMBA_ENABLE_CUDASIM": "1", "PIMEGA_GPUSIM_FAULT": fault}
    return start_ioc(prefix, tmp_path_factory.mktemp("ioc") / "ioc.log", *SMALL, *extra,
                     env=env)


class Client:
    """pyepics PVs under one prefix, connected once."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self._pvs: dict[str, epics.PV] = {}

    def pv(self, suffix: str) -> epics.PV:
        if suffix not in self._pvs:
            self._pvs[suffix] = epics.PV(self.prefix + suffix, auto_monitor=False)
            assert self._pvs[suffix].wait_for_connection(timeout=10), f"{suffix} not connected"
        return self._pvs[suffix]

    def get(self, suffix: str):
        value = self.pv(suffix).get(timeout=10)
        assert value is not None, f"{suffix} did not answer"
        return value

    def text(self, suffix: str) -> str:
        value = self.pv(suffix).get(as_string=True, timeout=10)
        assert value is not None, f"{suffix} did not answer"
        return value

    def put(self, suffix: str, value, timeout: float = 10.0) -> None:
        assert self.pv(suffix).put(value, wait=True, timeout=timeout) is not None, \
            f"put {suffix} timed out"

    def refused(self, suffix: str, value) -> bool:
        """Whether a put with callback is refused (pyepics reports the failure as a
        callback never called or an exception, depending on the version)."""
        before = self.get(suffix)
        try:
            self.pv(suffix).put(value, wait=True, timeout=10)
        except Exception:
            return True
        return self.get(suffix) == before

    def wait_for(self, suffix: str, predicate, timeout: float = 20.0, text: bool = False):
        deadline = time.monotonic() + timeout
        while True:
            value = self.text(suffix) if text else self.get(suffix)
            if predicate(value):
                return value
            assert time.monotonic() < deadline, f"{suffix} stayed {value!r}"
            time.sleep(0.05)

    def acquire(self, n: int, timeout: float = 60.0) -> None:
        self.put("cam1:ImageMode", "Multiple")
        self.put("cam1:NumImages", n)
        self.put("cam1:Acquire", 1, timeout=timeout)


@pytest.fixture
def gpu_ioc(tmp_path_factory):
    """The simulated device fails at the seventh batch it is waited on (IOCs run one at a
    time: they share the CA port this test run chose)."""
    ioc = simulator_ioc(tmp_path_factory, "PMGPUSIM:", "--backend", "gpu", fault="lost@7")
    yield ioc
    stop_ioc(ioc)


def test_the_gpu_backend_runs_shows_its_figures_and_survives_a_lost_device(gpu_ioc):
    ca = Client(gpu_ioc.prefix)
    assert ca.text("Pipe:Backend") == "GPU" and ca.text("Pipe:Backend_RBV") == "GPU"
    assert ca.text("cam1:Backend_RBV") == "GPU"
    assert ca.text("Pipe:GpuDevice_RBV").startswith("simulator")
    ca.acquire(2)  # batches 1 and 2
    assert ca.text("cam1:DetectorState_RBV") == "Idle"
    assert ca.get("Pipe:FramesProcessed_RBV") == 2
    assert ca.get("Stats1:Total_RBV") == counter_array_image(LAYOUT, 1, 12).sum()
    ca.wait_for("Pipe:GpuAssembleTime_RBV", lambda v: v > 0)
    assert ca.get("Pipe:GpuH2D_RBV") > 0 and ca.get("Pipe:GpuStatsTime_RBV") > 0
    assert ca.get("Pipe:GpuInFlight_RBV") == 0 and ca.text("Pipe:GpuMessage_RBV") == ""

    # a slow acquisition (a frame every 5 s): device memory in use, no backend change
    ca.put("cam1:AcquirePeriod", 5.0)
    ca.put("cam1:NumImages", 100)
    done = threading.Event()
    ca.pv("cam1:Acquire").put(1, callback=lambda **_: done.set())
    try:
        ca.wait_for("Pipe:GpuMemoryUsed_RBV", lambda v: v > 0)
        assert ca.refused("Pipe:Backend", "CPU")
        assert "while acquiring" in ca.wait_for(
            "Pipe:GpuMessage_RBV", lambda v: "while acquiring" in v, text=True)
        assert ca.text("Pipe:Backend") == "GPU"
    finally:
        ca.put("cam1:Acquire", 0)
    assert done.wait(30), "Acquire did not complete after the stop"
    assert ca.get("Pipe:FramesProcessed_RBV") <= 4  # batches 3 .. 6 at most

    # the seventh batch finds the device lost: Acquire completes, in Error, with the reason
    ca.put("cam1:AcquirePeriod", 0.001)
    t0 = time.monotonic()
    ca.acquire(8, timeout=30)
    assert time.monotonic() - t0 < 30
    assert ca.text("cam1:DetectorState_RBV") == "Error"
    assert "device lost" in ca.text("cam1:StatusMessage_RBV")
    assert "device lost" in ca.wait_for("Pipe:GpuMessage_RBV", lambda v: "lost" in v, text=True)
    assert ca.get("Pipe:FramesProcessed_RBV") < 8
    assert ca.get("Heartbeat_RBV") > 0  # the IOC goes on

    ca.put("Pipe:Backend", "CPU")  # between acquisitions: the figures empty out
    assert ca.text("Pipe:Backend_RBV") == "CPU"
    ca.acquire(2)
    assert ca.text("cam1:DetectorState_RBV") == "Idle" and ca.get("Pipe:FramesProcessed_RBV") == 2
    assert ca.get("Stats1:Total_RBV") == counter_array_image(LAYOUT, 1, 12).sum()
    assert ca.text("Pipe:GpuDevice_RBV") == "" and ca.get("Pipe:GpuAssembleTime_RBV") == 0
    assert ca.get("Pipe:GpuMemoryTotal_RBV") == 0 and ca.text("Pipe:GpuMessage_RBV") == ""
