"""Replay sources: frames from a file, at a chosen rate, as if a detector sent them.

Each is both a frame source and the engine's detector control: an acquisition's start asks
for frames, the replay puts them into the rings (waiting while a ring is full, as TCP
back-pressure would), and stop ends it. Useful for tests and for re-processing.

- :class:`RawCaptureReplay`: a file of wire-format v1 frames back to back (what
  ``pimega-sim --output`` writes, or a capture of a sender's TCP stream), through the same
  :class:`~pimega.ingest.framing.FrameReceiver` as TCP, so bad bytes are counted alike.
- :class:`NexusReplay`: the frames of a NeXus file written by this project, packed back into
  wire payloads with their frame numbers, timestamps, image keys and angles.
"""

from __future__ import annotations

import abc
import contextlib
import threading
import time
from collections.abc import Callable
from pathlib import Path

import h5py
import numpy as np

from pimega.core.bitpack import module_payload
from pimega.core.errors import ConfigError
from pimega.core.geometry import ArrayLayout
from pimega.core.wire import ImageKey, make_header

from .framing import FrameReceiver, IngestSink, Stopped
from .source import Spawn

with contextlib.suppress(ImportError):  # HDF5 then decodes the files' LZ4/Blosc/BSLZ4 chunks
    import hdf5plugin  # noqa: F401

DATA_PATH = "/entry/data/data"
DETECTOR_PATH = "/entry/instrument/detector"
ANGLE_PATH = "/entry/sample/rotation_angle"
POLL_S = 0.2


class _Pacer:
    """Deadlines one frame period apart (rate 0: no waiting)."""

    def __init__(self, rate_hz: float) -> None:
        self._period = 1.0 / rate_hz if rate_hz > 0 else 0.0
        self._next = time.monotonic()

    def wait(self, stop: threading.Event) -> None:
        if self._period:
            self._next += self._period
            if stop.wait(max(0.0, self._next - time.monotonic())):
                raise Stopped


class _Replay(abc.ABC):
    """What both replays share: one loop that waits for a start and replays one run."""

    def __init__(self, path: str | Path, rate_hz: float | None) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise ConfigError(f"replay file {self.path} does not exist")
        self._rate_hz = rate_hz
        self._request = threading.Condition()
        self._run: tuple[int, float] | None = None  # (frames, rate) asked for
        self._stop_run = threading.Event()
        self._closed = threading.Event()
        self._looping = False

    @property
    def description(self) -> str:
        return f"replay of {self.path}"

    @property
    def running(self) -> bool:
        return self._looping

    # -- frame source ------------------------------------------------------------------

    def open(self, sink: IngestSink, spawn: Spawn) -> None:
        self._looping = True
        spawn("replay", lambda: self._loop(sink))

    def close(self) -> None:
        self._closed.set()
        self._stop_run.set()
        with self._request:
            self._request.notify_all()

    # -- detector control ----------------------------------------------------------------

    def start(self, n_frames: int, frame_rate_hz: float, bit_depth: int) -> None:
        """Replay ``n_frames`` (0: the whole file); the depth comes from the acquisition."""
        with self._request:
            self._stop_run.clear()
            rate = frame_rate_hz if self._rate_hz is None else self._rate_hz
            self._run = (n_frames, rate)
            self._request.notify_all()

    def stop(self) -> None:
        self._stop_run.set()

    def _loop(self, sink: IngestSink) -> None:
        try:
            while not self._closed.is_set():
                with self._request:
                    self._request.wait_for(lambda: self._run is not None or
                                           self._closed.is_set())
                    run, self._run = self._run, None
                if run is not None:
                    with contextlib.suppress(Stopped):
                        self._replay(sink, *run)
        finally:
            self._looping = False

    @abc.abstractmethod
    def _replay(self, sink: IngestSink, n_frames: int, rate_hz: float) -> None:
        """Put up to ``n_frames`` (0: all) into the sink at ``rate_hz`` (0: at once)."""


