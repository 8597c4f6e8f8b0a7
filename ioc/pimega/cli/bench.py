"""``pimega bench``: figures measured in one run, each against a baseline of the same bytes.

(a) pipeline time per module frame vs a memcpy of the same raw frame, (b) TCP ingest from the
simulator vs a raw socket send/recv of the same bytes, (c) HDF5 writer (plain, bitshuffle-LZ4)
vs a plain sequential write + fsync to the same directory, (d) end-to-end frames/s
simulator → engine → HDF5 against the detector's frame-rate limit, and the frames dropped.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pimega.core.geometry import MAX_FRAME_RATE_HZ, ArrayLayout, ModuleGeometry
from pimega.ingest.counters import ModuleCounters
from pimega.ingest.ring import FrameRing
from pimega.ingest.tcp import FrameExpectation, TcpListener, receive
from pimega.pipeline.assemble import decode_assemble
from pimega.pipeline.kernels import warm_up
from pimega.runtime.detector import SimulatedDetector
from pimega.runtime.engine import Acquisition
from pimega.runtime.settings import CaptureSettings
from pimega.sim.sender import SimConfig, Simulator
from pimega.writer.hdf5 import NexusMetadata, NexusWriter


@dataclass(frozen=True)
class Figure:
    figure: str
    value: float
    unit: str
    baseline: float
    ratio: float

    def line(self) -> str:
        return json.dumps(self.__dict__)


def best_of(repeats: int, action: Callable[[], object]) -> float:
    """Shortest wall time of ``repeats`` runs: the least disturbed by a shared machine."""
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        action()
        best = min(best, time.perf_counter() - t0)
    return best


def bench_pipeline(module: ModuleGeometry, repeats: int) -> Iterator[Figure]:
    warm_up()
    layout = ArrayLayout(module)
    rng = np.random.default_rng(0)
    for depth in (12, 24):
        raw = rng.integers(0, 256, size=(1, module.payload_size(depth)), dtype=np.uint8)
        copy = np.empty_like(raw)
        out = np.empty(module.shape, dtype={12: np.uint16, 24: np.uint32}[depth])
        pipeline = best_of(
            repeats, lambda r=raw, o=out, d=depth: decode_assemble(r, layout, d, out=o))
        memcpy = best_of(repeats, lambda r=raw, c=copy: np.copyto(c, r))
        yield Figure(f"pipeline_{depth}bit_ms_per_frame", 1e3 * pipeline, "ms", 1e3 * memcpy,
                     pipeline / memcpy)


def _raw_socket_seconds(frame: bytes, n_frames: int) -> float:
    """Send ``n_frames`` copies of ``frame`` over loopback and recv_into one buffer."""
    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]
    buffer = bytearray(len(frame))
    view = memoryview(buffer)

    def send() -> None:
        with socket.create_connection(("127.0.0.1", port)) as s:
            for _ in range(n_frames):
                s.sendall(frame)

    sender = threading.Thread(target=send)
    t0 = time.perf_counter()
    sender.start()
    conn, _ = server.accept()
    with conn, server:
        remaining = len(frame) * n_frames
        while remaining:
            got = conn.recv_into(view[: min(len(buffer), remaining)])
            if not got:
                break
            remaining -= got
    sender.join()
    return time.perf_counter() - t0


def bench_ingest(module: ModuleGeometry, n_frames: int, depth: int = 24) -> Iterator[Figure]:
    layout = ArrayLayout(module)
    ring = FrameRing(16, module.payload_size(depth))
    counters = ModuleCounters()
    expected = FrameExpectation(module.chips_x, module.chips_y, module.chip_size, depth)
    armed, stop = threading.Event(), threading.Event()
    armed.set()
    listener = TcpListener("127.0.0.1", 0)

    def serve() -> None:
        conn = listener.accept(stop)
        if conn is not None:
            with conn:
                receive(conn, [ring], [counters], expected, armed, stop)

    def consume() -> None:
        for _ in range(n_frames):
            item = None
            while item is None:
                item = ring.next_filled(timeout=1.0)
            ring.release(item[0])

    config = SimConfig(layout=layout, bit_depth=depth, n_frames=n_frames, frame_rate_hz=0)
    receiver, consumer = threading.Thread(target=serve), threading.Thread(target=consume)
    receiver.start()
    with Simulator(*listener.address, config) as sim:
        sim.connect()
        consumer.start()
        t0 = time.perf_counter()
        sim.acquire()
        consumer.join()
        ingest = time.perf_counter() - t0
        sim.wait()
    stop.set()
    receiver.join()
    listener.close()
    frame = bytes(40 + module.payload_size(depth))
    raw = _raw_socket_seconds(frame, n_frames)
    gbps = len(frame) * n_frames * 8 / 1e9
    yield Figure(f"tcp_ingest_{depth}bit_gbps", gbps / ingest, "Gbit/s", gbps / raw, raw / ingest)


def bench_writer(module: ModuleGeometry, n_frames: int, directory: Path) -> Iterator[Figure]:
    rng = np.random.default_rng(1)
    frames = rng.poisson(5, size=(4, *module.shape)).astype(np.uint32)
    nbytes = frames[0].nbytes * n_frames

    def plain_write() -> None:
        path = directory / "plain.bin"
        with open(path, "wb") as f:
            for i in range(n_frames):
                f.write(frames[i % 4].data)
            f.flush()
            os.fsync(f.fileno())
        path.unlink()

    baseline = nbytes / best_of(2, plain_write) / 1e9
    meta = NexusMetadata(bit_depth=24, count_time_s=1e-3, frame_time_s=1e-3, n_modules=1,
                         module_shape=module.shape, layout="1x1 modules")
    for compression in ("none", "bslz4"):
        path = directory / f"bench_{compression}.h5"

        def write(p: Path = path, c: str = compression) -> None:
            with NexusWriter(str(p), module.shape, np.dtype(np.uint32), meta,
                             compression=c) as writer:  # type: ignore[arg-type]
                for i in range(n_frames):
                    writer.write(frames[i % 4], i, i, 0)
            os.sync()

        rate = nbytes / best_of(2, write) / 1e9
        size = path.stat().st_size
        path.unlink()
        yield Figure(f"writer_{compression}_GBps", rate, "GB/s", baseline, rate / baseline)
        if compression == "bslz4":
            yield Figure("writer_bslz4_compression", nbytes / size, "x", 1.0, nbytes / size)


def bench_end_to_end(module: ModuleGeometry, n_frames: int, depth: int,
                     directory: Path) -> Iterator[Figure]:
    layout = ArrayLayout(module)
    engine = Acquisition(layout)
    with engine:
        detector = SimulatedDetector(*engine.address,
                                     SimConfig(layout=layout, bit_depth=depth, n_frames=n_frames,
                                               frame_rate_hz=0))
        detector.connect()
        engine.attach_detector(_AsFastAsPossible(detector))
        engine.configure(bit_depth=depth, n_images=n_frames)
        engine.start_capture(CaptureSettings(str(directory / "e2e.h5")))
        t0 = time.perf_counter()
        engine.start()
        engine.wait()
        engine.stop_capture()
        engine.wait_capture()
        seconds = time.perf_counter() - t0
        status = engine.status()
    fps = status.frames_written / seconds
    limit = MAX_FRAME_RATE_HZ[depth]
    yield Figure(f"end_to_end_{depth}bit_fps", fps, "frames/s", limit, fps / limit)
    yield Figure(f"end_to_end_{depth}bit_dropped", float(status.frames_dropped), "frames",
                 float(n_frames), status.frames_dropped / n_frames)


class _AsFastAsPossible:
    """Ask the simulator for frames with no pacing: the pipeline's back-pressure sets the rate."""

    def __init__(self, detector: SimulatedDetector) -> None:
        self._detector = detector

    def start(self, n_frames: int, frame_rate_hz: float, bit_depth: int) -> None:
        self._detector.start(n_frames, 0.0, bit_depth)

    def stop(self) -> None:
        self._detector.stop()

    def close(self) -> None:
        self._detector.close()


