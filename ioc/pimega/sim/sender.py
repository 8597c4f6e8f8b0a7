"""The simulated detector: wire-format v1 frames over TCP, one connection and thread per module.

Standing for hardware, the simulator owns its threads: one sender per module and, for the
phantom pattern, one producer that computes and packs frames ahead of the senders. Counter
payloads are packed once per module, depth and cycle position and reused, so sending is
limited by the network and the receiver, not by packing.
"""

from __future__ import annotations

import logging
import math
import queue
import socket
import threading
import time
import zlib
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from pimega.core.errors import ConfigError
from pimega.core.geometry import ArrayLayout, check_bit_depth
from pimega.core.wire import FIXED_SIZE, TOMO_SIZE, Flags, FrameHeader, ImageKey

from .packing import pack_module
from .patterns import COUNTER_PERIOD, counter_image
from .phantom import PhantomScan

log = logging.getLogger(__name__)

Pattern = Literal["counter", "phantom"]
PATTERNS: tuple[Pattern, ...] = ("counter", "phantom")
SEND_BUFFER_BYTES = 8 << 20
POLL_S = 0.1  # how often a blocked sender or producer looks at the stop event
STOP_GRACE_S = 1.0  # how long stop() lets a half-sent frame finish before cutting the link
PHANTOM_AHEAD = 4  # frames the phantom producer may run ahead of each sender
PACKED_KEPT = 16  # packed phantom images kept for reuse (neighbouring angles share one)


@dataclass(frozen=True)
class PhantomParams:
    """Scan settings of the phantom pattern; projections fill the frames after darks and flats."""

    n_darks: int = 10
    n_flats: int = 10
    flat_level: float = 1000.0
    dark_level: float = 2.0
    angle_range: float = 180.0
    seed: int = 0
    attenuation: float = 4.0


@dataclass(frozen=True)
class SimConfig:
    """What the simulated detector sends; ``frame_rate_hz`` 0 sends as fast as possible.

    ``first_module`` is the array module the first simulated module stands for: module ``m``
    sends the counter pattern of array module ``first_module + m`` (a node of one module in
    a larger array), its wire header still numbering it ``m`` for the receiving node.
    """

    layout: ArrayLayout = field(default_factory=ArrayLayout)
    bit_depth: int = 12
    n_frames: int = 100
    frame_rate_hz: float = 0.0
    pattern: Pattern = "counter"
    with_crc: bool = False
    period: int = COUNTER_PERIOD
    phantom: PhantomParams = field(default_factory=PhantomParams)
    first_module: int = 0

    def __post_init__(self) -> None:
        check_bit_depth(self.bit_depth)
        _check_run(self.n_frames, self.frame_rate_hz)
        if self.pattern not in PATTERNS:
            raise ConfigError(f"pattern {self.pattern!r} is not one of {PATTERNS}")
        if self.period < 1:
            raise ConfigError(f"counter period must be at least 1, got {self.period}")
        if self.first_module < 0:
            raise ConfigError(f"first module must be ≥ 0, got {self.first_module}")
        if self.first_module and self.pattern != "counter":
            raise ConfigError("a first module other than 0 needs the counter pattern")

    def run_settings(self, n_frames: int | None, frame_rate_hz: float | None,
                     bit_depth: int | None) -> tuple[int, float, int]:
        """An acquisition's frames, frame rate and bit depth: those given, else this config's;
        refused (ConfigError) when out of range."""
        n = self.n_frames if n_frames is None else n_frames
        rate = self.frame_rate_hz if frame_rate_hz is None else frame_rate_hz
        depth = check_bit_depth(self.bit_depth if bit_depth is None else bit_depth)
        _check_run(n, rate)
        return n, rate, depth


def _check_run(n_frames: int, frame_rate_hz: float) -> None:
    if n_frames < 0:
        raise ConfigError(f"number of frames cannot be negative, got {n_frames}")
    if not math.isfinite(frame_rate_hz) or frame_rate_hz < 0:
        raise ConfigError(f"frame rate must be a finite number ≥ 0, got {frame_rate_hz} Hz")


@dataclass(frozen=True, slots=True)
class _Frame:
    """A packed payload, ready to send, with what its header needs besides counters."""

    payload: np.ndarray
    crc32: int = 0
    image_key: ImageKey | None = None
    angle_deg: float = 0.0


class _Stopped(Exception):
    """stop() was asked before this frame's first byte left."""


class _Torn(Exception):
    """stop() cut a frame half-sent: the stream is out of step and the link must go."""


