"""The GPU backend's kernels and conveyor against the CPU path.

``gpusim``: every kernel under numba-cuda's simulator on small frames, and the whole conveyor
of ``GpuBackend`` on the simulated device (``NumbaDevice``: numba-cuda's own memory, streams,
events and copies) and on ``CupyDevice`` over a stand-in for CuPy (host memory, copies done
at once), bit for bit against the CPU path for every depth and correction. The simulator
must be chosen before numba is first imported, which the rest of the suite does, so
:func:`test_under_simulator` runs this module's ``TestSimulated`` in a subprocess with
``NUMBA_ENABLE_CUDASIM=1``; elsewhere that class is not collected. ``gpu``: the backend on
a CUDA device through CuPy (and through numba-cuda alone). Unmarked: what happens without
CuPy or a device.
"""

from __future__ import annotations

import ctypes
import os
import sys
import types

import numpy as np
import pytest

from pimega.core.bitpack import dtype_for_depth
from pimega.core.errors import ConfigError
from pimega.core.geometry import BIT_DEPTHS, ArrayLayout, ModuleGeometry
from pimega.pipeline.assemble import decode_assemble
from pimega.pipeline.correct import Corrections, apply_corrections, output_dtype
from pimega.pipeline.gpu.backend import STAGES, GpuBackend, GpuError, stats_from_result
from pimega.pipeline.gpu.device import CupyDevice, Device, NumbaDevice
from pimega.pipeline.stats import RoiSettings, bin_for_preview, compute_stats, roi
from pimega.sim.patterns import module_payload

from .gpusim import assert_stats_match, run_under_simulator

SIMULATED = os.environ.get("NUMBA_ENABLE_CUDASIM") == "1"


def _no_device_reason() -> str | None:
    if SIMULATED:
        return "numba runs its CUDA simulator in this process"
    try:
        import cupy  # pyright: ignore[reportMissingImports]
    except ImportError:
        return "CuPy not installed"
    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except cupy.cuda.runtime.CUDARuntimeError:
        count = 0
    return None if count else "no CUDA device"


NO_DEVICE = _no_device_reason()
needs_device = pytest.mark.skipif(NO_DEVICE is not None, reason=NO_DEVICE or "")

LAYOUTS = {
    "1 module of 2x2 chips of 16": ArrayLayout(ModuleGeometry(2, 2, 16)),
    "2x2 modules of 2x2 chips of 8": ArrayLayout(ModuleGeometry(2, 2, 8), 2, 2),
    "1 module of 3x3 chips of 5": ArrayLayout(ModuleGeometry(3, 3, 5)),
}


def random_image(shape: tuple[int, ...], dtype: np.dtype, seed: int) -> np.ndarray:
    """Random pixels of ``dtype``: counts to 2²⁴, or floats with negatives and both zeros."""
    rng = np.random.default_rng(seed)
    if dtype.kind == "f":
        image = rng.normal(0.0, 1e3, shape).astype(dtype)
        image.flat[::7] = -0.0
        image.flat[3::11] = 0.0
        return image
    high = min(np.iinfo(dtype).max, (1 << 24) - 1)
    return rng.integers(0, high, shape, endpoint=True).astype(dtype)


def frame_payloads(layout: ArrayLayout, depth: int, seed: int) -> np.ndarray:
    """(n_modules, payload_size) wire payloads of a random image (at 1 bit the counter
    pattern looks the same rotated by 180°)."""
    image = random_image(layout.shape, dtype_for_depth(depth), seed) & ((1 << depth) - 1)
    height, width = layout.module.shape
    return np.stack([module_payload(image[y : y + height, x : x + width], layout.module, depth)
                     for y, x in map(layout.module_origin, range(layout.n_modules))])


