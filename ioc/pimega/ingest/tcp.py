"""TCP ingest: wire-format v1 frames on stream sockets, one connection per module.

The engine accepts connections on :class:`TcpListener` and runs :func:`receive` for each on
its own threads, stopping both with an event. Payloads are read straight into ring slots;
a full ring blocks the reader, which is TCP back-pressure to the sender. Bad input never
ends the loop: it is counted as corrupt, logged (rate-limited) and skipped, and a header
that does not parse makes the reader scan the stream for the next ``PMGA`` magic.
"""

from __future__ import annotations

import logging
import select
import socket
import threading
import time
from collections.abc import Sequence
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
SKIP_CHUNK = 1 << 20  # scratch for payloads nobody keeps
LOG_INTERVAL_S = 1.0  # at most one bad-input line a second per connection
_FLAGS_OFFSET = 11
_MODULE_OFFSET = 8


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


class TcpListener:
    """A bound, listening socket; several threads may wait in :meth:`accept` at once.

    ``rcvbuf`` sets SO_RCVBUF of the accepted sockets (None: the kernel's autotuning).
    """

    def __init__(
        self, host: str = "0.0.0.0", port: int = 0, *, backlog: int = 16,
        rcvbuf: int | None = None,
    ) -> None:
        self._sock = socket.create_server((host, port), backlog=backlog)
        if rcvbuf is not None:
            self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self._sock.setblocking(False)
        self._closed = False

    @property
    def address(self) -> tuple[str, int]:
        host, port = self._sock.getsockname()[:2]
        return host, port

    def accept(self, stop: threading.Event, poll_s: float = 0.2) -> socket.socket | None:
        """The next connection, or None once ``stop`` is set or the listener is closed."""
        poller = select.poll()
        poller.register(self._sock, select.POLLIN)
        while not (stop.is_set() or self._closed):
            if not poller.poll(poll_s * 1000):
                continue
            try:
                conn, _ = self._sock.accept()
            except BlockingIOError:  # another thread took this one
                continue
            except OSError:
                if self._closed:
                    return None
                raise
            conn.setblocking(True)
            return conn
        return None

    def close(self) -> None:
        self._closed = True
        self._sock.close()


def receive(
    conn: socket.socket,
    rings: Sequence[FrameRing],
    counters: Sequence[ModuleCounters],
    expected: FrameExpectation,
    armed: threading.Event,
    stop: threading.Event,
    *,
    poll_s: float = 0.2,
) -> None:
    """Receive frames from ``conn`` until the peer closes, the connection fails, or ``stop``.

    Frames of module m go to ``rings[m]`` while ``armed`` is set and are counted in
    ``counters[m]``; without ``armed`` (or once the ring is closed) they are read and
    counted as ``dropped_idle``. While the ring is full the reader waits, so the sender
    blocks. A frame cut off by the peer is counted as corrupt; then this returns and the
    engine accepts the next connection. ``conn`` is closed on return. ``poll_s`` bounds how
    long ``stop`` can go unnoticed.
    """
    if len(rings) != len(counters):
        raise ValueError(f"{len(rings)} rings but {len(counters)} counters")
    with conn:
        conn.settimeout(poll_s)
        _Session(conn, rings, counters, expected, armed, stop, poll_s).run()


class _Stopped(Exception):
    """``stop`` was set while the receiver waited."""


class _Truncated(Exception):
    """The peer closed inside a frame of ``module``."""

    def __init__(self, module: int, message: str) -> None:
        super().__init__(message)
        self.module = module


