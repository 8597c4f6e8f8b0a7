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
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numba
import numpy as np

from pimega.cli import bench_gpu, bench_rdma, bench_recon
from pimega.cli.arguments import finite
from pimega.cli.bench_preview import bench_preview
from pimega.cli.bench_soak import bench_soak
from pimega.cli.bench_sustained import bench_sustained
from pimega.cli.figures import Figure, best_of
from pimega.core.geometry import MAX_FRAME_RATE_HZ, ArrayLayout, ModuleGeometry
from pimega.core.wire import FIXED_SIZE, make_header
from pimega.ingest.counters import ModuleCounters
from pimega.ingest.framing import FrameExpectation, IngestSink
from pimega.ingest.ring import FrameRing
from pimega.ingest.tcp import TcpListener, TcpSource, receive
from pimega.pipeline.assemble import decode_assemble
from pimega.pipeline.kernels import warm_up
from pimega.runtime.engine import Acquisition
from pimega.runtime.settings import CaptureSettings
from pimega.writer.hdf5 import NexusMetadata, NexusWriter

#: Frames each pipeline repeat cycles through: a working set far beyond the caches, as a
#: ring of frames is (one cache-hot buffer would flatter both the kernel and memcpy).
ROTATING_FRAMES = 16


def pipeline_ms(module: ModuleGeometry, depth: int, repeats: int) -> float:
    """Decode + assemble of one module frame, ms, over :data:`ROTATING_FRAMES` buffers."""
    return 1e3 * _rotating(module, depth, repeats)[0]


def _rotating(module: ModuleGeometry, depth: int, repeats: int) -> tuple[float, float]:
    """(decode + assemble, memcpy of the same raw bytes) seconds a frame, cache-cold."""
    warm_up()
    layout = ArrayLayout(module)
    raws = np.random.default_rng(0).integers(
        0, 256, size=(ROTATING_FRAMES, 1, module.payload_size(depth)), dtype=np.uint8)
    copies = np.empty_like(raws)
    outs = np.empty((ROTATING_FRAMES, *module.shape), dtype={12: np.uint16, 24: np.uint32}[depth])

    def decode_all() -> None:
        for raw, out in zip(raws, outs, strict=True):
            decode_assemble(raw, layout, depth, out=out)

    def copy_all() -> None:
        for raw, copy in zip(raws, copies, strict=True):
            np.copyto(copy, raw)

    return (best_of(repeats, decode_all) / ROTATING_FRAMES,
            best_of(repeats, copy_all) / ROTATING_FRAMES)


