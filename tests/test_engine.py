"""The engine as a pipeline of stages: sources (TCP, replay), consumers, events, hostile input."""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path

import h5py
import numpy as np
import pytest

from pimega.cli.nodes import listening_node, replay_node, simulated_node
from pimega.core import wire
from pimega.core.bitpack import module_payload
from pimega.core.frame import Frame, FrameInfo
from pimega.core.geometry import ArrayLayout, ModuleGeometry
from pimega.core.wire import ImageKey
from pimega.ingest.tcp import TcpSource
from pimega.runtime import AcquisitionEnded, CaptureEnded, CaptureSettings
from pimega.runtime.consumers import ConsumerRunner
from pimega.runtime.engine import Acquisition
from pimega.runtime.pool import ImagePool
from pimega.runtime.recon import LiveRecon
from pimega.sim.patterns import counter_array_image

SMALL = ModuleGeometry(2, 2, 16)
COLUMNS = ("/entry/data/data", "/entry/instrument/detector/frame_number",
           "/entry/instrument/detector/timestamp", "/entry/instrument/detector/image_key",
           "/entry/sample/rotation_angle")


def tcp_address(engine: Acquisition) -> tuple[str, int]:
    (source,) = engine.sources
    assert isinstance(source, TcpSource)
    return source.address


def run_to_file(engine: Acquisition, path: Path, n: int, depth: int = 12,
                send=None) -> None:
    """Acquire ``n`` frames into ``path``; ``send`` (if given) feeds the frames meanwhile."""
    engine.configure(bit_depth=depth, n_images=n, acquire_time_s=1e-3, acquire_period_s=1e-3)
    engine.start_capture(CaptureSettings(str(path), num_capture=n))
    engine.start()
    if send is not None:
        send()
    assert engine.wait(timeout=60), "acquisition did not end"
    assert engine.wait_capture(timeout=60), "capture did not end"


def read_columns(path: Path) -> dict[str, np.ndarray]:
    with h5py.File(path, "r") as f:
        return {name: f[name][()] for name in COLUMNS}


def tomo_frames(layout: ArrayLayout, n: int, depth: int = 12) -> bytes:
    """Wire bytes of ``n`` frame sets with the tomography extension (darks, flats, angles)."""
    keys = [ImageKey.DARK, ImageKey.FLAT] + [ImageKey.PROJECTION] * (n - 2)
    out = bytearray()
    for i in range(n):
        image = counter_array_image(layout, i, depth)
        for m in range(layout.n_modules):
            y0, x0 = layout.module_origin(m)
            tile = image[y0 : y0 + SMALL.height, x0 : x0 + SMALL.width]
            payload = module_payload(tile, SMALL, depth).tobytes()
            header = wire.make_header(
                module_id=m, bit_depth=depth, frame_number=i, timestamp_ns=1000 * i + 7,
                chips_x=SMALL.chips_x, chips_y=SMALL.chips_y, chip_size=SMALL.chip_size,
                payload=payload, with_crc=True, image_key=keys[i], angle_deg=0.5 * i)
            out += header.pack() + payload
    return bytes(out)


@pytest.mark.parametrize("n_modules", [1, 4], ids=["1x1", "2x2"])
def test_replays_write_the_same_file_as_the_tcp_run_of_the_same_frames(tmp_path, n_modules):
    layout = ArrayLayout.square(n_modules, SMALL)
    n = 12
    raw = tmp_path / "frames.bin"
    raw.write_bytes(tomo_frames(layout, n))
    with listening_node(layout, "127.0.0.1", 0) as engine:
        def send() -> None:
            with socket.create_connection(tcp_address(engine)) as conn:
                conn.sendall(raw.read_bytes())
        run_to_file(engine, tmp_path / "tcp.h5", n, send=send)
    with replay_node(layout, raw, rate_hz=0) as engine:
        run_to_file(engine, tmp_path / "raw.h5", n)
    with replay_node(layout, tmp_path / "tcp.h5", rate_hz=0) as engine:
        run_to_file(engine, tmp_path / "nexus.h5", n)

    tcp = read_columns(tmp_path / "tcp.h5")
    assert tcp["/entry/data/data"].shape == (n, *layout.shape)
    np.testing.assert_array_equal(tcp["/entry/data/data"][5], counter_array_image(layout, 5, 12))
    np.testing.assert_array_equal(tcp["/entry/instrument/detector/image_key"][:3], [2, 1, 0])
    np.testing.assert_array_equal(tcp["/entry/sample/rotation_angle"], 0.5 * np.arange(n))
    for replayed in ("raw.h5", "nexus.h5"):
        again = read_columns(tmp_path / replayed)
        for name in COLUMNS:
            assert again[name].dtype == tcp[name].dtype, name
            np.testing.assert_array_equal(again[name], tcp[name], err_msg=f"{replayed} {name}")


