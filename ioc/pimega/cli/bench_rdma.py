"""``pimega bench --transport rdma``: RDMA ingest throughput and the receive thread's CPU time.

The simulator writes ``frames`` module frames into an :class:`RdmaSource` whose ring a consumer
empties at once. Figures: Gbit/s from the first frame to the last, CPU time of the completion
loop over the same span (per frame and as a share of the wall time), and, on a device with
perftest installed, ``ib_write_bw`` writing frames of the same size on the same device as the
baseline. On a device the simulator runs in its own process (as a detector would be); on the
in-process loopback verbs the figures are what the protocol itself costs in this process.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

from pimega.core.geometry import ArrayLayout, ModuleGeometry
from pimega.core.wire import FIXED_SIZE
from pimega.ingest.counters import ModuleCounters
from pimega.ingest.framing import FrameExpectation, IngestSink
from pimega.ingest.rdma import RdmaLink, RdmaSource, RdmaUnavailable, Verbs
from pimega.ingest.rdma.pyverbs_impl import SYSFS, PyverbsVerbs, device_address
from pimega.ingest.ring import FrameRing
from pimega.sim.rdma_sender import RdmaSimulator
from pimega.sim.sender import SimConfig

DEFAULT_PORT = 18516
PERFTEST_PORT = 18517
WAIT_S = 120.0


def run(*, verbs: Verbs | None = None, address: str | None = None, port: int = DEFAULT_PORT,
        module: ModuleGeometry | None = None, depth: int = 24, frames: int = 200,
        ring_slots: int = 16) -> dict:
    """The figures as a dict; with ``verbs`` None the device's, or the reason there is none."""
    module = module or ModuleGeometry()
    result: dict = {"transport": "rdma", "frames": frames}
    try:
        if verbs is None:
            verbs = PyverbsVerbs()
            address = address or device_address()
    except RdmaUnavailable as err:
        return result | {"skipped": True, "reason": str(err)}
    host = address or "127.0.0.1"
    payload = module.payload_size(depth)
    ring = FrameRing(ring_slots, payload)
    counters = ModuleCounters()
    sink = IngestSink([ring], [counters],
                      FrameExpectation(module.chips_x, module.chips_y, module.chip_size, depth),
                      threading.Event())
    sink.armed.set()
    source = RdmaSource(host, port if verbs.name == "pyverbs" else 0, verbs=verbs)
    threads: list[threading.Thread] = []

    def spawn(name: str, target) -> None:
        threads.append(threading.Thread(target=target, name=name, daemon=True))
        threads[-1].start()

    arrivals: list[tuple[float, float]] = []  # (wall, receive CPU) at each frame

    def consume() -> None:
        deadline = time.monotonic() + WAIT_S
        while len(arrivals) < frames and time.monotonic() < deadline:
            item = ring.next_filled(timeout=0.5)
            if item is not None:
                arrivals.append((time.perf_counter(), source.cpu_s))
                ring.release(item[0])

    source.open(sink, spawn)
    spawn("consume", consume)
    try:
        _send(verbs, source.address, module, depth, frames)
        threads[-1].join(WAIT_S)
    finally:
        source.close()
        ring.close()
        for thread in threads:
            thread.join(5.0)
    if len(arrivals) < 2:
        return result | {"skipped": True, "reason": f"only {len(arrivals)} frames arrived"}
    (t0, cpu0), (t1, cpu1) = arrivals[0], arrivals[-1]
    scale = len(arrivals) / (len(arrivals) - 1)  # the span holds n − 1 frame intervals
    seconds, cpu = (t1 - t0) * scale, (cpu1 - cpu0) * scale
    frame_bytes = FIXED_SIZE + payload
    result |= {
        "verbs": verbs.name, "frame_bytes": frame_bytes, "received": counters.frames,
        "lost": counters.lost, "gbit_s": frame_bytes * 8 * len(arrivals) / seconds / 1e9,
        "receive_cpu_s": cpu, "receive_cpu_us_per_frame": 1e6 * cpu / len(arrivals),
        "receive_cpu_share": cpu / seconds,
    }
    if verbs.name == "pyverbs":
        result |= _ib_write_bw(host, payload, frames)
    return result


def _send(verbs: Verbs, address: tuple[str, int], module: ModuleGeometry, depth: int,
          frames: int) -> None:
    """The counter pattern: from this process on the loopback, else from a process of its own."""
    if verbs.name != "pyverbs":
        sim = _simulator(verbs, address, module, depth, frames)
        sim.acquire()
        sim.wait(WAIT_S)
        sim.close()
        return
    command = [sys.executable, "-m", "pimega.cli.bench_rdma", address[0], str(address[1]),
               f"{module.chips_x}x{module.chips_y}", str(module.chip_size), str(depth),
               str(frames)]
    subprocess.run(command, check=True, timeout=WAIT_S)


def _simulator(verbs: Verbs, address: tuple[str, int], module: ModuleGeometry, depth: int,
               frames: int) -> RdmaSimulator:
    return RdmaSimulator(lambda modules: RdmaLink.connect(verbs, *address, modules),
                         SimConfig(layout=ArrayLayout(module), bit_depth=depth, n_frames=frames))


def _ib_write_bw(address: str, size: int, frames: int) -> dict:
    """perftest's RDMA WRITE bandwidth of ``size``-byte messages on the device (rdma_cm)."""
    tool = shutil.which("ib_write_bw")
    devices = sorted(path.name for path in SYSFS.glob("*"))
    if tool is None or not devices:
        return {"ib_write_bw_gbit_s": None, "ib_write_bw": "perftest is not installed"}
    common = [tool, "-d", devices[0], "-R", "-F", "--report_gbits", "-s", str(size), "-n",
              str(max(frames, 100)), "-p", str(PERFTEST_PORT)]
    server = subprocess.Popen(common, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        time.sleep(1.0)  # the server listens
        client = subprocess.run([*common, address], capture_output=True, text=True,
                                timeout=WAIT_S, check=False)
    finally:
        server.kill()
        server.wait()
    row = re.search(rf"^\s*{size}\s+\d+\s+[\d.]+\s+([\d.]+)", client.stdout, re.MULTILINE)
    if row is None:
        return {"ib_write_bw_gbit_s": None,
                "ib_write_bw": f"no figure in its output: {client.stderr.strip()[-200:]}"}
    return {"ib_write_bw_gbit_s": float(row.group(1))}


def main(argv: list[str]) -> int:
    """The sender process of a device run: HOST PORT CHIPS CHIP_SIZE DEPTH FRAMES."""
    host, port, chips, chip_size, depth, frames = argv
    across, down = (int(v) for v in chips.split("x"))
    sim = _simulator(PyverbsVerbs(), (host, int(port)), ModuleGeometry(across, down,
                                                                      int(chip_size)),
                     int(depth), int(frames))
    sim.acquire()
    sim.wait()
    sim.close()
    if sim.error:
        print(f"{Path(__file__).name}: {sim.error}", file=sys.stderr)
    return 1 if sim.error else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