def run(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="pimega bench", description=__doc__)
    parser.add_argument("--json", action="store_true", help="one JSON object a line")
    parser.add_argument("--chips", default="6x6", help="chips across x down (default 6x6)")
    parser.add_argument("--chip-size", type=int, default=256)
    parser.add_argument("--frames", type=int, default=200, help="frames for (b)-(d)")
    parser.add_argument("--repeats", type=int, default=20, help="repeats for (a)")
    parser.add_argument("--dir", default=None, help="directory for (c)/(d) (default: a temp dir)")
    parser.add_argument("--only", choices=["pipeline", "ingest", "writer", "e2e"], nargs="*")
    args = parser.parse_args(argv)
    across, down = (int(v) for v in args.chips.split("x"))
    module = ModuleGeometry(across, down, args.chip_size)
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        directory = Path(tmp)
        benches = {
            "pipeline": lambda: bench_pipeline(module, args.repeats),
            "ingest": lambda: bench_ingest(module, args.frames),
            "writer": lambda: bench_writer(module, min(args.frames, 100), directory),
            "e2e": lambda: bench_end_to_end(module, args.frames, 12, directory),
        }
        for name in args.only or benches:
            for figure in benches[name]():
                if args.json:
                    print(figure.line(), flush=True)
                else:
                    print(f"{figure.figure:32s} {figure.value:10.3f} {figure.unit:9s} "
                          f"baseline {figure.baseline:10.3f}  ratio {figure.ratio:6.2f}",
                          flush=True)
    return 0