class Simulator:
    """A π-MEGA detector on TCP: ``connect()`` once, then ``acquire()`` as often as needed.

    ``port`` is one receiver port for every module, or one port per module.
    """

    def __init__(self, host: str, port: int | Sequence[int], config: SimConfig) -> None:
        n_modules = config.layout.n_modules
        ports = [port] * n_modules if isinstance(port, int) else list(port)
        if len(ports) != n_modules:
            raise ConfigError(f"{len(ports)} ports given for {n_modules} modules")
        self.host = host
        self.ports = ports
        self.config = config
        self._socks: list[socket.socket | None] = [None] * n_modules
        self._threads: list[threading.Thread] = []
        self._stop = threading.Event()
        self._barrier = threading.Barrier(1)
        self._cycles: dict[tuple[int, int], list[_Frame]] = {}
        self._frames_sent = [0] * n_modules
        self._bytes_sent = [0] * n_modules
        self._errors: list[str | None] = [None] * n_modules
        self._t0_ns = 0
        self._last_ns = [0] * n_modules
        self._triggers: list[threading.Semaphore] | None = None  # per module, when triggered

    # -- connections ---------------------------------------------------------------------

    def connect(self, timeout: float = 10.0) -> None:
        """Open the missing module connections, retrying until the receiver listens.

        Raises :class:`TimeoutError` naming the address when ``timeout`` passes first.
        """
        deadline = time.monotonic() + timeout
        for module_id, sock in enumerate(self._socks):
            if sock is None:
                self._socks[module_id] = self._open(self.ports[module_id], deadline)

    def _open(self, port: int, deadline: float) -> socket.socket:
        while True:
            left = deadline - time.monotonic()
            try:
                sock = socket.create_connection((self.host, port), timeout=max(left, 0.01))
            except (ConnectionRefusedError, TimeoutError) as exc:
                if left <= 0:
                    raise TimeoutError(
                        f"no receiver listening on {self.host}:{port} ({exc})"
                    ) from None
                time.sleep(min(0.05, max(left, 0.0)))
                continue
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 0)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SEND_BUFFER_BYTES)
            sock.settimeout(POLL_S)
            return sock

    def close(self) -> None:
        """Stop any acquisition and close every connection."""
        self.stop()
        for module_id in range(len(self._socks)):
            self._drop(module_id)

    def _drop(self, module_id: int) -> None:
        sock, self._socks[module_id] = self._socks[module_id], None
        if sock is not None:
            sock.close()

    def __enter__(self) -> Simulator:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- acquisition ---------------------------------------------------------------------

    @property
    def running(self) -> bool:
        return any(thread.is_alive() for thread in self._threads)

    def acquire(
        self,
        n_frames: int | None = None,
        frame_rate_hz: float | None = None,
        bit_depth: int | None = None,
        triggered: bool = False,
    ) -> None:
        """Start sending frames 0 … n_frames−1 on every module and return at once.

        ``triggered``: each frame waits for a :meth:`trigger` and leaves one exposure
        (``1/frame_rate_hz``) after it, or after the previous frame when triggers come
        faster. Arguments left out come from the config. Reconnects modules whose link was lost.
        """
        if self.running:
            raise RuntimeError("an acquisition is already running; stop() or wait() first")
        cfg = self.config
        n, rate, depth = cfg.run_settings(n_frames, frame_rate_hz, bit_depth)
        if triggered and not rate:
            raise ConfigError("a triggered acquisition needs an exposure (frame rate > 0)")
        self.connect()
        n_modules = cfg.layout.n_modules
        self._stop = threading.Event()
        self._barrier = threading.Barrier(n_modules, action=self._mark_start)
        self._frames_sent = [0] * n_modules
        self._bytes_sent = [0] * n_modules
        self._errors = [None] * n_modules
        self._last_ns = [0] * n_modules
        self._t0_ns = time.monotonic_ns()
        self._triggers = [threading.Semaphore(0) for _ in range(n_modules)] if triggered else None
        self._threads = []
        sources = self._start_sources(n, depth)
        self._threads += [
            threading.Thread(
                target=self._run_module, args=(m, n, rate, depth, sources[m]),
                name=f"pimega-sim-module{m}", daemon=True,
            )
            for m in range(n_modules)
        ]
        for thread in self._threads:
            if thread.ident is None:
                thread.start()

    def wait(self, timeout: float | None = None) -> bool:
        """Wait for the acquisition to end; False when ``timeout`` passed first."""
        deadline = None if timeout is None else time.monotonic() + timeout
        for thread in self._threads:
            left = None if deadline is None else max(deadline - time.monotonic(), 0.0)
            thread.join(left)
        self._threads = [thread for thread in self._threads if thread.is_alive()]
        return not self._threads

    def trigger(self) -> None:
        """One trigger pulse to every module: each exposes one frame."""
        if self._triggers is None or not self.running:
            raise ConfigError("no triggered acquisition is running")
        for pulses in self._triggers:
            pulses.release()

    def _await_trigger(self, module_id: int) -> bool:
        """Wait for this module's next trigger; False when stopped first."""
        assert self._triggers is not None
        while not self._triggers[module_id].acquire(timeout=POLL_S):
            if self._stop.is_set():
                return False
        return True

    def stop(self) -> None:
        """End the acquisition early: no new frame starts, blocked senders give up promptly."""
        self._stop.set()
        self._barrier.abort()
        self.wait(STOP_GRACE_S + 2 * POLL_S + 1.0)

    @property
    def frames_sent(self) -> tuple[int, ...]:
        """Frames sent per module in the current (or last) acquisition."""
        return tuple(self._frames_sent)

    @property
    def bytes_sent(self) -> tuple[int, ...]:
        """Bytes (headers and payloads) sent per module in the current (or last) acquisition."""
        return tuple(self._bytes_sent)

    @property
    def errors(self) -> tuple[str | None, ...]:
        """Why each module stopped early in the last acquisition, None where it did not."""
        return tuple(self._errors)

    @property
    def elapsed_s(self) -> float:
        """Seconds from the common start to the last byte sent by any module."""
        return max(0, max(self._last_ns, default=0) - self._t0_ns) / 1e9

    def _mark_start(self) -> None:
        self._t0_ns = time.monotonic_ns()

    # -- payload sources -----------------------------------------------------------------

    def _start_sources(self, n_frames: int, depth: int) -> list[Callable[[int], _Frame | None]]:
        """One ``frame_number → frame`` getter per module (None: no more frames)."""
        if self.config.pattern == "counter":
            self._cycles = {key: cycle for key, cycle in self._cycles.items() if key[1] == depth}
            return [self._counter_source(m, depth) for m in range(self.config.layout.n_modules)]
        queues = [queue.Queue[_Frame | None](PHANTOM_AHEAD) for _ in self._socks]
        producer = threading.Thread(
            target=self._produce_phantom, args=(n_frames, depth, queues),
            name="pimega-sim-phantom", daemon=True,
        )
        producer.start()
        self._threads.append(producer)
        return [self._queue_source(q) for q in queues]

    def _counter_source(self, module_id: int, depth: int) -> Callable[[int], _Frame | None]:
        cycle = self._cycles.setdefault((module_id, depth), [])
        geometry = self.config.layout.module
        period = self.config.period

        def frame(frame_number: int) -> _Frame:
            position = frame_number % period
            while len(cycle) <= position:
                image = counter_image(self.config.first_module + module_id, len(cycle),
                                      geometry, depth, period)
                cycle.append(self._packed(pack_module(image, geometry, depth)))
            return cycle[position]

        return frame

    def _queue_source(self, frames: queue.Queue[_Frame | None]) -> Callable[[int], _Frame | None]:
        def frame(_frame_number: int) -> _Frame | None:
            while not self._stop.is_set():
                try:
                    return frames.get(timeout=POLL_S)
                except queue.Empty:
                    continue
            return None

        return frame

    def _packed(
        self, payload: np.ndarray, key: ImageKey | None = None, angle: float = 0.0
    ) -> _Frame:
        crc = zlib.crc32(payload.data) if self.config.with_crc else 0
        return _Frame(payload, crc, key, angle)

    def _produce_phantom(self, n_frames: int, depth: int, queues: list[queue.Queue]) -> None:
        """Compute, split and pack the scan's frames in order, ahead of the module senders."""
        cfg, params = self.config, self.config.phantom
        scan = PhantomScan(
            cfg.layout, depth, max(n_frames - params.n_darks - params.n_flats, 0),
            n_darks=params.n_darks, n_flats=params.n_flats, flat_level=params.flat_level,
            dark_level=params.dark_level, angle_range=params.angle_range, seed=params.seed,
            attenuation=params.attenuation,
        )
        height, width = cfg.layout.module.shape
        # the scan hands out the same (cached) image for neighbouring angles: pack it once
        packed: OrderedDict[int, tuple[np.ndarray, list[np.ndarray]]] = OrderedDict()
        try:
            for _, (key, angle, image) in zip(range(n_frames), scan, strict=False):
                hit = packed.get(id(image))
                if hit is None or hit[0] is not image:
                    tiles = [image[r : r + height, c : c + width] for r, c in
                             map(cfg.layout.module_origin, range(len(queues)))]
                    hit = (image, [pack_module(t, cfg.layout.module, depth) for t in tiles])
                    packed[id(image)] = hit
                    if len(packed) > PACKED_KEPT:
                        packed.popitem(last=False)
                for module_id, frames in enumerate(queues):
                    frame = self._packed(hit[1][module_id], key, angle)
                    if not self._put(module_id, frames, frame):
                        return
        finally:  # normally unread: the senders stop after n_frames, this ends a failed scan
            for module_id, frames in enumerate(queues):
                self._put(module_id, frames, None)

    def _put(self, module_id: int, frames: queue.Queue, frame: _Frame | None) -> bool:
        """Queue ``frame`` unless the acquisition stops; a failed module's frames are dropped."""
        while not self._stop.is_set():
            if self._errors[module_id] is not None:
                return True
            try:
                frames.put(frame, timeout=POLL_S)
                return True
            except queue.Full:
                continue
        return False

    # -- sending -------------------------------------------------------------------------

    def _run_module(
        self, module_id: int, n_frames: int, rate: float,
        depth: int, source: Callable[[int], _Frame | None],
    ) -> None:
        """Send one module's frames, paced against absolute deadlines from the common start:
        as a detector does, frame k leaves when its exposure ends, at start + (k+1)/rate
        (triggered: one exposure after its trigger, see :meth:`acquire`)."""
        sock = self._socks[module_id]
        deadline_ns = 0
        try:
            if n_frames and self.config.pattern == "counter":
                for position in range(min(n_frames, self.config.period)):
                    source(position)  # pack the cycle before the clock starts
            self._barrier.wait()
            for frame_number in range(n_frames):
                if self._triggers is not None:
                    if not self._await_trigger(module_id):
                        break
                    deadline_ns = max(time.monotonic_ns(), deadline_ns) + round(1e9 / rate)
                elif rate:
                    deadline_ns = self._t0_ns + round((frame_number + 1) * 1e9 / rate)
                if rate:
                    delay_s = (deadline_ns - time.monotonic_ns()) / 1e9
                    if delay_s > 0 and self._stop.wait(delay_s):
                        break
                frame = source(frame_number)
                if frame is None or self._stop.is_set() or sock is None:
                    break
                header = self._header(module_id, depth, frame_number, frame)
                self._send(sock, [header, frame.payload])
                self._frames_sent[module_id] += 1
                self._bytes_sent[module_id] += len(header) + frame.payload.size
                self._last_ns[module_id] = time.monotonic_ns()
        except (threading.BrokenBarrierError, _Stopped):
            pass
        except _Torn:
            log.warning(
                "module %d: stopped in the middle of frame %d under back-pressure; "
                "connection closed, it reopens on the next acquisition",
                module_id, self._frames_sent[module_id],
            )
            self._errors[module_id] = "stopped mid-frame"
            self._drop(module_id)
        except OSError as exc:
            self._errors[module_id] = f"receiver went away: {exc}"
            log.warning(
                "module %d: receiver %s:%d went away after %d frames (%s)",
                module_id, self.host, self.ports[module_id], self._frames_sent[module_id], exc,
            )
            self._drop(module_id)
        except Exception as exc:
            self._errors[module_id] = f"sender failed: {exc!r}"
            self._barrier.abort()
            raise

    def _header(self, module_id: int, depth: int, frame_number: int, frame: _Frame) -> bytes:
        geometry = self.config.layout.module
        flags = Flags.CRC if self.config.with_crc else Flags(0)
        if frame.image_key is not None:
            flags |= Flags.TOMO
        return FrameHeader(
            module_id=module_id, bit_depth=depth, frame_number=frame_number,
            timestamp_ns=time.time_ns(), chips_x=geometry.chips_x,
            chips_y=geometry.chips_y, chip_size=geometry.chip_size,
            payload_size=frame.payload.size, flags=flags, crc32=frame.crc32,
            header_size=TOMO_SIZE if frame.image_key is not None else FIXED_SIZE,
            image_key=frame.image_key or ImageKey.PROJECTION, angle_deg=frame.angle_deg,
        ).pack()

    def _send(self, sock: socket.socket, parts: list) -> None:
        """Send every byte of ``parts`` without joining them; see :class:`_Stopped`/`_Torn`."""
        pending = [memoryview(part).cast("B") for part in parts]
        started = False
        give_up_at = None
        while pending:
            try:
                sent = sock.sendmsg(pending)
            except TimeoutError:
                if self._stop.is_set():
                    if not started:
                        raise _Stopped from None
                    give_up_at = give_up_at or time.monotonic() + STOP_GRACE_S
                    if time.monotonic() > give_up_at:
                        raise _Torn from None
                continue
            started = True
            while sent:
                head = pending[0]
                if sent >= len(head):
                    sent -= len(head)
                    pending.pop(0)
                else:
                    pending[0] = head[sent:]
                    sent = 0