class _Reader:
    """Exact reads from a socket.

    Bytes read ahead while scanning for a magic wait in ``_buf[_start:_end]`` and are
    served first; otherwise reads go straight from the socket into the caller's memory.
    """

    def __init__(self, conn: socket.socket, stop: threading.Event) -> None:
        self._recv_into = conn.recv_into
        self._stop = stop
        self._buf = bytearray(SCAN_CHUNK + TOMO_SIZE)
        self._view = memoryview(self._buf)
        self._start = self._end = 0
        self.skipped = 0  # bytes dropped while scanning

    def read_into(self, view: memoryview) -> int:
        """Fill ``view``; returns how many bytes came (fewer only when the peer closed)."""
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
        if n > self._start:  # they came from the socket: nothing is pending, start afresh
            pending = bytes(self._view[self._start : self._end])
            self._view[n : n + len(pending)] = pending
            self._start, self._end = n, n + len(pending)
        self._start -= n
        self._view[self._start : self._start + n] = data

    def seek_magic(self) -> bool:
        """Drop bytes up to the next magic; False when the peer closed first.

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
            try:
                return self._recv_into(view)
            except TimeoutError:
                if self._stop.is_set():
                    raise _Stopped from None


class _Session:
    """The receive loop of one connection, with its preallocated buffers."""

    def __init__(
        self,
        conn: socket.socket,
        rings: Sequence[FrameRing],
        counters: Sequence[ModuleCounters],
        expected: FrameExpectation,
        armed: threading.Event,
        stop: threading.Event,
        poll_s: float,
    ) -> None:
        self._rings = rings
        self._counters = counters
        self._expected = expected
        self._armed = armed
        self._stop = stop
        self._poll_s = poll_s
        self._reader = _Reader(conn, stop)
        self._header = memoryview(bytearray(0x10000))  # header_size is a u16
        self._scratch = memoryview(bytearray(SKIP_CHUNK))
        try:
            self._peer = "{}:{}".format(*conn.getpeername()[:2])
        except OSError:
            self._peer = "?"
        self._modules: set[int] = set()  # modules this connection carried
        self._last_module = 0  # where bad input is counted when its header names no module
        self._frame_module: int | None = None  # module of the frame being read
        self._bad_header: str | None = None  # why the scan began, while scanning
        self._quiet_until = 0.0
        self._suppressed = 0

    def run(self) -> None:
        try:
            while not self._stop.is_set():
                header = self._next_header()
                if header is None:
                    return
                self._take(header)
        except _Stopped:
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
        """The next header that parses, scanning past bad bytes; None when the peer closed."""
        while True:
            got = self._reader.read_into(self._header[:FIXED_SIZE])
            size = FIXED_SIZE
            if got == FIXED_SIZE and self._header[_FLAGS_OFFSET] & Flags.TOMO:
                size = TOMO_SIZE
                got += self._reader.read_into(self._header[FIXED_SIZE:TOMO_SIZE])
            if got < size:
                if got == 0 or self._bad_header is not None:  # clean end, or end of garbage
                    self._end_scan("the peer closed")
                    return None
                raise _Truncated(
                    self._blame(self._header[:got]),
                    f"peer closed inside a frame header ({got} of {size} bytes)",
                )
            try:
                header = parse_header(self._header[:size])
            except WireError as err:
                self._begin_scan(self._header[:size], str(err))
                if not self._reader.seek_magic():
                    self._end_scan("the peer closed")
                    return None
                continue
            self._end_scan(f"frame {header.frame_number} of module {header.module_id}")
            self._read_exact(self._header[size : header.header_size], header.module_id, "header")
            return header

    def _take(self, header: FrameHeader) -> None:
        """Read the payload into a ring slot (armed) or into scratch (not armed)."""
        module = header.module_id
        try:
            self._check_fits(header)
        except WireError as err:
            blamed = self._blame(self._header)
            self._skip(header.payload_size, blamed)  # its header is sound: stay in step
            self._corrupt(blamed, f"frame {header.frame_number}: {err}")
            return
        counters = self._counters[module]
        if module not in self._modules:
            self._modules.add(module)
            counters.connections += 1
            counters.connected = True
        self._last_module = self._frame_module = module
        counters.note_frame_number(header.frame_number)
        ring = self._rings[module]
        slot = self._acquire(ring)
        if slot is None:
            self._skip(header.payload_size, module)
            counters.dropped_idle += 1
        else:
            self._fill(ring, slot, header, counters)
        self._frame_module = None

    def _check_fits(self, header: FrameHeader) -> None:
        if header.module_id >= len(self._rings):
            raise WireError(
                f"module id {header.module_id} is outside this array of {len(self._rings)}"
            )
        self._expected.check(header)
        slot_bytes = self._rings[header.module_id].slot_bytes
        if header.payload_size > slot_bytes:
            raise WireError(f"payload of {header.payload_size} bytes exceeds the {slot_bytes} "
                            "bytes of a ring slot")

    def _acquire(self, ring: FrameRing) -> int | None:
        """A slot while armed, waiting while the ring is full (back-pressure); else None."""
        while self._armed.is_set() and not ring.closed:
            slot = ring.acquire(self._poll_s)
            if slot is not None:
                return slot
            if self._stop.is_set():
                raise _Stopped
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
            raise _Truncated(module, f"peer closed inside a {what} ({got} of {len(view)} bytes)")

    def _blame(self, raw: memoryview) -> int:
        """The module a bad frame belongs to: its header's, if readable, else the last one."""
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
            module = self._blame(raw)
            counters = self._counters[module]
            counters.corrupt += 1
            counters.last_error = f"bad frame header: {reason}"
        self._reader.skipped += 1
        self._reader.unread(raw[1:])

    def _end_scan(self, found: str) -> None:
        if self._bad_header is not None:
            self._warn(f"skipped {self._reader.skipped} bytes after a bad frame header "
                       f"({self._bad_header}) up to {found}")
            self._bad_header = None

    def _corrupt(self, module: int, reason: str) -> None:
        counters = self._counters[module]
        counters.corrupt += 1
        counters.last_error = reason
        self._warn(f"module {module}: dropped {reason}")

    def _lose(self, module: int, reason: str) -> None:
        """A frame cut off by the end of the connection."""
        self._counters[module].corrupt += 1
        self._note_error(module, reason)

    def _note_error(self, module: int, reason: str) -> None:
        self._counters[module].last_error = reason
        log.warning("%s: %s; connection closed", self._peer, reason)

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
        log.warning("%s: %s", self._peer, message)
