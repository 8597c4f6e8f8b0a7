"""Transport-free framing of wire-format v1 streams: written once, used by every byte source.

A :class:`FrameReceiver` reads frames from anything with ``recv_into`` semantics (a socket,
a file of raw captured frames) into the ring of the frame's module. Bad input never ends the
loop: a header that does not parse makes the reader scan for the next ``PMGA`` magic, a frame
of the wrong geometry or a bad CRC is counted as corrupt and skipped, and every count lands
in the module's :class:`ModuleCounters`. Logging of bad input is rate-limited.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from pimega.core.errors import WireError
from pimega.core.geometry import chip_stream_bytes
from pimega.core.wire import (
    FIXED_SIZE,
    MAGIC,
    TOMO_SIZE,
    Flags,
    FrameHeader,
    check_payload,
    parse_header,
)

from .counters import ModuleCounters
from .ring import FrameRing

log = logging.getLogger(__name__)

SCAN_CHUNK = 1 << 16  # bytes read at a time while scanning for a magic
SKIP_CHUNK = 1 << 18  # scratch for payloads nobody keeps
LOG_INTERVAL_S = 1.0  # at most one bad-input line a second per stream
SLOT_WAIT_S = 0.2  # how often a reader blocked on a full ring looks at ``stop``
_FLAGS_OFFSET = 11
_MODULE_OFFSET = 8

RecvInto = Callable[[memoryview], int]


@dataclass(slots=True)
class FrameExpectation:
    """Geometry and depth the receiver accepts; the engine changes it while not armed."""

    chips_x: int
    chips_y: int
    chip_size: int
    bit_depth: int

    @property
    def payload_size(self) -> int:
        return self.chips_x * self.chips_y * chip_stream_bytes(self.chip_size, self.bit_depth)

    def check(self, header: FrameHeader) -> None:
        """Raise :class:`WireError` when ``header`` describes another geometry or depth."""
        got = (header.chips_x, header.chips_y, header.chip_size, header.bit_depth)
        want = (self.chips_x, self.chips_y, self.chip_size, self.bit_depth)
        if got != want:
            raise WireError(
                "frame is {}x{} chips of {} at {} bit, ".format(*got)
                + "this acquisition expects {}x{} chips of {} at {} bit".format(*want)
            )


@dataclass(frozen=True)
class IngestSink:
    """Where every source puts frames: a ring and counters per module, the expected geometry,
    and ``armed`` (set while an acquisition takes frames; else frames are counted and dropped)."""

    rings: Sequence[FrameRing]
    counters: Sequence[ModuleCounters]
    expected: FrameExpectation
    armed: threading.Event

    def __post_init__(self) -> None:
        if len(self.rings) != len(self.counters):
            raise ValueError(f"{len(self.rings)} rings but {len(self.counters)} counters")

    @property
    def n_modules(self) -> int:
        return len(self.rings)


class Stopped(Exception):
    """``stop`` was set while the receiver waited."""


class _Truncated(Exception):
    """The stream ended inside a frame of ``module``."""

    def __init__(self, module: int, message: str) -> None:
        super().__init__(message)
        self.module = module


class ByteReader:
    """Exact reads from a byte stream.

    Bytes read ahead while scanning for a magic wait in ``_buf[_start:_end]`` and are
    served first; otherwise reads go straight from the stream into the caller's memory.
    ``recv_into`` returns 0 at the end of the stream; it may raise ``TimeoutError`` to let
    the reader look at ``stop``.
    """

    def __init__(self, recv_into: RecvInto, stop: threading.Event) -> None:
        self._recv_into = recv_into
        self._stop = stop
        self._buf = bytearray(SCAN_CHUNK + TOMO_SIZE)
        self._view = memoryview(self._buf)
        self._start = self._end = 0
        self.skipped = 0  # bytes dropped while scanning

    def read_into(self, view: memoryview) -> int:
        """Fill ``view``; returns how many bytes came (fewer only at the end of the stream)."""
        want = len(view)
        got = min(want, self._end - self._start)
        if got:
            view[:got] = self._view[self._start : self._start + got]
            self._start += got
        while got < want:
            n = self._recv(view[got:])
            if not n:
                break
            got += n
        return got

    def unread(self, data: memoryview) -> None:
        """Put back the bytes just read so that the scan sees them again."""
        n = len(data)
        if n > self._start:  # they came from the stream: nothing is pending, start afresh
            pending = bytes(self._view[self._start : self._end])
            self._view[n : n + len(pending)] = pending
            self._start, self._end = n, n + len(pending)
        self._start -= n
        self._view[self._start : self._start + n] = data

    def seek_magic(self) -> bool:
        """Drop bytes up to the next magic; False when the stream ended first.

        Each byte is read and searched once; only a possible magic prefix (≤ 3 bytes) is
        carried over between reads.
        """
        while True:
            at = self._buf.find(MAGIC, self._start, self._end)
            if at >= 0:
                self.skipped += at - self._start
                self._start = at
                return True
            keep = min(len(MAGIC) - 1, self._end - self._start)
            self.skipped += self._end - self._start - keep
            self._buf[:keep] = self._buf[self._end - keep : self._end]
            self._start, self._end = 0, keep
            n = self._recv(self._view[keep:SCAN_CHUNK])
            if not n:
                self.skipped += keep
                self._end = 0
                return False
            self._end += n

    def _recv(self, view: memoryview) -> int:
        while True:
            if self._stop.is_set():
                raise Stopped
            try:
                return self._recv_into(view)
            except TimeoutError:
                continue


class FrameReceiver:
    """The receive loop of one byte stream, with its preallocated buffers.

    ``on_frame`` (if given) is called after each frame with a sound header (kept or not),
    e.g. to pace a replay; it may raise :class:`Stopped` to end the loop. ``activity`` holds
    the monotonic time of the last byte that made progress, so an owner can tell an idle
    stream from a working one.
    """

    def __init__(self, recv_into: RecvInto, sink: IngestSink, stop: threading.Event,
                 peer: str = "?", on_frame: Callable[[], None] | None = None) -> None:
        self._sink = sink
        self._on_frame = on_frame
        self._counters = sink.counters
        self._stop = stop
        self._reader = ByteReader(recv_into, stop)
        self._header = memoryview(bytearray(0x10000))  # header_size is a u16
        self._scratch = memoryview(bytearray(SKIP_CHUNK))
        self.peer = peer
        self.activity = time.monotonic()
        self._modules: set[int] = set()  # modules this stream carried
        self._last_module = 0  # where bad input is counted when its header names no module
        self._frame_module: int | None = None  # module of the frame being read
        self._bad_header: str | None = None  # why the scan began, while scanning
        self._quiet_until = 0.0
        self._suppressed = 0

    @property
    def in_frame(self) -> bool:
        """True while a frame's payload is being read (it may hold a ring slot)."""
        return self._frame_module is not None

    def run(self) -> None:
        """Receive until the stream ends, fails, or ``stop`` is set; never raises on input."""
        try:
            while not self._stop.is_set():
                header = self._next_header()
                if header is None:
                    return
                self._take(header)
                if self._on_frame is not None:
                    self._on_frame()
        except Stopped:
            return
        except _Truncated as err:
            self._lose(err.module, str(err))
        except OSError as err:
            if self._frame_module is None:
                self._note_error(self._last_module, f"connection error: {err}")
            else:
                self._lose(self._frame_module, f"connection error inside a frame: {err}")
        finally:
            for module in self._modules:
                self._counters[module].connected = False

    def _next_header(self) -> FrameHeader | None:
        """The next header that parses, scanning past bad bytes; None when the stream ended."""
        while True:
            got = self._reader.read_into(self._header[:FIXED_SIZE])
            size = FIXED_SIZE
            if got == FIXED_SIZE and self._header[_FLAGS_OFFSET] & Flags.TOMO:
                size = TOMO_SIZE
                got += self._reader.read_into(self._header[FIXED_SIZE:TOMO_SIZE])
            if got < size:
                if got == 0 or self._bad_header is not None:  # clean end, or end of garbage
                    self._end_scan("the end of the stream")
                    return None
                raise _Truncated(
                    self._blame(self._header[:got]),
                    f"stream ended inside a frame header ({got} of {size} bytes)",
                )
            try:
                header = parse_header(self._header[:size])
            except WireError as err:
                self._begin_scan(self._header[:size], str(err))
                if not self._reader.seek_magic():
                    self._end_scan("the end of the stream")
                    return None
                continue
            self._end_scan(f"frame {header.frame_number} of module {header.module_id}")
            self.activity = time.monotonic()
            return header

    def _take(self, header: FrameHeader) -> None:
        """Read the payload into a ring slot (armed) or into scratch (not armed)."""
        blamed = self._blame(self._header)
        try:
            self._read_exact(self._header[FIXED_SIZE if not header.has_tomo else TOMO_SIZE
                                          : header.header_size], blamed, "header")
            self._check_fits(header)
        except WireError as err:
            self._skip(header.payload_size, blamed)  # its header is sound: stay in step
            self._corrupt(blamed, f"frame {header.frame_number}: {err}")
            return
        module = header.module_id
        counters = self._counters[module]
        if module not in self._modules:
            self._modules.add(module)
            counters.connections += 1
            counters.connected = True
        self._last_module = self._frame_module = module
        counters.note_frame_number(header.frame_number)
        ring = self._sink.rings[module]
        slot = self._acquire(ring)
        if slot is None:
            self._skip(header.payload_size, module)
            counters.dropped_idle += 1
        else:
            self._fill(ring, slot, header, counters)
        self._frame_module = None

    def _check_fits(self, header: FrameHeader) -> None:
        rings = self._sink.rings
        if header.module_id >= len(rings):
            raise WireError(f"module id {header.module_id} is outside this array of {len(rings)}")
        self._sink.expected.check(header)
        slot_bytes = rings[header.module_id].slot_bytes
        if header.payload_size > slot_bytes:
            raise WireError(f"payload of {header.payload_size} bytes exceeds the {slot_bytes} "
                            "bytes of a ring slot")

    def _acquire(self, ring: FrameRing) -> int | None:
        """A slot while armed, waiting while the ring is full (back-pressure); else None."""
        armed = self._sink.armed
        while armed.is_set() and not ring.closed:
            slot = ring.acquire(SLOT_WAIT_S)
            if slot is not None:
                return slot
            if self._stop.is_set():
                raise Stopped
        return None

    def _fill(
        self, ring: FrameRing, slot: int, header: FrameHeader, counters: ModuleCounters
    ) -> None:
        payload = ring.view(slot)[: header.payload_size]
        try:
            self._read_exact(payload, header.module_id, f"frame {header.frame_number} payload")
            check_payload(header, payload)
        except WireError as err:
            ring.release(slot)
            self._corrupt(header.module_id, str(err))
            return
        except BaseException:
            ring.release(slot)
            raise
        counters.frames += 1
        counters.bytes += header.frame_size
        self.activity = time.monotonic()
        ring.commit(slot, header)

    def _skip(self, n: int, module: int) -> None:
        """Read and forget ``n`` payload bytes of a frame of ``module``."""
        while n:
            chunk = self._scratch[: min(n, len(self._scratch))]
            self._read_exact(chunk, module, "payload")
            n -= len(chunk)

    def _read_exact(self, view: memoryview, module: int, what: str) -> None:
        got = self._reader.read_into(view)
        if got < len(view):
            raise _Truncated(module, f"stream ended inside a {what} ({got} of {len(view)} bytes)")

    def _blame(self, raw: memoryview) -> int:
        """The module a bad frame belongs to: its header's, if in range, else the last one."""
        if len(raw) >= _MODULE_OFFSET + 2 and raw[: len(MAGIC)] == MAGIC:
            module = int.from_bytes(raw[_MODULE_OFFSET : _MODULE_OFFSET + 2], "little")
            if module < len(self._counters):
                return module
        return self._last_module

    def _begin_scan(self, raw: memoryview, reason: str) -> None:
        """Count a header that does not parse (once per run of bad bytes); rescan after it."""
        if self._bad_header is None:
            self._bad_header = reason
            self._reader.skipped = 0
            self._counters[self._blame(raw)].note_corrupt(f"bad frame header: {reason}")
        self._reader.skipped += 1
        self._reader.unread(raw[1:])

    def _end_scan(self, found: str) -> None:
        if self._bad_header is not None:
            self._warn(f"skipped {self._reader.skipped} bytes after a bad frame header "
                       f"({self._bad_header}) up to {found}")
            self._bad_header = None

    def _corrupt(self, module: int, reason: str) -> None:
        self._counters[module].note_corrupt(reason)
        self._warn(f"module {module}: dropped {reason}")

    def _lose(self, module: int, reason: str) -> None:
        """A frame cut off by the end of the stream."""
        self._counters[module].note_corrupt(reason)
        log.warning("%s: %s; stream closed", self.peer, reason)

    def _note_error(self, module: int, reason: str) -> None:
        self._counters[module].last_error = reason
        log.warning("%s: %s; stream closed", self.peer, reason)

    def _warn(self, message: str) -> None:
        """Log bad input, at most once per LOG_INTERVAL_S; say how many lines were held back."""
        now = time.monotonic()
        if now < self._quiet_until:
            self._suppressed += 1
            return
        if self._suppressed:
            message += f" ({self._suppressed} similar messages suppressed)"
            self._suppressed = 0
        self._quiet_until = now + LOG_INTERVAL_S
        log.warning("%s: %s", self.peer, message)
