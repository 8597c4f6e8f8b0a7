"""The engine on the GPU backend: the conveyor in the pipeline thread, backend choice, faults.

``gpusim``: :func:`test_engine_under_simulator` runs ``TestSimulated`` in a subprocess with
``NUMBA_ENABLE_CUDASIM=1`` (numba must start with its simulator; see test_gpu_kernels.py):
the engine with ``GpuBackend`` on the simulated device writes the same HDF5 frames and
computes the same statistics and preview as with ``CpuBackend``; a device that fails (lost,
out of memory, hung) ends the acquisition in Error with its message, never hangs it, and the
node acquires again afterwards. ``gpu``: the same comparison on a CUDA device, one full module.
Unmarked: choosing the backend on a machine without a device.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import h5py
import numpy as np
import pytest

from pimega.cli.nodes import simulated_node
from pimega.core.errors import ConfigError
from pimega.core.geometry import ArrayLayout, ModuleGeometry
from pimega.pipeline.backend import CpuBackend, make_backend
from pimega.pipeline.correct import Corrections
from pimega.runtime import AcquisitionEnded, CaptureSettings, DetectorState
from pimega.runtime.engine import Acquisition
from pimega.sim.patterns import counter_array_image

from .gpusim import assert_stats_match, run_under_simulator

SIMULATED = os.environ.get("NUMBA_ENABLE_CUDASIM") == "1"
SMALL = ModuleGeometry(2, 2, 16)


def _device_here() -> bool:
    """Whether this machine has a usable GPU (then "no GPU" cannot be tested here)."""
    if SIMULATED:
        return True
    try:
        make_backend("gpu").close()
    except ConfigError:
        return False
    return True


DEVICE = _device_here() and not SIMULATED


@pytest.mark.gpusim
@pytest.mark.skipif(SIMULATED, reason="already under the simulator")
def test_engine_under_simulator():
    """``TestSimulated`` in a subprocess that starts numba with its CUDA simulator."""
    run_under_simulator(__file__)


def acquire(engine: Acquisition, n: int, path: Path | None = None, depth: int = 12,
            timeout: float = 60.0, interval_s: float = 60.0) -> None:
    """``n`` frames (into ``path`` if given); stats and preview every ``interval_s`` (by
    default of the first and last frame only)."""
    engine.configure(bit_depth=depth, n_images=n, acquire_time_s=1e-3, acquire_period_s=1e-3,
                     stats_interval_s=interval_s, preview_interval_s=interval_s)
    if path is not None:
        engine.start_capture(CaptureSettings(str(path), num_capture=n))
    engine.start()
    assert engine.wait(timeout=timeout), "acquisition did not end"
    if path is not None:
        assert engine.wait_capture(timeout=timeout), "capture did not end"


def wait_for_event(events: list, kind: type, timeout: float = 5.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = [e for e in events if isinstance(e, kind)]
        if found:
            return found[-1]
        time.sleep(0.01)
    raise AssertionError(f"no {kind.__name__} within {timeout} s")


@pytest.mark.gpusim
class TestSimulated:
    __test__ = SIMULATED  # collected in test_engine_under_simulator's subprocess only

    @pytest.mark.parametrize("case", ["1 module, raw", "2x2 modules, dark+flat"])
    def test_gpu_backend_writes_the_frames_and_stats_of_the_cpu(self, tmp_path, case):
        layout = ArrayLayout(SMALL) if case.startswith("1") else ArrayLayout(
            ModuleGeometry(2, 2, 8), 2, 2)
        corrections = Corrections()
        if "dark" in case:
            rng = np.random.default_rng(3)
            corrections = Corrections(
                dark=rng.integers(0, 9, layout.shape).astype(np.uint16),
                flat=rng.integers(100, 200, layout.shape).astype(np.uint16))
        n = 4
        seen = {}
        for name in ("CPU", "GPU"):
            with simulated_node(layout, backend=make_backend(name)) as engine:
                engine.configure(corrections=corrections)
                acquire(engine, n, tmp_path / f"{name}.h5")
                status = engine.status()
                assert (status.state, status.frames_processed) == (DetectorState.IDLE, n)
                assert status.backend == name
                latest_stats, latest_preview = engine.latest_stats(), engine.latest_preview()
                assert latest_stats is not None and latest_preview is not None
                stages = {s.name: s for s in status.stages}
                seen[name] = (latest_stats, latest_preview, stages, status)
            with h5py.File(tmp_path / f"{name}.h5") as f:
                seen[name] += (f["/entry/data/data"][()],
                               f["/entry/instrument/detector/frame_number"][()])
        cpu, gpu = seen["CPU"], seen["GPU"]
        assert gpu[4].shape == (n, *layout.shape) and gpu[4].dtype == cpu[4].dtype
        np.testing.assert_array_equal(gpu[4].view(f"u{gpu[4].itemsize}"),
                                      cpu[4].view(f"u{cpu[4].itemsize}"))
        np.testing.assert_array_equal(gpu[5], cpu[5])
        if not corrections.floating:
            np.testing.assert_array_equal(gpu[4][2], counter_array_image(layout, 2, 12))
        assert gpu[0][0] == cpu[0][0] == n  # the last frame's stats, as the CPU's
        assert_stats_match(gpu[0][1], cpu[0][1])
        assert gpu[1][0] == cpu[1][0] == n
        np.testing.assert_array_equal(gpu[1][1], cpu[1][1])
        for name in ("stats", "preview"):  # first and last frame, the rest skipped
            assert (gpu[2][name].total, gpu[2][name].skipped) == (2, n - 2), name
        figures = gpu[3].gpu
        assert figures.device.startswith("simulator") and figures.frames_in_flight == 0
        assert figures.h2d_gb_s > 0 and figures.gpu_ms_per_frame["assemble"] > 0
        assert cpu[3].gpu.device == "" and cpu[3].gpu.gpu_ms_per_frame == {}

    def test_backend_choice_between_acquisitions(self):
        layout = ArrayLayout(SMALL)
        with simulated_node(layout) as engine:
            assert (engine.backend.name, engine.backend_choice) == ("CPU", "CPU")
            acquire(engine, 1)
            gpu = engine.select_backend("gpu")
            assert (gpu.name, engine.status().backend, engine.status().backend_choice) == (
                "GPU", "GPU", "GPU")
            assert engine.select_backend("Auto") is gpu  # the device is kept
            assert engine.status().backend_choice == "Auto"
            engine.configure(n_images=200, acquire_time_s=1e-3, acquire_period_s=1e-3)
            engine.start()
            with pytest.raises(ConfigError, match="while acquiring"):
                engine.select_backend("CPU")
            assert "while acquiring" in engine.status().backend_message
            engine.stop()
            assert engine.wait(timeout=30)
            with pytest.raises(ConfigError, match="one of Auto, CPU, GPU"):
                engine.select_backend("TPU")
            assert engine.select_backend("CPU").name == "CPU"
            acquire(engine, 2)
            status = engine.status()
            assert (status.backend, status.frames_processed, status.gpu.device) == ("CPU", 2, "")
            assert status.backend_message == ""

    @pytest.mark.parametrize("fault", ["lost@3", "hang@2"])
    def test_a_failing_device_stops_the_acquisition_with_its_message(self, fault):
        from pimega.pipeline.gpu import GpuBackend
        from pimega.pipeline.gpu.device import FaultyDevice, NumbaDevice

        layout = ArrayLayout(SMALL)
        backend = GpuBackend(timeout_s=0.5, device=FaultyDevice.parse(NumbaDevice(), fault))
        events: list = []
        with simulated_node(layout, backend=backend) as engine:
            engine.subscribe(events.append)
            t0 = time.monotonic()
            acquire(engine, 6, timeout=30)
            assert time.monotonic() - t0 < 30
            status = engine.status()
            expected = "device lost" if fault.startswith("lost") else "did not finish"
            assert status.state == DetectorState.ERROR and expected in status.message
            assert expected in status.backend_message and status.gpu.error
            ended = wait_for_event(events, AcquisitionEnded)
            assert ended.state == DetectorState.ERROR and expected in ended.message
            assert ended.frames < 6
            engine.select_backend("CPU")  # nothing held on to: the node acquires again
            acquire(engine, 8)
            status = engine.status()
            assert (status.state, status.frames_processed) == (DetectorState.IDLE, 8)

    def test_out_of_memory_at_start_is_the_nodes_error(self):
        from pimega.pipeline.gpu import GpuBackend, GpuError
        from pimega.pipeline.gpu.device import FaultyDevice, NumbaDevice

        backend = GpuBackend(device=FaultyDevice(NumbaDevice(), "oom"))
        with simulated_node(ArrayLayout(SMALL), backend=backend) as engine:
            engine.configure(n_images=2)
            with pytest.raises(GpuError, match="out of GPU memory"):
                engine.start()
            status = engine.status()
            assert status.state == DetectorState.ERROR and not engine.acquiring
            assert "out of GPU memory" in status.message


# --- a CUDA device ---------------------------------------------------------------------------

@pytest.mark.gpu
@pytest.mark.skipif(not DEVICE, reason="no CUDA device")
@pytest.mark.parametrize("depth", [12, 24])
def test_engine_on_a_device_writes_the_frames_and_stats_of_the_cpu(tmp_path, depth):
    """One full module (1536²) on the device against the CPU: every frame, the last frame's
    statistics and preview; the device's figures while it ran."""
    layout = ArrayLayout(ModuleGeometry())
    n = 24
    seen = {}
    for name in ("CPU", "GPU"):
        with simulated_node(layout, backend=make_backend(name)) as engine:
            acquire(engine, n, tmp_path / f"{name}.h5", depth=depth, interval_s=0.0)
            status = engine.status()
            assert (status.state, status.frames_processed, status.backend) == (
                DetectorState.IDLE, n, name)
            stats, preview = engine.latest_stats(), engine.latest_preview()
            assert stats is not None and preview is not None
            seen[name] = (stats, preview, status)
        with h5py.File(tmp_path / f"{name}.h5") as f:
            seen[name] += (f["/entry/data/data"][()],)
    cpu, gpu = seen["CPU"], seen["GPU"]
    np.testing.assert_array_equal(gpu[3], cpu[3])
    assert gpu[0][0] == cpu[0][0] == n
    assert_stats_match(gpu[0][1], cpu[0][1])
    np.testing.assert_array_equal(gpu[1][1], cpu[1][1])
    figures = gpu[2].gpu
    assert figures.device and figures.h2d_gb_s > 0 and figures.memory_total_bytes > 0
    assert all(figures.gpu_ms_per_frame[s] > 0 for s in ("h2d", "assemble", "stats", "d2h"))
    print(f"device {figures.device}: {figures.gpu_ms_per_frame} ms a frame, "
          f"{figures.h2d_gb_s:.1f} GB/s in, decode {gpu[2].stages[1].time_per_frame_ms:.3f} "
          f"ms a frame on the pipeline thread (CPU: {cpu[2].stages[1].time_per_frame_ms:.3f})")


# --- a machine without a device --------------------------------------------------------------

@pytest.mark.skipif(_device_here(), reason="this machine has a GPU (or simulates one)")
def test_choosing_gpu_without_a_device_is_refused_and_auto_falls_back():
    engine = Acquisition(ArrayLayout(SMALL), [])  # not opened: no kernels compiled
    try:
        with pytest.raises(ConfigError, match="GPU refused: GPU backend unavailable"):
            engine.select_backend("GPU")
        status = engine.status()
        assert (status.backend, status.backend_choice) == ("CPU", "CPU")
        assert status.backend_message.startswith("GPU refused: GPU backend unavailable")
        backend = engine.select_backend("Auto")
        assert isinstance(backend, CpuBackend) and "running on the CPU" in backend.notice
        status = engine.status()
        assert (status.backend, status.backend_choice) == ("CPU", "Auto")
        assert status.backend_message == backend.notice and status.gpu.device == ""
    finally:
        engine.close()
