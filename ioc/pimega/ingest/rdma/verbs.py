"""The small verbs interface the RDMA protocol runs on.

Two implementations: :mod:`.loopback` (in process, for tests and the CPU-only machines) and
:mod:`.pyverbs_impl` (a real device through rdma-core's pyverbs). Only what the protocol needs
is here: a reliable connection (an RC queue pair), memory the peer may write, two-sided SEND
of small control messages and one-sided RDMA WRITE, with or without an immediate value.
Completions are polled, never waited for, so the caller owns its busy-poll loop.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from enum import Enum
from typing import Any, Protocol

import numpy as np

#: Largest control message (SEND) a connection carries, in bytes.
MAX_MESSAGE = 4096
SPIN = 16  # empty polls that only yield before a poll loop starts to sleep
BACKOFF_MIN_S = 10e-6


class Op(Enum):
    MESSAGE = "message"  # a SEND from the peer arrived
    WRITE = "write"  # an RDMA WRITE WITH IMMEDIATE from the peer completed


@dataclass(frozen=True, slots=True)
class Completion:
    """One receive completion, in the order the peer's operations were posted."""

    kind: Op
    imm: int = 0
    message: bytes = b""


@dataclass(frozen=True, slots=True)
class MemoryRegion:
    """Registered memory: ``addr``/``rkey`` are what the peer writes to; ``handle`` belongs to
    the implementation (a pyverbs MR, a loopback view)."""

    addr: int
    rkey: int
    length: int
    handle: Any = None


class Connection(Protocol):
    """One reliable, ordered connection. ``poll``/``send``/``write`` raise
    :class:`~.errors.RdmaDisconnected` once the peer is gone (after the completions that came
    before)."""

    @property
    def peer(self) -> str: ...

    @property
    def max_inflight(self) -> int:
        """Writes with immediate the peer may have outstanding (receive queue depth)."""
        ...

    def register(self, buffer: np.ndarray) -> MemoryRegion:
        """Register a C-contiguous array for local use and remote writes (kept until close)."""
        ...

    def send(self, message: bytes) -> None: ...

    def write(self, region: MemoryRegion, offset: int, length: int, remote_addr: int,
              rkey: int, imm: int | None = None) -> None:
        """RDMA WRITE ``length`` bytes from ``region`` at ``offset``; with ``imm`` the peer gets
        a completion once the bytes (and those of every earlier write) are in place."""
        ...

    def poll(self, max_events: int = 64) -> list[Completion]:
        """Receive completions that arrived, at once (possibly none)."""
        ...

    def close(self) -> None: ...


class Listener(Protocol):
    @property
    def address(self) -> tuple[str, int]: ...

    def accept(self, timeout: float) -> Connection | None:
        """The next connection; None after ``timeout`` seconds without one."""
        ...

    def close(self) -> None: ...


class Verbs(Protocol):
    """A way to make RDMA connections: a device through pyverbs, or the in-process loopback."""

    @property
    def name(self) -> str: ...

    def listen(self, host: str, port: int) -> Listener: ...

    def connect(self, host: str, port: int, timeout: float) -> Connection:
        """Connect to a listener, retrying until ``timeout`` while nobody listens there."""
        ...


def buffer_address(buffer: Any) -> tuple[int, int]:
    """(address, bytes) of a C-contiguous host array or, through the CUDA array interface, of
    GPU memory (GPUDirect: registering it needs the NIC's peer-memory support)."""
    interface = getattr(buffer, "__cuda_array_interface__", None)
    if interface is None:
        interface = buffer.__array_interface__
    if interface.get("strides") is not None:  # None: C-contiguous
        raise ValueError("only C-contiguous arrays can be registered")
    return int(interface["data"][0]), int(buffer.nbytes)


def back_off(idle: int, max_s: float) -> int:
    """The pause after the ``idle``-th empty poll in a row: a yield at first, then sleeps
    doubling up to ``max_s`` (busy-poll while busy, little CPU when quiet); returns idle + 1."""
    time.sleep(0 if idle < SPIN else min(max_s, BACKOFF_MIN_S * 2 ** (idle - SPIN)))
    return idle + 1
