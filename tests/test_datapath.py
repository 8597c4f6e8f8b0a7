"""Simulator → TCP → engine (pipeline) → HDF5, checked bit-exactly against the counter pattern."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import h5py
import hdf5plugin  # noqa: F401 - registers the bitshuffle filter for reading
import numpy as np
import pytest

from pimega.cli.nodes import listening_node, simulated_node
from pimega.core import wire
from pimega.core.bitpack import module_payload
from pimega.core.geometry import ArrayLayout, ModuleGeometry
from pimega.ingest.tcp import TcpSource
from pimega.runtime.engine import Acquisition
from pimega.runtime.settings import CaptureSettings
from pimega.runtime.status import DetectorState
from pimega.sim.patterns import counter_array_image

SMALL = ModuleGeometry(2, 2, 16)


@pytest.fixture
def engine_with_sim(request) -> Iterator[tuple[Acquisition, ArrayLayout]]:
    n_modules = getattr(request, "param", 1)
    layout = ArrayLayout.square(n_modules, SMALL)
    with simulated_node(layout) as engine:
        yield engine, layout


def acquire_to_file(engine: Acquisition, path, depth: int, n: int,
                    compression: str = "none") -> None:
    engine.configure(bit_depth=depth, n_images=n, acquire_time_s=1e-4, acquire_period_s=1e-4)
    engine.start_capture(CaptureSettings(str(path), num_capture=n,
                                         compression=compression))  # type: ignore[arg-type]
    engine.start()
    assert engine.wait(timeout=60), "acquisition did not end"
    assert engine.wait_capture(timeout=60), "capture did not end"


def assert_counter_frames(path, layout: ArrayLayout, depth: int, n: int) -> None:
    with h5py.File(path, "r") as f:
        data = f["/entry/data/data"]
        assert data.shape == (n, *layout.shape)
        assert data.dtype == {1: np.uint8, 6: np.uint8, 12: np.uint16, 24: np.uint32}[depth]
        numbers = f["/entry/instrument/detector/frame_number"][()]
        np.testing.assert_array_equal(numbers, np.arange(n))
        for i in range(n):
            np.testing.assert_array_equal(data[i], counter_array_image(layout, i, depth),
                                          err_msg=f"frame {i} at {depth} bit")


@pytest.mark.parametrize("engine_with_sim", [1, 4], indirect=True, ids=["1x1", "2x2"])
@pytest.mark.parametrize("depth", [1, 6, 12, 24])
def test_bit_exact_round_trip(engine_with_sim, tmp_path, depth):
    engine, layout = engine_with_sim
    path = tmp_path / "run.h5"
    acquire_to_file(engine, path, depth, 20)
    status = engine.status()
    assert status.state is DetectorState.IDLE
    assert (status.frames_processed, status.frames_written, status.frames_dropped) == (20, 20, 0)
    assert_counter_frames(path, layout, depth, 20)


def test_bitshuffle_file_reads_back_identical(engine_with_sim, tmp_path):
    engine, layout = engine_with_sim
    acquire_to_file(engine, tmp_path / "plain.h5", 24, 8)
    acquire_to_file(engine, tmp_path / "bslz4.h5", 24, 8, compression="bslz4")
    with h5py.File(tmp_path / "plain.h5") as plain, h5py.File(tmp_path / "bslz4.h5") as packed:
        assert packed["/entry/data/data"].compression_opts is not None or \
            "32008" in str(packed["/entry/data/data"]._filters)
        np.testing.assert_array_equal(plain["/entry/data/data"][()],
                                      packed["/entry/data/data"][()])
    assert_counter_frames(tmp_path / "bslz4.h5", layout, 24, 8)


def test_many_acquisitions_on_one_engine(engine_with_sim, tmp_path):
    engine, layout = engine_with_sim
    for run in range(3):
        acquire_to_file(engine, tmp_path / f"run{run}.h5", 12, 5)
        assert_counter_frames(tmp_path / f"run{run}.h5", layout, 12, 5)


def test_stop_mid_acquisition_leaves_a_readable_file(engine_with_sim, tmp_path):
    engine, layout = engine_with_sim
    engine.configure(bit_depth=12, n_images=0, acquire_time_s=1e-3, acquire_period_s=1e-3)
    path = tmp_path / "aborted.h5"
    engine.start_capture(CaptureSettings(str(path)))
    engine.start()
    while engine.status().frames_written < 5:
        assert engine.acquiring
        engine.wait(timeout=0.01)
    engine.stop()
    assert engine.wait(timeout=30)
    engine.stop_capture()
    assert engine.wait_capture(timeout=30)
    status = engine.status()
    assert status.state is DetectorState.ABORTED
    written = status.frames_written
    with h5py.File(path, "r") as f:
        assert f["/entry/data/data"].shape[0] == written >= 5
    assert_counter_frames(path, layout, 12, written)


def tcp_address(engine: Acquisition) -> tuple[str, int]:
    (source,) = engine.sources
    assert isinstance(source, TcpSource)
    return source.address


def send_raw(address, *chunks: bytes) -> None:
    with socket.create_connection(address) as s:
        for chunk in chunks:
            s.sendall(chunk)


def test_bad_frames_are_counted_and_the_stream_goes_on(tmp_path):
    """Corrupt frames from an external sender: counted per kind, good ones kept."""
    layout = ArrayLayout(SMALL)
    with listening_node(layout, "127.0.0.1", 0) as engine:
        engine.configure(bit_depth=12, n_images=3)
        engine.start_capture(CaptureSettings(str(tmp_path / "ext.h5"), num_capture=3))
        engine.start()
        image = counter_array_image(layout, 0, 12)
        payload = module_payload(image, SMALL, 12).tobytes()

        def frame(number: int, **change) -> bytes:
            header = wire.make_header(module_id=0, bit_depth=12, frame_number=number,
                                      timestamp_ns=number, chips_x=2, chips_y=2, chip_size=16,
                                      payload=payload, with_crc=True)
            raw = bytearray(header.pack() + payload)
            if "magic" in change:
                raw[:4] = b"XXXX"
            if "crc" in change:
                raw[-1] ^= 0xFF
            return bytes(raw)

        send_raw(tcp_address(engine), frame(0), frame(1, magic=True), frame(1, crc=True),
                 frame(1), b"garbage" * 10, frame(2))
        assert engine.wait(timeout=30)
        assert engine.wait_capture(timeout=30)
        status = engine.status()
    assert status.frames_written == 3
    assert status.corrupt_frames == 3  # bad magic, bad CRC, garbage
    with h5py.File(tmp_path / "ext.h5") as f:
        np.testing.assert_array_equal(f["/entry/data/data"][0], image)


def test_full_disk_stops_capture_with_a_readable_file_and_a_reason(small_tmpfs):
    """A 4 MiB filesystem fills up: the capture ends, the file holds every frame written."""
    layout = ArrayLayout(ModuleGeometry(6, 6, 32))  # 192² uint16: 72 KiB a frame
    path = small_tmpfs / "full.h5"
    with simulated_node(layout) as engine:
        engine.configure(bit_depth=12, n_images=200)
        engine.start_capture(CaptureSettings(str(path)))
        engine.start()
        assert engine.wait(timeout=60)
        assert engine.wait_capture(timeout=30)
        status = engine.status()
    assert status.frames_processed == 200
    assert "disk full" in status.capture.error
    assert not status.capture.active
    written = status.capture.num_captured
    assert 0 < written < 200
    assert status.frames_written == written
    assert_counter_frames(path, layout, 12, written)