class RawCaptureReplay(_Replay):
    """Wire-format v1 frames from a file, replayed ``n_frames`` at a time (0: the whole
    file) at ``rate_hz`` frame sets a second (None: the acquisition's rate; 0: at once)."""

    def _replay(self, sink: IngestSink, n_frames: int, rate_hz: float) -> None:
        pacer = _Pacer(rate_hz)
        wanted = n_frames * sink.n_modules
        seen = 0

        def on_frame() -> None:
            nonlocal seen
            seen += 1
            if seen % sink.n_modules == 0:
                pacer.wait(self._stop_run)
            if wanted and seen >= wanted:
                raise Stopped

        with open(self.path, "rb", buffering=0) as file:
            FrameReceiver(file.readinto, sink, self._stop_run, str(self.path), on_frame).run()


class NexusReplay(_Replay):
    """The frames of a NeXus file written by this project, cut into the modules of
    ``layout`` and packed at the acquisition's depth, ``n_frames`` at a time (0: all)."""

    def __init__(self, path: str | Path, layout: ArrayLayout, rate_hz: float | None = None) -> None:
        super().__init__(path, rate_hz)
        self._layout = layout
        with h5py.File(self.path, "r") as file:
            data = file.get(DATA_PATH)
            if not isinstance(data, h5py.Dataset) or data.ndim != 3:
                raise ConfigError(f"{self.path} has no (N, H, W) dataset at {DATA_PATH}")
            if tuple(data.shape[1:]) != layout.shape:
                raise ConfigError(f"{self.path} holds {data.shape[2]}x{data.shape[1]} frames, "
                                  f"this detector makes {layout.width}x{layout.height}")

    def _replay(self, sink: IngestSink, n_frames: int, rate_hz: float) -> None:
        pacer = _Pacer(rate_hz)
        depth = sink.expected.bit_depth
        module = self._layout.module
        with h5py.File(self.path, "r", swmr=True) as file:
            data = file[DATA_PATH]
            assert isinstance(data, h5py.Dataset)
            columns = _columns(file, len(data))
            count = len(data) if not n_frames else min(n_frames, len(data))
            for i in range(count):
                image = data[i]
                for m in range(self._layout.n_modules):
                    y0, x0 = self._layout.module_origin(m)
                    tile = image[y0 : y0 + module.height, x0 : x0 + module.width]
                    payload = module_payload(tile, module, depth)
                    header = make_header(
                        module_id=m, bit_depth=depth, frame_number=int(columns["frame"][i]),
                        timestamp_ns=int(columns["timestamp"][i]), chips_x=module.chips_x,
                        chips_y=module.chips_y, chip_size=module.chip_size,
                        payload_size=payload.size, image_key=ImageKey(int(columns["key"][i])),
                        angle_deg=float(columns["angle"][i]))
                    _put(sink, m, header, payload, self._stop_run)
                pacer.wait(self._stop_run)


def _columns(file: h5py.File, n: int) -> dict[str, np.ndarray]:
    """Per-frame frame numbers, timestamps, image keys and angles (defaults where absent)."""
    def column(path: str, default: Callable[[], np.ndarray]) -> np.ndarray:
        dataset = file.get(path)
        return dataset[:n] if isinstance(dataset, h5py.Dataset) and len(dataset) >= n \
            else default()

    return {
        "frame": column(f"{DETECTOR_PATH}/frame_number", lambda: np.arange(n)),
        "timestamp": column(f"{DETECTOR_PATH}/timestamp", lambda: np.zeros(n, np.int64)),
        "key": column(f"{DETECTOR_PATH}/image_key", lambda: np.zeros(n, np.int64)),
        "angle": column(ANGLE_PATH, lambda: np.zeros(n)),
    }


def _put(sink: IngestSink, module: int, header, payload: np.ndarray,
         stop: threading.Event) -> None:
    """Hand one frame to module ``module``'s ring as a receiver would (counted alike)."""
    counters = sink.counters[module]
    counters.connected = True
    counters.note_frame_number(header.frame_number)
    ring = sink.rings[module]
    while sink.armed.is_set():
        slot = ring.acquire(POLL_S)
        if slot is not None:
            ring.slots[slot, : payload.size] = payload
            counters.frames += 1
            counters.bytes += header.frame_size
            ring.commit(slot, header)
            return
        if stop.is_set():
            raise Stopped
    counters.dropped_idle += 1
