"""The simulated detector as an RDMA sender: wire-format v1 frames over a frame link.

The link is the sending end of the RDMA protocol (``pimega.ingest.rdma.RdmaLink`` on pyverbs
or on the in-process loopback); the command line makes it, as the simulator does not import
the ingest layer. One link carries every module and one thread sends frame sets 0 … n−1 at a
rate, module by module. Counter payloads are packed once per cycle position and pinned (the
link registers them), so they are written from where they are; phantom frames are computed
as they go. Without a credit the sender waits (back-pressure, ``wait_s`` None) or drops the
frame and counts an overrun, as a detector that cannot wait does.
"""

from __future__ import annotations

import logging
import threading
import time
import zlib
from collections.abc import Callable, Iterator, Sequence
from typing import Protocol

import numpy as np

from pimega.core.errors import PimegaError
from pimega.core.wire import FIXED_SIZE, TOMO_SIZE, Flags, FrameHeader, ImageKey

from .detector import CONTINUOUS_FRAMES
from .patterns import counter_image, module_payload
from .phantom import PhantomScan
from .sender import SimConfig, _Frame

log = logging.getLogger(__name__)

POLL_S = 0.1  # how often a sender waiting for a credit looks at stop


class FrameLink(Protocol):
    """The sending end of an RDMA connection carrying the modules it was made for."""

    def pin(self, payload: np.ndarray) -> None: ...

    def send_frame(self, module: int, header: bytes, payload: np.ndarray,
                   wait_s: float | None = None) -> bool: ...

    def close(self) -> None: ...


#: ``connect(modules)``: a new link carrying ``modules`` to the receiver.
LinkFactory = Callable[[Sequence[int]], FrameLink]


class _Stopped(Exception):
    """stop() was asked while waiting for a credit."""


