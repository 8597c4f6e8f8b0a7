"""TCP ingest: wire-format v1 frames on stream sockets, any number of modules per connection.

:class:`TcpSource` is the engine's frame source: one accept loop and one receive loop per
connection (threads the engine owns), each running the transport-free
:class:`~pimega.ingest.framing.FrameReceiver` on the socket. Payloads are read straight into
ring slots; a full ring blocks the reader, which is TCP back-pressure to the sender.

Hostile or broken peers cannot starve the node: connections are capped (at the cap the
connection idle longest is closed to make room), a connection that stalls inside a frame
(holding a ring slot) is closed after ``stall_s``, and nothing waits on a socket timeout to
stop — :meth:`TcpSource.close` shuts the sockets down, which wakes their readers.
"""

from __future__ import annotations

import contextlib
import logging
import select
import socket
import threading
import time

from .framing import FrameReceiver, IngestSink
from .source import Spawn

log = logging.getLogger(__name__)

ACCEPT_POLL_S = 0.2  # how often the accept loop looks at stop and at stalled connections


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

    def accept(self, stop: threading.Event, poll_s: float = ACCEPT_POLL_S) -> socket.socket | None:
        """The next connection; None after ``poll_s`` without one, or once stopped/closed."""
        poller = select.poll()
        poller.register(self._sock, select.POLLIN)
        if stop.is_set() or self._closed or not poller.poll(poll_s * 1000):
            return None
        try:
            conn, _ = self._sock.accept()
        except BlockingIOError:  # another thread took this one
            return None
        except OSError:
            if self._closed:
                return None
            raise
        conn.setblocking(True)
        return conn

    def close(self) -> None:
        self._closed = True
        self._sock.close()


def receive(conn: socket.socket, sink: IngestSink, stop: threading.Event) -> None:
    """Receive frames from ``conn`` into ``sink`` until the peer closes, the connection fails,
    or ``stop`` is set and the socket shut down; ``conn`` is closed on return."""
    with conn:
        FrameReceiver(conn.recv_into, sink, stop, peer_name(conn)).run()


def peer_name(conn: socket.socket) -> str:
    try:
        return "{}:{}".format(*conn.getpeername()[:2])
    except OSError:
        return "?"


class _Connection:
    def __init__(self, conn: socket.socket, receiver: FrameReceiver) -> None:
        self.conn = conn
        self.receiver = receiver

    def shut_down(self) -> None:
        with contextlib.suppress(OSError):
            self.conn.shutdown(socket.SHUT_RDWR)


class TcpSource:
    """Frames from TCP senders on ``host:port`` (port 0: a free one, see :attr:`address`)."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, *, max_connections: int = 16,
                 stall_s: float = 10.0, rcvbuf: int | None = None) -> None:
        self._listener = TcpListener(host, port, rcvbuf=rcvbuf)
        self._max_connections = max_connections
        self._stall_s = stall_s
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._connections: set[_Connection] = set()
        self._accepting = False
        self.evicted = 0  # connections closed to make room or because they stalled

    @property
    def address(self) -> tuple[str, int]:
        return self._listener.address

    @property
    def description(self) -> str:
        return "tcp {}:{}".format(*self.address)

    @property
    def running(self) -> bool:
        return self._accepting

    @property
    def connections(self) -> int:
        return len(self._connections)

    def open(self, sink: IngestSink, spawn: Spawn) -> None:
        self._accepting = True
        spawn("tcp-accept", lambda: self._accept_loop(sink, spawn))

    def close(self) -> None:
        self._stop.set()
        self._listener.close()
        with self._lock:
            for connection in self._connections:
                connection.shut_down()

    def _accept_loop(self, sink: IngestSink, spawn: Spawn) -> None:
        try:
            while not self._stop.is_set():
                conn = self._listener.accept(self._stop)
                self._close_stalled()
                if conn is not None:
                    self._admit(conn, sink, spawn)
        finally:
            self._accepting = False

    def _admit(self, conn: socket.socket, sink: IngestSink, spawn: Spawn) -> None:
        peer = peer_name(conn)
        connection = _Connection(conn, FrameReceiver(conn.recv_into, sink, self._stop, peer))
        with self._lock:
            if len(self._connections) >= self._max_connections:
                idlest = min(self._connections, key=lambda c: c.receiver.activity)
                log.warning("%d connections open: closing %s (idle %.0f s) for %s",
                            len(self._connections), idlest.receiver.peer,
                            time.monotonic() - idlest.receiver.activity, peer)
                self._drop(idlest)
            self._connections.add(connection)
        spawn(f"tcp-{peer}", lambda: self._serve(connection))

    def _serve(self, connection: _Connection) -> None:
        try:
            with connection.conn:
                connection.receiver.run()
        finally:
            with self._lock:
                self._connections.discard(connection)

    def _close_stalled(self) -> None:
        """Close connections stuck inside a frame: they hold a ring slot nobody else gets."""
        now = time.monotonic()
        with self._lock:
            for connection in list(self._connections):
                receiver = connection.receiver
                if receiver.in_frame and now - receiver.activity > self._stall_s:
                    log.warning("%s stalled inside a frame for %.0f s: closing it",
                                receiver.peer, now - receiver.activity)
                    self._drop(connection)

    def _drop(self, connection: _Connection) -> None:
        self._connections.discard(connection)
        connection.shut_down()
        self.evicted += 1