def bench_pipeline(module: ModuleGeometry, repeats: int) -> Iterator[Figure]:
    """Decode + assemble against a memcpy of the same raw frame, both over rotating buffers,
    on ``numba.get_num_threads()`` threads (the figure's name says how many)."""
    threads = numba.get_num_threads()
    for depth in (12, 24):
        pipeline, memcpy = _rotating(module, depth, max(repeats // 4, 2))
        yield Figure(f"pipeline_{depth}bit_ms_per_frame_{threads}threads", 1e3 * pipeline, "ms",
                     1e3 * memcpy, pipeline / memcpy)


def simulator_process(address: tuple[str, int], module: ModuleGeometry, n_frames: int,
                      depth: int) -> subprocess.Popen:
    """``pimega-sim`` in its own process, as fast as the receiver takes frames."""
    return subprocess.Popen(
        [sys.executable, "-m", "pimega.cli.sim", "--host", address[0], "--port",
         str(address[1]), "--chips", f"{module.chips_x}x{module.chips_y}", "--chip-size",
         str(module.chip_size), "--frames", str(n_frames), "--rate", "0", "--depth", str(depth)],
        stdout=subprocess.DEVNULL)


_FRAME_SENDER = """
import socket, struct, sys
host, port, n, header = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), bytes.fromhex(sys.argv[4])
size = struct.unpack_from("<I", header, 32)[0]
frame = bytearray(header + bytes(size))
with socket.create_connection((host, port)) as s:
    for number in range(n):
        struct.pack_into("<Q", frame, 16, number)
        s.sendall(frame)
"""


def frame_sender(address: tuple[str, int], module: ModuleGeometry, depth: int,
                 n_frames: int) -> subprocess.Popen:
    """A minimal sender process: ``n_frames`` valid wire frames (zero payloads), as fast as
    the receiver takes them — the same bytes for the raw loop and for the receiver."""
    header = make_header(module_id=0, bit_depth=depth, frame_number=0, timestamp_ns=0,
                         chips_x=module.chips_x, chips_y=module.chips_y,
                         chip_size=module.chip_size, payload_size=module.payload_size(depth))
    return subprocess.Popen([sys.executable, "-c", _FRAME_SENDER, address[0], str(address[1]),
                             str(n_frames), header.pack().hex()])


#: Slots of the ingest bench's ring, and buffers the raw loop rotates through (same memory).
INGEST_SLOTS = 16


def _raw_socket_seconds(module: ModuleGeometry, n_frames: int, depth: int) -> float:
    """:func:`frame_sender` → ``recv_into`` here, each frame into the next of
    :data:`INGEST_SLOTS` buffers, as the ring's slots are: seconds from the first frame on."""
    frame_size = FIXED_SIZE + module.payload_size(depth)
    with socket.create_server(("127.0.0.1", 0)) as server:
        port = server.getsockname()[1]
        sender = frame_sender(("127.0.0.1", port), module, depth, n_frames)
        conn, _ = server.accept()
        views = [memoryview(bytearray(frame_size)) for _ in range(INGEST_SLOTS)]
        with conn:
            t0 = time.perf_counter()
            for frame in range(n_frames):
                view, got = views[frame % INGEST_SLOTS], 0
                while got < frame_size:
                    n = conn.recv_into(view[got:])
                    if not n:
                        break
                    got += n
                if frame == 0:  # time from the first frame on, as the ingest run does
                    t0 = time.perf_counter()
            seconds = (time.perf_counter() - t0) * n_frames / (n_frames - 1)
        sender.wait()
    return seconds


def _ingest_seconds(module: ModuleGeometry, n_frames: int, depth: int) -> float:
    """:func:`frame_sender` → ``tcp.receive`` into a frame ring, a consumer releasing each
    slot: seconds from the first frame on."""
    ring = FrameRing(INGEST_SLOTS, module.payload_size(depth))
    counters = ModuleCounters()
    expected = FrameExpectation(module.chips_x, module.chips_y, module.chip_size, depth)
    armed, stop = threading.Event(), threading.Event()
    armed.set()
    listener = TcpListener("127.0.0.1", 0)

    def serve() -> None:
        while (conn := listener.accept(stop)) is None and not stop.is_set():
            continue
        if conn is not None:
            receive(conn, IngestSink([ring], [counters], expected, armed), stop)

    arrivals: list[float] = []

    def consume() -> None:
        for _ in range(n_frames):
            item = None
            while item is None:
                item = ring.next_filled(timeout=1.0)
            arrivals.append(time.perf_counter())
            ring.release(item[0])

    receiver, consumer = threading.Thread(target=serve), threading.Thread(target=consume)
    receiver.start()
    consumer.start()
    sender = frame_sender(listener.address, module, depth, n_frames)
    consumer.join()
    sender.wait()
    stop.set()
    receiver.join()
    listener.close()
    return (arrivals[-1] - arrivals[0]) * n_frames / (n_frames - 1)


def bench_ingest(module: ModuleGeometry, n_frames: int, repeats: int = 3) -> Iterator[Figure]:
    """TCP ingest against a plain ``recv_into`` loop, both fed the same frames by the same
    minimal sender process, alternated ``repeats`` times, best of each, at 24 and 12 bit."""
    for depth in (24, 12):
        frame_size = FIXED_SIZE + module.payload_size(depth)
        ingest = raw = float("inf")
        for _ in range(repeats):
            ingest = min(ingest, _ingest_seconds(module, n_frames, depth))
            raw = min(raw, _raw_socket_seconds(module, n_frames, depth))
        gbps = frame_size * n_frames * 8 / 1e9
        yield Figure(f"tcp_ingest_{depth}bit_gbps", gbps / ingest, "Gbit/s", gbps / raw,
                     raw / ingest)


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
    """Simulator in its own process (as a detector would be) → engine → HDF5 in ``directory``.

    The simulator sends as fast as TCP back-pressure lets it, so the rate is the slowest
    stage's; it counts from the first processed frame (after the simulator packed its frame
    cycle), against the detector's read-out limit at ``depth``.
    """
    layout = ArrayLayout(module)
    source = TcpSource("127.0.0.1", 0)
    host, port = source.address
    with Acquisition(layout, [source]) as engine:
        engine.configure(bit_depth=depth, n_images=n_frames)
        engine.start_capture(CaptureSettings(str(directory / "e2e.h5")))
        engine.start()
        sender = simulator_process((host, port), module, n_frames, depth)
        while engine.status().frames_processed == 0 and sender.poll() is None:
            time.sleep(0.001)
        t0 = time.perf_counter()
        engine.wait()
        engine.stop_capture()
        engine.wait_capture()
        seconds = time.perf_counter() - t0
        sender.wait()
        status = engine.status()
    fps = (status.frames_written - 1) / seconds
    limit = MAX_FRAME_RATE_HZ[depth]
    yield Figure(f"end_to_end_{depth}bit_fps", fps, "frames/s", limit, fps / limit)
    yield Figure(f"end_to_end_{depth}bit_dropped", float(status.frames_dropped), "frames",
                 float(n_frames), status.frames_dropped / n_frames)
    for stage in status.stages:
        if stage.frames and stage.time_per_frame_ms:
            yield Figure(f"end_to_end_{stage.name}_ms_per_frame", stage.time_per_frame_ms, "ms",
                         1e3 / limit, stage.time_per_frame_ms * limit / 1e3)


def run(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="pimega bench", description=__doc__)
    parser.add_argument("--json", action="store_true", help="one JSON object a line")
    parser.add_argument("--chips", default="6x6", help="chips across x down (default 6x6)")
    parser.add_argument("--chip-size", type=int, default=256)
    parser.add_argument("--frames", type=int, default=200, help="frames for (b)-(d)")
    parser.add_argument("--repeats", type=int, default=20, help="repeats for (a)")
    parser.add_argument("--dir", default=None, help="directory for (c)/(d) (default: a temp dir)")
    parser.add_argument("--only", choices=["pipeline", "ingest", "writer", "e2e", "preview"],
                        nargs="*", help="benches to run (default: all but preview)")
    parser.add_argument("--preview", action="store_true",
                        help="also the preview for many viewers: caproto's per-subscriber "
                             "cost, then an IOC with 0, 1, 3 viewers (rates, server CPU) and "
                             "control-PV round trips")
    parser.add_argument("--preview-fps", type=finite(0, False), default=100.0,
                        help="frame rate the IOC acquires at during --preview")
    parser.add_argument("--preview-interval", type=finite(0, True), default=1 / 30,
                        help="image1:MinCallbackTime during --preview, s (default 1/30: "
                             "the 30 Hz each viewer is to get)")
    parser.add_argument("--backend", choices=["cpu", "gpu"], default="cpu",
                        help="gpu: pinned host->device bandwidth and the GPU pipeline's frames/s")
    parser.add_argument("--sustained", action="store_true",
                        help="the highest paced rate held with zero loss (about a minute a "
                             "setting), against each stage alone")
    parser.add_argument("--depth", type=int, choices=[12, 24], default=12,
                        help="counter depth of --sustained")
    parser.add_argument("--compression", choices=["none", "bslz4"], default="none",
                        help="file compression of --sustained")
    parser.add_argument("--seconds", type=finite(0, False), default=10.0,
                        help="length of each --sustained try")
    parser.add_argument("--soak", type=finite(0, False), metavar="SECONDS",
                        help="run an IOC as a beamline would for SECONDS: files, stops, 10 "
                             "preview clients, a control client; losses, memory, round trips")
    parser.add_argument("--transport", choices=["tcp", "rdma"], default="tcp",
                        help="rdma: RDMA ingest throughput and receive-thread CPU against "
                             "ib_write_bw on the same device (without a device: why not)")
    parser.add_argument("--recon", action="store_true",
                        help="FBP slices/s of a 1536-wide, 1500-angle sinogram against "
                             "skimage's iradon and ASTRA's CPU FBP, with each one's error")
    args = parser.parse_args(argv)
    if args.backend == "gpu":
        return bench_gpu.main([*(["--json"] if args.json else []), "--frames", str(args.frames)])
    if args.recon:
        print(json.dumps(bench_recon.run(), indent=None if args.json else 2), flush=True)
        return 0
    across, down = (int(v) for v in args.chips.split("x"))
    module = ModuleGeometry(across, down, args.chip_size)
    if args.transport == "rdma":
        print(json.dumps(bench_rdma.run(module=module, frames=args.frames),
                         indent=None if args.json else 2), flush=True)
        return 0
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        directory = Path(tmp)
        if args.soak:
            report(bench_soak(args.soak, directory, args.chips, args.chip_size), args.json)
            return 0
        if args.sustained:
            ingest_s = best_of(2, lambda: _ingest_seconds(module, args.frames, args.depth))
            stage_fps = {"ingest": args.frames / ingest_s,
                         "pipeline": 1e3 / pipeline_ms(module, args.depth, args.repeats)}
            report(bench_sustained(module, args.depth, args.compression, args.seconds,
                                   directory, stage_fps), args.json)
            return 0
        benches = {
            "pipeline": lambda: bench_pipeline(module, args.repeats),
            "ingest": lambda: bench_ingest(module, args.frames),
            "writer": lambda: bench_writer(module, min(args.frames, 100), directory),
            "e2e": lambda: bench_end_to_end(module, args.frames, 12, directory),
            "preview": lambda: bench_preview(10.0, args.preview_fps, args.preview_interval),
        }
        chosen = args.only or [n for n in benches if n != "preview" or args.preview]
        for name in chosen:
            report(benches[name](), args.json)
    return 0


def report(figures: Iterator[Figure], as_json: bool) -> None:
    for figure in figures:
        if as_json:
            print(figure.line(), flush=True)
        else:
            print(f"{figure.figure:40s} {figure.value:10.3f} {figure.unit:9s} "
                  f"baseline {figure.baseline:10.3f}  ratio {figure.ratio:6.2f}", flush=True)