class RdmaSimulator:
    """The simulated detector on an RDMA link; also the engine's detector control.

    ``wait_s``: how long a frame waits for a credit (None: until it gets one or stop()).
    """

    def __init__(self, connect: LinkFactory, config: SimConfig, *,
                 wait_s: float | None = None) -> None:
        self.config = config
        self._connect = connect
        self._wait_s = wait_s
        self._link: FrameLink | None = None
        self._cycles: dict[tuple[int, int], list[_Frame]] = {}
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self.frames_sent = 0  # frame sets sent in the current (or last) acquisition
        self.bytes_sent = 0
        self.overruns = 0  # module frames dropped for want of a credit
        self.elapsed_s = 0.0
        self.error: str | None = None

    def connect(self) -> None:
        """Open the link if it is not open (again after a failure)."""
        if self._link is None:
            self._link = self._connect(list(range(self.config.layout.n_modules)))
            for cycle in self._cycles.values():
                for frame in cycle:
                    self._link.pin(frame.payload)

    def start(self, n_frames: int, frame_rate_hz: float, bit_depth: int) -> None:
        """Detector control: ``n_frames`` frames (0: until stopped)."""
        self.acquire(n_frames or CONTINUOUS_FRAMES, frame_rate_hz, bit_depth)

    def acquire(self, n_frames: int | None = None, frame_rate_hz: float | None = None,
                bit_depth: int | None = None) -> None:
        """Start sending frames 0 … n_frames−1 and return at once (defaults: the config)."""
        if self.running:
            raise RuntimeError("an acquisition is already running; stop() or wait() first")
        n, rate, depth = self.config.run_settings(n_frames, frame_rate_hz, bit_depth)
        self.connect()
        self._stop = threading.Event()
        self.frames_sent = self.bytes_sent = self.overruns = 0
        self.elapsed_s, self.error = 0.0, None
        self._thread = threading.Thread(target=self._run, args=(n, rate, depth),
                                        name="pimega-sim-rdma", daemon=True)
        self._thread.start()

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def wait(self, timeout: float | None = None) -> bool:
        """Wait for the acquisition to end; False when ``timeout`` passed first."""
        if self._thread is not None:
            self._thread.join(timeout)
        return not self.running

    def stop(self) -> None:
        self._stop.set()
        self.wait(2 * POLL_S + 1.0)

    def close(self) -> None:
        self.stop()
        if self._link is not None:
            self._link.close()
            self._link = None

    def _run(self, n_frames: int, rate: float, depth: int) -> None:
        link = self._link
        assert link is not None
        t0 = time.monotonic()
        try:
            for number, frames in zip(range(n_frames), self._frames(n_frames, depth),
                                      strict=False):
                if rate and self._stop.wait(max(0.0, t0 + number / rate - time.monotonic())):
                    break
                if self._stop.is_set():
                    break
                for module, frame in enumerate(frames):
                    header = _header(self.config, module, depth, number, frame)
                    if self._send(link, module, header, frame.payload):
                        self.bytes_sent += len(header) + frame.payload.nbytes
                    else:
                        self.overruns += 1
                self.frames_sent += 1
                self.elapsed_s = time.monotonic() - t0
        except _Stopped:
            pass
        except PimegaError as err:  # the receiver went away or refused: reconnect next time
            self.error = str(err)
            log.warning("rdma sender stopped after %d frames: %s", self.frames_sent, err)
            link.close()
            self._link = None

    def _send(self, link: FrameLink, module: int, header: bytes, payload: np.ndarray) -> bool:
        if self._wait_s is not None:
            return link.send_frame(module, header, payload, self._wait_s)
        while not self._stop.is_set():
            if link.send_frame(module, header, payload, POLL_S):
                return True
        raise _Stopped

    def _frames(self, n_frames: int, depth: int) -> Iterator[list[_Frame]]:
        """Each frame set's module frames, in order."""
        cfg = self.config
        n_modules = cfg.layout.n_modules
        if cfg.pattern == "counter":
            for number in range(n_frames):
                yield [self._counter(m, depth, number % cfg.period) for m in range(n_modules)]
            return
        params = cfg.phantom
        scan = PhantomScan(cfg.layout, depth, max(n_frames - params.n_darks - params.n_flats, 0),
                           n_darks=params.n_darks, n_flats=params.n_flats,
                           flat_level=params.flat_level, dark_level=params.dark_level,
                           angle_range=params.angle_range, seed=params.seed,
                           attenuation=params.attenuation)
        height, width = cfg.layout.module.shape
        for key, angle, image in scan:
            tiles = []
            for m in range(n_modules):
                row, col = cfg.layout.module_origin(m)
                payload = module_payload(image[row : row + height, col : col + width],
                                         cfg.layout.module, depth)
                tiles.append(self._packed(payload, key, angle))
            yield tiles

    def _counter(self, module: int, depth: int, position: int) -> _Frame:
        """The counter frame of a cycle position, packed and pinned the first time."""
        cycle = self._cycles.setdefault((module, depth), [])
        geometry = self.config.layout.module
        while len(cycle) <= position:
            image = counter_image(module, len(cycle), geometry, depth, self.config.period)
            cycle.append(self._packed(module_payload(image, geometry, depth)))
            if self._link is not None:
                self._link.pin(cycle[-1].payload)
        return cycle[position]

    def _packed(self, payload: np.ndarray, key: ImageKey | None = None,
                angle: float = 0.0) -> _Frame:
        crc = zlib.crc32(payload.data) if self.config.with_crc else 0
        return _Frame(payload, crc, key, angle)


def _header(config: SimConfig, module: int, depth: int, number: int, frame: _Frame) -> bytes:
    geometry = config.layout.module
    flags = Flags.CRC if config.with_crc else Flags(0)
    if frame.image_key is not None:
        flags |= Flags.TOMO
    return FrameHeader(
        module_id=module, bit_depth=depth, frame_number=number,
        timestamp_ns=time.monotonic_ns(), chips_x=geometry.chips_x, chips_y=geometry.chips_y,
        chip_size=geometry.chip_size, payload_size=frame.payload.size, flags=flags,
        crc32=frame.crc32, header_size=TOMO_SIZE if frame.image_key is not None else FIXED_SIZE,
        image_key=frame.image_key or ImageKey.PROJECTION, angle_deg=frame.angle_deg,
    ).pack()
