"""The sustained zero-loss rate: the highest rate a paced sender holds for a while with no
frame lost anywhere and never held back by back-pressure for more than one ring's worth.

A detector cannot be paused: its FPGA drops what the back-end does not take. So the figure
that matters is not "how fast with TCP back-pressure" but "how fast with none". The
simulator runs in its own process, paced at a rate; it is *held* when it ends later than its
schedule plus the time of one ring of frames (the slack the receiver's ring gives). The
search doubles the rate until a run fails, then bisects. Beside it, in the same run: each
stage alone (ingest into a ring, the pipeline's decode, the writer) and the ratio of the
sustained rate to the slowest of them.
"""

from __future__ import annotations

import re
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from pimega.core.geometry import MAX_FRAME_RATE_HZ, ArrayLayout, ModuleGeometry
from pimega.ingest.tcp import TcpSource
from pimega.runtime.engine import Acquisition
from pimega.runtime.settings import CaptureSettings
from pimega.sim.patterns import COUNTER_PERIOD, counter_image
from pimega.writer.hdf5 import NexusMetadata, NexusWriter

from .figures import Figure

RING_SLOTS = 32
_SUMMARY = re.compile(r"(\d+) frames x \d+ modules, \d+ bytes in ([\d.]+) s")


@dataclass(frozen=True)
class Run:
    rate_hz: float
    frames: int
    written: int
    dropped: int
    sender_s: float

    @property
    def held(self) -> bool:
        """Zero frames lost and the sender never behind by more than a ring's worth."""
        schedule = (self.frames - 1) / self.rate_hz
        return (self.written == self.frames and self.dropped == 0
                and self.sender_s <= schedule + RING_SLOTS / self.rate_hz)


def paced_run(module: ModuleGeometry, depth: int, compression: str, rate_hz: float,
              seconds: float, directory: Path) -> Run:
    """One acquisition of ``seconds`` at ``rate_hz`` from a paced ``pimega-sim`` process."""
    frames = max(int(rate_hz * seconds), 2)
    source = TcpSource("127.0.0.1", 0)
    path = directory / f"sustained_{rate_hz:.0f}.h5"
    with Acquisition(ArrayLayout(module), [source], ring_slots=RING_SLOTS) as engine:
        engine.configure(bit_depth=depth, n_images=frames)
        engine.start_capture(CaptureSettings(str(path), num_capture=frames,
                                             compression=compression))  # type: ignore[arg-type]
        engine.start()
        sender = subprocess.run(
            [sys.executable, "-m", "pimega.cli.sim", "--host", "127.0.0.1", "--port",
             str(source.address[1]), "--chips", f"{module.chips_x}x{module.chips_y}",
             "--chip-size", str(module.chip_size), "--frames", str(frames), "--rate",
             str(rate_hz), "--depth", str(depth)],
            capture_output=True, text=True, check=False)
        engine.wait(timeout=seconds + 60)
        engine.stop()
        engine.wait_capture(timeout=60)
        status = engine.status()
    path.unlink(missing_ok=True)
    match = _SUMMARY.search(sender.stdout)
    sender_s = float(match[2]) if match else float("inf")
    return Run(rate_hz, frames, status.frames_written, status.frames_dropped, sender_s)


def highest_held_rate(module: ModuleGeometry, depth: int, compression: str, seconds: float,
                      directory: Path, start_hz: float = 25.0, steps: int = 3) -> list[Run]:
    """Every run of the search, in order: doubling from ``start_hz`` up to the detector's
    read-out limit, then ``steps`` bisections below the first rate not held."""
    limit = MAX_FRAME_RATE_HZ[depth]
    runs = [paced_run(module, depth, compression, start_hz, seconds, directory)]
    while runs[-1].held and runs[-1].rate_hz < limit:
        runs.append(paced_run(module, depth, compression, min(2 * runs[-1].rate_hz, limit),
                              seconds, directory))
    if runs[-1].held:  # held at the read-out limit: nothing above it to look for
        return runs
    low = max((r.rate_hz for r in runs if r.held), default=0.0)
    high = runs[-1].rate_hz
    for _ in range(steps):
        if low == 0.0:
            break
        run = paced_run(module, depth, compression, (low + high) / 2, seconds, directory)
        runs.append(run)
        low, high = (run.rate_hz, high) if run.held else (low, run.rate_hz)
    return runs


def writer_alone_fps(module: ModuleGeometry, depth: int, compression: str,
                     directory: Path, seconds: float) -> float:
    """Frames/s of the writer alone into ``directory`` for as long as one try of the search
    (``seconds``; open and close included), of the frames the paced sender sends (its counter
    pattern: values over the whole range, the worst case for compression).

    As long as a try, not a short burst: a burst lands in memory the file system has at hand,
    a try's gigabytes do not (on a VM, fresh guest memory costs the host a fault a page; on a
    disk, the page cache fills and writeback sets the pace). Both figures must meet the same
    storage to be compared.
    """
    frames = [counter_image(0, n, module, depth) for n in range(COUNTER_PERIOD)]
    dtype = frames[0].dtype
    meta = NexusMetadata(bit_depth=depth, count_time_s=1e-3, frame_time_s=1e-3,
                         module_shape=module.shape)
    path = directory / "writer_alone.h5"
    written, start = 0, time.perf_counter()
    with NexusWriter(str(path), module.shape, dtype, meta,
                     compression=compression) as writer:  # type: ignore[arg-type]
        while written < 2 or time.perf_counter() - start < seconds:
            writer.write(frames[written % len(frames)], written, written)
            written += 1
    elapsed = time.perf_counter() - start
    path.unlink(missing_ok=True)
    return written / elapsed


def bench_sustained(module: ModuleGeometry, depth: int, compression: str, seconds: float,
                    directory: Path, stage_fps: dict[str, float]) -> Iterator[Figure]:
    """The sustained rate against the slowest stage measured alone (``stage_fps`` holds the
    ingest and pipeline rates of this run; the writer's is measured here)."""
    stages = {**stage_fps, "writer": writer_alone_fps(module, depth, compression, directory,
                                                         seconds)}
    slowest = min(stages, key=lambda name: stages[name])
    runs = highest_held_rate(module, depth, compression, seconds, directory)
    held = max((r.rate_hz for r in runs if r.held), default=0.0)
    tag = f"{depth}bit_{compression}"
    for name, fps in stages.items():
        yield Figure(f"alone_{name}_{tag}_fps", fps, "frames/s", stages[slowest],
                     fps / stages[slowest])
    yield Figure(f"sustained_zero_loss_{tag}_fps", held, "frames/s", stages[slowest],
                 held / stages[slowest])
    for run in runs:  # each try: how late the sender ended against a ring's slack, and losses
        name, slack = f"sustained_try_{tag}_{run.rate_hz:.0f}Hz", RING_SLOTS / run.rate_hz
        late = run.sender_s - (run.frames - 1) / run.rate_hz
        yield Figure(f"{name}_late_s", late, "s", slack, late / slack)
        lost = run.frames - run.written + run.dropped
        yield Figure(f"{name}_lost", float(lost), "frames", float(run.frames), lost / run.frames)