def test_replay_paces_frames_at_the_chosen_rate(tmp_path):
    layout = ArrayLayout(SMALL)
    raw = tmp_path / "frames.bin"
    raw.write_bytes(tomo_frames(layout, 10))
    with replay_node(layout, raw, rate_hz=50) as engine:
        t0 = time.monotonic()
        run_to_file(engine, tmp_path / "paced.h5", 10)
        elapsed = time.monotonic() - t0
    assert elapsed >= 9 / 50  # ten frames 20 ms apart cannot arrive sooner


def wait_for_stage(engine: Acquisition, name: str, frames: int):
    """The node's status once stage ``name`` has taken ``frames`` frames (10 s at most)."""
    deadline = time.monotonic() + 10
    while True:
        status = engine.status()
        stage = next(s for s in status.stages if s.name == name)
        if stage.frames >= frames or time.monotonic() > deadline:
            return status
        time.sleep(0.01)


class FrameCounter:
    """A consumer added from outside the engine: records every FrameInfo it is given."""

    name = "count"
    lossless = True

    def __init__(self) -> None:
        self.infos: list[FrameInfo] = []
        self.sums: list[int] = []

    def wants(self, info: FrameInfo) -> bool:
        return True

    def consume(self, frame: Frame) -> None:
        self.infos.append(frame.info)
        self.sums.append(int(frame.image.sum()))

    def skipped(self, info: FrameInfo) -> None:
        raise AssertionError(f"a lossless consumer lost frame {info.unique_id}")


def test_an_added_consumer_sees_every_frame_with_its_info():
    layout = ArrayLayout.square(4, SMALL)
    counter = FrameCounter()
    with simulated_node(layout) as engine:
        engine.add_consumer(counter)
        assert "count" in engine.stage_names
        for n in (7, 5):  # two acquisitions: unique ids keep counting, frame numbers restart
            engine.configure(bit_depth=24, n_images=n)
            engine.start()
            assert engine.wait(timeout=60)
        status = wait_for_stage(engine, "count", 12)
    assert [i.unique_id for i in counter.infos] == list(range(1, 13))
    assert [i.frame_number for i in counter.infos] == [*range(7), *range(5)]
    expected = [int(counter_array_image(layout, i, 24).sum()) for i in (*range(7), *range(5))]
    assert counter.sums == expected
    count = next(s for s in status.stages if s.name == "count")
    assert (count.frames, count.dropped) == (12, 0)  # consumers count since start-up


class SlowViewer:
    """A lossy consumer far slower than the frames: it must be skipped, never waited for."""

    name = "slow"
    lossless = False

    def __init__(self) -> None:
        self.seen = 0
        self.missed: list[int] = []
        self.release = threading.Event()

    def wants(self, info: FrameInfo) -> bool:
        return True

    def consume(self, frame: Frame) -> None:
        self.release.wait(10)
        self.seen += 1

    def skipped(self, info: FrameInfo) -> None:
        self.missed.append(info.unique_id)


def test_a_consumer_that_falls_behind_is_skipped_and_counted_not_waited_for(tmp_path):
    layout = ArrayLayout(SMALL)
    viewer = SlowViewer()
    with simulated_node(layout) as engine:
        engine.add_consumer(viewer, queue_size=2)
        run_to_file(engine, tmp_path / "all.h5", 50)
        slow = next(s for s in engine.status().stages if s.name == "slow")
        viewer.release.set()
    assert read_columns(tmp_path / "all.h5")["/entry/data/data"].shape[0] == 50
    assert slow.dropped >= 50 - 3  # one in hand, two queued: the rest skipped
    assert slow.dropped + viewer.seen <= 50
    assert len(viewer.missed) == len(set(viewer.missed)) == slow.dropped  # told of each one


def test_live_recon_counts_the_projections_it_misses_not_the_darks_and_flats():
    """A dark or flat the reconstruction had no room for thins the references; only a
    missed projection is a skipped one (ProjectionsUsed + Skipped = the scan's projections)."""
    recon = LiveRecon((8, 8))
    recon.configure(enabled=True, rows=(4,), centre=3.5)
    runner = ConsumerRunner(recon, queue_size=2)
    pool = ImagePool(8, (8, 8), np.dtype(np.uint16))
    keys = [ImageKey.DARK, ImageKey.FLAT, ImageKey.DARK, ImageKey.FLAT, ImageKey.PROJECTION,
            ImageKey.PROJECTION]
    for uid, key in enumerate(keys, 1):  # no thread takes them yet: the third on is missed
        index = pool.acquire(timeout=1)
        assert index is not None
        pool.images[index] = 100 * (1 + int(key == ImageKey.FLAT))
        runner.offer(pool, index, FrameInfo(uid, uid - 1, 0, key, 0.0, acquisition=1, tomo=True))
        pool.release(index)
    assert runner.timer.dropped == 4
    taker = threading.Thread(target=runner.run)
    taker.start()  # takes the dark and flat it kept
    runner.close()
    taker.join(timeout=10)
    status = recon.status()
    assert (status.state, status.projections_used, status.skipped) == ("Waiting", 0, 2)
    next_scan = FrameInfo(7, 0, 0, ImageKey.DARK, 0.0, acquisition=2, tomo=True)
    recon.consume(Frame(next_scan, pool.images[0]))
    assert recon.status().skipped == 0  # the count was the last acquisition's