def random_corrections(shape: tuple[int, int], depth: int, which: str, seed: int) -> Corrections:
    """Dark and flat that leave negative values and unusable (flat ≤ dark) pixels."""
    rng = np.random.default_rng(seed)
    high = (1 << depth) - 1
    raw = dtype_for_depth(depth)
    dark = rng.integers(0, max(high // 4, 1), shape, endpoint=True).astype(raw)
    flat = rng.integers(0, high, shape, endpoint=True).astype(raw)
    mask = rng.random(shape) < 0.1
    return Corrections(dark=dark if "dark" in which else None,
                       flat=flat if "flat" in which else None,
                       bad_pixel_mask=mask if "mask" in which else None)


def assert_matches(gpu: np.ndarray, cpu: np.ndarray, maxulp: int = 0) -> None:
    """Bit for bit (the simulator: NumPy's arithmetic), or floats within ``maxulp`` (a device:
    integers stay exact, floats within 1 ulp is what the GPU path promises)."""
    assert gpu.dtype == cpu.dtype and gpu.shape == cpu.shape
    if maxulp and cpu.dtype.kind == "f":
        np.testing.assert_array_max_ulp(gpu, cpu, maxulp=maxulp)
    else:
        uint = np.dtype(f"u{cpu.dtype.itemsize}")
        np.testing.assert_array_equal(gpu.view(uint), cpu.view(uint))




def cpu_image(payloads: np.ndarray, layout: ArrayLayout, depth: int,
              corrections: Corrections) -> np.ndarray:
    """The CPU path's image of one frame: decode + assemble, then the corrections."""
    raw = decode_assemble(payloads, layout, depth)
    return apply_corrections(raw, corrections,
                             out=np.empty(raw.shape, output_dtype(depth, corrections)))


# --- the simulator ---------------------------------------------------------------------------

@pytest.mark.gpusim
@pytest.mark.skipif(SIMULATED, reason="already under the simulator")
def test_under_simulator():
    """``TestSimulated`` in a subprocess that starts numba with its CUDA simulator."""
    run_under_simulator(__file__)


@pytest.fixture(scope="module")
def k():
    """The kernels module (numba-cuda: under the simulator where it is on)."""
    from pimega.pipeline.gpu import kernels

    return kernels


@pytest.fixture(scope="module")
def stream():
    from numba import cuda

    return cuda.stream()


@pytest.mark.gpusim
class TestSimulated:
    __test__ = SIMULATED  # collected in test_under_simulator's subprocess only

    @pytest.mark.parametrize("depth", BIT_DEPTHS)
    @pytest.mark.parametrize("name", LAYOUTS)
    def test_assemble_matches_cpu(self, k, stream, name, depth):
        layout = LAYOUTS[name]
        batch = np.stack([frame_payloads(layout, depth, seed) for seed in (1, 6)])
        images = np.zeros((2, *layout.shape), dtype_for_depth(depth))
        k.assemble(stream, batch.reshape(-1), batch[0].size, batch.shape[2], images,
                   k.geometry(layout, depth), depth)
        for payloads, image in zip(batch, images, strict=True):
            assert_matches(image, decode_assemble(payloads, layout, depth))

    @pytest.mark.parametrize("which", ["dark", "flat", "dark+flat+mask", "dark+mask", "mask"])
    @pytest.mark.parametrize("depth", [6, 12, 24])
    def test_correct_matches_cpu(self, k, stream, depth, which):
        shape = (12, 20)
        corrections = random_corrections(shape, depth, which, seed=depth)
        raw = np.stack([random_image(shape, dtype_for_depth(depth), seed) for seed in (1, 2)])
        raw &= (1 << depth) - 1
        unused = np.zeros((1, 1), np.float32)
        if corrections.floating:
            images = np.empty(raw.shape, np.float32)
            k.correct(stream, raw, images,
                      corrections.dark_float if corrections.dark is not None else unused,
                      corrections.denominator if corrections.flat is not None else unused,
                      corrections.bad_pixel_mask if "mask" in which else unused.astype(bool),
                      corrections.dark is not None, corrections.flat is not None,
                      "mask" in which)
        else:
            images = raw.copy()
            k.zero_bad(stream, images, corrections.bad_pixel_mask)
        for b in range(len(raw)):
            assert_matches(images[b], apply_corrections(raw[b], corrections))

    @pytest.mark.parametrize("factor", [1, 2, 3, 5])
    @pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.uint32, np.float32])
    def test_bin_means_match_preview(self, k, stream, dtype, factor):
        image = random_image((13, 22), np.dtype(dtype), seed=factor)
        if image.dtype.kind == "f":
            image[:factor, :factor] = -0.0  # a block of −0.0 only: its mean is −0.0
        expected = bin_for_preview(image, factor)
        out = np.empty(expected.shape, image.dtype)
        k.bin_means(stream, image, factor, out)
        assert_matches(out, expected)

    @pytest.mark.parametrize("dtype", [np.uint16, np.float32])
    def test_bin_sums_match_roi(self, k, stream, dtype):
        image = random_image((16, 20), np.dtype(dtype), seed=3)
        expected = roi(image, 3, 2, 14, 11, bin_x=3, bin_y=2)
        out = np.empty(expected.shape, expected.dtype)
        k.bin_sums(stream, image, 2, 3, 2, 3, out)
        assert_matches(out, expected)

    @pytest.mark.parametrize(("dtype", "shape", "region", "threshold"), [
        (np.uint8, (24, 30), (0, 0, 24, 30), 0.0),
        (np.uint16, (64, 70), (0, 0, 64, 70), 0.0),  # three blocks of partials
        (np.uint32, (20, 24), (3, 5, 13, 9), 0.0),
        (np.uint32, (20, 24), (0, 0, 20, 24), 2.0**23),
        (np.float32, (20, 24), (2, 1, 17, 20), 0.0),
        (np.uint64, (8, 9), (0, 0, 8, 9), 0.0),
        (np.float64, (8, 9), (1, 1, 7, 8), 100.0),
    ])
    def test_moments_match_stats(self, k, stream, dtype, shape, region, threshold):
        image = random_image(shape, np.dtype(dtype), seed=shape[1])
        y0, x0, rows, cols = region
        area = image[y0 : y0 + rows, x0 : x0 + cols]
        for at in (rows * cols - 1, 5, rows * cols // 2):  # ties: the first occurrence wins
            area.flat[at] = area.min()
            area.flat[at - 3] = area.max()
        partial_sums = np.zeros((k.MAX_PARTIALS, k.N_SUMS))
        partial_at = np.zeros((k.MAX_PARTIALS, 2), np.int64)
        result = np.zeros(k.RESULT_SIZE)
        k.moments(stream, image, y0, x0, rows, cols, threshold, partial_sums, partial_at, result)
        assert_stats_match(stats_from_result(result, rows * cols),
                           compute_stats(area, threshold))

    @pytest.mark.parametrize("device_kind", ["numba", "cupy"])
    def test_conveyor_matches_cpu(self, monkeypatch, device_kind):
        """Batches turning through the three slots: images, stats, preview and status."""
        device = simulated_device(monkeypatch, device_kind)
        layout = LAYOUTS["2x2 modules of 2x2 chips of 8"]
        corrections = random_corrections(layout.shape, 12, "dark+flat+mask", seed=5)
        backend = GpuBackend(batch_size=2, device=device)
        frames = [frame_payloads(layout, 12, n) for n in range(7)]
        outs = [backend.host_empty(layout.shape, np.float32) for _ in frames]
        region = RoiSettings(min_x=3, min_y=5, size_y=20, bin_x=3, bin_y=2)
        with backend.processor(layout, 12, corrections) as processor:
            batches = ([(0, 2, None, None), (2, 3, region, None), (3, 5, None, 3),
                        (5, 7, region, 4)] if device_kind == "numba"
                       else [(0, 2, None, None), (2, 3, None, 3), (3, 5, None, None),
                             (5, 7, region, 4)])  # CuPy's copies: one batch with stats
            tickets = []
            for first, end, batch_roi, factor in batches:
                tickets.append(processor.submit(
                    [(list(frames[n]), outs[n]) for n in range(first, end)], batch_roi, factor))
                if len(tickets) == 3:
                    assert backend.status().frames_in_flight == 5
                    assert backend.status().memory_used_bytes > 0 or device_kind == "cupy"
            results = [processor.collect(ticket) for ticket in tickets]
        expected = [cpu_image(p, layout, 12, corrections) for p in frames]
        for out, image in zip(outs, expected, strict=True):
            assert_matches(out, image)
        assert results[0].stats is None and results[0].preview is None
        for (_, end, batch_roi, factor), result in zip(batches, results, strict=True):
            last = expected[end - 1]
            if batch_roi is not None:
                assert result.stats is not None
                assert_stats_match(result.stats, compute_stats(
                    roi(last, 3, 5, 0, 20, bin_x=3, bin_y=2)))
            if factor is not None:
                assert result.preview is not None
                assert_matches(result.preview, bin_for_preview(last, factor))
            assert set(result.gpu_ms) <= set(STAGES) and "assemble" in result.gpu_ms
        status = backend.status()
        assert status.device.startswith("simulator") and status.frames_in_flight == 0
        assert set(status.gpu_ms_per_frame) == set(STAGES) and status.h2d_gb_s > 0
        assert status.error is None
        backend.close()

    @pytest.mark.parametrize(("depth", "which"), [(1, ""), (6, "mask"), (12, "dark+flat+mask"),
                                                  (24, "mask"), (24, "dark+flat")])
    def test_conveyor_matches_cpu_at_every_depth(self, depth, which):
        """Two frames a batch from pinned ring slots longer than a payload, as the engine
        hands them over, on the simulated device."""
        layout = LAYOUTS["1 module of 3x3 chips of 5"]
        corrections = random_corrections(layout.shape, depth, which, seed=depth)
        backend = GpuBackend(batch_size=2)
        frames = [frame_payloads(layout, depth, n) for n in range(3)]
        rings = backend.host_empty((3, layout.n_modules, layout.module.payload_size(24)),
                                   np.uint8)
        for ring, payloads in zip(rings, frames, strict=True):
            ring[:, : payloads.shape[1]] = payloads
        outs = [backend.host_empty(layout.shape, output_dtype(depth, corrections))
                for _ in frames]
        with backend.processor(layout, depth, corrections) as processor:
            first = processor.submit([(list(rings[n]), outs[n]) for n in (0, 1)])
            second = processor.submit([(list(rings[2]), outs[2])])
            processor.collect(second)
            processor.collect(first)
        for out, payloads in zip(outs, frames, strict=True):
            assert_matches(out, cpu_image(payloads, layout, depth, corrections))

    def test_raw_frames_and_refusals(self):
        layout = LAYOUTS["1 module of 2x2 chips of 16"]
        corrections = random_corrections(layout.shape, 6, "mask", seed=6)
        backend = GpuBackend(batch_size=2)
        payloads = frame_payloads(layout, 6, 3)
        out = backend.host_empty(layout.shape, np.uint8)
        with backend.processor(layout, 6, corrections) as processor:
            result = processor.collect(processor.submit([(list(payloads), out)], RoiSettings(), 1))
            expected = cpu_image(payloads, layout, 6, corrections)
            assert_matches(out, expected)
            assert result.stats is not None and result.preview is not None
            assert_stats_match(result.stats, compute_stats(expected))
            assert_matches(result.preview, expected)
            out[...] = 0
            processor.process(list(payloads), out)  # the FrameProcessor protocol
            assert_matches(out, expected)
            short = payloads[0][:-1]
            for frames, factor in [([([short], out)], None),
                                   ([(list(payloads), out.astype(np.uint16))], None),
                                   ([(list(payloads), out)] * 3, None),
                                   ([(list(payloads), out)], 0)]:
                with pytest.raises(ConfigError):
                    processor.submit(frames, None, factor)

    @pytest.mark.parametrize("fault", ["lost@2", "hang@2", "oom@3"])
    def test_a_failing_device_raises_gpu_error_and_never_hangs(self, fault):
        from pimega.pipeline.gpu.device import FaultyDevice

        layout = LAYOUTS["1 module of 2x2 chips of 16"]
        backend = GpuBackend(batch_size=1, timeout_s=0.5,
                             device=FaultyDevice.parse(NumbaDevice(), fault))
        payloads = list(frame_payloads(layout, 12, 1))
        out = backend.host_empty(layout.shape, np.uint16)
        if fault.startswith("oom"):
            with pytest.raises(GpuError, match="out of GPU memory allocating buffers"):
                backend.processor(layout, 12, Corrections())
        else:
            with backend.processor(layout, 12, Corrections()) as processor:
                processor.process(payloads, out)
                ticket = processor.submit([(payloads, out)])
                with pytest.raises(GpuError, match=r"device lost|did not finish"):
                    processor.collect(ticket)
        status = backend.status()
        assert status.error is not None and status.frames_in_flight == 0


def simulated_device(monkeypatch: pytest.MonkeyPatch, kind: str) -> Device:
    """The simulator's own device, or ``CupyDevice`` over a stand-in for CuPy."""
    if kind == "numba":
        return NumbaDevice()
    install_fake_cupy(monkeypatch)
    return CupyDevice()


def install_fake_cupy(monkeypatch: pytest.MonkeyPatch) -> None:
    """CuPy as host memory whose copies and kernels complete at once, under the simulator."""
    from numba import cuda

    class DeviceArray(np.ndarray):
        @property
        def __cuda_array_interface__(self):
            return self.__array_interface__

    class Error(RuntimeError):
        pass

    class Stream:
        ptr = 0

        def __init__(self, non_blocking: bool = False) -> None:
            pass

        def __enter__(self) -> Stream:
            return self

        def __exit__(self, *exc: object) -> None:
            pass

        def wait_event(self, event: object) -> None:
            pass

    class Event:
        done = True

        def record(self, stream: Stream) -> None:
            pass

    def memcpy(dst: int, src: int, nbytes: int, kind: int, stream: int) -> None:
        ctypes.memmove(dst, src, nbytes)

    pool = types.SimpleNamespace(free_all_blocks=lambda: None)
    runtime = types.SimpleNamespace(
        CUDARuntimeError=Error, getDeviceCount=lambda: 1, memcpyAsync=memcpy,
        getDeviceProperties=lambda device: {"name": b"simulator"},
        memGetInfo=lambda: (3 << 30, 4 << 30))
    fake = types.SimpleNamespace(
        cuda=types.SimpleNamespace(
            runtime=runtime, driver=types.SimpleNamespace(CUDADriverError=Error),
            memory=types.SimpleNamespace(OutOfMemoryError=MemoryError),
            Device=lambda: types.SimpleNamespace(id=0), Stream=Stream, Event=Event,
            get_elapsed_time=lambda start, end: 0.25),
        empty=lambda shape, dtype: np.zeros(shape, dtype).view(DeviceArray),
        asarray=lambda array: np.asarray(array).view(DeviceArray),
        ascontiguousarray=lambda array: np.ascontiguousarray(array).view(DeviceArray),
        get_default_memory_pool=lambda: pool, get_default_pinned_memory_pool=lambda: pool)
    monkeypatch.setitem(sys.modules, "cupy", fake)
    monkeypatch.setitem(sys.modules, "cupyx",
                        types.SimpleNamespace(empty_pinned=lambda shape, dtype: np.empty(shape,
                                                                                         dtype)))
    monkeypatch.setattr(cuda, "as_cuda_array", lambda array, sync=True: array, raising=False)
    monkeypatch.setattr(cuda, "external_stream", lambda ptr: 0)


# --- without CuPy or a device ----------------------------------------------------------------

def test_backend_refuses_without_cupy(monkeypatch):
    monkeypatch.setitem(sys.modules, "cupy", None)  # import cupy raises ImportError
    with pytest.raises(ConfigError, match="CuPy not installed"):
        GpuBackend()


def test_backend_refuses_without_device(monkeypatch):
    class CUDARuntimeError(RuntimeError):
        pass

    def no_device() -> int:
        raise CUDARuntimeError("cudaErrorNoDevice: no CUDA-capable device is detected")

    runtime = types.SimpleNamespace(CUDARuntimeError=CUDARuntimeError, getDeviceCount=no_device)
    monkeypatch.setitem(sys.modules, "cupy",
                        types.SimpleNamespace(cuda=types.SimpleNamespace(runtime=runtime)))
    monkeypatch.setitem(sys.modules, "cupyx", types.SimpleNamespace())
    with pytest.raises(ConfigError, match="no CUDA device"):
        GpuBackend()


def test_bench_says_why_it_cannot_run(monkeypatch):
    from pimega.cli import bench_gpu

    monkeypatch.setitem(sys.modules, "cupy", None)
    result = bench_gpu.run()
    assert result["ran"] is False and "CuPy not installed" in result["reason"]


# --- a CUDA device ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def backend():
    backend = GpuBackend(batch_size=3)
    backend.warm_up()
    yield backend
    backend.close()


@pytest.mark.gpu
@needs_device
@pytest.mark.parametrize("which", ["", "mask", "dark+flat+mask"])
@pytest.mark.parametrize("depth", BIT_DEPTHS)
@pytest.mark.parametrize("name", [*LAYOUTS, "1 module of 6x6 chips of 256"])
def test_device_matches_cpu(backend, name, depth, which):
    """Batches of 3, 1 and 1 frames in flight together; ROI stats and a preview of each."""
    layout = LAYOUTS.get(name, ArrayLayout(ModuleGeometry()))
    corrections = random_corrections(layout.shape, depth, which, seed=depth)
    frames = [frame_payloads(layout, depth, n) for n in range(5)]
    rings = [backend.host_empty(p.shape, np.uint8) for p in frames]
    for ring, payloads in zip(rings, frames, strict=True):
        ring[...] = payloads
    outs = [backend.host_empty(layout.shape, output_dtype(depth, corrections)) for _ in frames]
    region = RoiSettings(min_x=3, min_y=2, size_x=17, bin_x=2, bin_y=3)
    with backend.processor(layout, depth, corrections) as processor:
        tickets = [processor.submit([(list(rings[n]), outs[n]) for n in range(first, end)],
                                    region, 2) for first, end in ((0, 3), (3, 4), (4, 5))]
        results = [processor.collect(ticket) for ticket in tickets]
    expected = [cpu_image(p, layout, depth, corrections) for p in frames]
    for out, image in zip(outs, expected, strict=True):
        assert_matches(out, image, maxulp=1)
    for end, result in zip((3, 4, 5), results, strict=True):
        last = expected[end - 1]
        assert result.stats is not None and result.preview is not None
        assert_stats_match(result.stats, compute_stats(roi(last, 3, 2, 17, 0, 2, 3)))
        assert_matches(result.preview, bin_for_preview(last, 2), maxulp=1)


@pytest.mark.gpu
@needs_device
def test_device_status_and_pinned_memory(backend):
    import cupy  # pyright: ignore[reportMissingImports]

    layout = ArrayLayout(ModuleGeometry())
    ring = backend.host_empty((2, layout.module.payload_size(12)), np.uint8)
    ring[...] = 7
    attributes = cupy.cuda.runtime.pointerGetAttributes(ring.ctypes.data)
    assert attributes.type == 1  # cudaMemoryTypeHost: pinned, not pageable (0)
    out = backend.host_empty(layout.shape, np.uint16)
    with backend.processor(layout, 12, Corrections()) as processor:
        for _ in range(3):
            processor.process([ring[0]], out)
        status = backend.status()
    assert status.device and status.frames_in_flight == 0
    assert 0 < status.memory_used_bytes < status.memory_total_bytes
    assert status.h2d_gb_s > 0 and status.error is None
    times = status.gpu_ms_per_frame
    assert all(times[stage] > 0 for stage in ("h2d", "assemble", "d2h")), times
    assert times["stats"] == times["preview"] == 0  # none asked for


@pytest.mark.gpu
@needs_device
@pytest.mark.parametrize("name", ["1 module of 2x2 chips of 16", "1 module of 6x6 chips of 256"])
def test_numba_device_runs_the_conveyor_on_a_device(name):
    """numba-cuda's own memory, pinned arrays, streams and events: a device without CuPy."""
    layout = LAYOUTS.get(name, ArrayLayout(ModuleGeometry()))
    backend = GpuBackend(batch_size=2, device=NumbaDevice())
    try:
        corrections = random_corrections(layout.shape, 12, "dark+flat+mask", seed=4)
        frames = [frame_payloads(layout, 12, n) for n in range(5)]
        rings = backend.host_empty((5, layout.n_modules, frames[0].shape[1]), np.uint8)
        rings[...] = np.stack(frames)
        outs = backend.host_empty((5, *layout.shape), np.float32)
        with backend.processor(layout, 12, corrections) as processor:
            tickets = [processor.submit([(list(rings[n]), outs[n]) for n in range(a, b)],
                                        RoiSettings(bin_x=2), 2)
                       for a, b in ((0, 2), (2, 4), (4, 5))]
            results = [processor.collect(ticket) for ticket in tickets]
        expected = [cpu_image(p, layout, 12, corrections) for p in frames]
        for out, image in zip(outs, expected, strict=True):
            assert_matches(out, image, maxulp=1)
        for end, result in zip((2, 4, 5), results, strict=True):
            assert result.stats is not None
            whole_binned = roi(expected[end - 1], 0, 0, 0, 0, bin_x=2)
            assert_stats_match(result.stats, compute_stats(whole_binned))
        status = backend.status()
        assert status.h2d_gb_s > 0 and 0 < status.memory_used_bytes < status.memory_total_bytes
    finally:
        backend.close()


@pytest.mark.gpu
@needs_device
def test_device_out_of_memory_is_a_clear_error():
    huge = GpuBackend(batch_size=1 << 20)  # 1.8 TB of 6-bit module payloads a slot
    try:
        with pytest.raises(GpuError, match="out of GPU memory allocating buffers"):
            huge.processor(ArrayLayout(ModuleGeometry()), 6, Corrections())
        assert huge.status().error is not None
    finally:
        huge.close()


@pytest.mark.gpu
@needs_device
def test_device_bench_figures():
    from pimega.cli import bench_gpu

    result = bench_gpu.run(n_frames=40)
    assert result["ran"] is True, result
    names = {f["figure"] for f in result["figures"]}
    assert {"gpu_h2d_pinned_GBps", "gpu_pipeline_module_12bit_fps", "gpu_pipeline_module_24bit_fps",
            "gpu_pipeline_2x2_12bit_fps", "gpu_pipeline_2x2_24bit_fps",
            "gpu_pipeline_module_corrected_12bit_fps"} == names
    for figure in result["figures"]:
        assert figure["value"] > 0 and figure["baseline"] > 0
        assert figure["ratio"] == pytest.approx(figure["value"] / figure["baseline"])
