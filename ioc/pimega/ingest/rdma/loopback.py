"""In-process verbs: the RDMA protocol without a device, for tests and CPU-only machines.

A :class:`LoopbackFabric` stands for the network: listeners by address, connections as pairs
of endpoints. A write copies the bytes into the peer's registered memory at once, checking the
key and the bounds as a NIC would (a bad one breaks the connection, like a remote access
error), then queues the immediate; sends queue their bytes. Each endpoint's completions come
out in the order the peer posted its operations, as on an RC queue pair.
"""

from __future__ import annotations

import itertools
import queue
import threading
import time
from collections import deque

import numpy as np

from .errors import RdmaDisconnected, RdmaError
from .verbs import MAX_MESSAGE, Completion, MemoryRegion, Op, buffer_address

CONNECT_POLL_S = 0.01


class LoopbackConnection:
    """One end of an in-process connection."""

    def __init__(self, peer_name: str) -> None:
        self._peer_name = peer_name
        self._peer: LoopbackConnection | None = None
        self._inbox: deque[Completion] = deque()  # appended by the peer's thread
        self._regions: dict[int, MemoryRegion] = {}
        self._keys = itertools.count(1)
        self._broken: str | None = None

    @property
    def peer(self) -> str:
        return self._peer_name

    @property
    def max_inflight(self) -> int:
        return 1 << 16

    def register(self, buffer: np.ndarray) -> MemoryRegion:
        addr, length = buffer_address(buffer)
        view = buffer.data.cast("B")
        region = MemoryRegion(addr, next(self._keys), length, view)
        self._regions[region.rkey] = region
        return region

    def send(self, message: bytes) -> None:
        if len(message) > MAX_MESSAGE:
            raise ValueError(f"message of {len(message)} bytes exceeds {MAX_MESSAGE}")
        self._target()._inbox.append(Completion(Op.MESSAGE, message=bytes(message)))

    def write(self, region: MemoryRegion, offset: int, length: int, remote_addr: int,
              rkey: int, imm: int | None = None) -> None:
        peer = self._target()
        target = peer._regions.get(rkey)
        start = remote_addr - target.addr if target is not None else -1
        if target is None or start < 0 or start + length > target.length:
            self._break(f"remote access error: {length} bytes at {remote_addr:#x} with key "
                        f"{rkey} are outside the peer's registered memory")
            raise RdmaDisconnected(self._broken)
        target.handle[start : start + length] = region.handle[offset : offset + length]
        if imm is not None:
            peer._inbox.append(Completion(Op.WRITE, imm=imm))

    def poll(self, max_events: int = 64) -> list[Completion]:
        inbox = self._inbox
        events = [inbox.popleft() for _ in range(min(max_events, len(inbox)))]
        if not events and self._broken is not None:
            raise RdmaDisconnected(self._broken)
        return events

    def close(self) -> None:
        self._break("the peer closed the connection", here="connection closed")
        self._regions.clear()

    def _target(self) -> LoopbackConnection:
        if self._broken is not None or self._peer is None:
            raise RdmaDisconnected(self._broken or "not connected")
        return self._peer

    def _break(self, reason: str, here: str | None = None) -> None:
        if self._broken is None:
            self._broken = here or reason
        if self._peer is not None and self._peer._broken is None:
            self._peer._broken = reason


class LoopbackListener:
    def __init__(self, fabric: LoopbackFabric, address: tuple[str, int]) -> None:
        self._fabric = fabric
        self._address = address
        self._pending: queue.Queue[LoopbackConnection] = queue.Queue()

    @property
    def address(self) -> tuple[str, int]:
        return self._address

    def accept(self, timeout: float) -> LoopbackConnection | None:
        try:
            return self._pending.get(timeout=timeout)
        except queue.Empty:
            return None

    def close(self) -> None:
        self._fabric._unlisten(self._address)


class LoopbackFabric:
    """The in-process network: pass the same fabric to the receiver and the sender."""

    name = "loopback"

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._listeners: dict[tuple[str, int], LoopbackListener] = {}
        self._ports = itertools.count(1 << 15)
        self._peers = itertools.count(1)

    def listen(self, host: str, port: int) -> LoopbackListener:
        with self._lock:
            while not port or (host, port) in self._listeners:
                if port:
                    raise RdmaError(f"{host}:{port} is already listened on")
                port = next(self._ports)
            listener = self._listeners[host, port] = LoopbackListener(self, (host, port))
            return listener

    def connect(self, host: str, port: int, timeout: float) -> LoopbackConnection:
        deadline = time.monotonic() + timeout
        while (listener := self._listeners.get((host, port))) is None:
            if time.monotonic() > deadline:
                raise RdmaError(f"nobody listens on loopback {host}:{port}")
            time.sleep(CONNECT_POLL_S)
        active = LoopbackConnection(f"{host}:{port}")
        passive = LoopbackConnection(f"loopback-peer-{next(self._peers)}")
        active._peer, passive._peer = passive, active
        listener._pending.put(passive)
        return active

    def _unlisten(self, address: tuple[str, int]) -> None:
        with self._lock:
            self._listeners.pop(address, None)