def test_the_node_reports_acquisition_and_capture_ends_as_events(tmp_path):
    events = []
    with simulated_node(ArrayLayout(SMALL)) as engine:
        engine.subscribe(events.append)
        run_to_file(engine, tmp_path / "e.h5", 3)
        deadline = time.monotonic() + 5
        while len(events) < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
    ended = {type(e): e for e in events}
    assert ended[AcquisitionEnded].frames == 3
    assert ended[AcquisitionEnded].acquisition == 1
    assert ended[CaptureEnded].num_captured == 3
    assert ended[CaptureEnded].filename == str(tmp_path / "e.h5")


def good_frame(layout: ArrayLayout, number: int) -> bytes:
    payload = module_payload(counter_array_image(layout, number, 12), SMALL, 12).tobytes()
    header = wire.make_header(module_id=0, bit_depth=12, frame_number=number, timestamp_ns=1,
                              chips_x=2, chips_y=2, chip_size=16, payload=payload)
    return header.pack() + payload


def test_a_header_naming_an_unknown_module_does_not_kill_ingest(tmp_path):
    """The frame found by the operator: module_id 5, header_size 1000, then 60 zero bytes."""
    layout = ArrayLayout(SMALL)
    fixed = wire.FIXED.pack(wire.MAGIC, 1, 1000, 5, 12, 0, 0, 0, 2, 2, 16,
                            SMALL.payload_size(12), 0)
    with listening_node(layout, "127.0.0.1", 0) as engine:
        def send() -> None:
            with socket.create_connection(tcp_address(engine)) as conn:
                conn.sendall(fixed + bytes(60))
            with socket.create_connection(tcp_address(engine)) as conn:
                conn.sendall(good_frame(layout, 0) + good_frame(layout, 1))
        run_to_file(engine, tmp_path / "after.h5", 2, send=send)
        status = engine.status()
    assert status.frames_written == 2
    assert status.corrupt_frames == 1
    ingest = next(s for s in status.stages if s.name == "ingest")
    assert ingest.running and not ingest.error


def test_idle_and_trickling_connections_cannot_starve_a_good_sender(tmp_path):
    layout = ArrayLayout(SMALL)
    source = TcpSource("127.0.0.1", 0, max_connections=4, stall_s=0.5)
    idle = [socket.create_connection(source.address) for _ in range(10)]
    trickle = socket.create_connection(source.address)
    with Acquisition(layout, [source]) as engine:
        trickle.sendall(good_frame(layout, 0)[:100])  # a header, then a payload that stalls

        def send() -> None:
            time.sleep(1.0)  # the stalled one is closed after stall_s
            with socket.create_connection(source.address) as conn:
                conn.sendall(good_frame(layout, 0) + good_frame(layout, 1))
        run_to_file(engine, tmp_path / "good.h5", 2, send=send)
        assert source.connections <= 4
        assert source.evicted >= 7
    for conn in (*idle, trickle):
        conn.close()


@pytest.mark.parametrize("numbers, gaps, sequence_errors", [
    ((0, 1, 2**32 + 10), 0, 1),  # a wild jump is one sequence error, not 4 billion lost
    ((0, 1, 2**64 - 1), 0, 1),
    ((0, 1, 1, 0, 5), 4, 1),  # a repeat counts; frame 0 restarts; 0 → 5 loses 4
])
def test_frame_number_anomalies_are_counted_not_overflowed(numbers, gaps, sequence_errors):
    from pimega.ingest.counters import ModuleCounters

    counters = ModuleCounters()
    for number in numbers:
        counters.note_frame_number(number)
    assert (counters.gaps, counters.sequence_errors) == (gaps, sequence_errors)


def test_a_corrupt_frame_is_lost_once_not_twice():
    from pimega.ingest.counters import ModuleCounters

    counters = ModuleCounters()
    counters.note_frame_number(0)
    counters.note_corrupt("bad CRC")  # frame 1, refused
    counters.note_frame_number(2)
    assert (counters.corrupt, counters.gaps, counters.lost) == (1, 0, 1)

